"""q6_k: GGUF's Q6_K values (6 bits, a float16 scale per 256 weights and an int8 one per 16) as a weight type of
PackedLinear, re-laid per block of 32 by pyattn.io.gguf.q6_k_as_q6 and read by the GEMM
in place.

`q6_model` is kernels.h's Q6_K formula in numpy: activations quantized per block of 32 as for int8, each half's exact
integer sums, their int32 combination with the sub-scales, one float step per block -- every kernel set must give its
bits. The re-laid bytes must hold the values the `gguf` package (llama.cpp's reader) dequantizes, exactly."""

import numpy as np
import pytest
from test_weight_types import ISAS, check_raw_blocks, check_threads_activation_nan, data, quantize_blocks

import pyattn
from pyattn import _core
from pyattn.io.gguf import q6_k_as_q6

gguf = pytest.importorskip("gguf")

SHAPES = [(1, 256, 1), (1, 512, 9), (3, 256, 16), (6, 768, 40), (7, 256, 33), (16, 512, 24), (40, 256, 70)]


pytestmark = pytest.mark.usefixtures("restore_isa")  # (conftest.py)


def random_q6_k(rng, rows: int, n: int) -> np.ndarray:
    """Random GGUF Q6_K rows: every ql / qh byte and int8 scale drawn, d a small float16 of either sign."""
    raw = rng.integers(0, 256, (rows, n // 256, 210), dtype=np.uint8)
    d = (rng.uniform(2e-4, 1e-3, (rows, n // 256)) * rng.choice([-1, 1], (rows, n // 256))).astype(np.float16)
    raw[..., 208:210] = d.view(np.uint8).reshape(rows, n // 256, 2)
    return raw.reshape(rows, -1)


def q6_values(raw: np.ndarray, n: int):
    """q6_k bytes -> (u (rows, nb, 32) in [0, 63], d (rows, nb) float32, sc (rows, nb, 2) int)."""
    rows = raw.shape[0]
    b = raw.reshape(rows, n // 32, 28)
    d = b[..., 0:2].copy().view("<f2")[..., 0].astype(np.float32)
    sc = b[..., 2:4].view(np.int8).astype(np.int64)
    masks = b[..., 4:12].copy().view("<u4")
    k = np.arange(32, dtype=np.uint32)
    qs = b[..., 12:].astype(np.int64)
    u = np.concatenate([qs & 15, qs >> 4], -1)
    u |= ((masks[..., 0:1] >> k) & 1).astype(np.int64) << 4
    u |= ((masks[..., 1:2] >> k) & 1).astype(np.int64) << 5
    return u, d, sc


def q6_model(x, u, d, sc, bias=None):
    """What the 6-bit GEMM computes, bit for bit (kernels.h: Q6_K)."""
    return half_block_model(x, u, d, sc, 32, bias=bias)


def half_block_model(x, u, d, sc, offset, dmin=None, m=None, bias=None):
    """The kernels with sub-scales per half-block of 16 (kernels.h: Q6_K, Q3_K, Q2_K), bit for bit: per block of 32,
    each half's exact sums I_h and t_h, v = sc_0 (I_0 - offset t_0) + sc_1 (I_1 - offset t_1) in int32, and one float
    step with sa d; with minima (Q2_K) first a step of -(m_0 t_0 + m_1 t_1) with sa dmin. u (n, nb, 32); d, dmin
    (n, nb); sc, m (n, nb, 2)."""
    qx, sx = quantize_blocks(x)
    out = np.zeros((x.shape[0], u.shape[0]), np.float32)
    with np.errstate(invalid="ignore"):
        for b in range(qx.shape[1]):
            q = qx[:, b]
            i0, i1 = q[:, :16] @ u[:, b, :16].T, q[:, 16:] @ u[:, b, 16:].T
            t0, t1 = q[:, :16].sum(1)[:, None], q[:, 16:].sum(1)[:, None]
            v = sc[None, :, b, 0] * (i0 - offset * t0) + sc[None, :, b, 1] * (i1 - offset * t1)
            assert np.abs(v).max() <= 2**24  # exact in float32 as well
            if m is not None:
                w = m[None, :, b, 0] * t0 + m[None, :, b, 1] * t1
                mscale = (sx[:, b][:, None] * dmin[None, :, b]).astype(np.float32)
                out = (-w.astype(np.float64) * mscale + out).astype(np.float32)
            scale = (sx[:, b][:, None] * d[None, :, b]).astype(np.float32)
            out = (v.astype(np.float64) * scale + out).astype(np.float32)
        if bias is not None:
            out = (out + bias).astype(np.float32)
    return out


def test_relaid_bytes_hold_ggufs_values(rng):
    rows, n = 5, 768
    raw = random_q6_k(rng, rows, n)
    raw.reshape(rows, n // 256, 210)[0, 0, 192:208] = np.array([-128, 127] * 8, np.int8).view(np.uint8)  # extremes
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q6_K).reshape(rows, n)
    out = q6_k_as_q6(raw, n)
    assert out.shape == (rows, n // 32 * 28) and out.dtype == np.uint8
    u, d, sc = q6_values(out, n)
    assert u.min() == 0 and u.max() == 63
    values = d[..., None] * (np.repeat(sc, 16, -1) * (u - 32)).astype(np.float32)
    np.testing.assert_array_equal(values.reshape(rows, n), want)
    for isa in ISAS:
        pyattn.set_isa(isa)
        np.testing.assert_array_equal(_core.PackedLinear.from_gguf(out, "q6_k", n).weight(), want)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_same_bits_on_every_kernel_set(shape, rng):
    m, k, n = shape
    x, _, b = data(rng, m, k, n)
    raw = q6_k_as_q6(random_q6_k(rng, n, k), k)
    u, d, sc = q6_values(raw, k)
    want = q6_model(x, u, d, sc, b)
    check_raw_blocks(raw, "q6_k", x, b, want)


@pytest.mark.parametrize("k", [32, 96, 320])
def test_packed_from_floats(k, rng):
    """Any float weight as q6_k (pyattn's own rounding, not ggml's search): every value within one step of its
    half-block (at most the largest magnitude / 32, plus the block's largest such / 127 where the int8 sub-scale is
    rounded up), about a quarter step on average; the same bits on every kernel set; the GEMM of the values it
    holds."""
    x, w, b = data(rng, 9, k, 19)
    outs = []
    for isa in ISAS:
        pyattn.set_isa(isa)
        lin = _core.PackedLinear(w, b, "q6_k")
        assert lin.storage == "q6_k"
        outs.append(lin(x))
        held = lin.weight()
        np.testing.assert_array_equal(outs[-1], outs[0], err_msg=f"kernel set {isa}")
    half = np.abs(w.reshape(19, -1, 2, 16)).max(-1, keepdims=True) / 32
    step = half + half.max(2, keepdims=True) / 127
    err = np.abs(held - w).reshape(19, -1, 2, 16)
    assert (err <= 1.01 * step).all() and err.mean() <= 0.3 * step.mean()
    ref = x.astype(np.float64) @ held.T.astype(np.float64) + b
    assert np.abs(outs[0] - ref).max() <= 0.02 * np.abs(x).max() * np.abs(held).max() * np.sqrt(k)


def test_edges_threads_nan_and_sizes(rng):
    x, _, b = data(rng, 150, 512, 61)  # a partial last panel of 8 columns
    lin = _core.PackedLinear.from_gguf(q6_k_as_q6(random_q6_k(rng, 61, 512), 512), "q6_k", 512, b)
    assert lin.nbytes == 8 * 16 * 224 + 61 * 4  # 8 panels x 16 blocks of 224 bytes (8 columns), the bias
    check_threads_activation_nan(lin, x)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    w[1, 5] = np.inf  # a weight block holding inf: that output is NaN, the others are not
    out = _core.PackedLinear(w, None, "q6_k")(x[:2, :64].copy())
    assert np.isnan(out[:, 1]).all() and np.isfinite(np.delete(out, 1, 1)).all()
    with pytest.raises(ValueError, match=r"expected raw of shape \(4, 56\)"):
        _core.PackedLinear.from_gguf(np.zeros((4, 36), np.uint8), "q6_k", 64)
