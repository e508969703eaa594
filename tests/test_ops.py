"""softmax, log_softmax, layer_norm and activations against float64 references on every ISA path."""

import numpy as np
import pytest
import reference as ref
from conftest import randn

from pyattn import functional as F

LENGTHS = [1, 3, 7, 17, 63, 65, 127, 129, 513, 1000]


@pytest.mark.parametrize("n", LENGTHS)
def test_softmax_and_log_softmax(isa, rng, n):
    x = randn(rng, 5, n, scale=3.0)
    np.testing.assert_allclose(F.softmax(x), ref.softmax(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(F.log_softmax(x), ref.log_softmax(x), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_softmax_axis(rng, axis):
    x = randn(rng, 4, 7, 9)
    np.testing.assert_allclose(F.softmax(x, axis=axis), ref.softmax(x, axis=axis), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(F.log_softmax(x, axis=axis), ref.log_softmax(x, axis=axis), rtol=1e-5, atol=2e-5)


def test_softmax_large_magnitudes_do_not_overflow(isa):
    x = np.array([[1e30, -1e30, 0.0, 1e30], [-1e30, -1e30, -1e30, -3e30], [88.0, 89.0, 100.0, -100.0]], np.float32)
    y = F.softmax(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, ref.softmax(x), atol=1e-6)
    ls = F.log_softmax(x)
    assert not np.any(np.isnan(ls))
    np.testing.assert_allclose(ls[2], ref.log_softmax(x)[2], rtol=1e-5, atol=1e-5)


def test_all_masked_rows(isa):
    x = np.full((3, 17), -np.inf, np.float32)
    x[1, 4] = 2.0
    y = F.softmax(x)
    assert not np.any(np.isnan(y))
    np.testing.assert_array_equal(y[0], 0.0)
    np.testing.assert_allclose(y[1], np.eye(17)[4], atol=0)
    ls = F.log_softmax(x)
    assert np.all(np.isneginf(ls[0]))
    assert ls[1, 4] == 0.0


@pytest.mark.parametrize("n", LENGTHS)
def test_layer_norm(isa, rng, n):
    x, w, b = randn(rng, 6, n, scale=2.0), randn(rng, n), randn(rng, n)
    np.testing.assert_allclose(F.layer_norm(x, w, b), ref.layer_norm(x, w, b), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(F.layer_norm(x), ref.layer_norm(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        F.layer_norm(x, w, None, eps=1e-3), ref.layer_norm(x, w, None, 1e-3), rtol=1e-4, atol=1e-4
    )


def test_layer_norm_large_offset_keeps_the_variance(isa, rng):
    # Mean 1e4, spread 1e-1: a one-pass E[x^2] - E[x]^2 in float32 would lose the variance entirely.
    x = (1e4 + 0.1 * rng.standard_normal((4, 384))).astype(np.float32)
    got = F.layer_norm(x)
    want = ref.layer_norm(x)
    assert np.abs(got - want).max() < 5e-3
    np.testing.assert_allclose(got.std(-1), 1.0, rtol=1e-2)


@pytest.mark.parametrize("n", LENGTHS)
def test_activations(isa, rng, n):
    x = randn(rng, 3, n, scale=4.0)
    x[0, 0] = -30.0  # tails: GELU and SiLU must go to 0 without NaN
    np.testing.assert_allclose(F.relu(x), ref.relu(x), atol=0)
    np.testing.assert_allclose(F.gelu(x), ref.gelu(x), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(F.gelu(x, approximate="tanh"), ref.gelu(x, "tanh"), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(F.silu(x), ref.silu(x), rtol=1e-5, atol=2e-6)


def test_activations_extremes(isa):
    x = np.array([-1e30, -100.0, -10.0, 0.0, 10.0, 100.0, 1e30], np.float32)
    for y in (F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x), F.relu(x)):
        assert np.all(np.isfinite(y))
    np.testing.assert_allclose(F.gelu(x)[4:], x[4:], rtol=1e-6)
    np.testing.assert_allclose(F.silu(x)[4:], x[4:], rtol=1e-4)


def test_multithreaded_rows_equal_single(rng, restore_threads):
    import pyattn

    x = randn(rng, 300, 513)
    outs = []
    for n in (1, 2):
        pyattn.set_num_threads(n)
        outs.append((F.softmax(x), F.log_softmax(x), F.layer_norm(x), F.gelu(x)))
    for one, two in zip(*outs):
        np.testing.assert_array_equal(one, two)


def test_layer_norm_with_residual(isa, rng):
    x, r, w, b = randn(rng, 7, 129), randn(rng, 7, 129), randn(rng, 129), randn(rng, 129)
    np.testing.assert_allclose(
        F.layer_norm(x, w, b, residual=r), ref.layer_norm(x.astype(np.float64) + r, w, b), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="residual"):
        F.layer_norm(x, w, b, residual=r[:, :5])


def test_silu_far_negative_is_zero_on_every_isa(isa):
    # Found by the test helper: the vector exp saturates at exp(88), so x / (1 + exp(-x)) stayed at -1.25
    # for x = -3e38 instead of -0.
    x = np.array([-3e38, -1e36, -1e30, -100.0, -20.0], np.float32)
    y = F.silu(x)
    np.testing.assert_allclose(y, ref.silu(x), atol=1e-30)
    assert np.all(y <= 0) and np.abs(y[:3]).max() == 0.0


def topk_reference(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, largest first, ties by lower index, NaN after every number."""
    rows = x.reshape(-1, x.shape[-1])
    out = [sorted(range(r.size), key=lambda j: (np.isnan(r[j]), 0.0 if np.isnan(r[j]) else -r[j], j))[:k] for r in rows]
    return np.array(out, np.int64).reshape(x.shape[:-1] + (k,))


@pytest.mark.parametrize("k", [0, 1, 5, 37])
def test_topk_against_a_sort(rng, k):
    from pyattn import _core

    x = rng.standard_normal((2, 3, 37)).astype(np.float32)
    x[0, 0] = np.round(x[0, 0])  # ties
    x[0, 1, ::3] = -np.inf
    x[0, 2, [4, 9, 30]] = np.nan
    x[1, 0] = np.nan  # nothing but NaN
    x[1, 1, :] = 2.0  # one value throughout
    x[1, 2, 20:] = np.inf
    values, indices = _core.topk(x, k)
    want = topk_reference(x, k)
    np.testing.assert_array_equal(indices, want)
    np.testing.assert_array_equal(values, np.take_along_axis(x, want, -1))
    assert values.dtype == np.float32 and indices.dtype == np.int64 and indices.shape == (2, 3, k)


def test_topk_large_rows_and_bad_input(rng):
    from pyattn import _core

    x = rng.standard_normal((5, 51864)).astype(np.float32)
    np.testing.assert_array_equal(_core.topk(x, 10)[1], np.argsort(-x, axis=1, kind="stable")[:, :10])
    with pytest.raises(ValueError, match=r"k must be in \[0, 51864\], got 51865"):
        _core.topk(x, 51865)
    with pytest.raises(ValueError, match="k must be in"):
        _core.topk(x, -1)
    with pytest.raises(TypeError, match="float32"):
        _core.topk(x.astype(np.float64), 3)
    with pytest.raises(ValueError, match="contiguous"):
        _core.topk(x[:, ::2], 3)
    with pytest.raises(ValueError):
        _core.topk(np.zeros((2, 0), np.float32), 0)


def test_to_float16_rounds_as_numpy_on_every_isa(isa, rng):
    """to_float16 (a float16 KV cache's writes) gives numpy's cast bit for bit: nearest even, 65520 and up to inf,
    subnormals, NaN; strided views in and out; lengths off the vector width."""
    from pyattn import _core

    edges = [65504, 65519.99, 65520, -65520, 3e38, np.inf, -np.inf, np.nan, 0.0, -0.0, 2**-24, 2**-25, 3 * 2**-26, 1e-8]
    x = np.concatenate([rng.standard_normal(997).astype(np.float32) * s for s in (1e-6, 1.0, 3e4)] + [edges])
    x = x.astype(np.float32)
    out = np.empty_like(x, np.float16)
    _core.to_float16(x, out)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    np.testing.assert_array_equal(out.view(np.uint16), want.view(np.uint16))

    heads = rng.standard_normal((2, 5, 3 * 4 * 7)).astype(np.float32)[..., 4 * 7 :].reshape(2, 5, 2, 4, 7)
    src = heads[:, :, 0].transpose(0, 2, 1, 3)  # (2, 4, 5, 7): heads split out of a projection, strided
    cache = np.zeros((2, 4, 9, 7), np.float16)
    _core.to_float16(src, cache[:, :, 2:7])
    np.testing.assert_array_equal(cache[:, :, 2:7], src.astype(np.float16))
    assert not cache[:, :, :2].any() and not cache[:, :, 7:].any()


def test_to_float16_bad_input():
    from pyattn import _core

    x = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="float16"):
        _core.to_float16(x, np.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        _core.to_float16(x.astype(np.float64), np.empty((3, 4), np.float16))
    with pytest.raises(ValueError, match=r"shape of src \(3, 4\)"):
        _core.to_float16(x, np.empty((4, 3), np.float16))
    with pytest.raises(ValueError, match="contiguous last axis"):
        _core.to_float16(np.ones((3, 8), np.float32)[:, ::2], np.empty((3, 4), np.float16))
    ro = np.empty((3, 4), np.float16)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _core.to_float16(x, ro)
    _core.to_float16(np.ones((0, 4), np.float32), np.empty((0, 4), np.float16))  # nothing to write
