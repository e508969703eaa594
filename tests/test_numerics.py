"""Large scores: softmax, log-softmax, layer norm and attention stay finite (and right) for inputs up to 1e4 in
magnitude, on every kernel set -- the max is subtracted before exp, layer norm works on centred values."""

import numpy as np
import pytest

from pyattn import _core
from pyattn import functional as F

SCALES = [1.0, 1e2, 1e3, 1e4]


def softmax64(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("scale", SCALES)
def test_softmax_family_large_scores(isa, rng, scale):
    x = (rng.standard_normal((9, 300)) * scale).astype(np.float32)
    x[0] = scale  # all equal
    x[1, :] = -scale
    x[1, 7] = scale  # one winner by 2 * scale
    s, ls = F.softmax(x), F.log_softmax(x)
    assert np.isfinite(s).all() and np.isfinite(ls).all()
    np.testing.assert_allclose(s, softmax64(x.astype(np.float64)), atol=1e-6)
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-5)
    x64 = x.astype(np.float64)
    shifted = x64 - x64.max(-1, keepdims=True)
    ref = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))  # log-softmax without forming tiny probabilities
    np.testing.assert_allclose(ls, ref, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("scale", SCALES)
def test_layer_norm_large_inputs(isa, rng, scale):
    x = (rng.standard_normal((5, 384)) * scale + 3 * scale).astype(np.float32)
    y = F.layer_norm(x)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, ref, atol=2e-4)


@pytest.mark.parametrize("scale", SCALES)
def test_attention_large_scores(isa, rng, scale):
    # q . k up to ~1e4 after scaling by 1/sqrt(d)
    d = 16
    q = (rng.standard_normal((2, 3, 9, d)) * np.sqrt(scale)).astype(np.float32)
    k = (rng.standard_normal((2, 3, 40, d)) * np.sqrt(scale)).astype(np.float32)
    v = rng.standard_normal((2, 3, 40, d)).astype(np.float32)
    s = q.astype(np.float64) @ np.swapaxes(k, -1, -2) / np.sqrt(d)
    assert np.abs(s).max() > 0.5 * scale
    ref = softmax64(s) @ v
    for kw in ({}, {"is_causal": True}):
        out = F.scaled_dot_product_attention(q, k, v, **kw)
        assert np.isfinite(out).all()
        if not kw:
            np.testing.assert_allclose(out, ref, atol=2e-3)
    out, w = _core.scaled_dot_product_attention(q, k, v, return_weights=True)
    assert np.isfinite(out).all() and np.isfinite(w).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    qp = (rng.standard_normal((2, 1, 64)) * scale).astype(np.float32)
    kp = (rng.standard_normal((2, 30, 64)) * scale).astype(np.float32)
    sc = _core.additive_scores(qp, kp, np.ones(64, np.float32))
    assert np.isfinite(sc).all() and np.abs(sc).max() <= 64 + 1e-3
