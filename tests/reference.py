"""float64 numpy references for pyattn's kernels, written from the definitions."""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def f64(x):
    return np.asarray(x, dtype=np.float64)


def matmul(a, b, transpose_b=False):
    b = f64(b)
    return f64(a) @ (np.swapaxes(b, -1, -2) if transpose_b else b)


def linear(x, w, b=None):
    y = f64(x) @ f64(w).T
    return y if b is None else y + f64(b)


def softmax(x, axis=-1):
    x = f64(x)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isneginf(m), 0.0, m)
    e = np.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    # all -inf: zeros; a NaN (or +inf, whose exp(inf - inf) is NaN) anywhere in the slice: NaN throughout
    return np.where(np.isnan(s), np.nan, np.where(s > 0, e / np.where(s > 0, s, 1.0), 0.0))


def log_softmax(x, axis=-1):
    x = f64(x)
    m = np.max(x, axis=axis, keepdims=True)
    finite = ~np.isneginf(m)
    m0 = np.where(finite, m, 0.0)
    with np.errstate(divide="ignore"):
        lse = m0 + np.log(np.exp(x - m0).sum(axis=axis, keepdims=True))
    return np.where(finite, x - lse, -np.inf)


def layer_norm(x, w=None, b=None, eps=1e-5):
    x = f64(x)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * f64(w)
    if b is not None:
        y = y + f64(b)
    return y


def gelu(x, approximate="none"):
    from math import erf, pi, sqrt

    x = f64(x)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(sqrt(2.0 / pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def relu(x):
    return np.maximum(f64(x), 0.0)


def silu(x):
    x = f64(x)
    return x / (1.0 + np.exp(-x))


def attention_bias(B, H, Lq, Lk, attn_mask=None, key_padding_mask=None, is_causal=False, three_d="batch"):
    """Additive (B, H, Lq, Lk) float64 bias: -inf where masked (bool True), float masks added."""
    bias = np.zeros((B, H, Lq, Lk))
    if is_causal:
        bias = bias + np.where(np.tril(np.ones((Lq, Lk), bool)), 0.0, -np.inf)
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            m = m.reshape(B, H, Lq, Lk) if three_d == "batch_heads" else m[:, None]
        bias = bias + (np.where(m, -np.inf, 0.0) if m.dtype == bool else f64(m))
    if key_padding_mask is not None:
        kp = np.asarray(key_padding_mask)[:, None, None, :]
        bias = bias + (np.where(kp, -np.inf, 0.0) if kp.dtype == bool else f64(kp))
    return bias


def sdpa(q, k, v, attn_mask=None, key_padding_mask=None, is_causal=False, scale=None, three_d="batch", softcap=None):
    """Returns (out, weights) in float64; a fully masked query row gives zeros in both. softcap: the scaled scores
    become softcap tanh(s / softcap) before the masks (Gemma 2)."""
    q, k, v = f64(q), f64(k), f64(v)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    with np.errstate(invalid="ignore"):
        s = q @ np.swapaxes(k, -1, -2) * scale
        if softcap:
            s = softcap * np.tanh(s / softcap)
        # bool masks and the causal mask replace a hidden score by -inf (whatever it was, NaN included, as torch's
        # masked_fill); float masks are added
        floats = [m if m is not None and np.asarray(m).dtype != bool else None for m in (attn_mask, key_padding_mask)]
        bools = [m if m is not None and np.asarray(m).dtype == bool else None for m in (attn_mask, key_padding_mask)]
        s = s + attention_bias(B, H, Lq, Lk, floats[0], floats[1], False, three_d)
        hidden = np.isneginf(attention_bias(B, H, Lq, Lk, bools[0], bools[1], is_causal, three_d))
        s = np.where(hidden, -np.inf, s)
    p = softmax(s)
    return p @ v, p
