"""q4_k and q5_k: GGUF's Q4_K and Q5_K super-blocks (per 256 weights a float16 scale d and minimum dmin, per 32 a
6-bit scale sc and minimum m: weight = d sc u - dmin m) as weight types of PackedLinear, read by the GEMM in place
from the file's bytes.

`qk_model` is kernels.h's K-quant step in numpy: activations quantized per block of 32 as for int8, exact integer
block sums, then Q4_1's float steps with the exact ds = d sc and dm = dmin m -- every kernel set must give its bits.
The weights held must be the ones the `gguf` package (llama.cpp's reader) dequantizes, exactly."""

import numpy as np
import pytest
from test_weight_types import ISAS, check_raw_blocks, check_threads_activation_nan, data, quantize_blocks

import pyattn
from pyattn import _core

gguf = pytest.importorskip("gguf")

KINDS = {"q4_k": (144, gguf.GGMLQuantizationType.Q4_K), "q5_k": (176, gguf.GGMLQuantizationType.Q5_K)}
# few rows (the 8-column tile, up to its row count and past it), 16 rows and more (the wide tile where the set has
# one), partial last panels of 8 and groups of 32 columns
SHAPES = [(1, 256, 1), (1, 512, 9), (3, 256, 16), (6, 768, 40), (7, 256, 33), (16, 512, 24), (40, 256, 70)]


pytestmark = pytest.mark.usefixtures("restore_isa")  # (conftest.py)


def random_raw(rng, kind: str, rows: int, n: int) -> np.ndarray:
    """Random GGUF rows of `kind`: every scale, minimum, nibble and fifth bit drawn, d and dmin small float16s of
    either sign (a file may hold any)."""
    size = KINDS[kind][0]
    raw = rng.integers(0, 256, (rows, n // 256, size), dtype=np.uint8)
    halves = rng.uniform(2e-4, 1e-3, (rows, n // 256, 2)) * rng.choice([-1, 1], (rows, n // 256, 2))
    raw[..., 0:4] = halves.astype(np.float16).view(np.uint8).reshape(rows, n // 256, 4)
    return raw.reshape(rows, -1)


def qk_fields(raw: np.ndarray, kind: str, n: int):
    """GGUF bytes -> (u (rows, nb, 32), d, dmin (rows, nb) float32 (each super-block's in its 8 blocks), sc, m
    (rows, nb) int): the format as llama.cpp's ggml-quants.c documents it, written out again here."""
    size = KINDS[kind][0]
    rows = raw.shape[0]
    blk = raw.reshape(rows, n // 256, size)
    d = np.repeat(blk[..., 0:2].copy().view("<f2")[..., 0].astype(np.float32), 8, -1)
    dmin = np.repeat(blk[..., 2:4].copy().view("<f2")[..., 0].astype(np.float32), 8, -1)
    q = blk[..., 4:16].astype(np.int64)
    sc = np.concatenate([q[..., 0:4] & 63, (q[..., 8:12] & 15) | ((q[..., 0:4] >> 6) << 4)], -1)
    m = np.concatenate([q[..., 4:8] & 63, (q[..., 8:12] >> 4) | ((q[..., 4:8] >> 6) << 4)], -1)
    qs = blk[..., -128:].astype(np.int64).reshape(rows, n // 256, 4, 1, 32)
    u = np.concatenate([qs & 15, qs >> 4], 3).reshape(rows, n // 256, 8, 32)
    if kind == "q5_k":
        qh = blk[..., 16:48].astype(np.int64).reshape(rows, n // 256, 1, 32)
        u |= ((qh >> np.arange(8)[:, None]) & 1) << 4
    return u.reshape(rows, n // 32, 32), d, dmin, sc.reshape(rows, -1), m.reshape(rows, -1)


def qk_model(x, u, d, dmin, sc, m, bias=None):
    """What the K-quant GEMM computes, bit for bit (kernels.h)."""
    qx, sx = quantize_blocks(x)
    t = qx.sum(-1)
    sums = np.einsum("mbk,nbk->mnb", qx, u)
    ds = (d * sc).astype(np.float32)  # exact: 11 x 6 bits
    dm = (dmin * m).astype(np.float32)
    out = np.zeros((x.shape[0], u.shape[0]), np.float32)
    with np.errstate(invalid="ignore"):
        for b in range(qx.shape[1]):
            st = (sx[:, b] * t[:, b].astype(np.float32)).astype(np.float32)
            out = (-dm[:, b][None, :].astype(np.float64) * st[:, None] + out).astype(np.float32)
            scale = (sx[:, b][:, None] * ds[:, b][None, :]).astype(np.float32)
            out = (sums[:, :, b].astype(np.float64) * scale + out).astype(np.float32)
        if bias is not None:
            out = (out + bias).astype(np.float32)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_held_weights_are_ggufs(kind, rng):
    rows, n = 5, 768
    raw = random_raw(rng, kind, rows, n)
    want = gguf.quants.dequantize(raw, KINDS[kind][1]).reshape(rows, n)
    u, d, dmin, sc, m = qk_fields(raw, kind, n)
    assert (u.max(), sc.max(), m.max()) == (31 if kind == "q5_k" else 15, 63, 63)  # every field's range drawn
    mine = (d * sc)[..., None] * u.astype(np.float32) - (dmin * m)[..., None]
    np.testing.assert_array_equal(mine.reshape(rows, n).astype(np.float32), want)
    for isa in ISAS:
        pyattn.set_isa(isa)
        lin = _core.PackedLinear.from_gguf(raw, kind, n)
        assert lin.storage == kind
        np.testing.assert_array_equal(lin.weight(), want, err_msg=f"kernel set {isa}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_same_bits_on_every_kernel_set(kind, shape, rng):
    m, k, n = shape
    x, _, b = data(rng, m, k, n)
    raw = random_raw(rng, kind, n, k)
    want = qk_model(x, *qk_fields(raw, kind, k), b)
    check_raw_blocks(raw, kind, x, b, want)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_packed_from_floats(kind, scale, rng):
    """Any float weight as q4_k / q5_k (pyattn's own rule, not ggml's search): every value within half a step of its
    block (d sc, the step at least the block's range above its offset / 15 or 31), or within dmin / 2 where the
    offset's rounding falls below it; the same bits on every kernel set; the GEMM of the values it holds."""
    x, w, b = data(rng, 9, 512, 19)
    w = (w * scale).astype(np.float32)
    w[0] = np.abs(w[0])  # a row with no negative weight: no minimum
    outs = []
    for isa in ISAS:
        pyattn.set_isa(isa)
        lin = _core.PackedLinear(w, b, kind)
        assert lin.storage == kind
        outs.append(lin(x))
        np.testing.assert_array_equal(outs[-1], outs[0], err_msg=f"kernel set {isa}")
    held = lin.weight()
    top = 31 if kind == "q5_k" else 15
    blocks = w.reshape(19, 2, 8, 32)
    offsets = -np.minimum(blocks.min(-1, keepdims=True), 0)
    step = (blocks.max(-1, keepdims=True) + offsets) / top  # before d's and sc's rounding up
    dmin = offsets.max((2, 3), keepdims=True) / 63
    err = np.abs(held.reshape(blocks.shape) - blocks)
    assert (err <= 0.5 * np.maximum(step * 1.13, dmin * 1.01) + 1e-7 * scale).all()
    assert err.mean() <= 0.35 * step.mean()
    assert (held[0] >= 0).all()  # no offset where there is no negative weight
    ref = x.astype(np.float64) @ held.T.astype(np.float64) + b
    assert np.abs(outs[0] - ref).max() <= 0.02 * np.abs(x).max() * np.abs(held).max() * np.sqrt(512)


def test_edges_threads_nan_and_sizes(rng):
    x, _, b = data(rng, 150, 512, 61)  # row blocks, a partial last panel of 8 columns
    for kind, block in (("q4_k", 1184), ("q5_k", 1440)):  # a super-block of 8 columns: values, sc and m, halves
        lin = _core.PackedLinear.from_gguf(random_raw(rng, kind, 61, 512), kind, 512, b)
        assert lin.nbytes == 8 * 2 * block + 61 * 4  # 8 panels x 2 super-blocks, the bias
        check_threads_activation_nan(lin, x)
        w = rng.standard_normal((4, 256)).astype(np.float32)
        w[1, 5] = np.inf  # a super-block holding inf: that output is NaN, the others are not
        out = _core.PackedLinear(w, None, kind)(x[:2, :256].copy())
        assert np.isnan(out[:, 1]).all() and np.isfinite(np.delete(out, 1, 1)).all()


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="multiple of 256 for q4_k, got 288"):
        _core.PackedLinear.from_gguf(np.zeros((4, 162), np.uint8), "q4_k", 288)
    with pytest.raises(ValueError, match=r"expected raw of shape \(4, 176\)"):
        _core.PackedLinear.from_gguf(np.zeros((4, 144), np.uint8), "q5_k", 256)
    with pytest.raises(ValueError, match="q5_k needs in_features divisible by 256, got 96"):
        _core.PackedLinear(np.zeros((4, 96), np.float32), None, "q5_k")
    zeros = _core.PackedLinear.from_gguf(np.zeros((4, 144), np.uint8), "q4_k", 256)
    assert not zeros(np.ones((1, 256), np.float32)).any()
