"""Attention score functions (dot, scaled_dot, cosine, general, concat, additive), soft and hard attention,
nn.Attention and the heat-map plot, against float64 numpy references written here from the definitions,
and the tutorial's BahdanauAttention in PyTorch. Every ISA path; odd sizes that do not fill a vector."""

import numpy as np
import pytest
from conftest import randn

import pyattn
from pyattn import _core
from pyattn import functional as F
from pyattn.nn import Attention, PreparedKeys

EPS = float(np.finfo(np.float32).eps)
SCORES = ["dot", "scaled_dot", "cosine", "general", "concat", "additive"]


# ---------------------------------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------------------------------
def f64(x):
    return None if x is None else np.asarray(x, dtype=np.float64)


def T(x):
    return np.swapaxes(x, -1, -2)


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def ref_scores(
    q, k, score, w=None, w_q=None, b_q=None, w_k=None, b_k=None, v=None, v_bias=0.0, b=None, scale=None, absolute=False
):
    """(B, Lq, Lk) float64 scores from the definitions. absolute=True: the same sums over |terms| (with
    tanh' <= 1 standing for tanh), the magnitude that float32 rounding errors scale with."""
    q, k, w, w_q, b_q, w_k, b_k, v, b = map(f64, (q, k, w, w_q, b_q, w_k, b_k, v, b))
    ab = np.abs if absolute else (lambda x: x)
    act = (lambda x: 1.0 + np.abs(x)) if absolute else np.tanh
    if score in ("dot", "scaled_dot"):
        s = ab(q) @ T(ab(k))
        if score == "scaled_dot":
            s = s * (1.0 / np.sqrt(q.shape[-1]) if scale is None else abs(scale))
        return s
    if score == "cosine":
        return ab(unit(q)) @ T(ab(unit(k)))
    if score == "general":
        return ab(q) @ ab(w) @ T(ab(k))
    B, Lq, Lk = q.shape[0], q.shape[1], k.shape[1]
    if score == "concat":  # W [q_i; k_j] + b for every pair, concatenated for real
        pairs = np.concatenate(
            [
                np.broadcast_to(q[:, :, None, :], (B, Lq, Lk, q.shape[-1])),
                np.broadcast_to(k[:, None, :, :], (B, Lq, Lk, k.shape[-1])),
            ],
            axis=-1,
        )
        pre = ab(pairs) @ ab(w).T + (0.0 if b is None else ab(b))
    else:
        pre = (ab(q) @ ab(w_q).T + (0.0 if b_q is None else ab(b_q)))[:, :, None, :] + (
            ab(k) @ ab(w_k).T + (0.0 if b_k is None else ab(b_k))
        )[:, None, :, :]
    return act(pre) @ ab(v) + (abs(v_bias) if absolute else v_bias)


def score_tol(q, k, score, **wts):
    """Rounding bound of the float32 scores: 4 eps times the magnitude of the sums involved (the
    projections, the reduction over H with |tanh| and tanh' <= 1 -- which also covers vector tanh's ~1e-7
    absolute error per term). Rounding errors of random-signed sums grow like sqrt(n) eps, not n eps: the
    measured errors stay below 1.5 eps x magnitude, so this bound has room without being loose."""
    return 4 * EPS * ref_scores(q, k, score, absolute=True, **wts) + 1e-30


def ref_attention(s, v, mask=None, key_padding_mask=None, hard=False):
    """Masked softmax (or one-hot arg max, ties -> first) of float64 scores s (B, Lq, Lk); values v."""
    s = np.array(s, dtype=np.float64)
    if mask is not None:
        s = np.where(mask, -np.inf, s) if mask.dtype == bool else s + mask
    if key_padding_mask is not None:
        kp = key_padding_mask[:, None, :]
        s = np.where(kp, -np.inf, s) if kp.dtype == bool else s + kp
    m = s.max(axis=-1, keepdims=True)
    live = np.isfinite(m)
    if hard:
        wts = np.zeros_like(s)
        idx = np.argmax(s, axis=-1)
        np.put_along_axis(wts, idx[..., None], 1.0, axis=-1)
        wts *= live
    else:
        e = np.exp(s - np.where(live, m, 0.0))
        wts = np.where(live, e / np.where(live, e.sum(-1, keepdims=True), 1.0), 0.0)
    return wts @ f64(v), wts


def make_weights(rng, score, Dq, Dk, H, scale=1.0):
    """Random weights of `score` (Linear-like magnitudes), as float32 arrays."""
    if score == "general":
        return {"w": randn(rng, Dq, Dk, scale=scale / np.sqrt(Dk))}
    if score == "concat":
        return {
            "w": randn(rng, H, Dq + Dk, scale=scale / np.sqrt(Dq + Dk)),
            "b": randn(rng, H, scale=0.1),
            "v": randn(rng, H, scale=1 / np.sqrt(H)),
            "v_bias": 0.25,
        }
    if score == "additive":
        return {
            "w_q": randn(rng, H, Dq, scale=scale / np.sqrt(Dq)),
            "b_q": randn(rng, H, scale=0.1),
            "w_k": randn(rng, H, Dk, scale=scale / np.sqrt(Dk)),
            "b_k": randn(rng, H, scale=0.1),
            "v": randn(rng, H, scale=1 / np.sqrt(H)),
            "v_bias": -0.5,
        }
    if score == "scaled_dot":
        return {"scale": None}
    return {}


def dims(score, H):
    """(Dq, Dk) for a case of hidden size H: different widths where the score allows them."""
    return (H, H + 2) if score in ("general", "concat", "additive") else (H, H)


def assert_scores(got, want, tol):
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got - want)
    assert np.all(err <= tol), f"max err {err.max():.3g}, worst err/tol {np.max(err / tol):.3g}"


# ---------------------------------------------------------------------------------------------------
# every score function, every ISA, odd sizes
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("H", [1, 7, 33, 512])
@pytest.mark.parametrize("B,Lq,Lk", [(1, 1, 1), (3, 1, 64), (1, 5, 3), (3, 5, 64), (3, 1, 3), (1, 5, 64)])
def test_scores_all_isas(isa, rng, score, H, B, Lq, Lk):
    Dq, Dk = dims(score, H)
    q, k = randn(rng, B, Lq, Dq), randn(rng, B, Lk, Dk)
    wts = make_weights(rng, score, Dq, Dk, H)
    want, tol = ref_scores(q, k, score, **wts), score_tol(q, k, score, **wts)
    assert_scores(F.attention_scores(q, k, score=score, **wts), want, tol)
    # unbatched inputs give the unbatched scores
    assert_scores(F.attention_scores(q[0], k[0], score=score, **wts), want[0], tol[0])


@pytest.mark.parametrize("H", [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 512])
@pytest.mark.parametrize("Lk", [1, 2, 3, 4, 5, 7, 9, 64])
def test_additive_kernel_every_remainder(isa, rng, H, Lk):
    # every lane remainder of the vector width (8 and 16) and every pass of 4 / 2 / 1 keys
    qp, kp = randn(rng, 2, 3, H), randn(rng, 2, Lk, H)
    v = randn(rng, H)
    got = _core.additive_scores(qp, kp, v, 0.75)
    want = np.tanh(f64(qp)[:, :, None, :] + f64(kp)[:, None, :, :]) @ f64(v) + 0.75
    tol = 4 * EPS * (np.abs(f64(v)).sum() + 0.75) + 1e-30
    assert_scores(got, want, tol)


def test_tanh_accuracy_in_every_lane(isa):
    # one-hot v reads tanh(qp + kp) of one lane: full vectors (W = 8, 16) and the tail, over the whole
    # range (tiny, moderate, saturated arguments), within 2 float32 ulps of 1 absolute
    x = np.concatenate(
        [
            np.linspace(-12, 12, 4001),
            np.geomspace(1e-8, 20, 500),
            -np.geomspace(1e-8, 20, 500),
            [0.0, 1e4, -1e4, 3e38, -3e38],
        ]
    ).astype(np.float32)
    for H in (16, 19):
        qp = np.zeros((1, len(x), H), np.float32)
        kp = np.zeros((1, 1, H), np.float32)
        for h in range(H):
            qp[0, :, h] = x
            kp[0, 0, h] = 0.0 if h % 2 else -0.0
            v = np.zeros(H, np.float32)
            v[h] = 1.0
            got = _core.additive_scores(qp, kp, v)[0, :, 0]
            err = np.abs(got.astype(np.float64) - np.tanh(x.astype(np.float64)))
            assert err.max() <= 2 * EPS, f"lane {h} of {H}: max err {err.max():.3g} at x = {x[np.argmax(err)]}"
            qp[0, :, h] = 0.0


def test_additive_kernel_strided_views(isa, rng):
    # qp and kp as column blocks of wider projection outputs, and every other batch row
    big_q, big_k = randn(rng, 4, 3, 50), randn(rng, 4, 9, 70)
    qp, kp = big_q[::2, :, 5:38], big_k[::2, :, 20:53]
    assert not qp.flags.c_contiguous and not kp.flags.c_contiguous
    v = randn(rng, 33)
    got = _core.additive_scores(qp, kp, v)
    np.testing.assert_array_equal(got, _core.additive_scores(np.ascontiguousarray(qp), np.ascontiguousarray(kp), v))
    want = np.tanh(f64(qp)[:, :, None, :] + f64(kp)[:, None, :, :]) @ f64(v)
    assert_scores(got, want, 4 * EPS * np.abs(f64(v)).sum())


def test_vector_kernels_agree_with_the_scalar_reference(rng):
    qp, kp, v = randn(rng, 3, 5, 517), randn(rng, 3, 67, 517), randn(rng, 517, scale=0.05)
    before = pyattn.get_isa()
    try:
        pyattn.set_isa("scalar")
        want = _core.additive_scores(qp, kp, v, 0.1)
        for isa in _core.available_isas():
            pyattn.set_isa(isa)
            np.testing.assert_allclose(_core.additive_scores(qp, kp, v, 0.1), want, rtol=0, atol=2e-6)
    finally:
        pyattn.set_isa(before)


def test_batch_and_thread_invariance(isa, threads, rng):
    # a row alone equals the same row inside a batch, bit for bit, whatever the split into threads and
    # into passes of 4 / 2 / 1 keys
    qp, kp, v = randn(rng, 5, 3, 37), randn(rng, 5, 29, 37), randn(rng, 37)
    full = _core.additive_scores(qp, kp, v, 0.5)
    for b in range(5):
        np.testing.assert_array_equal(_core.additive_scores(qp[b : b + 1], kp[b : b + 1], v, 0.5), full[b : b + 1])
        np.testing.assert_array_equal(
            _core.additive_scores(qp[b : b + 1, 1:2], kp[b : b + 1], v, 0.5), full[b : b + 1, 1:2]
        )
        for j in (0, 5, 27):
            np.testing.assert_array_equal(
                _core.additive_scores(qp[b : b + 1], kp[b : b + 1, j : j + 2], v, 0.5), full[b : b + 1, :, j : j + 2]
            )


def test_additive_matches_tanh_of_the_projections(rng):
    # F.attention_scores(additive) = v . tanh(qp + kp) + v_bias with qp, kp from F.linear: the same op
    q, k = randn(rng, 2, 4, 10), randn(rng, 2, 6, 12)
    wts = make_weights(rng, "additive", 10, 12, 16)
    qp, kp = F.linear(q, wts["w_q"], wts["b_q"]), F.linear(k, wts["w_k"], wts["b_k"])
    np.testing.assert_array_equal(
        F.attention_scores(q, k, score="additive", **wts), _core.additive_scores(qp, kp, wts["v"], wts["v_bias"])
    )


@pytest.mark.parametrize("score", ["cosine", "general", "concat", "additive"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_keys_projected_equals_projecting_inside(isa, rng, score, unbatched):
    Dq, Dk = dims(score, 33)
    q, k = randn(rng, 3, 5, Dq), randn(rng, 3, 64, Dk)
    wts = make_weights(rng, score, Dq, Dk, 33)
    if unbatched:
        q, k = q[1], k[1]
    kp = F.project_keys(k, score=score, **{n: wts[n] for n in ("w", "w_k", "b_k") if n in wts})
    assert kp.shape[:-1] == k.shape[:-1]
    inside = F.attention_scores(q, k, score=score, **wts)
    given = F.attention_scores(q, None, score=score, keys_projected=kp, **wts)
    given_with_k = F.attention_scores(q, k, score=score, keys_projected=kp, **wts)
    np.testing.assert_array_equal(given, given_with_k)
    if score == "general":  # inside, (q w) . k may be the cheaper order: equal up to rounding
        np.testing.assert_allclose(given, inside, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(given, inside)
    # w_k / b_k are not needed once the keys are projected
    if score == "additive":
        light = {n: x for n, x in wts.items() if n not in ("w_k", "b_k")}
        np.testing.assert_array_equal(F.attention_scores(q, None, score=score, keys_projected=kp, **light), inside)


def test_explicit_scale_and_cosine_eps(rng):
    q, k = randn(rng, 2, 3, 8), randn(rng, 2, 4, 8)
    np.testing.assert_allclose(
        F.attention_scores(q, k, score="scaled_dot", scale=0.37), ref_scores(q, k, "dot") * 0.37, rtol=1e-5, atol=1e-6
    )
    # a zero query has cosine 0 with everything (eps in the norms), not NaN
    q[0, 1] = 0.0
    s = F.attention_scores(q, k, score="cosine")
    assert np.all(s[0, 1] == 0.0)
    assert np.all(np.abs(s) <= 1.0 + 1e-6)
    # cosine is scale-invariant
    np.testing.assert_allclose(F.attention_scores(q * 1e3, k * 1e-3, score="cosine"), s, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# attention: masks, fully masked rows, hard attention
# ---------------------------------------------------------------------------------------------------
def masks(rng, kind, B, Lq, Lk):
    """(mask, key_padding_mask) of a kind; row 0 of batch 0 is fully masked where the kind allows it."""
    if kind == "none":
        return None, None
    if kind == "bool2d":
        m = rng.random((Lq, Lk)) < 0.4
        m[0] = True
        return m, None
    if kind == "bool3d":
        m = rng.random((B, Lq, Lk)) < 0.4
        m[0, 0] = True
        return m, None
    if kind == "float":
        m = np.where(rng.random((B, Lq, Lk)) < 0.3, -np.inf, rng.standard_normal((B, Lq, Lk))).astype(np.float32)
        m[0, 0] = -np.inf
        return m, None
    if kind == "padding":
        kp = np.zeros((B, Lk), dtype=bool)
        kp[:, Lk // 2 + 1 :] = True  # the tail of each source is padding
        kp[0] = True  # batch 0: every key is padding
        return None, kp
    if kind == "padding_float":
        kp = np.where(rng.random((B, Lk)) < 0.3, -np.inf, 0.5).astype(np.float32)
        return None, kp
    if kind == "both":
        m = rng.random((Lq, Lk)) < 0.3
        kp = np.zeros((B, Lk), dtype=bool)
        kp[-1, : Lk - 1] = True
        return m, kp
    raise AssertionError(kind)


MASKS = ["none", "bool2d", "bool3d", "float", "padding", "padding_float", "both"]


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("B,Lq,Lk,H", [(3, 5, 64, 33), (1, 1, 3, 7), (3, 1, 1, 1), (2, 5, 3, 512)])
def test_attention_all_isas(isa, rng, score, mask_kind, hard, B, Lq, Lk, H):
    Dq, Dk = dims(score, H)
    q, k, v = randn(rng, B, Lq, Dq), randn(rng, B, Lk, Dk), randn(rng, B, Lk, 11)
    wts = make_weights(rng, score, Dq, Dk, H)
    mask, kpm = masks(rng, mask_kind, B, Lq, Lk)
    ctx, weights = F.attention(
        q, k, v, score=score, mask=mask, key_padding_mask=kpm, hard=hard, need_weights=True, **wts
    )
    # masks, softmax / arg max and the context, from pyattn's float32 scores (checked against float64 above):
    # the arg max of float32 and float64 scores may differ between near ties, and softmax amplifies the
    # scores' rounding by their magnitude
    s32 = F.attention_scores(q, k, score=score, **wts)
    want_ctx, want_w = ref_attention(s32, v, mask, kpm, hard=hard)
    if hard:
        np.testing.assert_array_equal(weights, want_w)
        np.testing.assert_array_equal(ctx, want_ctx.astype(np.float32))
    else:
        np.testing.assert_allclose(weights, want_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ctx, want_ctx, rtol=1e-5, atol=1e-5)
        # and end to end from float64 scores: a weight moves by at most 2 w max|score error|
        want_ctx, want_w = ref_attention(ref_scores(q, k, score, **wts), v, mask, kpm)
        dw = 2 * want_w * score_tol(q, k, score, **wts).max(-1, keepdims=True) + 1e-6
        assert np.all(np.abs(weights - want_w) <= dw)
        np.testing.assert_allclose(ctx, want_ctx, rtol=0, atol=1e-5 + dw.sum(-1).max() * np.abs(v).max())
    assert ctx.dtype == np.float32 and weights.dtype == np.float32
    assert ctx.shape == (B, Lq, 11) and weights.shape == (B, Lq, Lk)
    live = want_w.sum(-1) > 0
    np.testing.assert_allclose(weights.sum(-1)[live], 1.0, atol=1e-5)
    # fully masked rows: zero weights and a zero context, never NaN
    assert np.all(weights[~live] == 0.0) and np.all(ctx[~live] == 0.0)
    assert np.all(np.isfinite(ctx))
    if mask_kind in ("bool2d", "bool3d", "float", "padding"):
        assert not live[0, 0]
    # need_weights=False returns the context alone
    np.testing.assert_array_equal(
        F.attention(q, k, v, score=score, mask=mask, key_padding_mask=kpm, hard=hard, **wts), ctx
    )


def test_attention_unbatched(rng):
    q, k, v = randn(rng, 4, 8), randn(rng, 6, 8), randn(rng, 6, 3)
    mask = rng.random((4, 6)) < 0.3
    kpm = np.array([False, False, True, False, False, False])
    ctx, w = F.attention(q, k, v, mask=mask, key_padding_mask=kpm, need_weights=True)
    want_ctx, want_w = ref_attention(ref_scores(q[None], k[None], "scaled_dot"), v[None], mask[None], kpm[None])
    assert ctx.shape == (4, 3) and w.shape == (4, 6)
    np.testing.assert_allclose(w, want_w[0], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(ctx, want_ctx[0], rtol=2e-5, atol=2e-5)


def test_hard_attention_ties_go_to_the_first_key(isa, rng):
    B, Lk, D = 2, 7, 5
    k = randn(rng, B, Lk, D)
    k[:, 4] = k[:, 2]  # keys 2 and 4 are identical: their scores tie exactly
    q = k[:, 2:3] * 10.0  # key 2 (and 4) is the best match for the query
    v = randn(rng, B, Lk, 3)
    for score in ("dot", "scaled_dot", "cosine"):
        ctx, w = F.attention(q, k, v, score=score, hard=True, need_weights=True)
        s = F.attention_scores(q, k, score=score)
        assert np.all(s[:, 0, 2] == s[:, 0, 4]) and np.all(np.argmax(s, -1) == 2)
        want = np.zeros((B, 1, Lk), np.float32)
        want[:, 0, 2] = 1.0
        np.testing.assert_array_equal(w, want)
        np.testing.assert_array_equal(ctx, v[:, 2:3])
    # with key 2 masked, the tie is gone and key 4 wins
    kpm = np.zeros((B, Lk), bool)
    kpm[:, 2] = True
    ctx, w = F.attention(q, k, v, hard=True, key_padding_mask=kpm, need_weights=True)
    assert np.all(w[:, 0, 4] == 1.0) and np.all(w.sum(-1) == 1.0)
    np.testing.assert_array_equal(ctx, v[:, 4:5])


@pytest.mark.parametrize("score", ["dot", "additive"])
def test_large_scores_stay_finite(isa, rng, score):
    B, Lq, Lk, H = 2, 3, 40, 512
    q, k, v = randn(rng, B, Lq, H), randn(rng, B, Lk, H), randn(rng, B, Lk, 4)
    if score == "dot":
        q *= 1e4 / np.abs(F.attention_scores(q, k)).max()
        wts = {}
    else:  # v = 20 over 512 tanh units, most saturated at +1 by b_q: scores of order 1e4
        wts = make_weights(rng, "additive", H, H, H, scale=3.0)
        wts["b_q"] = np.full(H, 3.0, np.float32)
        wts["v"] = np.full(H, 20.0, np.float32)
    s = F.attention_scores(q, k, score=score, **wts)
    assert np.isfinite(s).all() and 2e3 < np.abs(s).max() < 1.1e4
    ctx, w = F.attention(q, k, v, score=score, need_weights=True, **wts)
    assert np.isfinite(w).all() and np.isfinite(ctx).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    want_ctx, want_w = ref_attention(s, v)
    np.testing.assert_allclose(w, want_w, atol=1e-6)
    np.testing.assert_allclose(ctx, want_ctx, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# nn.Attention
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", SCORES)
def test_module_matches_functional(isa, rng, score):
    B, Lq, Lk, H = 3, 2, 17, 33
    Dq, Dk = dims(score, H)
    wts = make_weights(rng, score, Dq, Dk, H)
    kwargs = dict(wts, query_dim=Dq) if score == "concat" else wts
    attn = Attention(score, **kwargs)
    q, k, v = randn(rng, B, Lq, Dq), randn(rng, B, Lk, Dk), randn(rng, B, Lk, 6)
    kpm = np.zeros((B, Lk), bool)
    kpm[1, 9:] = True
    want_ctx, want_w = F.attention(q, k, v, score=score, key_padding_mask=kpm, need_weights=True, **wts)
    prepared = attn.prepare(k)
    assert isinstance(prepared, PreparedKeys) and prepared.batch_size == B and prepared.num_keys == Lk
    for keys in (prepared, k):
        ctx, w = attn(q, keys, v, key_padding_mask=kpm)
        np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ctx, want_ctx, rtol=1e-5, atol=1e-5)
    # values default to the keys (Bahdanau's decoder), hard attention, unbatched, need_weights=False
    if Dk == Dq:
        ctx, w = attn(q, prepared)
        np.testing.assert_allclose(ctx, F.attention(q, k, k, score=score, **wts), rtol=1e-5, atol=1e-5)
    ctx, w = attn(q, prepared, v, hard=True)
    np.testing.assert_array_equal(w.sum(-1), 1.0)
    ctx1, w1 = attn(q[1], attn.prepare(k[1]), v[1])
    np.testing.assert_allclose(w1, attn(q, prepared, v)[1][1], rtol=1e-6, atol=1e-7)
    assert attn(q, prepared, v, need_weights=False)[1] is None


def torch_bahdanau(H):
    """The PyTorch seq2seq tutorial's BahdanauAttention (NLP From Scratch: Translation with a Sequence to
    Sequence Network and Attention)."""
    import torch
    import torch.nn.functional as TF
    from torch import nn

    class BahdanauAttention(nn.Module):
        def __init__(self, hidden_size):
            super().__init__()
            self.Wa = nn.Linear(hidden_size, hidden_size)
            self.Ua = nn.Linear(hidden_size, hidden_size)
            self.Va = nn.Linear(hidden_size, 1)

        def forward(self, query, keys):
            scores = self.Va(torch.tanh(self.Wa(query) + self.Ua(keys)))
            scores = scores.squeeze(2).unsqueeze(1)
            weights = TF.softmax(scores, dim=-1)
            context = torch.bmm(weights, keys)
            return context, weights

    return BahdanauAttention(H)


@pytest.mark.parametrize("B,Lk,H", [(1, 1, 1), (3, 7, 33), (3, 64, 512), (2, 9, 7)])
def test_bahdanau_matches_the_pytorch_tutorial(isa, rng, B, Lk, H):
    torch = pytest.importorskip("torch")
    torch.manual_seed(B * 1000 + H)
    ref = torch_bahdanau(H).eval()
    attn = Attention.bahdanau(ref.Wa.weight, ref.Wa.bias, ref.Ua.weight, ref.Ua.bias, ref.Va.weight, ref.Va.bias)
    assert attn.v_bias == pytest.approx(float(ref.Va.bias))
    keys = randn(rng, B, Lk, H)
    prepared = attn.prepare(keys)
    for _step in range(3):  # decoding: new query, same prepared keys
        query = randn(rng, B, 1, H)
        with torch.inference_mode():
            want_ctx, want_w = ref(torch.from_numpy(query), torch.from_numpy(keys))
        ctx, w = attn(query, prepared)
        assert ctx.shape == (B, 1, H) and w.shape == (B, 1, Lk)
        np.testing.assert_allclose(w, want_w.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(ctx, want_ctx.numpy(), rtol=0, atol=1e-5)
    # the same through the functional API, keys projected by the caller
    kp = F.project_keys(keys, score="additive", w_k=attn.w_k, b_k=attn.b_k)
    ctx2, w2 = F.attention(
        query,
        None,
        keys,
        score="additive",
        keys_projected=kp,
        w_q=attn.w_q,
        b_q=attn.b_q,
        v=attn.v,
        v_bias=attn.v_bias,
        need_weights=True,
    )
    np.testing.assert_allclose(w2, want_w.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ctx2, want_ctx.numpy(), rtol=0, atol=1e-5)


def test_luong(rng):
    H = 12
    W = randn(rng, H, H, scale=0.3)
    q, k = randn(rng, 2, 1, H), randn(rng, 2, 5, H)
    ctx, w = Attention.luong("general", W)(q, k)
    np.testing.assert_allclose(w, ref_attention(ref_scores(q, k, "general", w=W), k)[1], rtol=1e-5, atol=1e-6)
    ctx, w = Attention.luong("dot")(q, k)
    np.testing.assert_allclose(ctx, ref_attention(ref_scores(q, k, "dot"), k)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="kind must be 'dot' or 'general'"):
        Attention.luong("additive")
    with pytest.raises(ValueError, match="needs W"):
        Attention.luong("general")


def test_module_named_weights_and_errors(rng):
    wts = make_weights(rng, "additive", 6, 8, 5)
    attn = Attention("additive", **wts)
    assert dict(attn.named_weights()).keys() == {"w_q", "b_q", "w_k", "b_k", "v"}
    q, k = randn(rng, 2, 1, 6), randn(rng, 2, 4, 8)
    other = Attention("additive", **wts)
    with pytest.raises(ValueError, match="prepared by another Attention"):
        attn(q, other.prepare(k))
    with pytest.raises(ValueError, match="keys of width 8"):
        attn.prepare(randn(rng, 2, 4, 7))
    with pytest.raises(ValueError, match="queries of width 6"):
        attn(randn(rng, 2, 1, 5), k)
    with pytest.raises(ValueError, match="same batch size"):
        attn(randn(rng, 3, 1, 6), k)
    with pytest.raises(ValueError, match="w_k must be"):
        Attention("additive", **dict(wts, w_k=randn(rng, 4, 8)))
    with pytest.raises(ValueError, match="missing weight attention.v"):
        Attention("additive", **dict(wts, v=None))
    with pytest.raises(ValueError, match="NaN"):
        Attention("additive", **dict(wts, w_q=np.full((5, 6), np.nan, np.float32)))
    with pytest.raises(ValueError, match="takes w; got w_q"):
        Attention("general", w_q=wts["w_q"])
    with pytest.raises(ValueError, match="odd number of columns"):
        Attention("concat", w=randn(rng, 4, 7), v=randn(rng, 4))
    with pytest.raises(ValueError, match="Va_weight must be the"):
        Attention.bahdanau(wts["w_q"], None, wts["w_k"], None, randn(rng, 2, 5))
    with pytest.raises(ValueError, match="keys contains NaN|NaN or infinite"):
        kk = k.copy()
        kk[1, 2, 3] = np.nan
        attn(q, kk)


# ---------------------------------------------------------------------------------------------------
# errors: NaN / inf, shapes, dtypes, missing weights
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "score,where",
    [(s, w) for s in SCORES for w in ("q", "k", "weight") if w != "weight" or s in ("general", "concat", "additive")],
)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused(isa, rng, score, where, bad):
    Dq, Dk = dims(score, 9)
    q, k = randn(rng, 2, 3, Dq), randn(rng, 2, 10, Dk)
    wts = make_weights(rng, score, Dq, Dk, 9)
    name = where
    if where == "q":
        q[1, 2, 4] = bad
    elif where == "k":
        k[1, 7, 0] = bad
    else:
        name = [n for n, x in wts.items() if isinstance(x, np.ndarray)][-1]
        wts[name] = wts[name].copy()
        wts[name].flat[-1] = bad
    with pytest.raises(ValueError, match=f"{name} contains NaN or infinite values"):
        F.attention_scores(q, k, score=score, **wts)
    with pytest.raises(ValueError, match=f"{name} contains NaN or infinite values"):
        F.attention(q, k, randn(rng, 2, 10, 3), score=score, **wts)


def test_non_finite_keys_projected_and_kernel_nan_propagation(isa, rng):
    q, wts = randn(rng, 2, 3, 8), make_weights(rng, "additive", 8, 8, 19)
    kp = randn(rng, 2, 10, 19)
    kp[1, 6, 18] = np.inf
    with pytest.raises(ValueError, match="keys_projected contains NaN or infinite"):
        F.attention_scores(q, None, score="additive", keys_projected=kp, **wts)
    # the kernel: a bad projected key spoils its own column only, a bad query its own row only
    qp = randn(rng, 2, 3, 19)
    qp[0, 2, 5] = np.nan
    kp[0, 3, 0] = -np.inf
    s = _core.additive_scores(qp, kp, wts["v"])
    bad = np.zeros(s.shape, bool)
    bad[1, :, 6] = bad[0, :, 3] = bad[0, 2, :] = True
    assert np.all(np.isnan(s[bad])) and np.all(np.isfinite(s[~bad]))
    with pytest.raises(ValueError, match="v_bias must be finite"):
        F.attention_scores(q, q, score="additive", v_bias=np.inf, **{n: x for n, x in wts.items() if n != "v_bias"})


def test_overflowing_scores_are_reported(rng):
    q = np.full((1, 1, 4), 1e20, np.float32)
    with pytest.raises(ValueError, match="overflowed float32"):
        F.attention_scores(q, q, score="dot")


def test_wrong_weights_and_shapes(rng):
    q, k, v = randn(rng, 2, 3, 6), randn(rng, 2, 5, 8), randn(rng, 2, 5, 4)
    add = make_weights(rng, "additive", 6, 8, 7)
    with pytest.raises(ValueError, match="score must be one of"):
        F.attention_scores(q, k, score="bilinear")
    with pytest.raises(ValueError, match="needs w_q of shape"):
        F.attention_scores(q, k, score="additive", **dict(add, w_q=None))
    with pytest.raises(ValueError, match=r"needs w_k of shape \(H, Dk\), or keys_projected"):
        F.attention_scores(q, k, score="additive", **dict(add, w_k=None))
    with pytest.raises(ValueError, match="needs v of shape"):
        F.attention_scores(q, k, score="additive", **dict(add, v=None))
    with pytest.raises(ValueError, match=r"expected w_q of shape \(H, Dq\) = \(H, 6\), got \(7, 5\)"):
        F.attention_scores(q, k, score="additive", **dict(add, w_q=randn(rng, 7, 5)))
    with pytest.raises(ValueError, match=r"expected w_k of shape \(H, Dk\) = \(7, 8\)"):
        F.attention_scores(q, k, score="additive", **dict(add, w_k=randn(rng, 6, 8)))
    with pytest.raises(ValueError, match=r"expected b_q of shape \(H,\) = \(7,\), got \(6,\)"):
        F.attention_scores(q, k, score="additive", **dict(add, b_q=randn(rng, 6)))
    with pytest.raises(ValueError, match=r"expected v of shape \(H,\) = \(7,\)"):
        F.attention_scores(q, k, score="additive", **dict(add, v=randn(rng, 7, 1)))
    with pytest.raises(ValueError, match=r"expected w of shape \(Dq, Dk\) = \(6, 8\)"):
        F.attention_scores(q, k, score="general", w=randn(rng, 8, 6))
    with pytest.raises(ValueError, match="score='general' needs w"):
        F.attention_scores(q, k, score="general")
    with pytest.raises(ValueError, match=r"expected w of shape \(H, Dq \+ Dk\) = \(H, 6 \+ 8\)"):
        F.attention_scores(q, k, score="concat", w=randn(rng, 7, 13), v=randn(rng, 7))
    with pytest.raises(ValueError, match="score='dot' takes no weights; got w"):
        F.attention_scores(q, q, score="dot", w=randn(rng, 6, 6))
    with pytest.raises(ValueError, match="score='dot' takes no weights; got v_bias"):
        F.attention_scores(q, q, score="dot", v_bias=1.0)
    with pytest.raises(ValueError, match="score='cosine' takes no weights; got scale"):
        F.attention_scores(q, q, score="cosine", scale=2.0)
    with pytest.raises(ValueError, match="needs queries and keys of one width"):
        F.attention_scores(q, k, score="dot")
    with pytest.raises(ValueError, match="uses the keys as they are"):
        F.attention_scores(q, q, score="dot", keys_projected=q)
    with pytest.raises(
        ValueError,
        match=r"expected keys_projected \(k @ w_k.T \+ b_k\) of shape \(B, Lk, H\) = "
        r"\(2, 5, 7\), got \(2, 5, 6\)",
    ):
        F.attention_scores(q, k, score="additive", keys_projected=randn(rng, 2, 5, 6), **add)
    with pytest.raises(ValueError, match="projecting keys for score='cosine' takes no weights; got w"):
        F.project_keys(k, score="cosine", w=add["w_k"])
    with pytest.raises(ValueError, match="score='dot' uses the keys as they are: nothing to project"):
        F.project_keys(k, score="dot")
    with pytest.raises(ValueError, match=r"expected w_k of shape \(H, Dk\) = \(H, 8\), got \(7, 6\)"):
        F.project_keys(k, score="additive", w_k=add["w_q"])
    with pytest.raises(ValueError, match="k is None"):
        F.attention_scores(q, None, score="additive", **add)
    with pytest.raises(ValueError, match=r"expected k of shape \(B, Lk, Dk\), got \(5, 8\)"):
        F.attention_scores(q, k[0], score="additive", **add)
    with pytest.raises(ValueError, match=r"expected k of shape \(Lk, Dk\) \(unbatched, like q\)"):
        F.attention_scores(q[0], k, score="additive", **add)
    with pytest.raises(ValueError, match="same batch size"):
        F.attention_scores(q, k[:1], score="additive", **add)
    with pytest.raises(ValueError, match="zero-length"):
        F.attention_scores(q, k[:, :0], score="additive", **add)
    with pytest.raises(TypeError, match="expected q to be a floating-point array"):
        F.attention_scores(q.astype(np.int32), k, score="additive", **add)
    with pytest.raises(TypeError, match="expected w_q to be a floating-point array"):
        F.attention_scores(q, k, score="additive", **dict(add, w_q=add["w_q"].astype(np.int64)))
    # attention(): values, masks, keywords
    with pytest.raises(ValueError, match=r"expected v of shape \(B, Lk, Dv\) = \(2, 5, Dv\) to match the keys"):
        F.attention(q, k, v[:, :4], score="additive", **add)
    with pytest.raises(ValueError, match=r"expected mask of shape \(Lq, Lk\) = \(3, 5\) or \(B, Lq, Lk\)"):
        F.attention(q, k, v, score="additive", mask=np.zeros((3, 4), bool), **add)
    with pytest.raises(ValueError, match=r"expected key_padding_mask of shape \(B, Lk\) = \(2, 5\)"):
        F.attention(q, k, v, score="additive", key_padding_mask=np.zeros((2, 4), bool), **add)
    with pytest.raises(TypeError, match="integer masks are ambiguous"):
        F.attention(q, k, v, score="additive", mask=np.zeros((3, 5), np.int64), **add)
    with pytest.raises(ValueError, match="NaN and \\+inf are refused"):
        F.attention(q, k, v, score="additive", mask=np.full((3, 5), np.nan, np.float32), **add)
    with pytest.raises(TypeError, match="unexpected keyword arguments: bogus"):
        F.attention(q, k, v, score="additive", bogus=1, **add)
    with pytest.raises(ValueError, match="score='scaled_dot' takes scale; got w_q"):
        F.attention(q, q, v[:, :3], score="scaled_dot", w_q=add["w_q"])


def test_core_additive_scores_checks(rng):
    qp, kp, v = randn(rng, 2, 3, 8), randn(rng, 2, 5, 8), randn(rng, 8)
    with pytest.raises(TypeError, match="expected qp to be float32, got float64"):
        _core.additive_scores(qp.astype(np.float64), kp, v)
    with pytest.raises(TypeError, match="expected v to be float32"):
        _core.additive_scores(qp, kp, v.astype(np.float16))
    with pytest.raises(ValueError, match=r"expected kp of shape \(B, Lk, H\), got \(5, 8\)"):
        _core.additive_scores(qp, kp[0], v)
    with pytest.raises(ValueError, match=r"expected kp of shape \(2, Lk, 8\) to match qp \(2, 3, 8\), got \(2, 5, 7\)"):
        _core.additive_scores(qp, kp[:, :, :7], v)
    with pytest.raises(ValueError, match=r"expected v of shape \(8,\)"):
        _core.additive_scores(qp, kp, v[:7])
    with pytest.raises(ValueError, match="zero-length"):
        _core.additive_scores(qp[:, :0], kp, v)
    with pytest.raises(ValueError, match="contiguous last axis"):
        _core.additive_scores(qp[:, :, ::2], kp[:, :, ::2], v[::2])


# ---------------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------------
def test_plot_writes_a_png_of_the_figure_size(tmp_path, rng):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg

    from pyattn import plot

    w = F.softmax(randn(rng, 6, 9))
    path = tmp_path / "attention.png"
    fig = plot.attention(w, [f"s{i}" for i in range(9)], [f"t{i}" for i in range(6)], path, title="test")
    img = mpimg.imread(path)
    width, height = fig.get_size_inches() * fig.dpi
    assert img.shape[:2] == (round(height), round(width))
    assert img[..., :3].std() > 0.05  # something was drawn
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), w, rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"s{i}" for i in range(9)]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"t{i}" for i in range(6)]
    assert ax.get_title() == "test"


def test_plot_shapes_heads_and_axes(tmp_path, rng):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from pyattn import plot

    w4 = rng.random((2, 3, 4, 5))
    fig = plot.attention(w4, batch=1)  # mean over the heads
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), w4[1].mean(0))
    fig = plot.attention(w4, batch=-1, head=2)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), w4[1, 2])
    fig = plot.attention(w4[:, 0], batch=1)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), w4[1, 0])
    ax = Figure().add_subplot()
    assert plot.attention(w4[0, 0], ax=ax) is ax.figure and len(ax.images) == 1
    # errors
    with pytest.raises(ValueError, match="src_tokens has 4 tokens but the weights have 5 source columns"):
        plot.attention(w4[0, 0], src_tokens=list("abcd"))
    with pytest.raises(ValueError, match="tgt_tokens has 5 tokens but the weights have 4 target rows"):
        plot.attention(w4[0, 0], tgt_tokens=list("abcde"))
    with pytest.raises(ValueError, match="head selects one head of"):
        plot.attention(w4[0], head=0)
    with pytest.raises(IndexError, match="batch 2 is out of range"):
        plot.attention(w4, batch=2)
    with pytest.raises(IndexError, match="head 3 is out of range"):
        plot.attention(w4, head=3)
    with pytest.raises(ValueError, match="expected weights of shape"):
        plot.attention(w4[0, 0, 0])
    with pytest.raises(TypeError, match="not one string"):
        plot.attention(w4[0, 0], src_tokens="a b c d e")


def test_plot_without_matplotlib_says_what_to_install(monkeypatch, rng):
    import sys

    from pyattn import plot

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install matplotlib \(or pip install 'pyattn\[plot\]'\)"):
        plot.attention(rng.random((3, 4)))
