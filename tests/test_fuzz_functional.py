"""Fuzzing of every function in pyattn.functional.__all__ (hypothesis, derandomized).

Each case draws a valid call -- shapes with sizes 1, odd and block-edge sizes, batch broadcasting, dtypes
float16 / float32 / float64, layouts C, Fortran, transposed, sliced with a step, negative strides, broadcast
(zero strides), unaligned and read-only, bool and float masks (none, some or every key masked), NaN and inf
values -- then, in about half of the cases, breaks it in one way: a wrong dtype (int, uint8, bool, complex,
object), a zero-length or mismatched dimension, a wrong rank, a wrong option value (axis, activation, eps,
scale, num_heads, score, out=). The kernel set (scalar / avx2 / avx512, those this CPU has) is drawn too.

A valid call must return the documented result: compared with a float64 numpy reference (tests/reference.py and
the references below) within a float32 tolerance, NaN where the reference is NaN and the same infinities --
non-finite values propagate as in torch (a NaN or +inf anywhere in a softmax row, or in a query's visible
attention scores, makes that row NaN; relu(NaN) is NaN; a key a query does not see is never read). The
documented exceptions: attention_scores / attention refuse NaN and inf inputs with ValueError. A broken call
must raise the documented exception -- TypeError for a wrong dtype or type, ValueError for a wrong shape, rank,
size or value -- with a message; anything else (a crash, IndexError, a numpy error from inside pyattn, a wrong
result) is a bug.

Default: a few dozen cases per function (the file in well under a minute). PYATTN_FUZZ_EXAMPLES=N runs N per
function for a longer local run.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyattn
from pyattn import functional as F

EXAMPLES = int(os.environ.get("PYATTN_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(
    derandomize=True, database=None, deadline=None, print_blob=False, suppress_health_check=list(HealthCheck)
)
ISAS = list(pyattn.cpu_info()["available_isas"])
DIMS = st.sampled_from([1, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
SMALL = st.sampled_from([1, 2, 3, 5])
BAD_DTYPES = [np.int32, np.int64, np.uint8, np.bool_, np.complex64, object]
LAYOUTS = ["c", "c", "c", "f", "transposed", "step", "negative", "broadcast", "unaligned", "readonly"]


def examples(default: int) -> settings:
    return settings(FUZZ, max_examples=EXAMPLES or default)


@contextlib.contextmanager
def isa(name: str):
    before = pyattn.get_isa()
    pyattn.set_isa(name)
    try:
        yield
    finally:
        pyattn.set_isa(before)


# ----------------------------------------------------------------------------------------------------
# arrays
# ----------------------------------------------------------------------------------------------------
def layout(a: np.ndarray, how: str, rng) -> np.ndarray:
    """An array equal to `a` (same shape and values) with the memory layout `how`."""
    if a.ndim == 0:
        return a
    if how == "f":
        return np.asfortranarray(a)
    if how == "transposed":
        return np.ascontiguousarray(a.T).T
    if how == "step":
        axis = int(rng.integers(a.ndim))
        big = np.zeros(a.shape[:axis] + (2 * a.shape[axis],) + a.shape[axis + 1 :], a.dtype)
        index = (slice(None),) * axis + (slice(None, None, 2),)
        big[index] = a
        return big[index]
    if how == "negative":
        axis = int(rng.integers(a.ndim))
        index = (slice(None),) * axis + (slice(None, None, -1),)
        return np.ascontiguousarray(a[index])[index]
    if how == "broadcast":  # zero strides along the axes whose values are made constant
        axes = [i for i in range(a.ndim) if a.shape[i] > 1 and rng.random() < 0.5]
        if not axes:
            return a
        index = tuple(slice(0, 1) if i in axes else slice(None) for i in range(a.ndim))
        return np.broadcast_to(a[index], a.shape)
    if how == "unaligned" and a.dtype != object and a.itemsize > 1:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        out = np.frombuffer(buf.data, a.dtype, count=a.size, offset=1).reshape(a.shape)
        out[...] = a
        return out
    if how == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a


@st.composite
def values(draw, shape, *, dtype=None, special=True, scale=None):
    """A float array of `shape` (float32 mostly, float16 / float64 sometimes) in a drawn layout, with NaN / inf
    at a few places when `special`."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = dtype or draw(st.sampled_from([np.float32] * 6 + [np.float16, np.float64]))
    scale = scale or draw(st.sampled_from([1e-3, 0.3, 1.0, 4.0]))
    a = rng.standard_normal(shape) * scale
    if special and a.size and draw(st.integers(0, 9)) == 0:
        for _ in range(draw(st.integers(1, 3))):
            a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return layout(a.astype(dtype), draw(st.sampled_from(LAYOUTS)), rng)


@st.composite
def mask_values(draw, shape, *, float_ok=True):
    """A bool or float mask of `shape`: none, some or all masked."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = draw(st.sampled_from([0.0, 0.3, 0.8, 1.0]))
    hidden = rng.random(shape) < p
    kind = draw(st.sampled_from(["bool", "bool", "float32", "float64"] if float_ok else ["bool"]))
    if kind == "bool":
        m = hidden
    else:
        m = np.where(hidden, -np.inf, rng.standard_normal(shape)).astype(kind)
    return layout(m, draw(st.sampled_from(LAYOUTS)), rng)


def bad_dtype(draw, a: np.ndarray) -> np.ndarray:
    dtype = draw(st.sampled_from(BAD_DTYPES))
    with np.errstate(all="ignore"):
        return np.nan_to_num(np.asarray(a, np.float64)).astype(dtype)


def as_f32(a) -> np.ndarray:
    """What pyattn computes with: the float32 values (float16 / float64 inputs are converted)."""
    return np.asarray(a).astype(np.float32)


def f64(a) -> np.ndarray:
    return as_f32(a).astype(np.float64)


# ----------------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------------
def expect_error(kind, fn):
    with pytest.raises((TypeError, ValueError)) as info:
        fn()
    assert isinstance(info.value, kind), f"expected {kind.__name__}, got {type(info.value).__name__}: {info.value}"
    assert str(info.value).strip(), f"{type(info.value).__name__} without a message"
    return info.value


def close(got, want, *, rtol=1e-4, atol=1e-4, scale=None, nan_pattern=True):
    """got (float32) against want (float64): the same NaN and inf positions (if `nan_pattern`), and within
    atol * scale + rtol * |want| elsewhere (scale: the magnitude of the terms that were summed)."""
    got = np.asarray(got)
    assert got.dtype == np.float32, got.dtype
    assert got.shape == want.shape, (got.shape, want.shape)
    if nan_pattern:
        assert np.array_equal(np.isnan(got), np.isnan(want)), (
            f"NaN at {np.argwhere(np.isnan(got) != np.isnan(want))[:5].tolist()}: got {got[np.isnan(got) != np.isnan(want)][:5]}"  # noqa: E501
        )
        inf = np.isinf(want)
        assert np.array_equal(got[inf], want[inf].astype(np.float32)), "infinities differ"
    ok = np.isfinite(want)
    s = 1.0 if scale is None else np.broadcast_to(scale, want.shape)[ok]
    err = np.abs(got[ok].astype(np.float64) - want[ok])
    bound = atol * s + rtol * np.abs(want[ok])
    assert np.all(err <= bound), f"max error {np.max(err - bound):.3g} over the bound"


def finite(*arrays) -> bool:
    return all(a is None or np.isfinite(f64(a)).all() for a in arrays)


# ----------------------------------------------------------------------------------------------------
# element-wise activations
# ----------------------------------------------------------------------------------------------------
def _gelu_tanh(x):
    return ref.gelu(x, "tanh")


ACTIVATIONS = {
    "relu": (F.relu, ref.relu),
    "silu": (F.silu, ref.silu),
    "gelu": (F.gelu, ref.gelu),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), _gelu_tanh),
}


@examples(80)
@given(data=st.data())
def test_activations(data):
    draw = data.draw
    name = draw(st.sampled_from(sorted(ACTIVATIONS)))
    fn, reference = ACTIVATIONS[name]
    shape = tuple(draw(st.lists(DIMS, min_size=1, max_size=4)))
    x = draw(values(shape))
    broken = draw(st.sampled_from([None, None, "dtype", "zero", "scalar", "approximate"]))
    with isa(draw(st.sampled_from(ISAS))):
        if broken == "dtype":
            expect_error(TypeError, lambda: fn(bad_dtype(draw, x)))
        elif broken == "zero":
            expect_error(ValueError, lambda: fn(np.zeros(shape[:-1] + (0,), np.float32)))
        elif broken == "scalar":
            expect_error(ValueError, lambda: fn(np.float32(1.5)))
        elif broken == "approximate":
            value = draw(st.sampled_from(["erf", "", None, 1, "TANH"]))
            expect_error(ValueError, lambda: F.gelu(x, approximate=value))
        else:
            with np.errstate(all="ignore"):
                want = reference(f64(x))
            close(fn(x), want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# softmax, log_softmax
# ----------------------------------------------------------------------------------------------------
@examples(80)
@given(data=st.data())
def test_softmax(data):
    draw = data.draw
    log = draw(st.booleans())
    fn, reference = (F.log_softmax, ref.log_softmax) if log else (F.softmax, ref.softmax)
    shape = tuple(draw(st.lists(DIMS, min_size=1, max_size=4)))
    x = draw(values(shape, scale=draw(st.sampled_from([0.1, 1.0, 10.0, 50.0]))))
    if draw(st.integers(0, 4)) == 0:  # rows with masked (-inf) entries, or entirely masked
        x = np.array(x, np.float32)
        x[..., : draw(st.integers(1, shape[-1]))] = -np.inf
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    broken = draw(st.sampled_from([None, None, "dtype", "zero", "scalar", "axis", "axis_type"]))
    with isa(draw(st.sampled_from(ISAS))):
        if broken == "dtype":
            expect_error(TypeError, lambda: fn(bad_dtype(draw, x), axis=axis))
        elif broken == "zero":
            expect_error(ValueError, lambda: fn(np.zeros(shape[:-1] + (0,), np.float32), axis=axis))
        elif broken == "scalar":
            expect_error(ValueError, lambda: fn(np.float32(1.5)))
        elif broken == "axis":
            bad = draw(st.sampled_from([len(shape), -len(shape) - 1, 100]))
            expect_error(ValueError, lambda: fn(x, axis=bad))
        elif broken == "axis_type":
            bad = draw(st.sampled_from([1.0, True, "0", None, (0,)]))
            expect_error(TypeError, lambda: fn(x, axis=bad))
        else:
            with np.errstate(all="ignore"):
                want = reference(f64(x), axis=axis)
            close(
                fn(x, axis=axis),
                want,
                rtol=1e-5,
                atol=2e-6 if not log else 1e-5,
                scale=1.0 if not log else 1.0 + np.abs(np.nan_to_num(f64(x), posinf=0, neginf=0)),
            )


# ----------------------------------------------------------------------------------------------------
# layer_norm
# ----------------------------------------------------------------------------------------------------
@examples(80)
@given(data=st.data())
def test_layer_norm(data):
    draw = data.draw
    shape = tuple(draw(st.lists(DIMS, min_size=1, max_size=3)))
    n = shape[-1]
    x = draw(values(shape, scale=draw(st.sampled_from([1e-2, 1.0, 30.0]))))
    weight = draw(st.one_of(st.none(), values((n,))))
    bias = draw(st.one_of(st.none(), values((n,))))
    residual = draw(st.one_of(st.none(), values(shape)))
    eps = draw(st.sampled_from([1e-5, 1e-12, 0.0, 0.1, 1]))
    broken = draw(
        st.sampled_from([None, None, "dtype", "weight_shape", "residual_shape", "zero", "scalar", "eps", "eps_type"])
    )
    call = dict(weight=weight, bias=bias, eps=eps, residual=residual)
    with isa(draw(st.sampled_from(ISAS))):
        if broken == "dtype":
            which = draw(st.sampled_from(["x", "weight", "bias", "residual"]))
            if which == "x":
                expect_error(TypeError, lambda: F.layer_norm(bad_dtype(draw, x), **call))
            else:
                expect_error(
                    TypeError,
                    lambda: F.layer_norm(
                        x, **{**call, which: bad_dtype(draw, np.ones(shape if which == "residual" else (n,)))}
                    ),
                )
        elif broken == "weight_shape":
            bad = draw(st.sampled_from([(n + 1,), (1, n), (n, 1)]))
            expect_error(
                ValueError,
                lambda: F.layer_norm(
                    x, **{**call, draw(st.sampled_from(["weight", "bias"])): np.ones(bad, np.float32)}
                ),
            )
        elif broken == "residual_shape":
            expect_error(
                ValueError,
                lambda: F.layer_norm(
                    x, **{**call, "residual": np.ones((n,) if len(shape) > 1 else (n + 1,), np.float32)}
                ),
            )
        elif broken == "zero":
            expect_error(ValueError, lambda: F.layer_norm(np.zeros(shape[:-1] + (0,), np.float32)))
        elif broken == "scalar":
            expect_error(ValueError, lambda: F.layer_norm(np.float32(2.0)))
        elif broken == "eps":
            expect_error(ValueError, lambda: F.layer_norm(x, eps=draw(st.sampled_from([-1e-5, float("nan"), -np.inf]))))
        elif broken == "eps_type":
            expect_error(TypeError, lambda: F.layer_norm(x, eps=draw(st.sampled_from(["1e-5", None, [1e-5]]))))
        else:
            with np.errstate(all="ignore"):
                xin = f64(x) + (0 if residual is None else f64(residual))
                want = ref.layer_norm(
                    as_f32(xin), None if weight is None else f64(weight), None if bias is None else f64(bias), eps
                )
            # the variance of float32 values: relative error grows as the spread shrinks towards sqrt(eps)
            spread = np.sqrt(np.nan_to_num(as_f32(xin).astype(np.float64).var(-1, keepdims=True)) + eps)
            mag = np.abs(np.nan_to_num(xin)).max(-1, keepdims=True) / np.maximum(spread, 1e-30)
            w = 1.0 if weight is None else np.abs(np.nan_to_num(f64(weight)))
            close(F.layer_norm(x, **call), want, rtol=1e-4, atol=1e-5, scale=(1.0 + mag) * (1.0 + w))


# ----------------------------------------------------------------------------------------------------
# matmul, linear
# ----------------------------------------------------------------------------------------------------
def _gemm_scale(a, b):
    """|a| @ |b| in float64: the magnitude of the products a GEMM sums (NaN / inf treated as 0)."""
    return np.abs(np.nan_to_num(f64(a), posinf=0, neginf=0)) @ np.abs(np.nan_to_num(f64(b), posinf=0, neginf=0))


@examples(80)
@given(data=st.data())
def test_matmul(data):
    draw = data.draw
    M, K, N = draw(DIMS), draw(DIMS), draw(DIMS)
    batch = tuple(draw(st.lists(SMALL, max_size=2)))
    batch_a = tuple(1 if draw(st.integers(0, 3)) == 0 else d for d in batch)
    batch_b = tuple(1 if draw(st.integers(0, 3)) == 0 else d for d in batch)[draw(st.integers(0, len(batch))) :]
    transpose_b = draw(st.booleans())
    a = draw(values(batch_a + (M, K)))
    b = draw(values(batch_b + ((N, K) if transpose_b else (K, N))))
    broken = draw(
        st.sampled_from(
            [
                None,
                None,
                None,
                "dtype",
                "K",
                "batch",
                "rank",
                "zero",
                "out_dtype",
                "out_shape",
                "out_layout",
                "out_overlap",
                "out_ok",
            ]
        )
    )
    with isa(draw(st.sampled_from(ISAS))):
        if broken == "dtype":
            if draw(st.booleans()):
                expect_error(TypeError, lambda: F.matmul(bad_dtype(draw, a), b, transpose_b=transpose_b))
            else:
                expect_error(TypeError, lambda: F.matmul(a, bad_dtype(draw, b), transpose_b=transpose_b))
        elif broken == "K":
            bad = np.ones(batch_b + ((N, K + 1) if transpose_b else (K + 1, N)), np.float32)
            expect_error(ValueError, lambda: F.matmul(a, bad, transpose_b=transpose_b))
        elif broken == "batch":
            expect_error(ValueError, lambda: F.matmul(np.ones((2, M, K), np.float32), np.ones((3, K, N), np.float32)))
        elif broken == "rank":
            expect_error(ValueError, lambda: F.matmul(np.ones((K,), np.float32), np.ones((K, N), np.float32)))
        elif broken == "zero":
            expect_error(ValueError, lambda: F.matmul(np.ones((M, 0), np.float32), np.ones((0, N), np.float32)))
        elif broken and broken.startswith("out"):
            shape = np.broadcast_shapes(batch_a, batch_b) + (M, N)
            if broken == "out_dtype":
                expect_error(TypeError, lambda: F.matmul(a, b, transpose_b=transpose_b, out=np.zeros(shape)))
            elif broken == "out_shape":
                expect_error(
                    ValueError,
                    lambda: F.matmul(a, b, transpose_b=transpose_b, out=np.zeros(shape[:-1] + (N + 1,), np.float32)),
                )
            elif broken == "out_layout":
                out = draw(st.sampled_from(["negative", "step", "readonly", "f"]))
                arr = layout(np.zeros(shape, np.float32), out, np.random.default_rng(0))
                if arr.flags.c_contiguous and arr.flags.writeable:  # a 1-wide array is contiguous either way
                    return
                expect_error(ValueError, lambda: F.matmul(a, b, transpose_b=transpose_b, out=arr))
            elif broken == "out_overlap" and a.dtype == np.float32 and a.flags.c_contiguous and a.shape == shape:
                expect_error(ValueError, lambda: F.matmul(a, b, transpose_b=transpose_b, out=a))
            elif broken == "out_ok":
                out = np.full(shape, 7.0, np.float32)
                got = F.matmul(a, b, transpose_b=transpose_b, out=out)
                assert got is out or np.shares_memory(got, out)
                with np.errstate(all="ignore"):
                    want = ref.matmul(f64(a), f64(b), transpose_b)
                close(
                    out,
                    want,
                    atol=8 * np.sqrt(K) * ref.EPS32,
                    rtol=0,
                    scale=_gemm_scale(a, np.swapaxes(b, -1, -2) if transpose_b else b),
                )
        else:
            with np.errstate(all="ignore"):
                want = ref.matmul(f64(a), f64(b), transpose_b)
            bb = np.swapaxes(b, -1, -2) if transpose_b else b
            close(
                F.matmul(a, b, transpose_b=transpose_b),
                want,
                atol=8 * np.sqrt(K) * ref.EPS32,
                rtol=0,
                scale=_gemm_scale(a, bb),
            )


@examples(80)
@given(data=st.data())
def test_linear(data):
    draw = data.draw
    n_in, n_out = draw(DIMS), draw(DIMS)
    lead = tuple(draw(st.lists(DIMS, min_size=1, max_size=3)))
    x = draw(values(lead + (n_in,)))
    w = draw(values((n_out, n_in)))
    bias = draw(st.one_of(st.none(), values((n_out,))))
    act = draw(st.sampled_from(["none", "relu", "gelu", "gelu_tanh", "silu"]))
    broken = draw(
        st.sampled_from([None, None, "dtype", "in", "bias", "weight_rank", "zero", "activation", "activation_type"])
    )
    with isa(draw(st.sampled_from(ISAS))):
        if broken == "dtype":
            which = draw(st.sampled_from(["x", "weight", "bias"]))
            args = {"x": x, "weight": w, "bias": bias if bias is not None else np.zeros(n_out)}
            args[which] = bad_dtype(draw, args[which])
            expect_error(TypeError, lambda: F.linear(args["x"], args["weight"], args["bias"], activation=act))
        elif broken == "in":
            expect_error(ValueError, lambda: F.linear(x, np.ones((n_out, n_in + 1), np.float32), bias))
        elif broken == "bias":
            bad = np.ones(draw(st.sampled_from([(n_out + 1,), (1, n_out)])), np.float32)
            expect_error(ValueError, lambda: F.linear(x, w, bad))
        elif broken == "weight_rank":
            expect_error(ValueError, lambda: F.linear(x, np.ones((n_in,), np.float32)))
        elif broken == "zero":
            expect_error(ValueError, lambda: F.linear(np.ones((0, n_in), np.float32), w))
        elif broken == "activation":
            expect_error(
                ValueError, lambda: F.linear(x, w, bias, activation=draw(st.sampled_from(["tanh", "", "RELU"])))
            )
        elif broken == "activation_type":
            expect_error(TypeError, lambda: F.linear(x, w, bias, activation=draw(st.sampled_from([None, 1, ["relu"]]))))
        else:
            with np.errstate(all="ignore"):
                pre = ref.linear(f64(x), f64(w), None if bias is None else f64(bias))
                want = {
                    "none": lambda z: z,
                    "relu": ref.relu,
                    "gelu": ref.gelu,
                    "gelu_tanh": _gelu_tanh,
                    "silu": ref.silu,
                }[act](pre)
            scale = _gemm_scale(x, np.swapaxes(w, 0, 1)) + (0 if bias is None else np.abs(np.nan_to_num(f64(bias))))
            close(
                F.linear(x, w, bias, activation=act),
                want,
                atol=8 * np.sqrt(n_in) * ref.EPS32 + 1e-6,
                rtol=1e-5,
                scale=scale,
            )


# ----------------------------------------------------------------------------------------------------
# scaled_dot_product_attention, multi_head_attention
# ----------------------------------------------------------------------------------------------------
LK = st.sampled_from([1, 2, 3, 5, 8, 17, 33, 257])
LQ = st.sampled_from([1, 2, 3, 4, 5, 9, 33])


@st.composite
def attn_mask_for(draw, B, H, Lq, Lk, three_d="batch"):
    shapes = [(Lq, Lk), (B, Lq, Lk), (1, Lq, Lk), (B, H, Lq, Lk), (1, H, 1, Lk), (B, 1, Lq, Lk)]
    if three_d == "batch_heads":
        shapes = [(Lq, Lk), (B * H, Lq, Lk), (B, H, Lq, Lk)]
    return draw(mask_values(draw(st.sampled_from(shapes))))


def _sdpa_reference(q, k, v, attn_mask, kpm, causal, scale, three_d="batch"):
    with np.errstate(all="ignore"):
        m = (
            None
            if attn_mask is None
            else (np.asarray(attn_mask) if np.asarray(attn_mask).dtype == bool else f64(attn_mask))
        )
        kp = None if kpm is None else (np.asarray(kpm) if np.asarray(kpm).dtype == bool else f64(kpm))
        if m is not None and m.ndim == 3 and three_d == "batch" and m.shape[0] == 1:
            m = np.broadcast_to(m, (q.shape[0],) + m.shape[1:])
        if m is not None and m.ndim == 4:
            m = np.broadcast_to(m, q.shape[:3] + (k.shape[2],))
        return ref.sdpa(
            f64(q), f64(k), f64(v), attn_mask=m, key_padding_mask=kp, is_causal=causal, scale=scale, three_d=three_d
        )


def _check_attention(got_out, got_w, want_out, want_w, v, values_finite):
    # Values of keys a query does not see (weight 0) are never read: with non-finite values only the outputs
    # the reference has finite are compared.
    vmag = np.abs(np.nan_to_num(f64(v), posinf=0, neginf=0)).max(initial=0.0) + 1.0
    close(got_out, want_out, atol=3e-5, rtol=3e-5, scale=vmag, nan_pattern=values_finite)
    if got_w is not None:
        close(got_w, want_w, atol=3e-6, rtol=3e-5)


@examples(80)
@given(data=st.data())
def test_scaled_dot_product_attention(data):
    draw = data.draw
    B, H, Lq, Lk, D, Dv = draw(SMALL), draw(SMALL), draw(LQ), draw(LK), draw(DIMS), draw(DIMS)
    q, k = draw(values((B, H, Lq, D))), draw(values((B, H, Lk, D)))
    v = draw(values((B, H, Lk, Dv)))
    attn_mask = draw(st.one_of(st.none(), attn_mask_for(B, H, Lq, Lk)))
    kpm = draw(st.one_of(st.none(), mask_values((B, Lk))))
    causal = draw(st.booleans())
    scale = draw(st.sampled_from([None, None, 0.5, 0.0, -1.0]))
    weights = draw(st.booleans())
    call = dict(attn_mask=attn_mask, key_padding_mask=kpm, is_causal=causal, scale=scale, return_weights=weights)
    broken = draw(
        st.sampled_from(
            [
                None,
                None,
                None,
                "dtype",
                "mask_dtype",
                "D",
                "Lk",
                "batch",
                "rank",
                "mask_shape",
                "kpm_shape",
                "zero",
                "scale",
                "out_dtype",
                "out_ok",
            ]
        )
    )
    with isa(draw(st.sampled_from(ISAS))):
        if broken == "dtype":
            which = draw(st.integers(0, 2))
            args = [q, k, v]
            args[which] = bad_dtype(draw, args[which])
            expect_error(TypeError, lambda: F.scaled_dot_product_attention(*args, **call))
        elif broken == "mask_dtype":
            bad = draw(st.sampled_from([np.int64, np.uint8, np.complex64, object]))
            which = draw(st.sampled_from(["attn_mask", "key_padding_mask"]))
            shape = (Lq, Lk) if which == "attn_mask" else (B, Lk)
            expect_error(
                TypeError, lambda: F.scaled_dot_product_attention(q, k, v, **{**call, which: np.zeros(shape, bad)})
            )
        elif broken == "D":
            expect_error(
                ValueError, lambda: F.scaled_dot_product_attention(q, np.ones((B, H, Lk, D + 1), np.float32), v, **call)
            )
        elif broken == "Lk":
            expect_error(
                ValueError,
                lambda: F.scaled_dot_product_attention(q, k, np.ones((B, H, Lk + 1, Dv), np.float32), **call),
            )
        elif broken == "batch":
            expect_error(
                ValueError,
                lambda: F.scaled_dot_product_attention(
                    q, np.ones((B + 1, H, Lk, D), np.float32), np.ones((B + 1, H, Lk, Dv), np.float32)
                ),
            )
        elif broken == "rank":
            expect_error(ValueError, lambda: F.scaled_dot_product_attention(np.asarray(q)[0], k, v))
        elif broken == "mask_shape":
            bad = draw(st.sampled_from([(Lq + 1, Lk), (Lq, Lk + 1), (Lk,), (B + 1, Lq, Lk), (1, 1, 1, Lq, Lk), ()]))
            expect_error(ValueError, lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=np.zeros(bad, bool)))
        elif broken == "kpm_shape":
            bad = draw(st.sampled_from([(Lk,), (B, Lk + 1), (B + 1, Lk), (B, 1, Lk)]))
            expect_error(
                ValueError, lambda: F.scaled_dot_product_attention(q, k, v, key_padding_mask=np.zeros(bad, bool))
            )
        elif broken == "zero":
            expect_error(
                ValueError,
                lambda: F.scaled_dot_product_attention(
                    q, np.ones((B, H, 0, D), np.float32), np.ones((B, H, 0, Dv), np.float32)
                ),
            )
        elif broken == "scale":
            bad = draw(st.sampled_from([float("nan"), float("inf"), "x", None]))
            if bad is not None:  # None is the default
                expect_error(
                    TypeError if isinstance(bad, str) else ValueError,
                    lambda: F.scaled_dot_product_attention(q, k, v, scale=bad),
                )
        elif broken == "out_dtype":
            expect_error(TypeError, lambda: F.scaled_dot_product_attention(q, k, v, out=np.zeros((B, H, Lq, Dv))))
        else:
            out = np.full((B, H, Lq, Dv), 7.0, np.float32) if broken == "out_ok" else None
            res = F.scaled_dot_product_attention(q, k, v, **call, out=out)
            got_out, got_w = res if weights else (res, None)
            if out is not None:
                assert np.shares_memory(got_out, out)
            want_out, want_w = _sdpa_reference(q, k, v, attn_mask, kpm, causal, scale)
            _check_attention(got_out, got_w, want_out, want_w, v, finite(v))


@examples(60)
@given(data=st.data())
def test_multi_head_attention(data):
    draw = data.draw
    B, Lq, H = draw(SMALL), draw(LQ), draw(st.sampled_from([1, 2, 3, 4]))
    E = H * draw(st.sampled_from([1, 2, 3, 8]))
    self_attention = draw(st.booleans())
    Lk = Lq if self_attention else draw(LK)
    kdim = E if self_attention else draw(DIMS)
    vdim = E if self_attention else draw(DIMS)
    query = draw(values((B, Lq, E), special=False))
    key = query if self_attention else draw(values((B, Lk, kdim), special=False))
    value = query if self_attention else draw(values((B, Lk, vdim), special=False))
    w = {
        n: draw(values(s, scale=0.3, special=False))
        for n, s in (("w_q", (E, E)), ("w_k", (E, kdim)), ("w_v", (E, vdim)), ("w_o", (E, E)))
    }
    b = {n: draw(st.one_of(st.none(), values((E,), special=False))) for n in ("b_q", "b_k", "b_v", "b_o")}
    attn_mask = draw(st.one_of(st.none(), attn_mask_for(B, H, Lq, Lk, "batch_heads")))
    kpm = draw(st.one_of(st.none(), mask_values((B, Lk))))
    causal, need, average = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    unbatched = B == 1 and draw(st.booleans()) and (attn_mask is None or attn_mask.ndim == 2)
    call = dict(
        num_heads=H,
        **w,
        **b,
        attn_mask=attn_mask,
        key_padding_mask=kpm,
        is_causal=causal,
        need_weights=need,
        average_attn_weights=average,
    )
    broken = draw(
        st.sampled_from([None, None, None, "heads", "heads_type", "dtype", "weight_shape", "mask_shape", "rank"])
    )
    with isa(draw(st.sampled_from(ISAS))):
        if broken == "heads":
            bad = draw(st.sampled_from([0, -H, E + 1] + ([H + 1] if E % (H + 1) else [])))
            expect_error(ValueError, lambda: F.multi_head_attention(query, key, value, **{**call, "num_heads": bad}))
        elif broken == "heads_type":
            bad = draw(st.sampled_from([float(H), True, str(H), None]))
            expect_error(ValueError, lambda: F.multi_head_attention(query, key, value, **{**call, "num_heads": bad}))
        elif broken == "dtype":
            which = draw(st.sampled_from(["query", "w_q", "w_o", "b_v"]))
            if which == "query":
                expect_error(TypeError, lambda: F.multi_head_attention(bad_dtype(draw, query), key, value, **call))
            else:
                good = np.ones((E,) if which == "b_v" else (E, E))
                expect_error(
                    TypeError,
                    lambda: F.multi_head_attention(query, key, value, **{**call, which: bad_dtype(draw, good)}),
                )
        elif broken == "weight_shape":
            which = draw(st.sampled_from(["w_q", "w_k", "w_o", "b_q"]))
            bad = np.ones(
                draw(st.sampled_from([(E + 1, E), (E, E + 1), (E * E,)])) if which != "b_q" else (E + 1,), np.float32
            )
            expect_error(ValueError, lambda: F.multi_head_attention(query, key, value, **{**call, which: bad}))
        elif broken == "mask_shape":
            bad = draw(st.sampled_from([(Lq + 1, Lk), (B, Lq, Lk + 1) if B * H != B else (B + 1, Lq, Lk), (Lk,)]))
            expect_error(
                ValueError,
                lambda: F.multi_head_attention(query, key, value, **{**call, "attn_mask": np.zeros(bad, bool)}),
            )
        elif broken == "rank":
            expect_error(
                ValueError, lambda: F.multi_head_attention(np.ones((1, B, Lq, E), np.float32), key, value, **call)
            )
        else:
            args = (query, key, value)
            if unbatched:
                args = tuple(np.asarray(a)[0] for a in args)
                if self_attention:
                    args = (args[0], args[0], args[0])
                call["key_padding_mask"] = None if kpm is None else np.asarray(kpm)[0]
            out, weights = F.multi_head_attention(*args, **call)
            # reference: projections, heads, sdpa (torch's (B * H, Lq, Lk) 3-D masks), concatenation, W_O
            with np.errstate(all="ignore"):

                def proj(x, wn, bn):
                    return ref.linear(f64(x), f64(w[wn]), None if b[bn] is None else f64(b[bn]))

                def heads(x, L):
                    return x.reshape(B, L, H, E // H).transpose(0, 2, 1, 3)

                qh, kh = heads(proj(query, "w_q", "b_q"), Lq), heads(proj(key, "w_k", "b_k"), Lk)
                vh = heads(proj(value, "w_v", "b_v"), Lk)
                o, p = _sdpa_reference(qh, kh, vh, attn_mask, kpm, causal, None, "batch_heads")
                want = ref.linear(
                    o.transpose(0, 2, 1, 3).reshape(B, Lq, E),
                    f64(w["w_o"]),
                    None if b["b_o"] is None else f64(b["b_o"]),
                )
            if unbatched:
                want, p = want[0], p[0]
            mag = 1.0 + np.abs(want).max(initial=0.0)
            close(out, want, atol=2e-4 * mag, rtol=1e-4)
            if need:
                p = p.mean(axis=-3) if average else p
                close(weights, p, atol=1e-4, rtol=1e-4)
            else:
                assert weights is None


# ----------------------------------------------------------------------------------------------------
# attention_scores, project_keys, attention
# ----------------------------------------------------------------------------------------------------
SCORE_WEIGHTS = {
    "dot": (),
    "scaled_dot": ("scale",),
    "cosine": (),
    "general": ("w",),
    "concat": ("w", "b", "v", "v_bias"),
    "additive": ("w_q", "b_q", "w_k", "b_k", "v", "v_bias"),
}


def _unit(x):
    return x / np.maximum(np.sqrt((x * x).sum(-1, keepdims=True)), F.COSINE_EPS)


def ref_scores(q, k, score, wts, kp=None):
    """float64 scores (B, Lq, Lk) of q (B, Lq, Dq) against k (B, Lk, Dk) (or the projected keys kp)."""
    q = f64(q)
    k = None if k is None else f64(k)
    g = {n: (None if x is None else (f64(x) if n not in ("scale", "v_bias") else x)) for n, x in wts.items()}
    Dq = q.shape[-1]
    if score == "dot":
        return q @ np.swapaxes(k, -1, -2)
    if score == "scaled_dot":
        return q @ np.swapaxes(k, -1, -2) * (1 / np.sqrt(Dq) if g.get("scale") is None else g["scale"])
    if score == "cosine":
        kk = _unit(k) if kp is None else f64(kp)
        return _unit(q) @ np.swapaxes(kk, -1, -2)
    if score == "general":
        kk = k @ g["w"].T if kp is None else f64(kp)
        return q @ np.swapaxes(kk, -1, -2)
    if score == "concat":
        qp = q @ g["w"][:, :Dq].T + (0 if g.get("b") is None else g["b"])
        kk = k @ g["w"][:, Dq:].T if kp is None else f64(kp)
    else:
        qp = q @ g["w_q"].T + (0 if g.get("b_q") is None else g["b_q"])
        kk = (k @ g["w_k"].T + (0 if g.get("b_k") is None else g["b_k"])) if kp is None else f64(kp)
    return np.tanh(qp[:, :, None, :] + kk[:, None, :, :]) @ g["v"] + (g.get("v_bias") or 0.0)


@st.composite
def score_call(draw):
    """(score, q, k, weights dict, B, Lq, Lk, Dq, Dk, unbatched) of a valid attention_scores call."""
    score = draw(st.sampled_from(sorted(SCORE_WEIGHTS)))
    B, Lq, Lk = draw(SMALL), draw(LQ), draw(st.sampled_from([1, 2, 3, 5, 9, 33]))
    Dq = draw(DIMS)
    Dk = Dq if score in ("dot", "scaled_dot", "cosine") else draw(DIMS)
    Hh = draw(DIMS)
    q, k = draw(values((B, Lq, Dq))), draw(values((B, Lk, Dk)))
    wts = {}
    if score == "scaled_dot":
        wts["scale"] = draw(st.sampled_from([None, 0.5, 2.0]))
    elif score == "general":
        wts["w"] = draw(values((Dq, Dk), scale=0.5))
    elif score == "concat":
        wts.update(
            w=draw(values((Hh, Dq + Dk), scale=0.5)),
            b=draw(st.one_of(st.none(), values((Hh,)))),
            v=draw(values((Hh,))),
            v_bias=draw(st.sampled_from([0.0, 0.5])),
        )
    elif score == "additive":
        wts.update(
            w_q=draw(values((Hh, Dq), scale=0.5)),
            b_q=draw(st.one_of(st.none(), values((Hh,)))),
            w_k=draw(values((Hh, Dk), scale=0.5)),
            b_k=draw(st.one_of(st.none(), values((Hh,)))),
            v=draw(values((Hh,))),
            v_bias=draw(st.sampled_from([0.0, -1.5])),
        )
    unbatched = B == 1 and draw(st.booleans())
    return score, q, k, wts, B, Lq, Lk, Dq, Dk, unbatched


def _finite_call(q, k, wts):
    """The same call with NaN / inf replaced: a broken call must fail for the one thing broken in it."""

    def fix(x):
        return x if x is None or isinstance(x, (float, int)) else np.nan_to_num(as_f32(x), posinf=1.0, neginf=-1.0)

    return fix(q), fix(k), {n: fix(x) for n, x in wts.items()}


def _array_inputs(q, k, wts):
    return [q, k] + [x for n, x in wts.items() if n not in ("scale", "v_bias")]


def _score_scale(q, k, score, wts):
    """Magnitude bound of the score terms, for the tolerance."""

    def mag(x):
        return 0.0 if x is None else float(np.abs(np.nan_to_num(f64(x), posinf=0, neginf=0)).max(initial=0.0))

    if score in ("concat", "additive"):
        return 1.0 + mag(wts.get("v")) * 8
    if score == "cosine":
        return 1.0
    d = f64(q).shape[-1]
    return 1.0 + d * mag(q) * mag(k) * (1.0 if score != "general" else mag(wts["w"]) * f64(k).shape[-1])


def _squeeze(x, unbatched):
    return np.asarray(x)[0] if unbatched else x


@examples(80)
@given(call=score_call(), data=st.data())
def test_attention_scores_and_project_keys(call, data):
    draw = data.draw
    score, q, k, wts, B, Lq, Lk, Dq, Dk, unbatched = call
    use_projected = score in ("cosine", "general", "concat", "additive") and draw(st.booleans())
    broken = draw(
        st.sampled_from(
            [None, None, None, "score", "missing", "extra", "weight_shape", "dtype", "batch", "rank", "zero", "v_bias"]
        )
    )
    if broken:
        q, k, wts = _finite_call(q, k, wts)
    qq, kk = _squeeze(q, unbatched), _squeeze(k, unbatched)
    with isa(draw(st.sampled_from(ISAS))):
        if broken == "score":
            expect_error(
                ValueError,
                lambda: F.attention_scores(qq, kk, score=draw(st.sampled_from(["Dot", "bahdanau", "", None, 3]))),
            )
        elif broken == "missing" and score in ("general", "concat", "additive"):
            name = draw(st.sampled_from([n for n in ("w", "w_q", "v") if n in SCORE_WEIGHTS[score]]))
            expect_error(ValueError, lambda: F.attention_scores(qq, kk, score=score, **{**wts, name: None}))
        elif broken == "extra":
            name = draw(
                st.sampled_from([n for n in ("w", "w_q", "w_k", "v", "b", "scale") if n not in SCORE_WEIGHTS[score]])
            )
            expect_error(
                ValueError,
                lambda: F.attention_scores(
                    qq, kk, score=score, **wts, **{name: 0.5 if name == "scale" else np.ones((3, 3), np.float32)}
                ),
            )
        elif broken == "weight_shape" and score in ("general", "concat", "additive"):
            name = draw(
                st.sampled_from(
                    [
                        n
                        for n in ("w", "w_q", "w_k", "v", "b", "b_q")
                        if n in SCORE_WEIGHTS[score] and wts.get(n) is not None
                    ]
                )
            )
            good = np.asarray(wts[name])
            bad = np.ones(
                draw(st.sampled_from([good.shape[:-1] + (good.shape[-1] + 1,), good.shape + (1,)])), np.float32
            )
            expect_error(ValueError, lambda: F.attention_scores(qq, kk, score=score, **{**wts, name: bad}))
        elif broken == "dtype":
            expect_error(TypeError, lambda: F.attention_scores(bad_dtype(draw, qq), kk, score=score, **wts))
        elif broken == "batch" and not unbatched:
            expect_error(
                ValueError, lambda: F.attention_scores(q, np.ones((B + 1, Lk, Dk), np.float32), score=score, **wts)
            )
        elif broken == "rank":
            expect_error(ValueError, lambda: F.attention_scores(np.ones((Dq,), np.float32), kk, score=score, **wts))
        elif broken == "zero":
            expect_error(
                ValueError,
                lambda: F.attention_scores(
                    qq, np.ones(((B,) if not unbatched else ()) + (0, Dk), np.float32), score=score, **wts
                ),
            )
        elif broken == "v_bias" and score in ("concat", "additive"):
            bad = draw(st.sampled_from([float("nan"), float("inf"), "x", [1.0, 2.0]]))
            expect_error(
                TypeError if isinstance(bad, (str, list)) else ValueError,
                lambda: F.attention_scores(qq, kk, score=score, **{**wts, "v_bias": bad}),
            )
        else:
            kp = None
            if use_projected:
                takes = {"general": ("w",), "concat": ("w",), "additive": ("w_k", "b_k")}.get(score, ())
                kp = F.project_keys(kk, score=score, **{n: wts[n] for n in takes})
                with np.errstate(all="ignore"):
                    want_kp = {
                        "cosine": lambda: _unit(f64(k)),
                        "general": lambda: f64(k) @ f64(wts["w"]).T,
                        "concat": lambda: f64(k) @ f64(wts["w"])[:, Dq:].T,
                        "additive": lambda: f64(k) @ f64(wts["w_k"]).T + (0 if wts["b_k"] is None else f64(wts["b_k"])),
                    }[score]()
                if finite(k, *[wts.get(n) for n in takes]):
                    close(
                        kp,
                        _squeeze(want_kp, unbatched),
                        atol=1e-4,
                        rtol=1e-4,
                        scale=1.0 + np.abs(want_kp).max(initial=0.0),
                    )
            wts_call = {n: x for n, x in wts.items() if not (kp is not None and n in ("w_k", "b_k"))}

            def run():
                return F.attention_scores(
                    qq,
                    None if kp is not None and draw(st.booleans()) else kk,
                    score=score,
                    keys_projected=kp,
                    **wts_call,
                )

            if not finite(*_array_inputs(q, k, wts)) or (kp is not None and not np.isfinite(kp).all()):
                expect_error(ValueError, run)  # documented: NaN / inf inputs are refused
                return
            got = run()
            with np.errstate(all="ignore"):
                want = _squeeze(ref_scores(q, k, score, wts), unbatched)
            close(got, want, atol=2e-5, rtol=1e-4, scale=_score_scale(q, k, score, wts))


@examples(80)
@given(call=score_call(), data=st.data())
def test_attention(call, data):
    draw = data.draw
    score, q, k, wts, B, Lq, Lk, Dq, Dk, unbatched = call
    Dv = draw(DIMS)
    v = draw(values((B, Lk, Dv)))
    broken = draw(
        st.sampled_from(
            [None, None, None, "v_len", "v_dtype", "mask_shape", "mask_dtype", "kpm_shape", "kwarg", "float_mask"]
        )
    )
    if broken:
        q, k, wts = _finite_call(q, k, wts)
    mask = draw(
        st.one_of(
            st.none(),
            mask_values(draw(st.sampled_from([(Lq, Lk)] + ([] if unbatched else [(B, Lq, Lk), (1, Lq, Lk)])))),
        )
    )
    kpm = draw(st.one_of(st.none(), mask_values((B, Lk), float_ok=False)))
    hard, need = draw(st.booleans()), draw(st.booleans())
    qq, kk, vv = (_squeeze(x, unbatched) for x in (q, k, v))
    kpm_call = kpm
    if unbatched and kpm is not None and draw(st.booleans()):
        kpm_call = np.asarray(kpm)[0]  # unbatched keys take a (Lk,) mask, or (1, Lk)
    with isa(draw(st.sampled_from(ISAS))):
        common = dict(score=score, hard=hard, need_weights=need, **wts)
        if broken == "v_len":
            bad = np.ones(((B,) if not unbatched else ()) + (Lk + 1, Dv), np.float32)
            expect_error(ValueError, lambda: F.attention(qq, kk, bad, **common))
        elif broken == "v_dtype":
            expect_error(TypeError, lambda: F.attention(qq, kk, bad_dtype(draw, vv), **common))
        elif broken == "mask_shape":
            bad = draw(st.sampled_from([(Lq + 1, Lk), (Lq, Lk + 1), (Lk,), (B + 1, Lq, Lk), (1, 1, Lq, Lk)]))
            expect_error(ValueError, lambda: F.attention(qq, kk, vv, mask=np.zeros(bad, bool), **common))
        elif broken == "mask_dtype":
            expect_error(
                TypeError,
                lambda: F.attention(
                    qq, kk, vv, mask=np.zeros((Lq, Lk), draw(st.sampled_from([np.int64, np.uint8, object]))), **common
                ),
            )
        elif broken == "kpm_shape":
            bad = draw(st.sampled_from([(B, Lk + 1), (B + 1, Lk), (B, 1, Lk)]))
            expect_error(ValueError, lambda: F.attention(qq, kk, vv, key_padding_mask=np.zeros(bad, bool), **common))
        elif broken == "kwarg":
            expect_error(TypeError, lambda: F.attention(qq, kk, vv, **common, values=vv))
        elif broken == "float_mask":
            bad = np.zeros((Lq, Lk), np.float32)
            bad[0, 0] = draw(st.sampled_from([np.nan, np.inf]))
            expect_error(ValueError, lambda: F.attention(qq, kk, vv, mask=bad, **common))
        else:

            def run():
                return F.attention(qq, kk, vv, mask=mask, key_padding_mask=kpm_call, **common)

            if not finite(*_array_inputs(q, k, wts)):
                expect_error(ValueError, run)
                return
            res = run()
            ctx, weights = res if need else (res, None)
            with np.errstate(all="ignore"):
                s = ref_scores(q, k, score, wts)
                if mask is not None:
                    m = np.asarray(mask)
                    s = np.where(m, -np.inf, s) if m.dtype == bool else s + f64(m)
                if kpm is not None:
                    s = np.where(np.asarray(kpm)[:, None, :], -np.inf, s)
            if hard:
                # one-hot at the highest score (ties: the first key; every key masked: zeros), context = its value.
                # Checked where the float64 reference leaves no doubt about the winner.
                srt = np.sort(np.where(np.isnan(s), -np.inf, s), -1)
                gap = srt[..., -1] - (srt[..., -2] if Lk > 1 else -np.inf)
                best = np.argmax(s, -1)
                seen = srt[..., -1] > -np.inf
                clear = (gap > 1e-3 * _score_scale(q, k, score, wts)) | ~seen
                w_full = np.asarray(
                    weights
                    if weights is not None
                    else F.attention(
                        qq, kk, vv, mask=mask, key_padding_mask=kpm_call, **{**common, "need_weights": True}
                    )[1]
                )
                w_full = w_full[None] if unbatched else w_full
                want_w = (np.arange(Lk) == best[..., None]) & seen[..., None]
                assert np.array_equal(w_full[clear], want_w[clear].astype(np.float32))
                assert set(np.unique(w_full)) <= {0.0, 1.0} and np.all(w_full.sum(-1) <= 1)
                chosen = np.take_along_axis(as_f32(v), np.argmax(w_full, -1)[..., None], 1) * w_full.sum(-1)[..., None]
                got_ctx = np.asarray(ctx)[None] if unbatched else np.asarray(ctx)
                assert np.array_equal(got_ctx, chosen.astype(np.float32), equal_nan=True)
                return
            with np.errstate(all="ignore"):
                p = ref.softmax(s)
                want_ctx = p @ f64(v)
            vmag = 1.0 + np.abs(np.nan_to_num(f64(v), posinf=0, neginf=0)).max(initial=0.0)
            # the scores' float32 error moves the weights by about the same amount
            err = 2e-5 + 1e-4 * _score_scale(q, k, score, wts) * ref.EPS32 * 100
            close(ctx, _squeeze(want_ctx, unbatched), atol=err * Lk, rtol=1e-4, scale=vmag, nan_pattern=finite(v))
            if need:
                close(weights, _squeeze(p, unbatched), atol=err, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------
# regressions: one case of each bug fuzzing found (docs/fuzzing.md lists them)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("n", [3, 21, 64])
def test_regression_softmax_of_a_row_with_nan_or_inf_is_nan(name, n):
    # was (avx2, avx512): zeros, or a made-up distribution such as [1, 1.5e-39, 4e-39], for a row holding NaN
    x = np.tile(np.array([1.0, -2.0, 0.5], np.float32), (4, n // 3 + 1))[:, :n]
    x[0, 1], x[1, -1], x[2, :] = np.nan, np.inf, -np.inf
    x[3, :] = -np.inf
    x[3, 0] = np.nan  # NaN among masked (-inf) entries only
    with isa(name):
        for fn in (F.softmax, F.log_softmax):
            y = fn(x)
            assert np.isnan(y[[0, 1, 3]]).all(), (fn.__name__, y)
            assert not np.isnan(y[2]).any()  # every entry -inf: zeros / -inf, as before


@pytest.mark.parametrize("name", ISAS)
def test_regression_relu_of_nan_is_nan(name):
    # was: 0 on every kernel set (torch gives NaN), in F.relu and in the GEMM's fused relu
    x = np.array([[np.nan, 1.0, -1.0, np.inf, -np.inf]], np.float32)
    with isa(name):
        np.testing.assert_array_equal(F.relu(np.tile(x, (1, 7))), np.tile([[np.nan, 1, 0, np.inf, 0]], (1, 7)))
        y = F.linear(
            np.ones((1, 2), np.float32),
            np.eye(2, dtype=np.float32),
            np.array([np.nan, -3.0], np.float32),
            activation="relu",
        )
        assert np.isnan(y[0, 0]) and y[0, 1] == 0.0


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("Lq", [3, 40])  # the direct path (a few queries) and the flash path
@pytest.mark.parametrize("where", ["q", "k", "all_scores"])
def test_regression_attention_with_nan_scores_is_nan(name, Lq, where):
    # was (avx2, avx512): NaN in q gave its query a zero output, as if every key were masked; NaN in k put all the
    # weight on that key (the scalar set gave NaN)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, L, 8)).astype(np.float32) for L in (Lq, 30, 30))
    if where == "q":
        q[0, 1, 2, 3] = np.nan
    elif where == "k":
        k[0, 1, 5, 0] = np.nan
    else:
        q[0, 1, 2, :] = np.nan
    mask = np.zeros((1, 30), bool)
    mask[0, 20:] = True
    with isa(name):
        for weights in (False, True):
            res = F.scaled_dot_product_attention(q, k, v, key_padding_mask=mask, return_weights=weights)
            out = res[0] if weights else res
            nan_rows = np.isnan(out).any(-1)
            want = np.zeros_like(nan_rows)
            if where == "k":
                want[0, 1, :] = True
            else:
                want[0, 1, 2] = True
            np.testing.assert_array_equal(nan_rows, want)
            if weights:
                np.testing.assert_array_equal(np.isnan(res[1]).any(-1), want)


def test_regression_mask_views_running_backwards_are_copied():
    # was: ValueError "expected attn_mask to have a contiguous last axis and non-negative strides ... pass
    # np.ascontiguousarray(attn_mask)", though the functions document that such views are copied
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 1, 2, 4)).astype(np.float32) for _ in range(3))
    am = (rng.random((1, 1, 2, 2)) < 0.5)[:, :, ::-1]
    kpm = np.array([[False, True], [True, False]])[::-1]
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=am, key_padding_mask=kpm)
    want, _ = ref.sdpa(q, k, v, attn_mask=np.ascontiguousarray(am), key_padding_mask=np.ascontiguousarray(kpm))
    np.testing.assert_allclose(got, want, atol=1e-5)
    x = rng.standard_normal((2, 2, 4)).astype(np.float32)
    w = np.eye(4, dtype=np.float32)
    F.multi_head_attention(
        x, x, x, num_heads=2, w_q=w, w_k=w, w_v=w, w_o=w, key_padding_mask=kpm[:, :1][::-1].repeat(2, 1)
    )


def test_regression_layer_norm_eps_must_be_a_number():
    # was: eps="1e-5" accepted; eps=None -> "float() argument must be a string or a real number" (eps not named)
    x = np.ones((2, 3), np.float32)
    for bad in ("1e-5", None, [1e-5]):
        with pytest.raises(TypeError, match="eps"):
            F.layer_norm(x, eps=bad)
    with pytest.raises(ValueError, match="eps"):
        F.layer_norm(x, eps=float("nan"))
    F.layer_norm(x, eps=np.float32(1e-5))


def test_regression_linear_activation_is_checked():
    # was: activation="" silently meant "none"; activation=None gave pybind11's "incompatible function arguments"
    x, w = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="activation"):
        F.linear(x, w, activation="")
    with pytest.raises(TypeError, match="activation"):
        F.linear(x, w, activation=None)


def test_regression_scale_and_v_bias_must_be_numbers():
    # was: ValueError "could not convert string to float: 'x'" / TypeError "only 0-dimensional arrays can be
    # converted to Python scalars": the argument was not named
    q = np.ones((1, 1, 2, 4), np.float32)
    with pytest.raises(TypeError, match="scale"):
        F.scaled_dot_product_attention(q, q, q, scale="x")
    q3 = np.ones((1, 2, 4), np.float32)
    w = np.ones((3, 4), np.float32)
    for bad in ("x", np.ones(2)):
        with pytest.raises(TypeError, match="v_bias"):
            F.attention_scores(q3, q3, score="additive", w_q=w, w_k=w, v=np.ones(3, np.float32), v_bias=bad)
    F.attention_scores(q3, q3, score="additive", w_q=w, w_k=w, v=np.ones(3, np.float32), v_bias=np.float32(0.5))
    F.attention_scores(q3, q3, score="additive", w_q=w, w_k=w, v=np.ones(3, np.float32), v_bias=np.array(0.5))
