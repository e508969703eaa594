"""Bad input gets a clear Python exception -- never a crash, a hang, a NaN or a silent wrong answer.
One test per class of bad input; messages must name what arrived."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import randn

import pyattn
from pyattn import _core
from pyattn import functional as F


def qkv(rng, B=1, H=2, Lq=4, Lk=5, D=8):
    return randn(rng, B, H, Lq, D), randn(rng, B, H, Lk, D), randn(rng, B, H, Lk, D)


def mha_weights(rng, E=16):
    return dict(w_q=randn(rng, E, E), w_k=randn(rng, E, E), w_v=randn(rng, E, E), w_o=randn(rng, E, E))


# ---- wrong rank or shape -------------------------------------------------------------------------------
def test_wrong_rank(rng):
    with pytest.raises(ValueError, match=r"\(3,\)"):
        F.matmul(randn(rng, 3), randn(rng, 3, 3))
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match=r"\(2, 4, 8\)"):
        F.scaled_dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"weight"):
        F.linear(randn(rng, 2, 3), randn(rng, 3))
    with pytest.raises(ValueError, match="query"):
        F.multi_head_attention(
            randn(rng, 2, 3, 4, 16), randn(rng, 2, 3, 16), randn(rng, 2, 3, 16), num_heads=2, **mha_weights(rng)
        )


def test_mismatched_dims(rng):
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(6, 7\)"):
        F.matmul(randn(rng, 4, 5), randn(rng, 6, 7))
    with pytest.raises(ValueError, match="do not broadcast"):
        F.matmul(randn(rng, 2, 4, 5), randn(rng, 3, 5, 7))
    with pytest.raises(ValueError, match=r"\(\.\.\., 5\).*\(2, 4\)"):
        F.linear(randn(rng, 2, 4), randn(rng, 3, 5))
    with pytest.raises(ValueError, match="bias"):
        F.linear(randn(rng, 2, 4), randn(rng, 3, 4), randn(rng, 4))
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match=r"k of shape"):
        F.scaled_dot_product_attention(q, k[..., :7], v)
    with pytest.raises(ValueError, match=r"v of shape"):
        F.scaled_dot_product_attention(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match="w_k"):
        F.multi_head_attention(
            randn(rng, 1, 3, 16),
            randn(rng, 1, 3, 16),
            randn(rng, 1, 3, 16),
            num_heads=2,
            **{**mha_weights(rng), "w_k": randn(rng, 16, 8)},
        )
    with pytest.raises(ValueError, match="layer|weight"):
        F.layer_norm(randn(rng, 3, 4), randn(rng, 5))


# ---- dtypes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.complex64, bool])
def test_non_float_arrays_refused(rng, dtype):
    a = np.ones((3, 4), dtype)
    with pytest.raises(TypeError, match=np.dtype(dtype).name):
        F.matmul(a, randn(rng, 4, 2))
    with pytest.raises(TypeError):
        F.softmax(a)
    with pytest.raises(TypeError):
        F.linear(randn(rng, 3, 4), a)
    q, k, v = qkv(rng)
    with pytest.raises(TypeError):
        F.scaled_dot_product_attention(q.astype(dtype), k, v)


def test_float64_is_converted_by_functional_and_refused_by_core(rng):
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))
    got = F.matmul(a, b)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, F.matmul(a.astype(np.float32), b.astype(np.float32)))
    np.testing.assert_array_equal(F.softmax(a), F.softmax(a.astype(np.float32)))
    with pytest.raises(TypeError, match="float64"):
        _core.matmul(a, b.astype(np.float32))
    with pytest.raises(TypeError, match="float64"):
        _core.softmax(a)
    with pytest.raises(TypeError, match="float64"):
        pyattn.PackedLinear(b)
    pl = pyattn.PackedLinear(b.T.astype(np.float32).copy())
    with pytest.raises(TypeError, match="float64"):
        pl(a)


def test_masks_of_wrong_dtype(rng):
    q, k, v = qkv(rng)
    with pytest.raises(TypeError, match="int"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.zeros((4, 5), np.int64))
    with pytest.raises(TypeError, match="int"):
        F.scaled_dot_product_attention(q, k, v, key_padding_mask=np.zeros((1, 5), np.int32))
    with pytest.raises(TypeError):
        _core.scaled_dot_product_attention(q, k, v, attn_mask=np.zeros((1, 1, 4, 5), np.float64))


# ---- layouts -------------------------------------------------------------------------------------------
def test_non_contiguous_views(rng):
    x = randn(rng, 6, 10)[:, ::2]
    w = randn(rng, 3, 5)
    np.testing.assert_array_equal(F.linear(x, w), F.linear(np.ascontiguousarray(x), w))  # functional copies
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.linear(x, w)  # the raw core refuses
    with pytest.raises(ValueError, match="contiguous"):
        _core.matmul(randn(rng, 4, 6)[:, ::2], randn(rng, 3, 2))
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match="contiguous last axis"):
        _core.scaled_dot_product_attention(q[..., ::2], k[..., ::2], v)
    got = F.scaled_dot_product_attention(q[..., ::2], k[..., ::2], v)  # functional copies the last axis
    want = F.scaled_dot_product_attention(np.ascontiguousarray(q[..., ::2]), np.ascontiguousarray(k[..., ::2]), v)
    np.testing.assert_array_equal(got, want)


def _unaligned(a):
    """A copy of `a` whose data starts one byte past an aligned address (np.frombuffer at offset 1)."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def test_unaligned_arrays(rng):
    # reading a float at an odd address is undefined behaviour (UBSan stops on it): the core refuses such
    # arrays, functional copies them
    x, w, b = randn(rng, 5, 8), randn(rng, 3, 8), randn(rng, 3)
    calls = {
        "matmul": lambda u: _core.matmul(u, randn(rng, 8, 4)),
        "linear": lambda u: _core.linear(u, w, b),
        "softmax": lambda u: _core.softmax(u),
        "log_softmax": lambda u: _core.log_softmax(u),
        "layer_norm": lambda u: _core.layer_norm(u, np.ones(8, np.float32), np.zeros(8, np.float32)),
        "PackedLinear": lambda u: _core.PackedLinear(u),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match="aligned to its 4-byte items"):
            call(_unaligned(x))
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match="aligned"):
        _core.scaled_dot_product_attention(q, _unaligned(k), v)
    np.testing.assert_array_equal(F.linear(_unaligned(x), _unaligned(w), b), F.linear(x, w, b))
    np.testing.assert_array_equal(F.softmax(_unaligned(x)), F.softmax(x))
    np.testing.assert_array_equal(
        F.scaled_dot_product_attention(_unaligned(q), k, _unaligned(v)), F.scaled_dot_product_attention(q, k, v)
    )
    mask = randn(rng, 1, 1, q.shape[-2], k.shape[-2])
    with pytest.raises(ValueError, match="aligned"):
        _core.scaled_dot_product_attention(q, k, v, attn_mask=_unaligned(mask))
    np.testing.assert_array_equal(
        F.scaled_dot_product_attention(q, k, v, attn_mask=_unaligned(mask)),
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
    )


# ---- empty ---------------------------------------------------------------------------------------------
def test_zero_length_dimensions(rng):
    with pytest.raises(ValueError, match=r"zero-length.*\(0, 4\)"):
        F.matmul(np.zeros((0, 4), np.float32), randn(rng, 4, 3))
    with pytest.raises(ValueError, match="zero-length"):
        F.matmul(randn(rng, 3, 0), np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="zero-length"):
        F.softmax(np.zeros((2, 0), np.float32))
    with pytest.raises(ValueError, match="zero-length"):
        F.layer_norm(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="zero-length"):
        pyattn.PackedLinear(np.zeros((0, 8), np.float32))
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match="zero-length"):
        F.scaled_dot_product_attention(q, k[:, :, :0], v[:, :, :0])
    with pytest.raises(ValueError, match="zero-length"):
        F.multi_head_attention(
            np.zeros((1, 0, 16), np.float32),
            randn(rng, 1, 3, 16),
            randn(rng, 1, 3, 16),
            num_heads=2,
            **mha_weights(rng),
        )


def test_num_heads_must_divide_d_model(rng):
    x = randn(rng, 1, 3, 16)
    with pytest.raises(ValueError, match=r"num_heads \(3\).*16"):
        F.multi_head_attention(x, x, x, num_heads=3, **mha_weights(rng))
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="num_heads"):
            F.multi_head_attention(x, x, x, num_heads=bad, **mha_weights(rng))


def test_masks_of_wrong_shape(rng):
    q, k, v = qkv(rng, B=2, Lq=4, Lk=5)
    for bad in (
        np.zeros((4, 6), bool),
        np.zeros((5, 4), bool),
        np.zeros((3, 4, 5), bool),
        np.zeros((2, 3, 4, 5), bool),
        np.zeros((5,), bool),
    ):
        with pytest.raises(ValueError, match="attn_mask.*" + str(bad.shape).replace("(", r"\(").replace(")", r"\)")):
            F.scaled_dot_product_attention(q, k, v, attn_mask=bad)
    with pytest.raises(ValueError, match=r"key_padding_mask.*\(2, 4\)"):
        F.scaled_dot_product_attention(q, k, v, key_padding_mask=np.zeros((2, 4), bool))
    x = randn(rng, 2, 4, 16)
    with pytest.raises(ValueError, match=r"B \* num_heads"):
        F.multi_head_attention(x, x, x, num_heads=2, attn_mask=np.zeros((2, 4, 4), bool), **mha_weights(rng))


# ---- out= ----------------------------------------------------------------------------------------------
def test_bad_out(rng):
    a, b = randn(rng, 4, 5), randn(rng, 5, 3)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 4\)"):
        F.matmul(a, b, out=np.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="float64"):
        F.matmul(a, b, out=np.empty((4, 3), np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        F.matmul(a, b, out=np.empty((4, 6), np.float32)[:, ::2])
    ro = np.empty((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        F.matmul(a, b, out=ro)
    buf = randn(rng, 4, 5)
    with pytest.raises(ValueError, match="overlaps"):
        F.matmul(buf, randn(rng, 5, 5), out=buf)
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match="overlaps"):
        F.scaled_dot_product_attention(q, k, v, out=q)


def test_bad_names_and_scalars(rng):
    x = randn(rng, 3, 4)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        F.linear(x, randn(rng, 2, 4), activation="swish")
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="axis 2"):
        F.softmax(x, axis=2)
    with pytest.raises(ValueError, match="eps"):
        F.layer_norm(x, eps=-1.0)
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match="scale"):
        F.scaled_dot_product_attention(q, k, v, scale=float("nan"))


# ---- threads and kernel sets ---------------------------------------------------------------------------
def test_bad_thread_counts(restore_threads):
    with pytest.raises(ValueError, match=">= 1"):
        pyattn.set_num_threads(0)
    with pytest.raises(TypeError):
        pyattn.set_num_threads(2.5)
    with pytest.raises(TypeError):
        pyattn.set_num_threads("2")


def test_unknown_isa():
    with pytest.raises(ValueError, match="unknown ISA 'neon'"):
        pyattn.set_isa("neon")


def _import_with_isa(value):
    env = dict(os.environ, PYATTN_ISA=value)
    # cwd: the tests folder, so that the installed package is imported and not the source tree.
    return subprocess.run(
        [sys.executable, "-c", "import pyattn; print(pyattn.get_isa())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(__file__),
    )


@pytest.mark.parametrize("isa", _core.available_isas())
def test_pyattn_isa_env_selects(isa):
    r = _import_with_isa(isa)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == isa


def test_pyattn_isa_env_refuses_unknown_or_missing():
    r = _import_with_isa("sse9")
    assert r.returncode != 0 and "PYATTN_ISA='sse9'" in r.stderr and "unknown ISA" in r.stderr
    missing = [i for i in ("avx2", "avx512", "avx512_vnni", "avx512_bf16") if i not in _core.available_isas()]
    for isa in missing:
        r = _import_with_isa(isa)
        assert r.returncode != 0 and "cannot run" in r.stderr


def test_out_overlapping_bias_or_masks_is_refused(rng):
    # Found by the test helper: these overlaps were accepted and gave wrong answers.
    x, w = np.ones((3, 2), np.float32), np.ones((2, 2), np.float32)
    out = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="overlaps bias"):
        F.linear(x, w, out[0], out=out)
    q = k = v = randn(rng, 1, 2, 20, 16)
    buf = randn(rng, 40, 40)
    mask = buf[:20, :20]
    out = buf[10:30, :32].reshape(1, 20, 2, 16).transpose(0, 2, 1, 3)  # rows 10..19 shared with the mask
    with pytest.raises(ValueError, match="overlaps attn_mask"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, out=out)
    base = np.zeros(640, np.float32)
    with pytest.raises(ValueError, match="overlaps key_padding_mask"):
        F.scaled_dot_product_attention(
            q, k, v, key_padding_mask=base[:20].reshape(1, 20), out=base.reshape(1, 2, 20, 16)
        )


def test_scalar_inputs_are_refused(rng):
    s = np.array(-0.5, np.float32)
    for fn in (F.gelu, F.relu, F.silu, F.layer_norm, F.softmax):
        with pytest.raises(ValueError, match="scalar"):
            fn(s)
    with pytest.raises(ValueError, match="scalar"):
        F.linear(s, randn(rng, 4, 1))
