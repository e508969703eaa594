"""The K-quant types: GGUF's Q4_K, Q5_K, Q2_K and Q3_K super-blocks of 256 weights as weight types of PackedLinear
(q4_k, q5_k, q2_k, q3_k), read by the GEMM in place from the file's bytes. Q4_K / Q5_K: per 256 a float16 scale d and
minimum dmin, per 32 a 6-bit scale sc and minimum m, weight = d sc u - dmin m. Q2_K: the same per 16 with 4-bit sc and
m and 2-bit u. Q3_K: per 16 a 6-bit scale (sc - 32 signed), weight = d sc (u - 4) with 3-bit u.

`qk_model` and test_q6's `half_block_model` are kernels.h's steps in numpy: activations quantized per block of 32 as
for int8, exact integer sums, then the float steps -- every kernel set must give their bits. The weights held must be
the ones the `gguf` package (llama.cpp's reader) dequantizes, exactly."""

import numpy as np
import pytest
from test_q6 import half_block_model
from test_weight_types import ISAS, check_raw_blocks, check_threads_activation_nan, data, quantize_blocks

import pyattn
from pyattn import _core

gguf = pytest.importorskip("gguf")

# bytes per super-block, gguf's type, where d (and dmin) are
KINDS = {
    "q4_k": (144, gguf.GGMLQuantizationType.Q4_K, 0),
    "q5_k": (176, gguf.GGMLQuantizationType.Q5_K, 0),
    "q2_k": (84, gguf.GGMLQuantizationType.Q2_K, 80),
    "q3_k": (110, gguf.GGMLQuantizationType.Q3_K, 108),
}
# few rows (the 8-column tile, up to its row count and past it), 16 rows and more (the wide tile where the set has
# one), partial last panels of 8 and groups of 32 columns
SHAPES = [(1, 256, 1), (1, 512, 9), (3, 256, 16), (6, 768, 40), (7, 256, 33), (16, 512, 24), (40, 256, 70)]


pytestmark = pytest.mark.usefixtures("restore_isa")  # (conftest.py)


def random_raw(rng, kind: str, rows: int, n: int) -> np.ndarray:
    """Random GGUF rows of `kind`: every scale, minimum and bit of the values drawn, d and dmin small float16s of
    either sign (a file may hold any)."""
    size, _, at = KINDS[kind]
    halves = 1 if kind == "q3_k" else 2
    raw = rng.integers(0, 256, (rows, n // 256, size), dtype=np.uint8)
    h = rng.uniform(2e-4, 1e-3, (rows, n // 256, halves)) * rng.choice([-1, 1], (rows, n // 256, halves))
    raw[..., at : at + 2 * halves] = h.astype(np.float16).view(np.uint8).reshape(rows, n // 256, 2 * halves)
    return raw.reshape(rows, -1)


def fields(raw: np.ndarray, kind: str, n: int):
    """Any kind's bytes -> (u (rows, nb, 32), d, dmin (rows, nb), sc, m (rows, nb, 2)) with sc and m per half-block of
    16 (one value per block repeated for q4_k / q5_k; Q3_K: sc the signed sub-scale, m 0)."""
    if kind in ("q4_k", "q5_k"):
        u, d, dmin, sc, m = qk_fields(raw, kind, n)
        return u, d, dmin, np.repeat(sc[..., None], 2, -1), np.repeat(m[..., None], 2, -1)
    return low_fields(raw, kind, n)


def low_fields(raw: np.ndarray, kind: str, n: int):
    """Q2_K / Q3_K bytes -> fields' fields, from ggml-quants.c's layout written out again here. Q2_K: 16 scale bytes
    (sc | m << 4 per 16 weights), 64 bytes qs, d, dmin; weight 128 h + 32 j + l takes bits 2 j, 2 j + 1 of qs[32 h +
    l]. Q3_K: 32 bytes hmask (weight 128 h + 32 j + l: bit 4 h + j of hmask[l] is its third bit), 64 bytes qs (as
    Q2_K's), 12 bytes of 16 6-bit scales, d."""
    size = KINDS[kind][0]
    rows, ns = raw.shape[0], n // 256
    blk = raw.reshape(rows, ns, size).astype(np.int64)
    j = (2 * np.arange(4))[:, None]
    if kind == "q2_k":
        qs = blk[..., 16:80].reshape(rows, ns, 2, 1, 32)
        u = (qs >> j) & 3
        sc, m = blk[..., 0:16] & 15, blk[..., 0:16] >> 4
        d, dmin = (blk[..., 80 + 2 * i : 82 + 2 * i].astype(np.uint8).copy().view("<f2")[..., 0] for i in (0, 1))
    else:
        qs = blk[..., 32:96].reshape(rows, ns, 2, 1, 32)
        hm = blk[..., None, None, 0:32]
        high = (hm >> (4 * np.arange(2)[:, None, None] + np.arange(4)[:, None])) & 1
        u = ((qs >> j) & 3) | (high << 2)
        b = blk[..., 96:108]
        top = [(b[..., 8:12] >> s) & 3 for s in (0, 2, 4, 6)]
        sc = (
            np.concatenate(
                [(b[..., 0:4] & 15) | top[0] << 4, (b[..., 4:8] & 15) | top[1] << 4]
                + [(b[..., 0:4] >> 4) | top[2] << 4, (b[..., 4:8] >> 4) | top[3] << 4],
                -1,
            )
            - 32
        )
        m = np.zeros_like(sc)
        d = blk[..., 108:110].astype(np.uint8).copy().view("<f2")[..., 0]
        dmin = np.zeros_like(d)
    per_block = [np.repeat(v.astype(np.float32), 8, -1) for v in (d, dmin)]
    return (u.reshape(rows, n // 32, 32), *per_block, sc.reshape(rows, n // 32, 2), m.reshape(rows, n // 32, 2))


def model(x, raw, kind, n, bias=None):
    if kind in ("q4_k", "q5_k"):
        return qk_model(x, *qk_fields(raw, kind, n), bias)
    u, d, dmin, sc, m = low_fields(raw, kind, n)
    if kind == "q3_k":
        return half_block_model(x, u, d, sc, 4, bias=bias)
    return half_block_model(x, u, d, sc, 0, dmin, m, bias)


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
    u, d, dmin, sc, m = fields(raw, kind, n)
    tops = {"q4_k": (15, 63, 63), "q5_k": (31, 63, 63), "q2_k": (3, 15, 15), "q3_k": (7, 31, 0)}
    assert (u.max(), sc.max(), m.max()) == tops[kind]  # every field's range drawn
    scale = np.repeat(sc, 16, -1) * (d[..., None] if kind != "q3_k" else 1)
    if kind == "q3_k":  # d (sc (u - 4)): the product as gguf's dequantizer forms it
        assert sc.min() == -32
        mine = d[..., None] * (scale * (u - 4)).astype(np.float32)
    else:
        mine = scale.astype(np.float32) * u.astype(np.float32) - (np.repeat(m, 16, -1) * dmin[..., None])
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
    check_raw_blocks(raw, kind, x, b, model(x, raw, kind, k, b))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_packed_from_floats(kind, scale, rng):
    """Any float weight as a K-quant type (pyattn's own rules, not ggml's search; cpp/gemm/packed_matrix.cpp): the
    same bits on every kernel set, the GEMM of the values it holds, and each value close to the float. With a minimum
    (q4_k, q5_k, q2_k): within half a step of its sub-block (the step at least the range above the offset / the top
    value, plus d's rounding up), or within dmin / 2 where the offset's rounding falls below it. q3_k (symmetric,
    values -4 ... 3 steps): within one step (the side opposite the largest magnitude is clipped at 3)."""
    x, w, b = data(rng, 9, 512, 19)
    w = (w * scale).astype(np.float32)
    w[0] = np.abs(w[0])  # a row with no negative weight
    outs = []
    for isa in ISAS:
        pyattn.set_isa(isa)
        lin = _core.PackedLinear(w, b, kind)
        assert lin.storage == kind
        outs.append(lin(x))
        np.testing.assert_array_equal(outs[-1], outs[0], err_msg=f"kernel set {isa}")
    held = lin.weight()
    up = 1 + 2.0**-10  # a half rounded up
    n = 16 if kind in ("q2_k", "q3_k") else 32
    blocks = w.reshape(19, 2, 256 // n, n)  # rows, super-blocks, sub-blocks
    err = np.abs(held.reshape(blocks.shape) - blocks)
    if kind == "q3_k":
        s = np.abs(blocks).max(-1, keepdims=True) / 4
        step = s + s.max(2, keepdims=True) / 31 * up
        assert (err <= step * 1.0001).all()
    else:
        top, smax = {"q4_k": (15, 63), "q5_k": (31, 63), "q2_k": (3, 15)}[kind]
        offsets = -np.minimum(blocks.min(-1, keepdims=True), 0)
        step = (blocks.max(-1, keepdims=True) + offsets) / top  # before the roundings up
        dmin = offsets.max(2, keepdims=True) / smax * up
        step = step + step.max(2, keepdims=True) / smax * up + dmin / top
        assert (err <= 0.5 * np.maximum(step, dmin) * 1.0001 + 1e-9 * scale).all()
        assert (held[0] >= 0).all()  # no offset where there is no negative weight
    assert err.mean() <= 0.35 * step.mean()
    ref = x.astype(np.float64) @ held.T.astype(np.float64) + b
    assert np.abs(outs[0] - ref).max() <= 0.02 * np.abs(x).max() * np.abs(held).max() * np.sqrt(512)


def test_edges_threads_nan_and_sizes(rng):
    x, _, b = data(rng, 150, 512, 61)  # row blocks, a partial last panel of 8 columns
    sizes = {"q4_k": 1184, "q5_k": 1440, "q2_k": 672, "q3_k": 912}  # a super-block of 8 columns (kernels.h)
    for kind, size in sizes.items():
        lin = _core.PackedLinear.from_gguf(random_raw(rng, kind, 61, 512), kind, 512, b)
        assert lin.nbytes == 8 * 2 * size + 61 * 4  # 8 panels x 2 super-blocks, the bias
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
    with pytest.raises(ValueError, match=r"expected raw of shape \(4, 84\) for q2_k"):
        _core.PackedLinear.from_gguf(np.zeros((4, 110), np.uint8), "q2_k", 256)
    with pytest.raises(ValueError, match="q5_k needs in_features divisible by 256, got 96"):
        _core.PackedLinear(np.zeros((4, 96), np.float32), None, "q5_k")
    zeros = _core.PackedLinear.from_gguf(np.zeros((4, 144), np.uint8), "q4_k", 256)
    assert not zeros(np.ones((1, 256), np.float32)).any()
