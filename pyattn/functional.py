"""Stateless numpy-in / numpy-out operations on pyattn's C++ core.

Every function here computes in float32 and returns new float32 arrays (or writes ``out``).

What is converted, and what is refused
--------------------------------------
* Floating-point inputs of another precision (float16, float64) are **converted** to float32 (a copy);
  the result is float32. Integer, boolean (except masks), complex and object arrays are **refused** with a
  ``TypeError``: pyattn never guesses that integers were meant as values.
* Non-contiguous inputs are **copied** to a contiguous array where the kernel needs one. The attention
  functions take q / k / v / out as strided views with a contiguous last axis without copying (heads of a
  projection are such views).
* ``out=`` arrays are never converted: a dtype other than float32 is a ``TypeError``; they must also be
  C-contiguous (attention: last axis contiguous), writable, of the exact result shape and not overlap
  any input (bias and masks included), else ``ValueError``.
* Masks are bool (``True`` = masked out, as in ``torch.nn.MultiheadAttention``) or float (added to the
  scores; float64 is converted). Integer masks are refused (``TypeError``): 1 could mean either "keep" or
  "mask".
* Zero-length dimensions are refused with ``ValueError``; so are wrong ranks, mismatched dimensions and
  masks of the wrong shape. Messages name the argument, the expected shape and the shape received.
  Scalar options (``eps``, ``scale``, ``v_bias``, ``activation``, ``axis``) of the wrong type are ``TypeError``.
* NaN and inf propagate as in torch, on every kernel set: NaN in, NaN out for matmul / linear / activations
  (``relu(NaN)`` is NaN) and layer_norm rows; a softmax slice holding NaN or +inf is NaN throughout (all -inf
  gives zeros); an attention query whose visible scores hold NaN or +inf gets NaN output and weights. The
  values of keys a query does not see (masked, or past the causal limit) may not be read at all, so NaN there
  need not reach the output. ``attention_scores`` / ``attention`` refuse NaN / inf inputs (``ValueError``).

Every call releases the GIL while the C++ core computes.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from . import _core
from ._checks import is_int

__all__ = [
    "matmul",
    "linear",
    "softmax",
    "log_softmax",
    "layer_norm",
    "rms_norm",
    "rope_tables",
    "rotary_embedding",
    "positions_from_mask",
    "swiglu",
    "geglu",
    "gelu",
    "relu",
    "silu",
    "scaled_dot_product_attention",
    "multi_head_attention",
    "attention_scores",
    "project_keys",
    "attention",
]

_ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")


def _as_float32(x, name: str) -> np.ndarray:
    """float32 ndarray view of `x`, converting other float precisions; refusing everything else."""
    if not isinstance(x, np.ndarray):
        if x is None:
            raise TypeError(f"expected {name} to be a float32 numpy array, got None")
        x = np.asarray(x)
    if x.dtype == np.float32:
        return x
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    raise TypeError(
        f"expected {name} to be a floating-point array (float32; float16/float64 are converted), got "
        f"{x.dtype} of shape {x.shape}; cast it with {name}.astype(np.float32) if that is what you mean"
    )


def _c_aligned(x, dtype=None) -> np.ndarray:
    """`x` as a C-contiguous array aligned to its items (of `dtype`, if given): `x` itself when it already is one,
    else a copy. Unlike np.ascontiguousarray this also copies a view at an odd byte offset, which the core
    refuses; the early return skips np.require, a Python function that costs ~5 us per call."""
    if isinstance(x, np.ndarray) and (dtype is None or x.dtype == dtype):
        flags = x.flags
        if flags.c_contiguous and flags.aligned:
            return x
    return np.require(x, dtype, "CA")


def _contiguous(x, name: str) -> np.ndarray:
    x = _as_float32(x, name)
    if x.ndim == 0:  # np.ascontiguousarray would quietly make it (1,)
        raise ValueError(f"expected {name} with at least one dimension, got a scalar")
    return _c_aligned(x)


def _last_axis_contiguous(x, name: str) -> np.ndarray:
    x = _as_float32(x, name)
    ok = (
        x.ndim > 0
        and x.flags.aligned
        and (x.strides[-1] == x.itemsize or x.shape[-1] == 1)
        and all(s >= 0 for s in x.strides)
    )
    return x if ok else _c_aligned(x)


def _optional(x, name: str) -> Optional[np.ndarray]:
    return None if x is None else _contiguous(x, name)


def _check_nonempty(x: np.ndarray, name: str) -> None:
    if x.size == 0:
        raise ValueError(f"{name} has a zero-length dimension: shape {x.shape} (empty inputs are refused)")


def _mask(m, name: str) -> Optional[np.ndarray]:
    if m is None:
        return None
    if not isinstance(m, np.ndarray):
        m = np.asarray(m)
    if m.dtype.kind == "f" and m.dtype != np.float32:
        m = m.astype(np.float32)
    if m.dtype == np.bool_ or m.dtype == np.float32:
        # the kernels walk a mask row by row, forwards: copy a view whose last axis is strided, that runs
        # backwards along any axis, or that sits at an odd byte offset (the core refuses it)
        if m.ndim and (
            (m.shape[-1] > 1 and m.strides[-1] != m.itemsize) or any(s < 0 for s in m.strides) or not m.flags.aligned
        ):
            m = _c_aligned(m)
        return m
    raise TypeError(
        f"expected {name} to be bool (True = masked out) or float (added to the scores), got {m.dtype}; "
        f"integer masks are ambiguous: pass {name}.astype(bool)"
    )


def _number(x, name: str) -> float:
    """A real number argument (a Python or numpy scalar, or a 0-d array; not a bool, string or array) as a float."""
    if isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iuf":
        x = x.item()
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(x).__name__} {x!r:.40}")
    return float(x)


def _axis(x: np.ndarray, axis: int) -> int:
    if not is_int(axis):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for an array of shape {x.shape}")
    return int(axis) % x.ndim


# ----------------------------------------------------------------------------------------------------
# GEMM
# ----------------------------------------------------------------------------------------------------
def matmul(a, b, *, transpose_b: bool = False, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``a @ b`` for a (..., M, K) and b (..., K, N) -- or b (..., N, K) with ``transpose_b`` -- with numpy
    broadcasting of the leading batch dimensions. Packed SGEMM (Goto/BLIS) on all threads."""
    a = _last_axis_contiguous(a, "a")
    b = _last_axis_contiguous(b, "b")
    return _core.matmul(a, b, transpose_b=bool(transpose_b), out=out)


def linear(x, weight, bias=None, *, activation: str = "none", out: Optional[np.ndarray] = None) -> np.ndarray:
    """``act(x @ weight.T + bias)`` with weight in PyTorch's (out_features, in_features) layout and x of shape
    (..., in_features). ``activation`` is fused into the GEMM: one of none, relu, gelu, gelu_tanh, silu.
    For repeated calls with the same weight use :class:`pyattn.PackedLinear`, which packs it once."""
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a string, one of {', '.join(_ACTIVATIONS)}; got {activation!r}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: expected one of {', '.join(_ACTIVATIONS)}")
    return _core.linear(_contiguous(x, "x"), _contiguous(weight, "weight"), _optional(bias, "bias"), activation, out)


# ----------------------------------------------------------------------------------------------------
# Row-wise ops
# ----------------------------------------------------------------------------------------------------
def _along_axis(fn, x, axis: int, name: str = "x") -> np.ndarray:
    x = _as_float32(x, name)
    if x.ndim == 0:
        raise ValueError(f"expected {name} with at least one dimension, got a scalar")
    ax = _axis(x, axis)
    if ax == x.ndim - 1:
        return fn(_c_aligned(x))
    moved = _c_aligned(np.moveaxis(x, ax, -1))
    return _c_aligned(np.moveaxis(fn(moved), -1, ax))


def softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``. A slice that is all -inf (fully masked) gives zeros; a slice
    holding NaN or +inf gives NaN."""
    return _along_axis(_core.softmax, x, axis)


def log_softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax along ``axis`` (x - max - log sum exp). An all -inf slice gives -inf."""
    return _along_axis(_core.log_softmax, x, axis)


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5, *, residual=None) -> np.ndarray:
    """Layer normalisation over the last axis, as ``torch.nn.functional.layer_norm(x, (n,), weight, bias,
    eps)``: biased variance, weight and bias of shape (n,) or None. With ``residual`` (the shape of x) it
    normalises ``x + residual`` in the same pass: the post-LN ``LayerNorm(x + Sublayer(x))``. ``eps`` is a
    number >= 0 (TypeError for other types, ValueError for a negative or NaN eps)."""
    eps = _number(eps, "eps")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return _core.layer_norm(
        _contiguous(x, "x"), _optional(weight, "weight"), _optional(bias, "bias"), eps, _optional(residual, "residual")
    )


def rms_norm(x, weight=None, eps: float = 1e-6, *, residual=None) -> np.ndarray:
    """RMS normalisation over the last axis, as ``torch.nn.functional.rms_norm(x, (n,), weight, eps)``:
    ``x / sqrt(mean(x^2) + eps) * weight``. With ``residual`` (a float32, C-contiguous array the shape of x, the
    pre-norm residual stream) it first adds x into it, in place, and normalises the sum: one pass for a pre-norm
    decoder's "add the sub-layer's output, normalise for the next"."""
    eps = _number(eps, "eps")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return _core.rms_norm(_contiguous(x, "x"), _optional(weight, "weight"), eps, residual)


def rope_tables(num_positions: int, rot: int, base: float = 10000.0, *, inv_freq=None):
    """cos and sin (num_positions, rot // 2) float32 of the rotary angles pos * base^(-2i / rot), computed as
    Hugging Face's Llama does (inverse frequencies and their products with the positions in float32), the cosines
    and sines of those float32 angles rounded once. inv_freq: (rot // 2,) inverse frequencies to use instead of
    base's (a scaled RoPE's), base then unused."""
    if not is_int(rot) or rot < 2 or rot % 2:
        raise ValueError(f"rot must be an even integer >= 2, got {rot!r}")
    if not is_int(num_positions) or num_positions < 1:
        raise ValueError(f"num_positions must be a positive integer, got {num_positions!r}")
    if inv_freq is not None:
        inv = np.asarray(inv_freq, np.float32)
        if inv.shape != (rot // 2,) or not np.all(np.isfinite(inv)):
            raise ValueError(f"inv_freq must be {rot // 2} finite numbers, got shape {inv.shape}")
    else:
        base = _number(base, "base")
        if not 1 < base < math.inf:
            raise ValueError(f"base must be a finite number > 1, got {base}")
        inv = (np.float32(1.0) / np.float32(base) ** (np.arange(0, rot, 2, dtype=np.float32) / np.float32(rot))).astype(
            np.float32
        )
    angles = (np.arange(num_positions, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rotary_embedding(x: np.ndarray, positions, cos: np.ndarray, sin: np.ndarray, *, interleaved: bool = False):
    """Rotary position embedding, in place on x (B, L, H, D) float32 with a contiguous last axis (the heads of a
    (B, L, H * D) projection reshaped: no copy). The first 2 * cos.shape[1] dims of each head rotate by the angles
    of `positions` (B, L) (rows of `cos` / `sin` from `rope_tables`): pairs (i, i + rot / 2), Hugging Face's
    rotate_half, or (2i, 2i + 1) with ``interleaved`` (GGUF's Q/K, the original Llama). Returns x."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array (it is rotated in place), got {type(x).__name__}")
    pos = np.asarray(positions)
    if pos.dtype.kind not in "iu":
        raise TypeError(f"positions must be integers, got {pos.dtype}")
    _core.rope(
        x, _c_aligned(pos, np.int64), _c_aligned(cos, np.float32), _c_aligned(sin, np.float32), bool(interleaved)
    )
    return x


def positions_from_mask(attention_mask) -> np.ndarray:
    """Position ids (B, L) int64 that count real tokens only: for a left-padded batch (attention_mask 1 = token,
    0 = padding) each row's first real token is at position 0, as transformers' generate sets them. Padding
    positions get 0 (their values are never attended)."""
    return np.maximum(np.cumsum(np.asarray(attention_mask) != 0, axis=1, dtype=np.int64) - 1, 0)


def decoder_inputs(shape, past: int, attention_mask=None, position_ids=None):
    """A decoder-only model's call on ids of `shape` (B, L) after `past` cached positions: returns (padding, positions),
    padding (B, past + L) bool (True = padding) or None when nothing is padded, positions (B, L) int64 C-contiguous
    (default past .. past + L - 1, as transformers' forward). attention_mask (B, past + L), 1 = token, 0 = padding;
    position_ids (B, L) integers. Wrong shapes or types raise ValueError."""
    B, L = shape
    pad = None
    if attention_mask is not None:
        am = np.asarray(attention_mask)
        if am.shape != (B, past + L):
            raise ValueError(f"expected attention_mask of shape {(B, past + L)}, got {am.shape}")
        pad = am == 0
        pad = pad if pad.any() else None
    if position_ids is None:
        positions = np.repeat(np.arange(past, past + L, dtype=np.int64)[None], B, 0)
    else:
        positions = np.asarray(position_ids)
        if positions.shape != (B, L) or positions.dtype.kind not in "iu":
            raise ValueError(
                f"expected integer position_ids of shape {(B, L)}, got {positions.shape} {positions.dtype}"
            )
    return pad, np.ascontiguousarray(positions, np.int64)


def swiglu(gate_up) -> np.ndarray:
    """``silu(gate) * up`` for ``gate_up`` (..., 2 F) holding [gate | up] (a SwiGLU feed-forward's two input
    projections computed by one GEMM); returns (..., F)."""
    return _core.swiglu(_contiguous(gate_up, "gate_up"))


def geglu(gate_up) -> np.ndarray:
    """``gelu(gate, approximate="tanh") * up`` for ``gate_up`` (..., 2 F) holding [gate | up] (Gemma's gated
    feed-forward); returns (..., F)."""
    return _core.swiglu(_contiguous(gate_up, "gate_up"), "gelu_tanh")


def gelu(x, approximate: str = "none") -> np.ndarray:
    """GELU: ``approximate='none'`` is x * Phi(x) with erf (torch's default), ``'tanh'`` the tanh form."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _core.activation(_contiguous(x, "x"), "gelu" if approximate == "none" else "gelu_tanh")


def relu(x) -> np.ndarray:
    """max(x, 0)."""
    return _core.activation(_contiguous(x, "x"), "relu")


def silu(x) -> np.ndarray:
    """x * sigmoid(x)."""
    return _core.activation(_contiguous(x, "x"), "silu")


# ----------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------
def _attn_mask_4d(m: Optional[np.ndarray], B: int, H: int, Lq: int, Lk: int, three_d: str) -> Optional[np.ndarray]:
    """Views an attention mask as (B|1, H|1, Lq|1, Lk). `three_d` says what a 3-D mask means:
    'batch' -> (B, Lq, Lk) (scaled_dot_product_attention), 'batch_heads' -> (B * H, Lq, Lk) (torch MHA)."""
    if m is None:
        return None
    _check_nonempty(m, "attn_mask")
    if m.ndim == 2:
        if m.shape != (Lq, Lk):
            raise ValueError(f"expected attn_mask of shape (Lq, Lk) = {(Lq, Lk)}, got {m.shape}")
        return m[None, None]
    if m.ndim == 3:
        if three_d == "batch_heads":
            if m.shape != (B * H, Lq, Lk):
                raise ValueError(
                    f"expected a 3-D attn_mask of shape (B * num_heads, Lq, Lk) = {(B * H, Lq, Lk)}, got {m.shape}"
                )
            return m.reshape(B, H, Lq, Lk)
        if m.shape not in ((B, Lq, Lk), (1, Lq, Lk)):
            raise ValueError(f"expected a 3-D attn_mask of shape (B, Lq, Lk) = {(B, Lq, Lk)}, got {m.shape}")
        return m[:, None]
    if m.ndim == 4:
        ok = all(d == w or d == 1 for d, w in zip(m.shape[:3], (B, H, Lq))) and m.shape[3] == Lk
        if not ok:
            raise ValueError(
                f"expected a 4-D attn_mask of shape (B, H, Lq, Lk) = {(B, H, Lq, Lk)} (1s broadcast), got {m.shape}"
            )
        return m
    raise ValueError(f"expected attn_mask of shape (Lq, Lk), (B, Lq, Lk) or (B, H, Lq, Lk), got {m.shape}")


def _key_padding(m: Optional[np.ndarray], B: int, Lk: int) -> Optional[np.ndarray]:
    if m is None:
        return None
    if m.shape != (B, Lk):
        raise ValueError(f"expected key_padding_mask of shape (B, Lk) = {(B, Lk)}, got {m.shape}")
    return m


def _scale(scale) -> Optional[float]:
    if scale is None:
        return None
    scale = _number(scale, "scale")
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def scaled_dot_product_attention(
    q,
    k,
    v,
    *,
    attn_mask=None,
    key_padding_mask=None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    return_weights: bool = False,
    out: Optional[np.ndarray] = None,
    precision: str = "float32",
):
    """``softmax(q k^T * scale + mask) v``, fused (flash-style): the (Lq, Lk) score matrix is never formed
    unless ``return_weights``.

    q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) with Hkv dividing H: grouped-query attention (query
    head h reads K/V head h // (H // Hkv), in place; torch's ``enable_gqa=True``); Hkv = H is multi-head attention.
    Lq may differ from Lk. ``scale`` defaults to
    1/sqrt(D). ``attn_mask``: (Lq, Lk), (B, Lq, Lk) or (B, H, Lq, Lk); ``key_padding_mask``: (B, Lk). Bool
    masks: True = masked out; float masks are added. ``is_causal``: query i sees keys j <= i (top-left
    aligned, as torch). All of them combine. A query whose keys are all masked gets a zero output (and zero
    weights) instead of NaN. Returns out (B, H, Lq, Dv), or (out, weights (B, H, Lq, Lk)).

    ``precision="bfloat16"`` allows ``q k^T`` and ``p v`` on bfloat16 roundings of q, k, the probabilities and
    v (products exact, sums in float32: about 3 significant digits per element) where the CPU multiplies
    bfloat16 pairs (AVX512_BF16) and the blocked path runs (more than 16 query rows, float32 k and v, no
    weights returned); float32 elsewhere. The softmax stays float32. bfloat16 models use it.
    """
    q = _last_axis_contiguous(q, "q")
    k = _last_axis_contiguous(k, "k")
    v = _last_axis_contiguous(v, "v")
    for t, name, what in ((q, "q", "(B, H, Lq, D)"), (k, "k", "(B, Hkv, Lk, D)"), (v, "v", "(B, Hkv, Lk, Dv)")):
        if t.ndim != 4:
            raise ValueError(f"expected {name} of shape {what}, got {t.shape}")
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    m = _attn_mask_4d(_mask(attn_mask, "attn_mask"), B, H, Lq, Lk, "batch")
    kp = _key_padding(_mask(key_padding_mask, "key_padding_mask"), B, Lk)
    return _core.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=m,
        key_padding_mask=kp,
        is_causal=bool(is_causal),
        scale=_scale(scale),
        return_weights=bool(return_weights),
        out=out,
        precision=precision,
    )


def _heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """(B, L, H * d) -> (B, H, L, d) as a strided view (no copy)."""
    B, L, E = x.shape
    return x.reshape(B, L, num_heads, E // num_heads).transpose(0, 2, 1, 3)


def multi_head_attention(
    query,
    key,
    value,
    *,
    num_heads: int,
    w_q,
    w_k,
    w_v,
    w_o,
    b_q=None,
    b_k=None,
    b_v=None,
    b_o=None,
    attn_mask=None,
    key_padding_mask=None,
    is_causal: bool = False,
    need_weights: bool = False,
    average_attn_weights: bool = True,
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Multi-head attention as ``torch.nn.MultiheadAttention(batch_first=True)`` in eval mode.

    query (B, Lq, E), key (B, Lk, kdim), value (B, Lk, vdim) -- or unbatched (L, E). Self-attention when they
    are the same array, encoder-decoder (cross) attention when key/value come from an encoder. Weights in
    torch's layout: w_q (E, E), w_k (E, kdim), w_v (E, vdim), w_o (E, E); biases (E,) or None. Q, K, V are
    projected, split into ``num_heads`` heads of E / num_heads as strided views, attended with
    :func:`scaled_dot_product_attention` (whose output is written straight into the concatenated layout),
    then projected by w_o.

    Masks as torch's: ``attn_mask`` (Lq, Lk) or (B * num_heads, Lq, Lk) (also accepted: (B, H, Lq, Lk)),
    ``key_padding_mask`` (B, Lk); bool True = masked out, float = added. ``is_causal`` applies the causal mask
    (it need not be passed as attn_mask too). Returns ``(output (B, Lq, E), weights)`` where weights is None
    unless ``need_weights``: (B, Lq, Lk) averaged over heads, or (B, H, Lq, Lk) with
    ``average_attn_weights=False``. Unlike torch, a fully masked query row gives zeros, not NaN.
    """
    if not is_int(num_heads) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    query = _as_float32(query, "query")
    key = query if key is query else _as_float32(key, "key")
    value = key if value is key else _as_float32(value, "value")
    unbatched = query.ndim == 2
    if unbatched:
        if key.ndim != 2 or value.ndim != 2:
            raise ValueError(
                f"unbatched query {query.shape} needs unbatched key and value, got {key.shape}, {value.shape}"
            )
        query, key, value = query[None], key[None], value[None]
        if key_padding_mask is not None:
            key_padding_mask = np.asarray(key_padding_mask)[None]
    for t, name, what in (
        (query, "query", "(B, Lq, E)"),
        (key, "key", "(B, Lk, kdim)"),
        (value, "value", "(B, Lk, vdim)"),
    ):
        if t.ndim != 3:
            raise ValueError(f"expected {name} of shape {what}, got {t.shape}")
        _check_nonempty(t, name)
    B, Lq, E = query.shape
    if key.shape[0] != B or value.shape[0] != B or key.shape[1] != value.shape[1]:
        raise ValueError(
            f"query {query.shape}, key {key.shape} and value {value.shape} must share the batch size, "
            f"and key and value the length"
        )
    if E % num_heads:
        raise ValueError(f"num_heads ({num_heads}) must divide the embedding dimension E ({E})")
    Lk = key.shape[1]
    H = int(num_heads)
    w_q, w_k, w_v, w_o = (_contiguous(w, n) for w, n in ((w_q, "w_q"), (w_k, "w_k"), (w_v, "w_v"), (w_o, "w_o")))
    for w, n, want in (
        (w_q, "w_q", (E, E)),
        (w_k, "w_k", (E, key.shape[2])),
        (w_v, "w_v", (E, value.shape[2])),
        (w_o, "w_o", (E, E)),
    ):
        if w.shape != want:
            raise ValueError(f"expected {n} of shape {want}, got {w.shape}")

    q = _heads(linear(query, w_q, b_q), H)  # (B, H, Lq, d)
    k = _heads(linear(key, w_k, b_k), H)  # (B, H, Lk, d)
    v = _heads(linear(value, w_v, b_v), H)  # (B, H, Lk, d)
    concat = np.empty((B, Lq, H, E // H), dtype=np.float32)  # heads written in place: no concatenation copy
    m = _attn_mask_4d(_mask(attn_mask, "attn_mask"), B, H, Lq, Lk, "batch_heads")
    kp = _key_padding(_mask(key_padding_mask, "key_padding_mask"), B, Lk)
    res = _core.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=m,
        key_padding_mask=kp,
        is_causal=bool(is_causal),
        return_weights=bool(need_weights),
        out=concat.transpose(0, 2, 1, 3),
    )
    out = linear(concat.reshape(B, Lq, E), w_o, b_o)  # (B, Lq, E)
    weights = None
    if need_weights:
        weights = res[1].mean(axis=1) if average_attn_weights else res[1]
        if unbatched:
            weights = weights[0]
    return (out[0] if unbatched else out), weights


# ----------------------------------------------------------------------------------------------------
# Attention score functions (Luong et al. 2015, Bahdanau et al. 2015) and single-head soft / hard attention
# ----------------------------------------------------------------------------------------------------
SCORES = ("dot", "scaled_dot", "cosine", "general", "concat", "additive")
# The weights each score function takes; any other weight passed is a mistake worth an error.
_SCORE_WEIGHTS = {
    "dot": (),
    "scaled_dot": ("scale",),
    "cosine": (),
    "general": ("w",),
    "concat": ("w", "b", "v", "v_bias"),
    "additive": ("w_q", "b_q", "w_k", "b_k", "v", "v_bias"),
}
_KEYS_PROJECTED = {  # what keys_projected stands for, per score function
    "cosine": "k / max(|k|, eps)",
    "general": "k @ w.T",
    "concat": "k @ w[:, Dq:].T",
    "additive": "k @ w_k.T + b_k",
}
COSINE_EPS = 1e-8


def _check_score(score) -> str:
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
    return score


def _check_unused(score: str, given: dict) -> None:
    """ValueError for weights that `score` does not take (a weight meant for another score function)."""
    extra = [n for n, val in given.items() if val is not None and n not in _SCORE_WEIGHTS[score]]
    if extra:
        takes = ", ".join(_SCORE_WEIGHTS[score]) or "no weights"
        raise ValueError(f"score={score!r} takes {takes}; got {', '.join(extra)}")


def _weight(x, name: str, shape: tuple, what: str, score: str) -> np.ndarray:
    """A float32 C-contiguous weight of exactly `shape` (`what` spells it with symbols, e.g. '(H, Dq)')."""
    if x is None:
        raise ValueError(f"score={score!r} needs {name} of shape {what}")
    x = _contiguous(x, name)
    if x.shape != tuple(shape):
        raise ValueError(f"expected {name} of shape {what} = {tuple(shape)}, got {x.shape}")
    return x


def _rows3(x, name: str, what: str, unbatched: bool) -> np.ndarray:
    """(B, L, D) float32 with a contiguous last axis (`what` names the dims, e.g. '(B, Lk, Dk)'); when the
    queries are unbatched, an (L, D) array that gets a batch axis of 1."""
    x = _last_axis_contiguous(x, name)
    if x.ndim != (2 if unbatched else 3):
        want = what.replace("B, ", "") + " (unbatched, like q)" if unbatched else what
        raise ValueError(f"expected {name} of shape {want}, got {x.shape}")
    _check_nonempty(x, name)
    return x[None] if unbatched else x


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """x / max(|x|, eps) over the last axis; the norm is taken in float64 (no overflow of the squares)."""
    norm = np.sqrt(np.einsum("...d,...d->...", x, x, dtype=np.float64))
    return (x / np.maximum(norm, COSINE_EPS)[..., None]).astype(np.float32)


def _check_finite_scores(scores: np.ndarray, inputs: dict) -> np.ndarray:
    """Raises ValueError naming the first non-finite input when `scores` holds NaN or inf."""
    if np.isfinite(scores).all():
        return scores
    for name, x in inputs.items():
        if x is not None and not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values: the attention scores are not defined")
    raise ValueError(
        "the attention scores overflowed float32 (|score| > 3.4e38): check the magnitude of the inputs and weights"
    )


def _score_weights(score: str, Dq: int, Dk: Optional[int], *, w, w_q, b_q, w_k, b_k, v, b, need_keys: bool) -> dict:
    """Checks and converts the weights of `score` for queries of width Dq and keys of width Dk (None: the
    keys come projected). Returns {name: float32 array}."""
    out = {}
    if score == "general":
        if w is None:
            raise ValueError("score='general' needs w of shape (Dq, Dk)")
        w = _contiguous(w, "w")
        if w.ndim != 2 or w.shape[0] != Dq or (Dk is not None and w.shape[1] != Dk):
            raise ValueError(f"expected w of shape (Dq, Dk) = {(Dq, Dk if Dk is not None else 'Dk')}, got {w.shape}")
        out["w"] = w
    elif score == "concat":
        if w is None:
            raise ValueError("score='concat' needs w of shape (H, Dq + Dk)")
        w = _contiguous(w, "w")
        if w.ndim != 2 or w.shape[1] <= Dq or (Dk is not None and w.shape[1] != Dq + Dk):
            want = f"(H, Dq + Dk) = (H, {Dq} + {Dk if Dk is not None else 'Dk'})"
            raise ValueError(f"expected w of shape {want}, got {w.shape}")
        H = w.shape[0]
        out["w"] = w
        out["b"] = None if b is None else _weight(b, "b", (H,), "(H,)", score)
        out["v"] = _weight(v, "v", (H,), "(H,)", score)
    elif score == "additive":
        if w_q is None:
            raise ValueError("score='additive' needs w_q of shape (H, Dq)")
        w_q = _contiguous(w_q, "w_q")
        if w_q.ndim != 2 or w_q.shape[1] != Dq:
            raise ValueError(f"expected w_q of shape (H, Dq) = (H, {Dq}), got {w_q.shape}")
        H = w_q.shape[0]
        out["w_q"] = w_q
        out["b_q"] = None if b_q is None else _weight(b_q, "b_q", (H,), "(H,)", score)
        if need_keys or w_k is not None:
            if w_k is None:
                raise ValueError("score='additive' needs w_k of shape (H, Dk), or keys_projected (B, Lk, H)")
            w_k = _contiguous(w_k, "w_k")
            if w_k.ndim != 2 or w_k.shape[0] != H or (Dk is not None and w_k.shape[1] != Dk):
                raise ValueError(
                    f"expected w_k of shape (H, Dk) = ({H}, {Dk if Dk is not None else 'Dk'}) "
                    f"(H from w_q {w_q.shape}), got {w_k.shape}"
                )
            out["w_k"] = w_k
        out["b_k"] = None if b_k is None else _weight(b_k, "b_k", (H,), "(H,)", score)
        out["v"] = _weight(v, "v", (H,), "(H,)", score)
    return out


def _project_keys(k: np.ndarray, score: str, wts: dict) -> Optional[np.ndarray]:
    """The key side of a score, computed once per source: (B, Lk, width) or None (dot, scaled_dot)."""
    if score == "cosine":
        return _unit_rows(k)
    if score == "general":
        return linear(k, wts["w"])  # row j: w k_j, so that q . (w k_j) = q^T w k_j
    if score == "concat":
        Dq = wts["w"].shape[1] - k.shape[-1]
        return linear(k, wts["w"][:, Dq:])
    if score == "additive":
        return linear(k, wts["w_k"], wts["b_k"])
    return None


def _keys_projected(kp, score: str, B: int, Lk: Optional[int], width: int, unbatched: bool) -> np.ndarray:
    """keys_projected checked against the batch, the keys (when given) and the width the score expects."""
    if score not in _KEYS_PROJECTED:
        raise ValueError(
            f"score={score!r} uses the keys as they are: keys_projected is only for {', '.join(_KEYS_PROJECTED)}"
        )
    kp = _rows3(kp, "keys_projected", "(B, Lk, H)", unbatched)
    if kp.shape[0] != B or (Lk is not None and kp.shape[1] != Lk) or kp.shape[2] != width:
        want = (B, Lk if Lk is not None else "Lk", width)[1 if unbatched else 0 :]
        got = kp.shape[1:] if unbatched else kp.shape
        raise ValueError(
            f"expected keys_projected ({_KEYS_PROJECTED[score]}) of shape "
            f"{'(Lk, H)' if unbatched else '(B, Lk, H)'} = {want}, got {got}"
        )
    return kp


def _v_bias(v_bias) -> float:
    v_bias = 0.0 if v_bias is None else _number(v_bias, "v_bias")
    if not np.isfinite(v_bias):
        raise ValueError(f"v_bias must be finite, got {v_bias}")
    return v_bias


def _scores(q, k, score, *, w, w_q, b_q, w_k, b_k, v, v_bias, b, scale, keys_projected):
    """attention_scores on batched (B, L, D) arrays; returns (scores (B, Lq, Lk), unbatched)."""
    score = _check_score(score)
    v_bias = _v_bias(v_bias)
    _check_unused(
        score,
        {
            "w": w,
            "w_q": w_q,
            "b_q": b_q,
            "w_k": w_k,
            "b_k": b_k,
            "v": v,
            "b": b,
            "scale": scale,
            "v_bias": v_bias or None,
        },
    )
    q = _as_float32(q, "q")
    unbatched = q.ndim == 2
    q = _rows3(q, "q", "(B, Lq, Dq)", unbatched)
    B, Lq, Dq = q.shape
    if k is None and keys_projected is None:
        raise ValueError("k is None: pass the keys, or keys_projected")
    if k is not None:
        k = _rows3(k, "k", "(B, Lk, Dk)", unbatched)
        if k.shape[0] != B:
            raise ValueError(f"q {q.shape} and k {k.shape} must have the same batch size")
    Lk, Dk = (k.shape[1], k.shape[2]) if k is not None else (None, None)
    wts = _score_weights(
        score, Dq, Dk, w=w, w_q=w_q, b_q=b_q, w_k=w_k, b_k=b_k, v=v, b=b, need_keys=keys_projected is None
    )
    if score in ("dot", "scaled_dot") and Dk != Dq:
        raise ValueError(f"score={score!r} needs queries and keys of one width: q {q.shape}, k {k.shape}")
    if score == "cosine" and Dk is not None and Dk != Dq:
        raise ValueError(f"score='cosine' needs queries and keys of one width: q {q.shape}, k {k.shape}")

    if keys_projected is not None:
        # cosine and general: (B, Lk, Dq); concat and additive: (B, Lk, H)
        width = {"concat": lambda: wts["w"].shape[0], "additive": lambda: wts["w_q"].shape[0]}.get(score, lambda: Dq)()
        kp = _keys_projected(keys_projected, score, B, Lk, width, unbatched)
    elif score == "general" and Lq <= Lk:
        kp = None  # (q w) . k: projecting the fewer rows is cheaper
    else:
        kp = _project_keys(k, score, wts)

    inputs = {"q": q, "k": k, "keys_projected": kp if keys_projected is not None else None, **wts}
    if score in ("dot", "scaled_dot"):
        s = matmul(q, k, transpose_b=True)
        if score == "scaled_dot":
            s *= np.float32(1.0 / np.sqrt(Dq) if scale is None else _scale(scale))
    elif score == "cosine":
        s = matmul(_unit_rows(q), kp, transpose_b=True)
    elif score == "general":
        s = matmul(matmul(q, wts["w"]), k, transpose_b=True) if kp is None else matmul(q, kp, transpose_b=True)
    else:
        if score == "concat":
            qp = linear(q, wts["w"][:, :Dq], wts["b"])
        else:
            qp = linear(q, wts["w_q"], wts["b_q"])
        s = _core.additive_scores(qp, kp, wts["v"], v_bias)
    return _check_finite_scores(s, inputs), unbatched


def attention_scores(
    q,
    k,
    *,
    score: str = "dot",
    w=None,
    w_q=None,
    b_q=None,
    w_k=None,
    b_k=None,
    v=None,
    v_bias: float = 0.0,
    b=None,
    scale: Optional[float] = None,
    keys_projected=None,
) -> np.ndarray:
    """Scores of queries q against keys k by one of the classic score functions; (B, Lq, Lk) float32.

    q (B, Lq, Dq) or unbatched (Lq, Dq); k (B, Lk, Dk) or (Lk, Dk), same batch size. ``score``:

    * ``"dot"``        q . k (Luong)                       -- needs Dq == Dk
    * ``"scaled_dot"`` q . k * scale, scale = 1/sqrt(D) by default (Vaswani et al.)
    * ``"cosine"``     q . k / (max(|q|, 1e-8) max(|k|, 1e-8))
    * ``"general"``    q^T w k with w (Dq, Dk) (Luong)
    * ``"concat"``     v^T tanh(w [q; k] + b) + v_bias with w (H, Dq + Dk), b (H,) or None, v (H,) (Luong)
    * ``"additive"``   v^T tanh(w_q q + b_q + w_k k + b_k) + v_bias with w_q (H, Dq), w_k (H, Dk), biases (H,)
      or None, v (H,) (Bahdanau; the PyTorch tutorial's ``Va(tanh(Wa(q) + Ua(k)))`` with Va's bias as v_bias)

    dot, scaled_dot, cosine and general run on the packed GEMM; concat and additive project queries and keys
    with it and reduce ``sum_h v[h] tanh(qp[h] + kp[h])`` in one fused C++ pass (the (B, Lq, Lk, H) tensor
    of tanh arguments is never formed).

    ``keys_projected``: the key side of the score computed once per source, e.g. once per sentence when
    decoding one step at a time (see :func:`project_keys`): ``k @ w_k.T + b_k`` (additive, (B, Lk, H)),
    ``k @ w[:, Dq:].T`` (concat), ``k @ w.T`` (general, (B, Lk, Dq)), the unit-normalised keys (cosine). k
    may then be None; w_k and b_k are not used (and may be omitted).

    Weights of the wrong shape, missing weights and weights the score function does not take are
    ``ValueError``s naming the weight; so are NaN or infinite inputs (the scores would be meaningless).
    """
    s, unbatched = _scores(
        q,
        k,
        score,
        w=w,
        w_q=w_q,
        b_q=b_q,
        w_k=w_k,
        b_k=b_k,
        v=v,
        v_bias=v_bias,
        b=b,
        scale=scale,
        keys_projected=keys_projected,
    )
    return s[0] if unbatched else s


def project_keys(k, *, score: str, w=None, w_k=None, b_k=None) -> Optional[np.ndarray]:
    """The ``keys_projected`` of :func:`attention_scores` / :func:`attention` for keys k (B, Lk, Dk) or
    (Lk, Dk): ``k @ w_k.T + b_k`` (additive), ``k @ w[:, Dq:].T`` (concat: w is (H, Dq + Dk), its last Dk
    columns act on the keys), ``k @ w.T`` (general), ``k / max(|k|, 1e-8)`` (cosine)."""
    score = _check_score(score)
    if score not in _KEYS_PROJECTED:
        raise ValueError(f"score={score!r} uses the keys as they are: nothing to project")
    takes = {"cosine": (), "general": ("w",), "concat": ("w",), "additive": ("w_k", "b_k")}[score]
    extra = [n for n, x in (("w", w), ("w_k", w_k), ("b_k", b_k)) if x is not None and n not in takes]
    if extra:
        raise ValueError(
            f"projecting keys for score={score!r} takes {', '.join(takes) or 'no weights'}; got {', '.join(extra)}"
        )
    k = _as_float32(k, "k")
    unbatched = k.ndim == 2
    k = _rows3(k, "k", "(B, Lk, Dk)", unbatched)
    Dk = k.shape[2]
    wts = {}
    if score == "general":
        if w is None:
            raise ValueError("score='general' needs w of shape (Dq, Dk)")
        wts["w"] = _contiguous(w, "w")
        if wts["w"].ndim != 2 or wts["w"].shape[1] != Dk:
            raise ValueError(f"expected w of shape (Dq, Dk) = (Dq, {Dk}), got {wts['w'].shape}")
    elif score == "concat":
        if w is None:
            raise ValueError("score='concat' needs w of shape (H, Dq + Dk)")
        wts["w"] = _contiguous(w, "w")
        if wts["w"].ndim != 2 or wts["w"].shape[1] <= Dk:
            raise ValueError(f"expected w of shape (H, Dq + Dk) = (H, Dq + {Dk}), got {wts['w'].shape}")
    elif score == "additive":
        if w_k is None:
            raise ValueError("score='additive' needs w_k of shape (H, Dk)")
        wts["w_k"] = _contiguous(w_k, "w_k")
        if wts["w_k"].ndim != 2 or wts["w_k"].shape[1] != Dk:
            raise ValueError(f"expected w_k of shape (H, Dk) = (H, {Dk}), got {wts['w_k'].shape}")
        H = wts["w_k"].shape[0]
        wts["b_k"] = None if b_k is None else _weight(b_k, "b_k", (H,), "(H,)", score)
    kp = _project_keys(k, score, wts)
    return kp[0] if unbatched else kp


def _scores_mask(m, B: int, Lq: int, Lk: int, unbatched: bool) -> Optional[np.ndarray]:
    """mask as (B|1, Lq, Lk) (bool or float32); unbatched inputs take (Lq, Lk)."""
    m = _mask(m, "mask")
    if m is None:
        return None
    _check_nonempty(m, "mask")
    if m.ndim == 2 and m.shape == (Lq, Lk):
        m = m[None]
    elif unbatched or m.ndim != 3 or m.shape not in ((B, Lq, Lk), (1, Lq, Lk)):
        want = f"(Lq, Lk) = {(Lq, Lk)}" + ("" if unbatched else f" or (B, Lq, Lk) = {(B, Lq, Lk)}")
        raise ValueError(f"expected mask of shape {want}, got {m.shape}")
    return m


def _padding_mask(m, B: int, Lk: int, unbatched: bool) -> Optional[np.ndarray]:
    m = _mask(m, "key_padding_mask")
    if m is None:
        return None
    if unbatched and m.shape == (Lk,):
        m = m[None]
    if m.shape != (B, Lk):
        want = f"(Lk,) = ({Lk},)" if unbatched else f"(B, Lk) = {(B, Lk)}"
        raise ValueError(f"expected key_padding_mask of shape {want}, got {m.shape}")
    return m[:, None, :]  # (B, 1, Lk): the same keys hidden from every query


def _apply_mask(s: np.ndarray, m: Optional[np.ndarray], name: str) -> None:
    if m is None:
        return
    if m.dtype == np.bool_:
        np.copyto(s, np.float32(-np.inf), where=m)
        return
    if np.isnan(m).any() or np.isposinf(m).any():
        raise ValueError(f"a float {name} is added to the scores: -inf hides a key, NaN and +inf are refused")
    s += m


def _attend(s: np.ndarray, values: np.ndarray, mask, key_padding_mask, hard: bool):
    """Masked soft (or hard) attention over scores s (B, Lq, Lk), which it overwrites. values (B, Lk, Dv).
    Returns (context (B, Lq, Dv), weights (B, Lq, Lk))."""
    _apply_mask(s, mask, "mask")
    _apply_mask(s, key_padding_mask, "key_padding_mask")
    if not hard:
        weights = _core.softmax(s)  # a row with every key masked: zero weights
        return matmul(weights, values), weights
    best = np.argmax(s, axis=-1)  # (B, Lq); ties: the first key
    seen = np.take_along_axis(s, best[..., None], axis=-1)[..., 0] > -np.inf  # False: every key masked
    weights = np.zeros_like(s)
    np.put_along_axis(weights, best[..., None], 1.0, axis=-1)
    weights *= seen[..., None]
    context = np.take_along_axis(values, best[..., None], axis=1)  # (B, Lq, Dv): the chosen keys' values
    context = _c_aligned(context * seen[..., None], np.float32)
    return context, weights


def _values(v, B: int, Lk: int, unbatched: bool, name: str = "v") -> np.ndarray:
    v = _rows3(v, name, "(B, Lk, Dv)", unbatched)
    if v.shape[:2] != (B, Lk):
        shape = v.shape[1:] if unbatched else v.shape
        want = f"(Lk, Dv) = ({Lk}, Dv)" if unbatched else f"(B, Lk, Dv) = ({B}, {Lk}, Dv)"
        raise ValueError(f"expected {name} of shape {want} to match the keys, got {shape}")
    return v


def attention(
    q,
    k,
    v,
    /,
    *,
    score: str = "scaled_dot",
    mask=None,
    key_padding_mask=None,
    hard: bool = False,
    need_weights: bool = False,
    **score_weights,
):
    """Single-head attention with any score function of :func:`attention_scores`: weights = softmax over the
    keys of the masked scores, context = weights @ v.

    q (B, Lq, Dq), k (B, Lk, Dk), v (B, Lk, Dv) -- or all unbatched (L, D). ``score_weights`` are those of
    :func:`attention_scores` (w, w_q, b_q, w_k, b_k, v, v_bias, b, scale, keys_projected; the additive
    vector ``v=`` does not clash with the values, which are positional). k may be None with keys_projected.

    ``mask`` (Lq, Lk) or (B, Lq, Lk) and ``key_padding_mask`` (B, Lk) as in
    :func:`scaled_dot_product_attention`: bool True = masked out, float = added to the scores. A query whose
    keys are all masked gets zero weights and a zero context. ``hard=True``: the weights are one-hot at the
    highest (masked) score -- ties go to the first key -- and the context is that key's value.

    Returns context (B, Lq, Dv), or (context, weights (B, Lq, Lk)) when ``need_weights``.
    """
    weights = {
        n: score_weights.pop(n, None) for n in ("w", "w_q", "b_q", "w_k", "b_k", "v", "b", "scale", "keys_projected")
    }
    s, unbatched = _scores(q, k, score, v_bias=score_weights.pop("v_bias", 0.0), **weights)
    if score_weights:
        raise TypeError(f"attention() got unexpected keyword arguments: {', '.join(sorted(score_weights))}")
    B, Lq, Lk = s.shape
    values = _values(v, B, Lk, unbatched)
    m = _scores_mask(mask, B, Lq, Lk, unbatched)
    kpm = _padding_mask(key_padding_mask, B, Lk, unbatched)
    context, weights = _attend(s, values, m, kpm, bool(hard))
    if unbatched:
        context, weights = context[0], weights[0]
    return (context, weights) if need_weights else context
