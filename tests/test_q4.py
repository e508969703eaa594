"""GGUF's 4- and 5-bit blocks (q4_0, q4_1, q5_0, q5_1) as weight types of PackedLinear, read by the GEMM as stored.

`q4_model` is the definition in kernels.h (Q4Kernels) in numpy: activations quantized per block of 32 as for int8,
exact integer block sums, then each block's float step (one fma, or two with a minimum) -- every kernel set must give
its bits. The GGUF quantizers (ggml's reference rules) are modelled by `gguf_blocks`, so that packing from floats and
from GGUF bytes can be checked against each other.
"""

import numpy as np
import pytest
from test_weight_types import (
    ISAS,
    check_threads_activation_nan,
    data,
    int8_model,
    quantize_blocks,
)

import pyattn
from pyattn import _core

SHAPES = [(1, 32, 1), (1, 64, 5), (2, 96, 17), (3, 32, 16), (4, 320, 9), (5, 64, 33), (8, 576, 100), (13, 160, 48)]
# 16 rows and more: the wide tile where the set has one (avx512_vnni: 6 x 32 on unpacked panels), with columns past
# the last whole group of 32 (70, 33) and rows past the last whole tile
SHAPES += [(16, 64, 40), (37, 96, 70), (200, 576, 33)]
KINDS = ["q4_0", "q4_1", "q5_0", "q5_1"]


def top(kind):  # the largest u
    return 31 if kind.startswith("q5") else 15


def offset(kind):  # of the kinds without a minimum: W = d (u - offset)
    return 16 if kind == "q5_0" else 8


pytestmark = pytest.mark.usefixtures("restore_isa")  # (conftest.py)


def gguf_blocks(w: np.ndarray, kind: str):
    """ggml's quantize_row_q4_0 / q4_1 / q5_0 / q5_1 in numpy: (u (n, nb, 32), d (n, nb) float16, m (n, nb) float16)."""
    n, k = w.shape
    b = w.reshape(n, k // 32, 32).astype(np.float32)
    if kind in ("q4_0", "q5_0"):
        idx = np.abs(b).argmax(-1)
        mx = np.take_along_axis(b, idx[..., None], -1)[..., 0]
        d = (mx / np.float32(-offset(kind))).astype(np.float32)
        inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
        x = (b * inv[..., None] + np.float32(offset(kind) + 0.5)).astype(np.float32)
        u = np.minimum(top(kind), x.astype(np.int8)).astype(np.int64)
        return u, d.astype(np.float16), np.zeros_like(d, np.float16)
    lo, hi = b.min(-1), b.max(-1)
    d = ((hi - lo) / np.float32(top(kind))).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    x = ((b - lo[..., None]) * inv[..., None] + np.float32(0.5)).astype(np.float32)
    u = np.minimum(top(kind), x.astype(np.int8)).astype(np.int64)
    return u, d.astype(np.float16), lo.astype(np.float16)


def gguf_bytes(u, d, m, kind):
    """The blocks as a GGUF file stores them: (n, nb * 18 / 20 / 22 / 24) uint8 -- d, m (q4_1, q5_1), the fifth
    bits (q5_0, q5_1: bit k of a little-endian uint32 is u[k] >= 16), the low 4 bits (k in the low nibble of byte k,
    16 + k in its high one)."""
    n, nb, _ = u.shape
    qs = ((u[..., :16] & 15) | ((u[..., 16:] & 15) << 4)).astype(np.uint8)
    parts = [d.view(np.uint8).reshape(n, nb, 2)]
    if kind.endswith("_1"):
        parts.append(m.view(np.uint8).reshape(n, nb, 2))
    if kind.startswith("q5"):
        qh = ((u >> 4).astype(np.uint32) << np.arange(32, dtype=np.uint32)).sum(-1).astype("<u4")
        parts.append(qh.view(np.uint8).reshape(n, nb, 4))
    return np.concatenate(parts + [qs], -1).reshape(n, -1)


def dequantize(u, d, m, kind):
    d32, m32 = d.astype(np.float32)[..., None], m.astype(np.float32)[..., None]
    if kind.endswith("_0"):
        w = d32 * (u - offset(kind)).astype(np.float32)
    else:
        w = d32 * u.astype(np.float32) + m32
    return w.reshape(u.shape[0], -1)


def q4_model(x, u, d, m, kind, bias=None):
    """What the 4- and 5-bit GEMM computes, bit for bit (kernels.h: Q4Kernels)."""
    qx, sx = quantize_blocks(x)
    t = qx.sum(-1)  # (rows, nb)
    sums = np.einsum("mbk,nbk->mnb", qx, u)
    out = np.zeros((x.shape[0], u.shape[0]), np.float32)
    d32, m32 = d.astype(np.float32), m.astype(np.float32)
    with np.errstate(invalid="ignore"):
        for b in range(qx.shape[1]):
            if kind.endswith("_0"):
                s = sums[:, :, b] - offset(kind) * t[:, b][:, None]
            else:
                st = (sx[:, b] * t[:, b].astype(np.float32)).astype(np.float32)
                out = (m32[:, b][None, :].astype(np.float64) * st[:, None] + out).astype(np.float32)
                s = sums[:, :, b]
            scale = (sx[:, b][:, None] * d32[:, b][None, :]).astype(np.float32)
            out = (s.astype(np.float64) * scale + out).astype(np.float32)
        if bias is not None:
            out = (out + bias).astype(np.float32)
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_same_bits_on_every_kernel_set(kind, shape, rng):
    m, k, n = shape
    x, w, b = data(rng, m, k, n)
    u, d, mn = gguf_blocks(w, kind)
    want = q4_model(x, u, d, mn, kind, b)
    raw = gguf_bytes(u, d, mn, kind)
    for isa in ISAS:
        pyattn.set_isa(isa)
        from_bytes = _core.PackedLinear.from_gguf(raw, kind, k, b)
        from_floats = _core.PackedLinear(w, b, kind)
        np.testing.assert_array_equal(from_bytes(x), want, err_msg=f"kernel set {isa}")
        np.testing.assert_array_equal(from_floats(x), want, err_msg=f"kernel set {isa}, packed from floats")
        np.testing.assert_array_equal(from_bytes.weight(), dequantize(u, d, mn, kind))
    # and it is the product it stands for: within the quantization error of both operands
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
    assert np.abs(want - ref).max() <= 0.15 * np.abs(x).max() * np.abs(w).max() * np.sqrt(k)


@pytest.mark.parametrize("kind", KINDS)
def test_many_rows_give_each_row_the_bits_it_gets_alone(kind, rng):
    """A prompt's prefill (many rows: the wide tile on sets that have one) and decoding (one row at a time: the
    8-column tile) give each row the same bits."""
    x, w, b = data(rng, 45, 320, 100)
    for isa in ISAS:
        pyattn.set_isa(isa)
        lin = _core.PackedLinear(w, b, kind)
        rows = np.concatenate([lin(x[i : i + 1]) for i in range(x.shape[0])])
        np.testing.assert_array_equal(lin(x), rows, err_msg=f"kernel set {isa}")


@pytest.mark.parametrize("kind", ["q4_0", "q5_0"])
def test_offset_kinds_are_the_int8_gemm_of_their_values(rng, kind):
    """Q4_0's and Q5_0's integer offsets are exact: the same bits as int8 blocks holding u - 8 (u - 16) with the
    block scales d."""
    x, w, _ = data(rng, 7, 192, 24)
    u, d, mn = gguf_blocks(w, kind)
    q = _core.PackedLinear.from_gguf(gguf_bytes(u, d, mn, kind), kind, 192)
    i8 = _core.PackedLinear.from_int8((u - offset(kind)).astype(np.int8).reshape(24, 192), d.astype(np.float32))
    np.testing.assert_array_equal(q(x), i8(x))


def test_threads_edges_activation_and_sizes(rng):
    x, w, b = data(rng, 150, 256, 61)  # 150 rows: row blocks and a partial last panel of 8 columns
    block_bytes = {"q4_0": 144, "q4_1": 160, "q5_0": 176, "q5_1": 192}  # nibbles, (fifth bits), halves: 8 columns
    for kind in KINDS:
        lin = _core.PackedLinear(w, b, kind)
        assert lin.storage == kind
        assert lin.nbytes == 8 * 8 * block_bytes[kind] + 61 * 4  # 8 panels x 8 blocks, the bias
        check_threads_activation_nan(lin, x)


def test_from_gguf_refuses_bad_input(rng):
    raw = np.zeros((4, 18), np.uint8)
    assert _core.PackedLinear.from_gguf(raw, "q4_0", 32).weight().shape == (4, 32)
    with pytest.raises(ValueError, match=r"expected raw of shape \(4, 20\)"):
        _core.PackedLinear.from_gguf(raw, "q4_1", 32)
    with pytest.raises(ValueError, match="multiple of 32"):
        _core.PackedLinear.from_gguf(raw, "q4_0", 16)
    with pytest.raises(ValueError, match="one of q4_0, q4_1, q5_0, q5_1, q6_k, q4_k, q5_k, q2_k, q3_k, got 'q8_0'"):
        _core.PackedLinear.from_gguf(raw, "q8_0", 32)
    with pytest.raises(ValueError, match=r"expected raw of shape \(4, 22\)"):
        _core.PackedLinear.from_gguf(raw, "q5_0", 32)
    assert _core.PackedLinear.from_gguf(np.zeros((4, 24), np.uint8), "q5_1", 32).storage == "q5_1"
    with pytest.raises(TypeError, match="uint8"):
        _core.PackedLinear.from_gguf(raw.astype(np.int8), "q4_0", 32)
    with pytest.raises(ValueError, match="C-contiguous|contiguous"):
        _core.PackedLinear.from_gguf(np.zeros((4, 36), np.uint8)[:, ::2], "q4_0", 32)


def test_int8_model_still_matches(rng):
    x, w, b = data(rng, 2, 64, 8)
    np.testing.assert_array_equal(_core.PackedLinear(w, b, "int8")(x), int8_model(x, w, b))


@pytest.mark.parametrize("kind", KINDS)
def test_bytes_are_ggufs_layout(kind, rng):
    """gguf_bytes writes the blocks as llama.cpp's own reader (the `gguf` package) reads them."""
    gguf = pytest.importorskip("gguf")
    _, w, _ = data(rng, 1, 96, 5)
    u, d, mn = gguf_blocks(w, kind)
    theirs = gguf.quants.dequantize(gguf_bytes(u, d, mn, kind), getattr(gguf.GGMLQuantizationType, kind.upper()))
    np.testing.assert_array_equal(theirs.reshape(5, 96), dequantize(u, d, mn, kind))
    if kind.startswith("q5"):
        assert (u >= 16).any() and (u < 16).any()  # both halves of the range seen
