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

Every call releases the GIL while the C++ core computes.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import _core

__all__ = [
    "matmul",
    "linear",
    "softmax",
    "log_softmax",
    "layer_norm",
    "gelu",
    "relu",
    "silu",
    "scaled_dot_product_attention",
    "multi_head_attention",
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


def _contiguous(x, name: str) -> np.ndarray:
    x = _as_float32(x, name)
    if x.ndim == 0:  # np.ascontiguousarray would quietly make it (1,)
        raise ValueError(f"expected {name} with at least one dimension, got a scalar")
    return np.ascontiguousarray(x)


def _last_axis_contiguous(x, name: str) -> np.ndarray:
    x = _as_float32(x, name)
    ok = x.ndim > 0 and (x.strides[-1] == x.itemsize or x.shape[-1] == 1) and all(s >= 0 for s in x.strides)
    return x if ok else np.ascontiguousarray(x)


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
        # the kernels walk a mask row by row: copy a view whose last axis is strided
        if m.ndim and m.shape[-1] > 1 and m.strides[-1] != m.itemsize:
            m = np.ascontiguousarray(m)
        return m
    raise TypeError(
        f"expected {name} to be bool (True = masked out) or float (added to the scores), got {m.dtype}; "
        f"integer masks are ambiguous: pass {name}.astype(bool)"
    )


def _axis(x: np.ndarray, axis: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
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
    return _core.linear(_contiguous(x, "x"), _contiguous(weight, "weight"), _optional(bias, "bias"),
                        activation, out)


# ----------------------------------------------------------------------------------------------------
# Row-wise ops
# ----------------------------------------------------------------------------------------------------
def _along_axis(fn, x, axis: int, name: str = "x") -> np.ndarray:
    x = _as_float32(x, name)
    if x.ndim == 0:
        raise ValueError(f"expected {name} with at least one dimension, got a scalar")
    ax = _axis(x, axis)
    if ax == x.ndim - 1:
        return fn(np.ascontiguousarray(x))
    moved = np.ascontiguousarray(np.moveaxis(x, ax, -1))
    return np.ascontiguousarray(np.moveaxis(fn(moved), -1, ax))


def softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``. A slice that is all -inf (fully masked) gives zeros."""
    return _along_axis(_core.softmax, x, axis)


def log_softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax along ``axis`` (x - max - log sum exp). An all -inf slice gives -inf."""
    return _along_axis(_core.log_softmax, x, axis)


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5, *, residual=None) -> np.ndarray:
    """Layer normalisation over the last axis, as ``torch.nn.functional.layer_norm(x, (n,), weight, bias,
    eps)``: biased variance, weight and bias of shape (n,) or None. With ``residual`` (the shape of x) it
    normalises ``x + residual`` in the same pass: the post-LN ``LayerNorm(x + Sublayer(x))``."""
    return _core.layer_norm(_contiguous(x, "x"), _optional(weight, "weight"), _optional(bias, "bias"), float(eps),
                            _optional(residual, "residual"))


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
                raise ValueError(f"expected a 3-D attn_mask of shape (B * num_heads, Lq, Lk) = {(B * H, Lq, Lk)}, "
                                 f"got {m.shape}")
            return m.reshape(B, H, Lq, Lk)
        if m.shape not in ((B, Lq, Lk), (1, Lq, Lk)):
            raise ValueError(f"expected a 3-D attn_mask of shape (B, Lq, Lk) = {(B, Lq, Lk)}, got {m.shape}")
        return m[:, None]
    if m.ndim == 4:
        ok = all(d == w or d == 1 for d, w in zip(m.shape[:3], (B, H, Lq))) and m.shape[3] == Lk
        if not ok:
            raise ValueError(f"expected a 4-D attn_mask of shape (B, H, Lq, Lk) = {(B, H, Lq, Lk)} (1s broadcast), "
                             f"got {m.shape}")
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
    scale = float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def scaled_dot_product_attention(q, k, v, *, attn_mask=None, key_padding_mask=None, is_causal: bool = False,
                                 scale: Optional[float] = None, return_weights: bool = False,
                                 out: Optional[np.ndarray] = None):
    """``softmax(q k^T * scale + mask) v``, fused (flash-style): the (Lq, Lk) score matrix is never formed
    unless ``return_weights``.

    q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv); Lq may differ from Lk. ``scale`` defaults to
    1/sqrt(D). ``attn_mask``: (Lq, Lk), (B, Lq, Lk) or (B, H, Lq, Lk); ``key_padding_mask``: (B, Lk). Bool
    masks: True = masked out; float masks are added. ``is_causal``: query i sees keys j <= i (top-left
    aligned, as torch). All of them combine. A query whose keys are all masked gets a zero output (and zero
    weights) instead of NaN. Returns out (B, H, Lq, Dv), or (out, weights (B, H, Lq, Lk)).
    """
    q = _last_axis_contiguous(q, "q")
    k = _last_axis_contiguous(k, "k")
    v = _last_axis_contiguous(v, "v")
    for t, name, what in ((q, "q", "(B, H, Lq, D)"), (k, "k", "(B, H, Lk, D)"), (v, "v", "(B, H, Lk, Dv)")):
        if t.ndim != 4:
            raise ValueError(f"expected {name} of shape {what}, got {t.shape}")
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    m = _attn_mask_4d(_mask(attn_mask, "attn_mask"), B, H, Lq, Lk, "batch")
    kp = _key_padding(_mask(key_padding_mask, "key_padding_mask"), B, Lk)
    return _core.scaled_dot_product_attention(q, k, v, attn_mask=m, key_padding_mask=kp, is_causal=bool(is_causal),
                                              scale=_scale(scale), return_weights=bool(return_weights), out=out)


def _heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """(B, L, H * d) -> (B, H, L, d) as a strided view (no copy)."""
    B, L, E = x.shape
    return x.reshape(B, L, num_heads, E // num_heads).transpose(0, 2, 1, 3)


def multi_head_attention(query, key, value, *, num_heads: int, w_q, w_k, w_v, w_o, b_q=None, b_k=None, b_v=None,
                         b_o=None, attn_mask=None, key_padding_mask=None, is_causal: bool = False,
                         need_weights: bool = False,
                         average_attn_weights: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
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
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    query = _as_float32(query, "query")
    key = query if key is query else _as_float32(key, "key")
    value = key if value is key else _as_float32(value, "value")
    unbatched = query.ndim == 2
    if unbatched:
        if key.ndim != 2 or value.ndim != 2:
            raise ValueError(f"unbatched query {query.shape} needs unbatched key and value, got {key.shape}, "
                             f"{value.shape}")
        query, key, value = query[None], key[None], value[None]
        if key_padding_mask is not None:
            key_padding_mask = np.asarray(key_padding_mask)[None]
    for t, name, what in ((query, "query", "(B, Lq, E)"), (key, "key", "(B, Lk, kdim)"),
                          (value, "value", "(B, Lk, vdim)")):
        if t.ndim != 3:
            raise ValueError(f"expected {name} of shape {what}, got {t.shape}")
        _check_nonempty(t, name)
    B, Lq, E = query.shape
    if key.shape[0] != B or value.shape[0] != B or key.shape[1] != value.shape[1]:
        raise ValueError(f"query {query.shape}, key {key.shape} and value {value.shape} must share the batch size, "
                         f"and key and value the length")
    if E % num_heads:
        raise ValueError(f"num_heads ({num_heads}) must divide the embedding dimension E ({E})")
    Lk = key.shape[1]
    H = int(num_heads)
    w_q, w_k, w_v, w_o = (_contiguous(w, n) for w, n in ((w_q, "w_q"), (w_k, "w_k"), (w_v, "w_v"), (w_o, "w_o")))
    for w, n, want in ((w_q, "w_q", (E, E)), (w_k, "w_k", (E, key.shape[2])), (w_v, "w_v", (E, value.shape[2])),
                       (w_o, "w_o", (E, E))):
        if w.shape != want:
            raise ValueError(f"expected {n} of shape {want}, got {w.shape}")

    q = _heads(linear(query, w_q, b_q), H)  # (B, H, Lq, d)
    k = _heads(linear(key, w_k, b_k), H)  # (B, H, Lk, d)
    v = _heads(linear(value, w_v, b_v), H)  # (B, H, Lk, d)
    concat = np.empty((B, Lq, H, E // H), dtype=np.float32)  # heads written in place: no concatenation copy
    m = _attn_mask_4d(_mask(attn_mask, "attn_mask"), B, H, Lq, Lk, "batch_heads")
    kp = _key_padding(_mask(key_padding_mask, "key_padding_mask"), B, Lk)
    res = _core.scaled_dot_product_attention(q, k, v, attn_mask=m, key_padding_mask=kp, is_causal=bool(is_causal),
                                             return_weights=bool(need_weights), out=concat.transpose(0, 2, 1, 3))
    out = linear(concat.reshape(B, Lq, E), w_o, b_o)  # (B, Lq, E)
    weights = None
    if need_weights:
        weights = res[1].mean(axis=1) if average_attn_weights else res[1]
        if unbatched:
            weights = weights[0]
    return (out[0] if unbatched else out), weights
