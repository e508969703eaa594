"""Property tests on random shapes (hypothesis)."""

import numpy as np
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from pyattn import functional as F

dims = st.integers(1, 70)


@settings(max_examples=40, deadline=None)
@given(M=dims, K=dims, N=dims, batch=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_matmul_matches_float64(M, K, N, batch, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    got = F.matmul(a, b)
    want = ref.matmul(a, b)
    mag = ref.matmul(np.abs(a), np.abs(b))
    assert np.all(np.abs(got - want) <= 8 * np.sqrt(K) * ref.EPS32 * mag + 1e-30)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 5),
    n=st.integers(1, 300),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    seed=st.integers(0, 2**31),
)
def test_softmax_rows_are_distributions(rows, n, scale, seed):
    x = (np.random.default_rng(seed).standard_normal((rows, n)) * scale).astype(np.float32)
    y = F.softmax(x)
    assert np.all(y >= 0) and np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(y, ref.softmax(x), atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 3),
    Lq=st.integers(1, 60),
    Lk=st.integers(1, 80),
    D=st.sampled_from([1, 3, 8, 16, 33, 64]),
    causal=st.booleans(),
    p_mask=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
    seed=st.integers(0, 2**31),
)
def test_attention_matches_reference(B, H, Lq, Lk, D, causal, p_mask, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D)))
    kp = rng.random((B, Lk)) < p_mask
    am = rng.random((Lq, Lk)) < p_mask / 2
    want, _ = ref.sdpa(q, k, v, attn_mask=am, key_padding_mask=kp, is_causal=causal)
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=am, key_padding_mask=kp, is_causal=causal)
    assert not np.any(np.isnan(got))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
