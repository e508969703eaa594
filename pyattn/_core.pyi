"""
pyattn's C++ core: SIMD/OpenMP GEMM, softmax, layer norm, activations and fused attention.
Functions here take float32 arrays as they are and refuse anything else; pyattn.functional
is the user-facing layer that converts and documents.
"""

# Written from pybind11-stubgen's output (pybind11-stubgen pyattn._core) and checked by hand against
# cpp/bindings/: array parameters carry the dtype the binding requires (the binding refuses any other), optional
# arguments are Optional, and scaled_dot_product_attention's result follows return_weights.
# tests/test_stubs.py checks that this file and the module name the same attributes.

from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

_F32 = npt.NDArray[np.float32]
_Weight = npt.NDArray[Any]  # float32 or float16 (PackedLinear); the binding checks
_Mask = npt.NDArray[Any]  # bool (True = masked out) or float32 (added to the scores)
_I64 = npt.NDArray[np.int64]

class PackedLinear:
    """
    A Linear layer whose weight is packed once for the GEMM micro-kernel (at construction),
    so each call packs only its activations. weight (out_features, in_features) float32 or
    float16; storage: 'float32', 'float16', 'bfloat16', 'int8' (blocks of 32 along in_features
    with their own scales, activations quantized likewise), 'q4_0' / 'q4_1' / 'q5_0' / 'q5_1'
    (GGUF's 4- and 5-bit blocks), 'q6_k' (6-bit, GGUF's Q6_K values), 'q4_k' / 'q5_k' / 'q2_k' /
    'q3_k' (GGUF's K-quants: super-blocks of 256, in_features a multiple of 256), or '' for the
    weight's own dtype.
    """
    @staticmethod
    def from_gguf(raw: npt.NDArray[np.uint8], type: str, in_features: int, bias: Optional[_F32] = None) -> PackedLinear:
        """
        A 4-, 5- or 6-bit weight as GGUF stores it, read as stored by the GEMM (no widening in
        memory): raw (out, in / 32 * bytes per block) uint8, type 'q4_0' (18-byte blocks), 'q4_1'
        (20 bytes), 'q5_0' (22), 'q5_1' (24), 'q6_k' (28: Q6_K's values re-laid per 32 by
        pyattn.io.gguf.q6_k_as_q6), 'q4_k' (144 bytes per 256), 'q5_k' (176), 'q2_k' (84) or
        'q3_k' (110).
        """
    @staticmethod
    def from_int8(q: npt.NDArray[np.int8], scales: _F32, bias: Optional[_F32] = None) -> PackedLinear:
        """
        An int8 weight quantized elsewhere, held as given: q (out, in) int8 and scales (out,) (one per
        row, as CTranslate2's) or (out, ceil(in / 32)) (one per block of 32, as GGUF's Q8_0), float32,
        with weight ~ q * scale.
        """
    def __call__(self, x: _F32, activation: str = "none", out: Optional[_F32] = None) -> _F32:
        """
        act(x @ weight.T + bias) for x (..., in_features) float32 C-contiguous.
        """
    def __init__(
        self, weight: _Weight, bias: Optional[_F32] = None, storage: str = "", input_scale: Optional[_F32] = None
    ) -> None: ...
    def rows(self, ids: npt.ArrayLike) -> _F32:
        """Rows `ids` of the weight, unpacked: (*ids.shape, in_features) float32."""
        ...
    def weight(self) -> _F32:
        """
        The weight (out_features, in_features), unpacked into a new array.
        """
    @property
    def bias(self) -> Optional[_F32]:
        """
        A copy of the bias, or None.
        """
    @property
    def has_bias(self) -> bool: ...
    @property
    def in_features(self) -> int: ...
    @property
    def isa(self) -> str:
        """
        Kernel set the weight was packed for.
        """
    @property
    def nbytes(self) -> int:
        """
        Bytes held by the packed weight and bias.
        """
    @property
    def out_features(self) -> int: ...
    @property
    def storage(self) -> str:
        """
        How the weight is held: 'float32', 'float16', 'bfloat16', 'int8', 'q4_0', 'q4_1', 'q5_0',
        'q5_1', 'q6_k', 'q4_k', 'q5_k', 'q2_k' or 'q3_k'.
        """

class GRULayer:
    """
    One direction of one GRU layer (PyTorch's gates r, z, n), its weights packed once:
    the input projection of every step is one GEMM, each step one packed GEMM of the
    batch's states and the fused gate kernel.
    """
    def __call__(self, x: _F32, h0: Optional[_F32] = None, reverse: bool = False) -> Tuple[_F32, _F32]:
        """
        x (batch, seq, input_size), h0 (batch, hidden) or None -> (output (batch, seq, hidden), h_n)
        """
    def __init__(
        self, weight_ih: _F32, weight_hh: _F32, bias_ih: Optional[_F32] = None, bias_hh: Optional[_F32] = None
    ) -> None: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def input_size(self) -> int: ...

class DecoderLayer:
    """
    A Llama-family decoder layer (cpp/layers/decoder_layer.h): pre-RMSNorm, RoPE, grouped-
    query attention over a KV cache, SwiGLU. qkv (E -> (H + 2 Hkv) D), out (H D -> E),
    gate_up (E -> 2F: gate rows, then up rows) and down (F -> E) are PackedLinear objects
    (qkv may be three: Q, K and V apart, each of its own weight type);
    q_norm / k_norm (D,): an RMSNorm of each query / key head before RoPE (Qwen3, Gemma 3),
    or None; post_attn_norm / post_ffn_norm (E,): RMSNorms of the attention's and the FFN's
    outputs before the residual add (Gemma), or None; scale: of the attention's scores
    (None: 1 / sqrt(D)); window: a sliding window of keys (0: none); activation: of the
    FFN's gate ('silu': SwiGLU, 'gelu_tanh': GeGLU); rope_table: which of decoder_stack's
    rotary tables the layer reads; softcap: the scores soft-capped by tanh (Gemma 2), 0:
    not.
    """
    def __init__(
        self,
        qkv: Union[PackedLinear, Sequence[PackedLinear]],
        out: PackedLinear,
        gate_up: PackedLinear,
        down: PackedLinear,
        attn_norm: _F32,
        ffn_norm: _F32,
        eps: float,
        num_heads: int,
        num_kv_heads: int,
        rotary_dim: int,
        interleaved: bool,
        q_norm: Optional[_F32] = None,
        k_norm: Optional[_F32] = None,
        post_attn_norm: Optional[_F32] = None,
        post_ffn_norm: Optional[_F32] = None,
        scale: Optional[float] = None,
        window: int = 0,
        activation: str = "silu",
        rope_table: int = 0,
        softcap: float = 0.0,
    ) -> None: ...

class CrossDecoderLayer:
    """
    One decoding step of a transformer decoder layer with encoder-decoder attention in
    one call (cpp/layers/cross_decoder_layer.h): the PackedLinear projections qkv
    (E -> 3E), self_out, q, cross_out (E -> E), ffn1 (E -> F, activation fused), ffn2,
    three LayerNorms, post-LN (norm_first=False) or pre-LN; scales of the two
    attentions' scores (None: 1 / sqrt(head_dim)).
    """
    def __init__(
        self,
        qkv: PackedLinear,
        self_out: PackedLinear,
        q: PackedLinear,
        cross_out: PackedLinear,
        ffn1: PackedLinear,
        ffn2: PackedLinear,
        norm1_weight: _F32,
        norm1_bias: Optional[_F32],
        norm1_eps: float,
        norm2_weight: _F32,
        norm2_bias: Optional[_F32],
        norm2_eps: float,
        norm3_weight: _F32,
        norm3_bias: Optional[_F32],
        norm3_eps: float,
        num_heads: int,
        activation: str,
        norm_first: bool,
        self_scale: Optional[float] = None,
        cross_scale: Optional[float] = None,
    ) -> None: ...
    def step(
        self,
        x: _F32,
        cache_k: _F32,
        cache_v: _F32,
        past: int,
        memory_k: npt.NDArray[Any],
        memory_v: npt.NDArray[Any],
        memory_length: int,
        key_padding_mask: Optional[npt.NDArray[np.bool_]] = None,
        memory_key_padding_mask: Optional[npt.NDArray[np.bool_]] = None,
        is_causal: bool = True,
    ) -> _F32:
        """
        x (B, L, E) float32 C-contiguous: the step's rows. cache_k / cache_v (B, capacity, E) float32: the
        self-attention's keys and values, positions [past, past + L) written. memory_k / memory_v (rows, H,
        capacity, D), float32 or float16: the encoder output's, the first memory_length positions read; rows
        divides B (decoder rows g r .. g r + g - 1 read memory row r). key_padding_mask (B, past + L) and
        memory_key_padding_mask (rows, memory_length): bool, True = padding. Returns (B, L, E).
        """

class EncoderLayer:
    """
    A whole transformer encoder layer in one call (cpp/layers/encoder_layer.h): the
    PackedLinear projections qkv (E -> 3E), out, ffn1 (E -> F, activation fused), ffn2, two
    LayerNorms, post-LN (norm_first=False) or pre-LN.
    """
    def __call__(self, x: _F32, key_padding_mask: Optional[npt.NDArray[np.bool_]] = None) -> _F32:
        """
        x (B, L, E) float32 C-contiguous; key_padding_mask (B, L) bool, True = padding. Returns (B, L, E).
        """
    def __init__(
        self,
        qkv: PackedLinear,
        out: PackedLinear,
        ffn1: PackedLinear,
        ffn2: PackedLinear,
        norm1_weight: _F32,
        norm1_bias: Optional[_F32],
        norm1_eps: float,
        norm2_weight: _F32,
        norm2_bias: Optional[_F32],
        norm2_eps: float,
        num_heads: int,
        activation: str,
        norm_first: bool,
        scale: Optional[float] = None,
    ) -> None: ...
    def packed(self, x: _F32, offsets: _I64) -> _F32:
        """
        x (T, E) float32 C-contiguous: sequences packed without padding, sequence b the rows
        [offsets[b], offsets[b + 1]) (offsets int64, from 0 to T, non-decreasing); each attends to itself.
        Returns (T, E).
        """

def _tune_blocking(name: str, mc: int, kc: int, nc: int) -> None:
    """
    Tuning hook for benchmarks/gym: set MC, KC, NC of a kernel set (repack weights afterwards).
    """

def _tune_prefetch(bytes: int) -> None:
    """Tuning hook for benchmarks/gym: how far ahead the int8 / 4-bit kernels prefetch weight panels (0: off)."""
    ...

def _tune_team_rows(rows: int) -> None:
    """
    Tuning hook for tests and benchmarks/gym: up to this many rows (batch x new tokens, at most 8) decoder_stack
    runs in one parallel region; 0: always layer by layer.
    """

def _tune_team_chunk(bytes: int) -> None:
    """
    Tuning hook for benchmarks/gym: bytes of weights per chunk of columns the threads of a decoding step share
    (-1, the default: by matrix and thread count; 0: 16 KiB, each thread its own share).
    """

def _tune_small_m_packed(m: int) -> None:
    """
    Tuning hook for benchmarks/gym: up to m rows, a prepacked B is read in place (the small-M path).
    """

def _tune_epilogue_cols(n: int) -> None:
    """
    Tuning hook for benchmarks/gym: columns of C the blocked bfloat16 path computes before their epilogue.
    """

def activation(x: _F32, kind: str, bias: Optional[_F32] = None) -> _F32:
    """
    Element-wise activation (relu, gelu, gelu_tanh, silu, none) of x (+ bias over the last axis).
    """

def additive_scores(qp: _F32, kp: _F32, v: _F32, v_bias: float = 0.0) -> _F32:
    """
    Additive (Bahdanau) attention scores, fused: scores[b, i, j] = sum_h v[h] tanh(qp[b, i, h] + kp[b, j, h])
    + v_bias. qp (B, Lq, H) projected queries, kp (B, Lk, H) projected keys (float32 views with a
    contiguous last axis), v (H,). Returns (B, Lq, Lk) float32; a score meeting a NaN or infinite
    qp + kp or v is NaN.
    """

def amx_granted() -> bool:
    """
    Whether Linux granted this process the AMX tile state (asked once; False without AMX).
    """

def available_isas() -> List[str]:
    """
    Kernel sets this CPU can run, best last.
    """

def test_isas() -> List[str]:
    """
    Test-only kernel sets this CPU can run (set_isa accepts them; never picked): the amx set's loops on software
    tiles, the avx_vnni set's kernels in EVEX encodings.
    """

def blocking(name: str = "") -> Dict[str, int]:
    """
    GEMM register tile and cache blocking (MR, NR, MC, KC, NC) of a kernel set.
    """

def cpu_features() -> Dict[str, bool]:
    """
    CPU features detected with cpuid (and OS support for the wider registers).
    """

def decoder_stack(
    layers: Sequence[DecoderLayer],
    x: _F32,
    positions: _I64,
    cos: Union[_F32, Sequence[_F32]],
    sin: Union[_F32, Sequence[_F32]],
    cache_k: Sequence[_F32],
    cache_v: Sequence[_F32],
    past: int,
    key_padding_mask: Optional[npt.NDArray[np.bool_]] = None,
) -> _F32:
    """
    Runs the DecoderLayer list over x (B, L, E) in place (the residual stream) and returns the last layer's
    FFN output (B, L, E), which the caller adds before the final norm. positions (B, L) int64 index the
    rotary tables cos / sin (n_pos, rotary_dim / 2), or lists of such tables that the layers pick from
    (rope_table); cache_k / cache_v: per layer (B, Hkv, capacity, D),
    positions [past, past + L) are written; key_padding_mask (B, past + L) bool, True = padding.
    """

def multiplies_bf16_pairs() -> bool:
    """
    Whether the kernel set in use multiplies bfloat16 pairs in hardware (AVX512_BF16's vdpbf16ps, AMX tiles):
    where bfloat16 GEMMs run at about twice float32's speed.
    """

def get_isa() -> str:
    """
    Name of the kernel set in use.
    """

def get_num_threads() -> int:
    """
    Threads used by parallel ops.
    """

def get_thread_limit() -> int:
    """
    The calling thread's cap on the threads of its parallel ops (0: none).
    """

def layer_norm(
    x: _F32,
    weight: Optional[_F32] = None,
    bias: Optional[_F32] = None,
    eps: float = 1e-5,
    residual: Optional[_F32] = None,
) -> _F32:
    """
    Layer normalisation over the last axis (biased variance, as torch) of x, or of x + residual.
    """

def linear(
    x: _F32, weight: _F32, bias: Optional[_F32] = None, activation: str = "none", out: Optional[_F32] = None
) -> _F32:
    """
    act(x @ weight.T + bias): x (..., in) C-contiguous, weight (out, in) as in torch.nn.Linear.
    """

def log_softmax(x: _F32) -> _F32:
    """
    log_softmax over the last axis of a C-contiguous float32 array; an all -inf row gives -inf.
    """

def matmul(a: _F32, b: _F32, transpose_b: bool = False, out: Optional[_F32] = None) -> _F32:
    """
    a (..., M, K) @ b (..., K, N) (or b (..., N, K) with transpose_b) with numpy batch broadcasting.
    float32 only; the last axis of a and b must be contiguous; out is C-contiguous float32.
    """

def measure_fma_peak(threads: int = 1, seconds: float = 0.3) -> float:
    """
    Measured FMA throughput in GFLOP/s of the active kernel set on `threads` threads.
    """

def measure_read_bandwidth(threads: int = 1, mbytes: int = 256, repeats: int = 5) -> float:
    """
    Measured read bandwidth in GB/s (best of `repeats` sums over a buffer of `mbytes` MiB).
    """

def num_procs() -> int:
    """
    Processors available to this process.
    """

def release_memory() -> int:
    """
    Frees the cache of large result blocks (kept for reuse between calls, at most 128 MiB) and returns the
    allocator's free pages to the system. Returns the bytes of cached blocks freed.
    """

def trim_heap() -> bool:
    """
    Returns the allocator's free heap pages to the system (glibc's malloc_trim), without touching the block
    cache. Model loaders call it: once glibc has raised its mmap threshold, a load's transient buffers come
    from the heap and would otherwise stay resident. True if memory was released.
    """

def rms_norm(x: _F32, weight: Optional[_F32] = None, eps: float = 1e-6, residual: Optional[_F32] = None) -> _F32:
    """
    RMS normalisation over the last axis: x / sqrt(mean(x^2) + eps) * weight. With residual (float32, the shape
    of x, C-contiguous, writable): residual += x in place first, and the sum is normalised (pre-norm step).
    """

def rope(x: _F32, positions: _I64, cos: _F32, sin: _F32, interleaved: bool = False) -> None:
    """
    Rotary position embedding in place on x (B, L, H, D) (last axis contiguous; heads may be strided views):
    the first 2 * cos.shape[1] dims of each head rotate by the angles of positions (B, L) int64, rows of the
    cos / sin tables (n_positions, rot / 2). Pairs (i, i + rot/2) (rotate_half) or (2i, 2i+1) (interleaved).
    """

@overload
def scaled_dot_product_attention(
    q: _F32,
    k: _F32,
    v: _F32,
    attn_mask: Optional[_Mask] = None,
    key_padding_mask: Optional[_Mask] = None,
    is_causal: bool = False,
    causal_offset: int = 0,
    scale: Optional[float] = None,
    return_weights: Literal[False] = False,
    out: Optional[_F32] = None,
    precision: str = "float32",
) -> _F32: ...
@overload
def scaled_dot_product_attention(
    q: _F32,
    k: _F32,
    v: _F32,
    attn_mask: Optional[_Mask] = None,
    key_padding_mask: Optional[_Mask] = None,
    is_causal: bool = False,
    causal_offset: int = 0,
    scale: Optional[float] = None,
    *,
    return_weights: Literal[True],
    out: Optional[_F32] = None,
    precision: str = "float32",
) -> Tuple[_F32, _F32]: ...
@overload
def scaled_dot_product_attention(
    q: _F32,
    k: _F32,
    v: _F32,
    attn_mask: Optional[_Mask] = None,
    key_padding_mask: Optional[_Mask] = None,
    is_causal: bool = False,
    causal_offset: int = 0,
    scale: Optional[float] = None,
    return_weights: bool = False,
    out: Optional[_F32] = None,
    precision: str = "float32",
) -> Union[_F32, Tuple[_F32, _F32]]:
    """
    Fused softmax(scale q k^T + mask) v. q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) with Hkv dividing
    H (grouped-query attention: query head h reads K/V head h / (H / Hkv)): float32 views
    with a contiguous last axis (heads may be strided views). attn_mask (B|1, H|1, Lq|1, Lk) and
    key_padding_mask (B|1, Lk): bool (True = masked out) or float32 (added). is_causal: key j visible to
    query i iff j <= i + causal_offset. Returns out (B, H, Lq, Dv), and the weights (B, H, Lq, Lk) too when
    return_weights. A query with every key masked gets zeros.
    """

def set_isa(name: str) -> None:
    """
    Switch the kernel set ('scalar', 'avx2', 'avx512', 'avx512_vnni', 'avx512_bf16'); ValueError if this CPU lacks it.
    """

def set_num_threads(n: int) -> None:
    """
    Set the threads used by parallel ops (>= 1).
    """

def set_thread_limit(n: int) -> None:
    """
    Cap the threads of the parallel ops the calling thread starts (0: no cap).
    """

def softmax(x: _F32) -> _F32:
    """
    softmax over the last axis of a C-contiguous float32 array; an all -inf row gives zeros.
    """

def swiglu(gate_up: _F32, activation: str = "silu") -> _F32:
    """
    act(gate) * up for gate_up (..., 2 F) = [gate | up] (the two projections of a gated FFN in one GEMM):
    activation 'silu' (SwiGLU, Llama), 'gelu_tanh' (GeGLU, Gemma), or another of activation()'s.
    """

def to_float16(src: _F32, out: npt.NDArray[np.float16]) -> None:
    """
    out[...] = src rounded to float16 (nearest even; beyond 65504: inf): float32 src and float16 out of one
    shape, each with a contiguous last axis (other axes may be strided views).
    """

def topk(x: _F32, k: int) -> Tuple[_F32, _I64]:
    """
    (values, indices) of the k largest entries over the last axis of a C-contiguous float32 array, largest
    first; ties keep the lower index first, NaN ranks below every number.
    """

def weight_types() -> List[str]:
    """
    Names of the weight types PackedLinear can hold.
    """
