"""Weight types (float16, bfloat16, int8) of PackedLinear / Linear on every kernel set this CPU can run.

The exact quantity each type computes is modelled in numpy here (`bf16`, `int8_model`): float16 against float64
with the weights rounded, bfloat16 against float64 with weights and activations rounded, int8 bit for bit (blocks
of 32 along K with their own scales; exact int32 sums; the scaled block sums accumulated with one fma each).
"""

import numpy as np
import pytest

import pyattn
from pyattn import _core
from pyattn.nn import Linear
from pyattn.precision import auto_dtype, resolve_compute_type, resolve_dtype

# Every kernel set this CPU can run, and the test-only ones it can (_core.test_isas: the avx_vnni set's kernels in
# EVEX encodings on AVX512-VNNI CPUs, the amx set's tile loops on software tiles on AVX512_BF16 ones), so that their
# int8, bfloat16 and block kernels are tested where the sets themselves cannot run.
ISAS = pyattn.cpu_info()["available_isas"] + _core.test_isas()
SHAPES = [(1, 1, 1), (1, 7, 5), (2, 31, 17), (3, 32, 16), (5, 33, 33), (8, 64, 100), (13, 100, 48), (37, 385, 97)]


pytestmark = pytest.mark.usefixtures("restore_isa")  # (conftest.py)


def bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as float32; NaN stays NaN."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32)
    r = ((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)).view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), r)


def quantize_blocks(a: np.ndarray):
    """Int8Kernels::quantize in numpy: (rows, nb, 32) int64 values and (rows, nb) float32 scales."""
    a = np.asarray(a, np.float32)
    rows, k = a.shape
    nb = -(-k // 32)
    padded = np.zeros((rows, nb * 32), np.float32)
    padded[:, :k] = a
    blocks = padded.reshape(rows, nb, 32)
    with np.errstate(invalid="ignore", over="ignore"):
        amax = np.abs(blocks).max(-1)
        finite = np.isfinite(blocks).all(-1)
        ok = finite & (amax >= np.float32(2.0**-100))
        inv = np.where(ok, np.float32(127) / np.where(ok, amax, 1), 0).astype(np.float32)
        scale = np.where(ok, amax / np.float32(127), 0).astype(np.float32)
        scale[~finite] = np.nan
        v = blocks * inv[..., None]
    v = np.where(np.isnan(v), -127, np.clip(v, -127, 127))
    return np.rint(v).astype(np.int64), scale


def int8_model(x, w, bias=None):
    """What the int8 GEMM computes, bit for bit."""
    qx, sx = quantize_blocks(x)
    qw, sw = quantize_blocks(w)
    sums = np.einsum("mbk,nbk->mnb", qx, qw)  # exact int32 block sums
    out = np.zeros((x.shape[0], w.shape[0]), np.float32)
    with np.errstate(invalid="ignore"):
        for b in range(qx.shape[1]):
            s = (sx[:, b][:, None] * sw[:, b][None, :]).astype(np.float32)
            # fma: the product of two floats is exact in float64, then one rounding to float32
            out = (sums[:, :, b].astype(np.float64) * s + out).astype(np.float32)
        if bias is not None:
            out = (out + bias).astype(np.float32)
    return out


def packed(isa, w, bias, storage):
    pyattn.set_isa(isa)
    return _core.PackedLinear(w, bias, storage)


def data(rng, m, k, n):
    return (
        rng.standard_normal((m, k)).astype(np.float32),
        rng.standard_normal((n, k)).astype(np.float32),
        rng.standard_normal(n).astype(np.float32),
    )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES + [(3, 1025, 33), (14, 1100, 64)])
def test_float16_and_bfloat16_against_float64(isa, shape, rng):
    """Every path of few rows (small-M, tall; on avx512_bf16 the pair rows kernel, K blocks of 512 included, the last
    one odd) against float64."""
    m, k, n = shape
    x, w, b = data(rng, m, k, n)
    for storage, xr, wr in (
        ("float16", x, w.astype(np.float16).astype(np.float32)),
        ("bfloat16", bf16(x), bf16(w)),
    ):
        got = packed(isa, w, b, storage)(x)
        ref = xr.astype(np.float64) @ wr.T.astype(np.float64) + b
        # float32 sums of exact products: a few ulps of the sum of magnitudes
        bound = 4 * k * np.finfo(np.float32).eps * (np.abs(xr) @ np.abs(wr).T + np.abs(b)) + 1e-30
        assert np.all(np.abs(got - ref) <= bound), (storage, np.abs(got - ref).max())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(65, 33, 17), (100, 385, 97), (130, 1025, 70), (300, 64, 64), (100, 1025, 300)])
def test_bfloat16_blocked_path_against_float64(isa, shape, rng):
    """More rows than the small-M path takes: the blocked GEMM (on avx512_bf16, the vdpbf16ps pair kernel: A and B
    regrouped into pairs of k, an odd K block (1025 = 2 x 512 + 1) ending in a half-empty pair, edge rows and
    columns through the tile), with the bias and an activation in the epilogue (N = 300: applied per group of
    columns, the last one partial, after the last K step only)."""
    m, k, n = shape
    x, w, b = data(rng, m, k, n)
    xr, wr = bf16(x), bf16(w)
    pyattn.set_isa(isa)
    lin = _core.PackedLinear(w, b, "bfloat16")
    got = lin(x)
    ref = xr.astype(np.float64) @ wr.T.astype(np.float64) + b
    bound = 4 * k * np.finfo(np.float32).eps * (np.abs(xr) @ np.abs(wr).T + np.abs(b)) + 1e-30
    assert np.all(np.abs(got - ref) <= bound), np.abs(got - ref).max()
    relu = lin(x, activation="relu")
    np.testing.assert_array_equal(relu, np.maximum(got, 0))


@pytest.mark.skipif("avx512_bf16" not in ISAS, reason="the emulated AMX set runs on the avx512_bf16 kernels")
@pytest.mark.parametrize("shape", [(65, 33, 17), (100, 2100, 97), (130, 1025, 70), (64 * 3 + 5, 384, 300)])
def test_amx_tile_loops_on_software_tiles_against_float64(shape, rng, threads):
    """The amx set's tile loops (16 x 16 tiles in a 2 x 2 block: A as rows of pairs, B's panels at a stride of 128
    bytes, both padded with zero pairs to whole tiles) on a software model of the tiles, so that they are tested
    where the CPU has no AMX: edge rows and columns through the scratch tile, whole blocks of later K steps read from
    C (K = 2100: three steps), odd K, rows split between threads, the bias and an activation."""
    m, k, n = shape
    x, w, b = data(rng, m, k, n)
    xr, wr = bf16(x), bf16(w)
    before = pyattn.get_isa()
    try:
        lin = packed("amx_emulated", w, b, "bfloat16")
        assert "amx_emulated" not in _core.available_isas()
        got = lin(x)
        relu = lin(x, activation="relu")
    finally:
        pyattn.set_isa(before)
    ref = xr.astype(np.float64) @ wr.T.astype(np.float64) + b
    bound = 4 * k * np.finfo(np.float32).eps * (np.abs(xr) @ np.abs(wr).T + np.abs(b)) + 1e-30
    assert np.all(np.abs(got - ref) <= bound), np.abs(got - ref).max()
    np.testing.assert_array_equal(relu, np.maximum(got, 0))


@pytest.mark.parametrize("shape", SHAPES + [(6, 1536, 40), (100, 384, 65)])
def test_int8_is_the_same_bits_on_every_kernel_set(shape, rng):
    m, k, n = shape
    x, w, b = data(rng, m, k, n)
    want = int8_model(x, w, b)
    for isa in ISAS:
        got = packed(isa, w, b, "int8")(x)
        np.testing.assert_array_equal(got, want, err_msg=f"kernel set {isa}")
    # and it is the product it stands for: within the quantization error of both operands
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
    assert np.abs(want - ref).max() <= 0.03 * np.abs(x).max() * np.abs(w).max() * np.sqrt(k)


@pytest.mark.skipif("avx512_bf16" not in ISAS, reason="the emulated AMX set runs on the avx512_bf16 kernels")
@pytest.mark.parametrize("shape", [(11, 64, 32), (12, 32, 32), (13, 100, 48), (37, 385, 97), (100, 1025, 65)])
@pytest.mark.parametrize("threads", [1, 2])
def test_int8_amx_tiles_on_software_tiles_are_the_same_bits(shape, threads, rng, restore_threads):
    """The amx set's int8 tile (12 rows x 32 columns per call: one TDPBSSD per block of 32 k and 16-column half, the
    two C tiles' sums scaled into float sums per block) on the software model of the tiles, so that it is tested
    where the CPU has no AMX: the same bits as the int8 model (11 rows: below a whole tile, the VNNI kernels; 13 and
    37: a tile and the rest through the tile kernel's shorter shapes; N off the panel's edge through the scratch tile;
    K off the block's edge; rows split between threads), with the bias and an activation. Dropping one k from the
    model's TDPBSSD fails it (tried)."""
    m, k, n = shape
    x, w, b = data(rng, m, k, n)
    pyattn.set_num_threads(threads)
    lin = packed("amx_emulated", w, b, "int8")
    assert "amx_emulated" not in _core.available_isas()
    got = lin(x)
    np.testing.assert_array_equal(got, int8_model(x, w, b))
    np.testing.assert_array_equal(lin(x, activation="relu"), np.maximum(got, 0))


@pytest.mark.parametrize("storage", ["int8", "q4_0", "q4_1"])
@pytest.mark.parametrize("shape", [(700, 96, 100), (24, 64, 1000)])
def test_integer_gemm_is_the_same_bits_on_any_thread_count(storage, shape, rng, restore_threads):
    """The integer drivers cut the rows (700: many row blocks) or, for few rows, the panels (24 x 1000) into units that
    the threads share, a thread that runs out taking the others' last ones (cpu::Steal; 5 threads on fewer cores get
    descheduled, and do). Every output is still summed by one kernel call in one order: the same bits, the activation
    applied once."""
    m, k, n = shape
    x, w, b = data(rng, m, k, n)
    lin = _core.PackedLinear(w, b, storage)
    pyattn.set_num_threads(1)
    want, gelu = lin(x), lin(x, "gelu")
    for threads in (2, 3, 5):
        pyattn.set_num_threads(threads)
        for _ in range(3):
            np.testing.assert_array_equal(lin(x), want, err_msg=f"{threads} threads")
            np.testing.assert_array_equal(lin(x, "gelu"), gelu, err_msg=f"{threads} threads, gelu")


@pytest.mark.parametrize("shape", [(1, 7, 5), (5, 33, 33), (13, 100, 48), (64, 384, 65)])
def test_int8_input_scale_is_the_int8_gemm_of_the_scaled_operands(shape, rng):
    """input_scale a: the int8 GEMM of x * a (rounded to float32) and of w / a, bit for bit on every kernel set and at
    every M (the small-M path included), and the weight read back as (w / a)'s int8 values times a."""
    m, k, n = shape
    x, w, b = data(rng, m, k, n)
    x[:, 3 % k] *= 50.0  # an outlier feature
    a = rng.uniform(0.05, 2.0, k).astype(np.float32)
    wa = (w / a).astype(np.float32)
    want = int8_model((x * a).astype(np.float32), wa, b)
    for isa in ISAS:
        pyattn.set_isa(isa)
        lin = _core.PackedLinear(w, b, "int8", input_scale=a)
        np.testing.assert_array_equal(lin(x), want, err_msg=f"kernel set {isa}")
        for i in range(m):  # one row at a time: the decoding path
            np.testing.assert_array_equal(lin(x[i : i + 1])[0], want[i], err_msg=f"kernel set {isa}, row {i}")
    np.testing.assert_array_equal(lin.weight(), _core.PackedLinear(wa, None, "int8").weight() * a)
    for bad, err in (([1.0] * (k + 1), ValueError), ([0.0] * k, ValueError), ([np.inf] * k, ValueError)):
        with pytest.raises(err, match="input_scale"):
            _core.PackedLinear(w, b, "int8", input_scale=np.array(bad, np.float32))
    with pytest.raises(ValueError, match="int8"):
        _core.PackedLinear(w, b, "float32", input_scale=a)


def check_raw_blocks(raw, kind, x, b, want):
    """GGUF blocks `raw` of `kind` read in place: on every kernel set the GEMM gives `want` (its numpy model's bits),
    for all rows at once and for one row at a time (decoding), and that is the product of the weight it holds within
    the activations' rounding."""
    for isa in ISAS:
        pyattn.set_isa(isa)
        lin = _core.PackedLinear.from_gguf(raw, kind, x.shape[1], b)
        np.testing.assert_array_equal(lin(x), want, err_msg=f"kernel set {isa}")
        rows = np.concatenate([lin(x[i : i + 1]) for i in range(x.shape[0])])
        np.testing.assert_array_equal(rows, want, err_msg=f"kernel set {isa}, row by row")
    w = lin.weight().astype(np.float64)
    ref = x.astype(np.float64) @ w.T + b
    assert np.abs(want - ref).max() <= 0.02 * np.abs(x).max() * np.abs(w).max() * np.sqrt(x.shape[1])


def check_threads_activation_nan(lin, x):
    """A packed Linear of a quantized type on many rows: the same bits on 1 and 2 threads, the ReLU epilogue is the
    ReLU of its output, and a NaN in row 3 of x gives that row NaN and no other."""
    np.testing.assert_array_equal(*on_one_and_two_threads(lambda: lin(x)))
    np.testing.assert_array_equal(lin(x, "relu"), np.maximum(lin(x), 0))
    y = x.copy()
    y[3, 40] = np.nan
    out = lin(y)
    assert np.isnan(out[3]).all() and np.isfinite(np.delete(out, 3, 0)).all()


def on_one_and_two_threads(fn):
    """(fn() on 1 thread, fn() on 2 threads), the thread count restored."""
    n = pyattn.get_num_threads()
    try:
        pyattn.set_num_threads(1)
        one = fn()
        pyattn.set_num_threads(2)
        return one, fn()
    finally:
        pyattn.set_num_threads(n)


def test_int8_does_not_depend_on_the_thread_count(rng):
    x, w, b = data(rng, 200, 384, 300)
    lin = _core.PackedLinear(w, b, "int8")
    np.testing.assert_array_equal(*on_one_and_two_threads(lambda: lin(x)))


@pytest.mark.parametrize("isa", ISAS)
def test_activation_and_edge_rows(isa, rng):
    x, w, b = data(rng, 9, 70, 21)
    lin = packed(isa, w, b, "int8")
    np.testing.assert_allclose(lin(x, "relu"), np.maximum(int8_model(x, w, b), 0), rtol=0, atol=0)
    gelu = pyattn.functional.gelu(int8_model(x, w, b))
    np.testing.assert_allclose(lin(x, "gelu"), gelu, rtol=1e-6, atol=1e-6)
    # a zero row gives the bias; a NaN or inf poisons its own row and no other, in every type (int8: NaN, as its
    # block scale is; the float types: inf * w sums to +-inf or NaN)
    x[2] = 0
    x[4, 33] = np.nan
    x[6, 0] = np.inf
    for storage in ("float16", "bfloat16", "int8"):
        y = packed(isa, w, b, storage)(x)
        np.testing.assert_array_equal(y[2], b)
        assert np.isnan(y[4]).all() and not np.isfinite(y[6]).any(), storage
        assert storage != "int8" or np.isnan(y[6]).all()
        assert np.isfinite(np.delete(y, [4, 6], 0)).all(), storage
    # values far below the float range of a block scale are read as zeros (docs/precision.md)
    tiny = np.full((1, 70), 1e-32, np.float32)
    np.testing.assert_array_equal(lin(tiny), b[None])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [9, 70])
def test_bfloat16_rounding_of_special_activations(isa, m, rng):
    """Activations rounded to bfloat16 as they are paired (on avx512_bf16 by vcvtne2ps2bf16, row-major for the rows
    path at m = 9, turned into MR-row panels for the blocked path at m = 70; an odd K): NaN and inf poison their own
    rows, a float that rounds past bfloat16's largest becomes inf, ties go to even, every other row is the float64
    product of the rounded operands."""
    x, w, b = data(rng, m, 37, 21)
    x[1, 36] = np.nan
    x[3, 0] = np.inf
    x[5, 17] = 3.4e38  # above the midpoint between bfloat16's largest and 2^128: inf
    x[7] = np.float32(1 + 2**-8)  # halfway between two bfloat16: to the even one, 1
    y = packed(isa, w, b, "bfloat16")(x)
    assert np.isnan(y[1]).all()
    assert not np.isfinite(y[3]).any() and not np.isfinite(y[5]).any()
    rest = np.delete(np.arange(m), [1, 3, 5])
    xr, wr = bf16(x[rest]), bf16(w)
    assert np.all(xr[rest == 7] == 1)
    ref = xr.astype(np.float64) @ wr.T.astype(np.float64) + b
    bound = 4 * 37 * np.finfo(np.float32).eps * (np.abs(xr) @ np.abs(wr).T + np.abs(b))
    assert np.all(np.abs(y[rest] - ref) <= bound)


def test_storage_sizes_and_names(rng):
    _, w, b = data(rng, 1, 512, 1536)
    sizes = {s: _core.PackedLinear(w, None, s).nbytes for s in _core.weight_types()}
    assert sizes["float16"] == sizes["bfloat16"] == sizes["float32"] // 2
    assert sizes["int8"] == 512 * 1536 * (1 + 4 / 32)  # a float32 scale per 32 weights
    assert sizes["q4_k"] == 512 * 1536 * 1184 // 2048  # 1184 bytes per 256 x 8 weights (kernels.h)
    assert _core.PackedLinear(w.astype(np.float16)).storage == "float16"
    with pytest.raises(ValueError, match="storage must be one of float32, float16, bfloat16, int8"):
        _core.PackedLinear(w, None, "int4")


def test_int8_weight_is_what_the_gemm_multiplies(rng):
    _, w, _ = data(rng, 1, 100, 7)
    q, s = quantize_blocks(w)
    want = (q * s[..., None]).reshape(7, -1)[:, :100].astype(np.float32)
    np.testing.assert_array_equal(_core.PackedLinear(w, None, "int8").weight(), want)


def test_from_int8_holds_the_values_given(rng):
    q = rng.integers(-127, 128, (33, 70)).astype(np.int8)
    row = rng.uniform(0.01, 1, 33).astype(np.float32)
    lin = _core.PackedLinear.from_int8(q, row)
    np.testing.assert_array_equal(lin.weight(), q * row[:, None])
    blocks = rng.uniform(0.01, 1, (33, 3)).astype(np.float32)
    lin = _core.PackedLinear.from_int8(q, blocks)
    np.testing.assert_array_equal(lin.weight(), q * np.repeat(blocks, 32, 1)[:, :70])
    x = rng.standard_normal((4, 70)).astype(np.float32)
    assert np.abs(lin(x) - x @ lin.weight().T).max() < 0.05 * np.abs(x @ lin.weight().T).max()
    with pytest.raises(ValueError, match=r"scales of shape \(33,\) or \(33, 3\)"):
        _core.PackedLinear.from_int8(q, blocks[:, :2].copy())
    with pytest.raises(TypeError, match="int8"):
        _core.PackedLinear.from_int8(q.astype(np.int16), row)


def test_linear_storages_and_rounding_rule(rng):
    x, w, b = data(rng, 3, 64, 20)
    for storage in ("float16", "bfloat16", "int8"):
        lin = Linear(w, b, storage=storage)
        assert lin.storage == storage
        with pytest.raises(ValueError, match="load the model again"):
            lin.set_storage("float32")
    lin = Linear(w, b)
    lin.set_storage("int8")
    np.testing.assert_array_equal(lin(x), int8_model(x, w, b))
    fallback = Linear(w, b, storage="int8", int8_fallback="float32")
    assert fallback.storage == "float32"
    fallback.set_storage("bfloat16")
    assert fallback.storage == "bfloat16"


def test_dtype_names():
    assert resolve_dtype(None) is None
    assert resolve_dtype("auto") == auto_dtype() in pyattn.precision.WEIGHT_TYPES
    assert resolve_compute_type("int8_float32") == "int8"
    assert resolve_compute_type("default") is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match="compute_type must be one of"):
        resolve_compute_type("int4")


def test_float16_refuses_weights_out_of_its_range(rng):
    w = rng.standard_normal((4, 8)).astype(np.float32)
    w[1, 2] = 1e6
    with pytest.raises(ValueError, match="do not fit float16"):
        Linear(w, storage="float16")
    lin = Linear(w)
    with pytest.raises(ValueError, match="do not fit float16"):
        lin.set_storage("float16")
    lin.set_storage("int8")  # int8 scales any magnitude
    assert lin.storage == "int8"
