"""matmul / linear / PackedLinear against float64 numpy, on every ISA path, shapes off the register tile."""

import numpy as np
import pytest
import reference as ref
from conftest import randn

import pyattn
from pyattn import functional as F

SIZES = [1, 3, 7, 17, 63, 65, 127, 129, 513, 1000]


def assert_gemm_close(got, a, b, transpose_b=False, bias=None):
    """Error bound of a length-K float32 dot product: a few sqrt(K) eps times sum |a_k b_k| per entry."""
    want = ref.matmul(a, b, transpose_b)
    mag = ref.matmul(np.abs(a), np.abs(b), transpose_b)
    if bias is not None:
        want = want + bias
        mag = mag + np.abs(bias)
    K = a.shape[-1]
    tol = 8 * np.sqrt(K) * ref.EPS32 * mag + 1e-30
    assert got.dtype == np.float32
    assert got.shape == want.shape
    err = np.abs(got - want)
    assert np.all(err <= tol), f"max err {err.max():.3g}, max allowed {tol.flat[np.argmax(err - tol)]:.3g}"


# (M, K, N): every size in SIZES appears in each role, without the product of all three.
SHAPES = sorted(
    {(m, 65, 33) for m in SIZES}
    | {(17, k, 63) for k in SIZES}
    | {(63, 129, n) for n in SIZES}
    | {(1, 1, 1), (1000, 513, 65), (129, 1000, 127), (513, 63, 1000), (2, 384, 1536)}
)


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_matmul_and_linear_all_isas(isa, rng, M, K, N):
    a, b = randn(rng, M, K), randn(rng, K, N)
    assert_gemm_close(F.matmul(a, b), a, b)
    bt = np.ascontiguousarray(b.T)
    assert_gemm_close(F.matmul(a, bt, transpose_b=True), a, bt, transpose_b=True)
    bias = randn(rng, N)
    assert_gemm_close(F.linear(a, bt, bias), a, bt, transpose_b=True, bias=bias)
    assert_gemm_close(pyattn.PackedLinear(bt, bias)(a), a, bt, transpose_b=True, bias=bias)
    assert_gemm_close(pyattn.PackedLinear(bt)(a), a, bt, transpose_b=True)


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15])
@pytest.mark.parametrize("K,N", [(384, 1536), (65, 1000), (7, 3)])
def test_small_m_decode_path(isa, rng, M, K, N):
    a, w = randn(rng, M, K), randn(rng, N, K)
    assert_gemm_close(F.linear(a, w), a, w, transpose_b=True)
    assert_gemm_close(pyattn.PackedLinear(w)(a), a, w, transpose_b=True)
    b = np.ascontiguousarray(w.T)
    assert_gemm_close(F.matmul(a, b), a, b)


def test_prepacked_gemv_wider_than_one_nc_block(rng):
    # N spans several NC column blocks of the packed layout and ends on a partial panel.
    nc = pyattn.cpu_info()["gemm_blocking"]["nc"]
    K, N = 40, 2 * nc + 45
    w = randn(rng, N, K)
    pl = pyattn.PackedLinear(w)
    for M in (1, 5, 30):
        a = randn(rng, M, K)
        assert_gemm_close(pl(a), a, w, transpose_b=True)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
def test_fused_activation(isa, rng, activation):
    x, w, bias = randn(rng, 37, 65), randn(rng, 129, 65, scale=0.2), randn(rng, 129)
    pre = ref.linear(x, w, bias)
    want = {"relu": ref.relu, "gelu": ref.gelu, "gelu_tanh": lambda t: ref.gelu(t, "tanh"), "silu": ref.silu}[
        activation
    ](pre)
    for got in (
        F.linear(x, w, bias, activation=activation),
        pyattn.PackedLinear(w, bias)(x, activation=activation),
        pyattn.PackedLinear(w, bias)(x[:3], activation=activation),
    ):
        np.testing.assert_allclose(got, want[: len(got)], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((2, 3, 17, 65), (3, 65, 33)),
        ((17, 65), (4, 65, 33)),
        ((4, 1, 9, 7), (1, 5, 7, 11)),
        ((2, 5, 13, 8), (8, 6)),
        ((6, 1, 3), (6, 3, 129)),
    ],
)
def test_batched_broadcasting(isa, rng, a_shape, b_shape):
    a, b = randn(rng, *a_shape), randn(rng, *b_shape)
    got = F.matmul(a, b)
    assert got.shape == np.matmul(a, b).shape
    assert_gemm_close(got, a, b)


def test_batched_transpose_b(rng):
    a, b = randn(rng, 3, 4, 17, 64), randn(rng, 3, 4, 33, 64)
    assert_gemm_close(F.matmul(a, b, transpose_b=True), a, b, transpose_b=True)


def test_strided_inputs(rng):
    base = randn(rng, 70, 130)
    a = base[::2, 1:66]  # row stride 260, not contiguous
    b = randn(rng, 65, 40)[:, ::2]  # last axis not contiguous: converted by functional
    assert_gemm_close(F.matmul(a, b), a, b)
    x = randn(rng, 2, 8, 33, 64).transpose(0, 2, 1, 3)  # batch strides of a head view
    w = randn(rng, 64, 20)
    assert_gemm_close(F.matmul(x, w), x, w)


def test_out_argument(rng):
    a, b = randn(rng, 33, 17), randn(rng, 17, 9)
    out = np.full((33, 9), np.nan, np.float32)
    res = F.matmul(a, b, out=out)
    assert res is out or np.shares_memory(res, out)
    assert_gemm_close(out, a, b)
    w = randn(rng, 9, 17)
    out2 = np.full((33, 9), np.nan, np.float32)
    pyattn.PackedLinear(w)(a, out=out2)
    assert_gemm_close(out2, a, w, transpose_b=True)


@pytest.mark.parametrize("M,K,N", [(1, 384, 1536), (5, 64, 300), (200, 300, 500), (1000, 129, 127)])
def test_threads_agree(rng, restore_threads, M, K, N):
    a, w = randn(rng, M, K), randn(rng, N, K)
    pl = pyattn.PackedLinear(w)
    outs = []
    for n in (1, 2):
        pyattn.set_num_threads(n)
        outs.append((F.linear(a, w), pl(a), F.matmul(a, np.ascontiguousarray(w.T))))
    for one, two in zip(*outs):
        assert_gemm_close(one, a, w, transpose_b=True)
        # Same blocking, same order of accumulation per element: threads only split the work.
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("other", [i for i in pyattn._core.available_isas() if i != "scalar"])
def test_isa_matches_scalar(rng, other):
    a, w = randn(rng, 130, 257), randn(rng, 67, 257)
    before = pyattn.get_isa()
    try:
        pyattn.set_isa("scalar")
        s = F.linear(a, w)
        pyattn.set_isa(other)
        v = F.linear(a, w)
    finally:
        pyattn.set_isa(before)
    assert_gemm_close(s, a, w, transpose_b=True)
    assert_gemm_close(v, a, w, transpose_b=True)
    assert np.abs(s - v).max() <= 1e-4 * np.abs(s).max()


def test_packed_linear_keeps_its_isa(rng):
    w, x = randn(rng, 50, 40), randn(rng, 20, 40)
    before = pyattn.get_isa()
    try:
        pl = pyattn.PackedLinear(w)
        packed_for = pl.isa
        assert packed_for == before
        pyattn.set_isa("scalar")
        assert_gemm_close(pl(x), x, w, transpose_b=True)  # still uses its own layout and kernels
    finally:
        pyattn.set_isa(before)
    assert pl.in_features == 40 and pl.out_features == 50 and not pl.has_bias and pl.nbytes >= 50 * 40 * 4


@pytest.mark.parametrize("N,K", [(1, 1), (33, 7), (129, 513), (4096 + 45, 20), (70, 1100)])
def test_packed_weight_unpacks_exactly(isa, rng, N, K):
    w, b = randn(rng, N, K), randn(rng, N)
    pl = pyattn.PackedLinear(w, b)
    np.testing.assert_array_equal(pl.weight(), w)
    np.testing.assert_array_equal(pl.bias, b)
    lin = pyattn.nn.Linear(w, b)  # keeps only the packed copy
    assert lin.shape == (N, K) and lin.in_features == K and lin.out_features == N
    names = dict(lin.named_weights("fc."))
    np.testing.assert_array_equal(names["fc.weight"], w)
    np.testing.assert_array_equal(names["fc.bias"], b)


# ---- half-float weight storage ----------------------------------------------------------------------------

HALF_SHAPES = [
    (1, 384, 1152),
    (3, 65, 33),
    (8, 129, 63),
    (9, 63, 1000),
    (13, 384, 1536),
    (14, 1000, 65),
    (20, 513, 127),
    (300, 129, 513),
    (1, 1, 1),
    (2, 1536, 384),
]


@pytest.mark.parametrize("M,K,N", HALF_SHAPES)
def test_half_storage_all_isas(isa, rng, M, K, N):
    """float16-held weights compute exactly as float32 weights holding the same (rounded) values, on the small-M,
    tall and blocked paths of every ISA."""
    w32 = randn(rng, N, K)
    w16 = w32.astype(np.float16)
    x, bias = randn(rng, M, K), randn(rng, N)
    for pl in (pyattn.PackedLinear(w16, bias), pyattn.PackedLinear(w32, bias, storage="float16")):
        assert pl.storage == "float16" and pl.isa == isa
        assert pl.nbytes - 4 * N == (pyattn.PackedLinear(w32, bias).nbytes - 4 * N) // 2  # same panels, 2-byte
        assert_gemm_close(pl(x), x, w16.astype(np.float32), transpose_b=True, bias=bias)
    assert_gemm_close(pyattn.PackedLinear(w16, storage="float32")(x), x, w16.astype(np.float32), transpose_b=True)


def test_half_rounding_matches_numpy(rng):
    """Packing float32 weights into halves rounds as numpy does: nearest even, subnormals, overflow to inf."""
    special = np.array(
        [
            0.0,
            -0.0,
            1.0,
            65504.0,
            65519.0,
            65520.0,
            1e6,
            2.0**-24,
            2.0**-25,
            3 * 2.0**-26,
            2.0**-14,
            2.0**-15 * 1.5,
            1 + 2.0**-11,
            1 + 3 * 2.0**-11,
            5.96e-8,
            6.1e-5,
            np.float32(np.pi),
        ],
        np.float32,
    )
    vals = np.concatenate([special, -special, randn(rng, 1000) * 10.0 ** rng.integers(-9, 6, 1000)]).astype(np.float32)
    K = 8
    w = np.resize(vals, (len(vals) // K + 1) * K).reshape(-1, K).astype(np.float32)
    with np.errstate(over="ignore"):
        want = w.astype(np.float16).astype(np.float32)
    got = pyattn.PackedLinear(w, storage="float16").weight()
    np.testing.assert_array_equal(got, want)


def test_half_weights_round_trip_exactly(rng):
    w16 = (randn(rng, 70, 45) * 3).astype(np.float16)
    w16[0, :4] = [6e-8, -6e-8, 65504, 2**-14]  # subnormal, max, smallest normal
    np.testing.assert_array_equal(pyattn.PackedLinear(w16).weight(), w16.astype(np.float32))


def test_linear_storage_switch(rng):
    from pyattn.nn import Linear

    w = randn(rng, 40, 24)
    lin = Linear(w, randn(rng, 40))
    x = randn(rng, 5, 24)
    y32 = lin(x)
    lin.set_storage("float16")
    assert lin.storage == "float16"
    w16 = w.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(lin(x), x @ w16.T + lin.bias, rtol=1e-5, atol=1e-5)
    assert not np.allclose(y32, lin(x), rtol=0, atol=0)  # the rounding happened
    # the original values are gone: back to float32 (or on to another type) would silently keep the rounding
    with pytest.raises(ValueError, match="load the model again"):
        lin.set_storage("float32")
    lin.set_storage("float16")  # the type it has: a no-op
    with pytest.raises(ValueError, match="storage"):
        lin.set_storage("int4")
    with pytest.raises(ValueError, match="storage"):
        pyattn.PackedLinear(w, storage="bf16")
    # weights that are halves are held exactly: float16 -> float32 -> int8 stays possible
    exact = Linear(w16, None)
    exact.set_storage("float16")
    exact.set_storage("float32")
    exact.set_storage("int8")
    assert exact.storage == "int8"


# ---- int8 weights quantized elsewhere (Linear.from_int8) ---------------------------------------------------


def int8_reference(x, q, scales, bias=None):
    """float64 result of the int8 GEMM on q (N, K) int8 with scales (N,) or (N, ceil(K / 32)), and the sum of the
    magnitudes of its terms: the activations quantized per block of 32 by Int8Kernels::quantize's rule (scale
    max|block| / 127, q = rint(x * 127 / max|block|)), each block's exact integer sum times the product of the two
    scales (rounded to float32, as the kernels do)."""
    M, K = x.shape
    N, nb = q.shape[0], -(-K // 32)
    xb = np.zeros((M, nb * 32), np.float32)
    xb[:, :K] = x
    xb = xb.reshape(M, nb, 32)
    qb = np.zeros((N, nb * 32))
    qb[:, :K] = q
    amax = np.abs(xb).max(-1)
    tiny = amax < np.float32(2.0**-100)
    inv = np.float32(127) / np.where(tiny, np.float32(1), amax)
    qa = np.where(tiny[..., None], 0, np.rint(np.clip(xb * inv[..., None], -127, 127)))
    sa = np.where(tiny, np.float32(0), amax / np.float32(127))
    sw = np.broadcast_to(np.asarray(scales, np.float32).reshape(N, -1), (N, nb))
    terms = np.einsum("mbk,nbk->mnb", qa, qb.reshape(N, nb, 32)) * (sa[:, None, :] * sw[None, :, :])
    want, mag = terms.sum(-1), np.abs(terms).sum(-1)
    if bias is not None:
        want, mag = want + bias, mag + np.abs(bias)
    return want, mag


@pytest.mark.parametrize("N,K", [(1, 1), (33, 40), (70, 96), (129, 513)])
@pytest.mark.parametrize("per_block", [False, True], ids=["per-row", "per-block"])
def test_linear_from_int8(isa, rng, N, K, per_block):
    """A weight quantized elsewhere is held as given: `weight` is q * scale, and the GEMM multiplies the integers
    given (-128 included) by the scales given, on every kernel set."""
    from pyattn.nn import Linear

    nb = -(-K // 32)
    q = rng.integers(-128, 128, (N, K)).astype(np.int8)
    scales = (rng.random((N, nb) if per_block else N) * 0.01 + 1e-4).astype(np.float32)
    bias = randn(rng, N)
    lin = Linear.from_int8(q, scales, bias, name="fc")
    assert lin.storage == "int8" and lin.shape == (N, K)
    per_value = np.repeat(scales, 32, axis=1)[:, :K] if per_block else scales[:, None]
    np.testing.assert_array_equal(lin.weight, q.astype(np.float32) * per_value)
    np.testing.assert_array_equal(lin.bias, bias)
    for M in (1, 17):
        x = randn(rng, M, K)
        want, mag = int8_reference(x, q, scales, bias)
        err = np.abs(lin(x) - want)
        assert np.all(err <= 1e-5 * mag + 1e-30), err.max()


def test_linear_from_int8_keeps_its_type_and_refuses_bad_input(rng):
    from pyattn.nn import Linear, Module

    q = rng.integers(-127, 128, (8, 40)).astype(np.int8)
    s = np.full(8, 0.01, np.float32)
    lin = Linear.from_int8(q, s, name="fc")
    lin.set_storage("int8")  # the type it has: a no-op
    for other in ("float32", "float16", "bfloat16"):  # its float values are unknown: no other type derives from it
        with pytest.raises(ValueError, match="fc: .*load the model again"):
            lin.set_storage(other)

    class Holder(Module):
        def __init__(self):
            self.fc = lin

    with pytest.raises(ValueError, match="load the model again"):
        Holder().set_weight_storage("float16")
    assert lin.storage == "int8"
    Linear.from_int8(q, s.astype(np.float64))  # float64 scales: converted
    bad = [
        (TypeError, "int8", dict(q=q.astype(np.int16))),
        (TypeError, "int8", dict(q=q.astype(np.float32))),
        (TypeError, "scales", dict(scales=np.ones(8, np.int32))),
        (ValueError, "2-D", dict(q=q[0])),
        (ValueError, "2-D", dict(q=q[:, :0])),
        (ValueError, r"scales of shape \(8,\) or \(8, 2\)", dict(scales=np.ones(9, np.float32))),
        (ValueError, r"scales of shape \(8,\) or \(8, 2\)", dict(scales=np.ones((8, 3), np.float32))),
        (ValueError, "NaN or infinite", dict(scales=np.array([np.nan] + [1] * 7, np.float32))),
        (ValueError, "NaN or infinite", dict(scales=np.array([np.inf] + [1] * 7, np.float32))),
        (ValueError, "bias", dict(bias=np.zeros(7, np.float32))),
    ]
    for error, fragment, change in bad:
        args = dict(q=q, scales=s, bias=None, name="fc")
        args.update(change)
        with pytest.raises(error, match=fragment):
            Linear.from_int8(**args)
