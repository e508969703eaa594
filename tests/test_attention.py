"""scaled_dot_product_attention against the float64 reference and torch: shapes, every mask kind and their
combinations, fully masked rows, strided views, every ISA path, threads."""

import numpy as np
import pytest
import reference as ref
import torch
from conftest import randn

import pyattn
from pyattn import functional as F


def qkv(rng, B, H, Lq, Lk, D, Dv=None, scale=1.0):
    return (randn(rng, B, H, Lq, D, scale=scale), randn(rng, B, H, Lk, D, scale=scale), randn(rng, B, H, Lk, Dv or D))


def check(got, want, tol=2e-5):
    assert got.dtype == np.float32
    assert not np.any(np.isnan(got))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


SHAPES = [  # (B, H, Lq, Lk, D)
    (1, 1, 1, 1, 1),
    (1, 1, 1, 513, 64),
    (2, 3, 2, 17, 5),
    (1, 2, 3, 63, 16),
    (1, 1, 4, 65, 17),
    (1, 2, 2, 100, 144),  # decoding path: head wider than 8 registers (two passes over the values, a partial one)
    (2, 2, 5, 129, 64),
    (1, 2, 7, 257, 80),
    (2, 1, 17, 3, 16),
    (1, 3, 65, 65, 64),
    (2, 2, 129, 63, 17),
    (1, 1, 300, 513, 64),
    (1, 2, 129, 257, 1),
]


@pytest.mark.parametrize("B,H,Lq,Lk,D", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_shapes_all_isas(isa, rng, B, H, Lq, Lk, D, causal):
    q, k, v = qkv(rng, B, H, Lq, Lk, D)
    want, _ = ref.sdpa(q, k, v, is_causal=causal)
    check(F.scaled_dot_product_attention(q, k, v, is_causal=causal), want)


def test_value_dim_differs(rng):
    q, k, v = qkv(rng, 2, 3, 33, 70, 64, Dv=24)
    want, _ = ref.sdpa(q, k, v)
    check(F.scaled_dot_product_attention(q, k, v), want)
    check(F.scaled_dot_product_attention(q[:, :, :2], k, v), want[:, :, :2])


def test_explicit_scale(rng):
    q, k, v = qkv(rng, 1, 2, 20, 30, 16)
    want, _ = ref.sdpa(q, k, v, scale=0.37)
    check(F.scaled_dot_product_attention(q, k, v, scale=0.37), want)


def mask_cases(rng, B, H, Lq, Lk):
    bool2 = rng.random((Lq, Lk)) < 0.3
    return {
        "bool 2-D": dict(attn_mask=bool2),
        "bool 3-D": dict(attn_mask=rng.random((B, Lq, Lk)) < 0.3),
        "bool 4-D": dict(attn_mask=rng.random((B, H, Lq, Lk)) < 0.3),
        "bool 4-D broadcast": dict(attn_mask=rng.random((1, H, 1, Lk)) < 0.3),
        "float 2-D": dict(attn_mask=randn(rng, Lq, Lk)),
        "float 4-D with -inf": dict(
            attn_mask=np.where(rng.random((B, H, Lq, Lk)) < 0.3, -np.inf, 0).astype(np.float32)
        ),
        "key padding bool": dict(key_padding_mask=rng.random((B, Lk)) < 0.4),
        "key padding float": dict(key_padding_mask=randn(rng, B, Lk)),
        "causal + padding": dict(is_causal=True, key_padding_mask=rng.random((B, Lk)) < 0.3),
        "causal + padding + bool mask": dict(
            is_causal=True, key_padding_mask=rng.random((B, Lk)) < 0.2, attn_mask=bool2
        ),
        "float mask + bool padding": dict(attn_mask=randn(rng, B, Lq, Lk), key_padding_mask=rng.random((B, Lk)) < 0.3),
    }


@pytest.mark.parametrize("case", list(mask_cases(np.random.default_rng(0), 2, 3, 5, 7)))
@pytest.mark.parametrize("B,H,Lq,Lk,D", [(2, 3, 3, 40, 16), (2, 3, 70, 300, 64), (2, 2, 129, 65, 17)])
def test_masks(isa, rng, case, B, H, Lq, Lk, D):
    kwargs = mask_cases(rng, B, H, Lq, Lk)[case]
    q, k, v = qkv(rng, B, H, Lq, Lk, D)
    want, wts = ref.sdpa(q, k, v, **kwargs)
    check(F.scaled_dot_product_attention(q, k, v, **kwargs), want)
    out, w = F.scaled_dot_product_attention(q, k, v, return_weights=True, **kwargs)
    check(out, want)
    check(w, wts)


@pytest.mark.parametrize("Lq", [2, 60])
def test_fully_masked_rows_give_zeros(isa, rng, Lq):
    B, H, Lk, D = 2, 2, 50, 16
    q, k, v = qkv(rng, B, H, Lq, Lk, D)
    kp = np.zeros((B, Lk), bool)
    kp[1] = True  # every key of batch entry 1 is padding
    m = np.zeros((Lq, Lk), bool)
    m[1] = True  # query 1 sees nothing anywhere
    for kwargs in (
        dict(key_padding_mask=kp),
        dict(attn_mask=m),
        dict(attn_mask=m, key_padding_mask=kp, is_causal=True),
    ):
        want, wts = ref.sdpa(q, k, v, **kwargs)
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        check(out, want)
        out2, w = F.scaled_dot_product_attention(q, k, v, return_weights=True, **kwargs)
        check(out2, want)
        check(w, wts)
    out = F.scaled_dot_product_attention(q, k, v, key_padding_mask=kp, attn_mask=m)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(out[0, :, 1], 0.0)


def test_large_magnitude_scores(isa, rng):
    q, k, v = qkv(rng, 1, 2, 70, 90, 64, scale=30.0)  # scores ~ 1e3 .. 1e4: exp would overflow unshifted
    want, _ = ref.sdpa(q, k, v)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert np.all(np.isfinite(out))
    want, _ = ref.sdpa(q, k, v, is_causal=True)
    np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-3)


def test_strided_head_views_match_contiguous(isa, rng):
    B, L, H, D = 2, 37, 4, 16
    x = randn(rng, B, L, 3 * H * D)  # a fused QKV projection output
    q = x[..., : H * D].reshape(B, L, H, D).transpose(0, 2, 1, 3)
    k = x[..., H * D : 2 * H * D].reshape(B, L, H, D).transpose(0, 2, 1, 3)
    v = x[..., 2 * H * D :].reshape(B, L, H, D).transpose(0, 2, 1, 3)
    assert not q.flags.c_contiguous
    got = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = F.scaled_dot_product_attention(*(np.ascontiguousarray(t) for t in (q, k, v)), is_causal=True)
    np.testing.assert_array_equal(got, want)
    # out= as a strided view: heads written straight into (B, L, H * D)
    concat = np.full((B, L, H, D), np.nan, np.float32)
    F.scaled_dot_product_attention(q, k, v, is_causal=True, out=concat.transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(concat.transpose(0, 2, 1, 3), want)


def test_batch_invariance_with_padding(isa, rng):
    # A sequence alone gives the same output as inside a padded batch.
    H, D, lens = 2, 16, [5, 23, 64]
    Lmax = max(lens)
    q, k, v = qkv(rng, len(lens), H, Lmax, Lmax, D)
    kp = np.arange(Lmax)[None, :] >= np.array(lens)[:, None]
    batched = F.scaled_dot_product_attention(q, k, v, key_padding_mask=kp)
    for i, n in enumerate(lens):
        alone = F.scaled_dot_product_attention(q[i : i + 1, :, :n], k[i : i + 1, :, :n], v[i : i + 1, :, :n])
        np.testing.assert_allclose(batched[i : i + 1, :, :n], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("Lq, causal", [(1, False), (1, True), (3, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])  # float16: a Llama KV cache
def test_left_padded_decoding_rows_equal_the_row_alone_bit_for_bit(isa, rng, Lq, causal, dtype):
    """The decoding path (Lq <= 4) skips a row's leading key padding, so the real keys fall in the same lanes of the
    softmax sum and of P V as without it: a left-padded row (batched or continuous generation) is exact."""
    H, Hkv, D = 6, 2, 32
    for n in (5, 21, 40, 130):
        q = randn(rng, 1, H, Lq, D)
        k, v = randn(rng, 1, Hkv, n, D).astype(dtype), randn(rng, 1, Hkv, n, D).astype(dtype)
        off = n - Lq if causal else 0
        alone = pyattn._core.scaled_dot_product_attention(q, k, v, is_causal=causal, causal_offset=off)
        for pad in (1, 3, 8, 13):
            kp, vp = (np.concatenate([randn(rng, 1, Hkv, pad, D).astype(dtype), t], 2) for t in (k, v))  # any values
            mask = np.arange(pad + n)[None] < pad
            got = pyattn._core.scaled_dot_product_attention(
                q, kp, vp, key_padding_mask=mask, is_causal=causal, causal_offset=off + pad
            )
            np.testing.assert_array_equal(got, alone)
        masked = np.ones((1, pad + n), bool)  # every key padding: zeros, as before
        got = pyattn._core.scaled_dot_product_attention(q, kp, vp, key_padding_mask=masked)
        np.testing.assert_array_equal(got, np.zeros_like(got))


@pytest.mark.parametrize("Lq", [2, 5, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])  # float16: Whisper's cross K/V under int8
def test_rows_sharing_their_keys_equal_each_row_alone_bit_for_bit(isa, rng, Lq, dtype):
    """Multi-head attention without the causal mask, up to 16 query rows (Whisper's beams folded against one encoder
    output): the rows of a head share one pass over K and V, and each row computes exactly what it computes alone
    (Lq = 1), under key padding and a per-row mask too; and matches the float64 reference."""
    B, H, Lk, D = 2, 3, 150, 20
    q = randn(rng, B, H, Lq, D)
    k, v = randn(rng, B, H, Lk, D).astype(dtype), randn(rng, B, H, Lk, D).astype(dtype)
    pad = np.zeros((B, Lk), bool)
    pad[0, :7] = True  # leading padding (skipped) and
    pad[1, 40:45] = True  # padding in the middle (masked)
    am = rng.standard_normal((B, H, Lq, Lk)).astype(np.float32)
    for kw in ({}, {"key_padding_mask": pad}, {"key_padding_mask": pad, "attn_mask": am}):
        got = pyattn._core.scaled_dot_product_attention(q, k, v, **kw)
        for i in range(Lq):
            one = {n: (m[:, :, i : i + 1] if n == "attn_mask" else m) for n, m in kw.items()}
            alone = pyattn._core.scaled_dot_product_attention(q[:, :, i : i + 1], k, v, **one)
            np.testing.assert_array_equal(got[:, :, i : i + 1], alone)
        want, _ = ref.sdpa(q, k, v, **kw)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_threads_agree(rng, restore_threads):
    q, k, v = qkv(rng, 1, 3, 100, 300, 64)
    res = []
    for n in (1, 2):
        pyattn.set_num_threads(n)
        res.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, key_padding_mask=rng.random((1, 300)) < 0))
        res.append(F.scaled_dot_product_attention(q[:, :, :1], k, v))
    np.testing.assert_array_equal(res[0], res[2])
    np.testing.assert_array_equal(res[1], res[3])


@pytest.mark.parametrize("other", [i for i in pyattn._core.available_isas() if i != "scalar"])
def test_isa_matches_scalar(rng, other):
    q, k, v = qkv(rng, 2, 2, 77, 130, 64)
    before = pyattn.get_isa()
    try:
        pyattn.set_isa("scalar")
        s = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        pyattn.set_isa(other)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    finally:
        pyattn.set_isa(before)
    np.testing.assert_allclose(o, s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "B,H,Lq,Lk,D", [(2, 4, 33, 33, 64), (1, 12, 128, 128, 64), (2, 2, 1, 300, 32), (2, 3, 50, 20, 8)]
)
@pytest.mark.parametrize("causal", [False, True])
def test_against_torch(rng, B, H, Lq, Lk, D, causal):
    q, k, v = qkv(rng, B, H, Lq, Lk, D)
    pad = np.zeros((B, Lk), bool)
    pad[-1, Lk // 2 + 1 :] = True  # keep key 0 visible: no fully masked rows on torch's side (NaN there)
    t = [torch.from_numpy(x) for x in (q, k, v)]
    keep = torch.from_numpy(~pad)[:, None, None, :]  # torch bool masks: True = take part
    if causal:
        keep = keep & torch.ones(Lq, Lk, dtype=torch.bool).tril()
    want = torch.nn.functional.scaled_dot_product_attention(*t, attn_mask=keep).numpy()
    got = F.scaled_dot_product_attention(q, k, v, key_padding_mask=pad, is_causal=causal)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_strided_and_list_masks_are_accepted(rng):
    q, k, v = qkv(rng, 2, 2, 5, 9, 8)
    wide = rng.random((2, 18)) < 0.3
    kp = wide[:, ::2]  # a strided view: copied, not refused
    want, _ = ref.sdpa(q, k, v, key_padding_mask=kp)
    check(F.scaled_dot_product_attention(q, k, v, key_padding_mask=kp), want)
    am = (rng.random((5, 9)) < 0.3).tolist()  # a nested list of bools
    want, _ = ref.sdpa(q, k, v, attn_mask=np.array(am))
    check(F.scaled_dot_product_attention(q, k, v, attn_mask=am), want)
    fm = rng.standard_normal((5, 18))[:, ::2]  # float64, strided: converted
    want, _ = ref.sdpa(q, k, v, attn_mask=fm.astype(np.float32))
    check(F.scaled_dot_product_attention(q, k, v, attn_mask=fm), want)


def gqa_reference(q, k, v, pad, causal: bool, offset: int) -> np.ndarray:
    """float64 attention of q (B, H, Lq, D) over k, v (B, Hkv, Lk, D) repeated per query head, key padding pad
    (B, Lk) True = padding, causal with the offset."""
    H, Lq, D = q.shape[1], q.shape[2], q.shape[3]
    Lk = k.shape[2]
    kr, vr = (np.repeat(t.astype(np.float64), H // k.shape[1], axis=1) for t in (k, v))
    s = q.astype(np.float64) @ kr.transpose(0, 1, 3, 2) / np.sqrt(D)
    s[np.broadcast_to(pad[:, None, None, :], s.shape)] = -np.inf
    if causal:
        s[..., np.triu(np.ones((Lq, Lk), bool), k=1 + offset)] = -np.inf
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ vr


@pytest.mark.parametrize("isa", pyattn.cpu_info()["available_isas"])
@pytest.mark.parametrize("H, Hkv", [(9, 3), (8, 1), (20, 1), (4, 2), (6, 6)])  # 20: two passes of 16 heads
@pytest.mark.parametrize("Lq, Lk, causal", [(1, 37, False), (3, 20, True), (70, 70, True), (33, 50, False)])
def test_grouped_query_attention_against_float64(rng, isa, H, Hkv, Lq, Lk, causal):
    """K/V with Hkv heads shared by groups of H / Hkv query heads equal K/V repeated per query head."""
    pyattn.set_isa(isa)
    try:
        B, D = 2, 32
        q = rng.standard_normal((B, H, Lq, D)).astype(np.float32)
        k = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
        v = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
        pad = np.zeros((B, Lk), bool)
        pad[1, Lk - 3 :] = True
        offset = Lk - Lq if causal else 0
        got = pyattn._core.scaled_dot_product_attention(
            q, k, v, key_padding_mask=pad, is_causal=causal, causal_offset=offset
        )
        want = gqa_reference(q, k, v, pad, causal, offset)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
        weights = pyattn._core.scaled_dot_product_attention(
            q, k, v, key_padding_mask=pad, is_causal=causal, causal_offset=offset, return_weights=True
        )[0]
        np.testing.assert_allclose(weights, want, rtol=1e-4, atol=2e-5)
    finally:
        pyattn.set_isa(pyattn.cpu_info()["available_isas"][-1])


def test_grouped_query_attention_refuses_a_head_count_that_does_not_divide(rng):
    q = rng.standard_normal((1, 9, 4, 8)).astype(np.float32)
    k = rng.standard_normal((1, 2, 4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="Hkv dividing the 9 heads"):
        pyattn._core.scaled_dot_product_attention(q, k, k)
    with pytest.raises(ValueError, match=r"expected v of shape \(1, 3, 4, Dv\)"):
        pyattn._core.scaled_dot_product_attention(q, k[:, :1].repeat(3, 1), k)


@pytest.mark.parametrize("isa", pyattn.cpu_info()["available_isas"])
@pytest.mark.parametrize("D", [32, 20, 72])  # 20, 72: a head that ends in a partial register
@pytest.mark.parametrize("Lq, Lk, causal", [(1, 37, False), (3, 20, True), (40, 70, True)])
def test_float16_kv_cache_against_float64(rng, isa, D, Lq, Lk, causal):
    """K and V in float16 (a KV cache of half the bytes), widened as the decoding path (Lq <= 4) loads them or as the
    blocked path packs them: the attention of the float16 values, to float32's accuracy, on every kernel set; in
    head-major cache views (capacity > Lk), grouped-query heads and key padding included."""
    pyattn.set_isa(isa)
    try:
        B, H, Hkv, cap = 2, 6, 2, Lk + 5
        q = rng.standard_normal((B, H, Lq, D)).astype(np.float32)
        k = rng.standard_normal((B, Hkv, cap, D)).astype(np.float16)[:, :, :Lk]
        v = rng.standard_normal((B, Hkv, cap, D)).astype(np.float16)[:, :, :Lk]
        pad = np.zeros((B, Lk), bool)
        pad[0, :2] = True
        offset = Lk - Lq if causal else 0
        got = pyattn._core.scaled_dot_product_attention(
            q, k, v, key_padding_mask=pad, is_causal=causal, causal_offset=offset
        )
        as32 = pyattn._core.scaled_dot_product_attention(
            q, k.astype(np.float32), v.astype(np.float32), key_padding_mask=pad, is_causal=causal, causal_offset=offset
        )
        np.testing.assert_array_equal(got, as32)  # widening is exact: the same arithmetic as float32 K and V
        np.testing.assert_allclose(got, gqa_reference(q, k, v, pad, causal, offset), rtol=1e-4, atol=2e-5)
    finally:
        pyattn.set_isa(pyattn.cpu_info()["available_isas"][-1])


def test_float16_kv_refuses_mixed_types_and_weights(rng):
    q = rng.standard_normal((1, 2, 3, 8)).astype(np.float32)
    k = rng.standard_normal((1, 2, 4, 8)).astype(np.float16)
    with pytest.raises(TypeError, match="v to be float16 like k"):
        pyattn._core.scaled_dot_product_attention(q, k, k.astype(np.float32))
    with pytest.raises(TypeError, match="q"):
        pyattn._core.scaled_dot_product_attention(q.astype(np.float16), k.astype(np.float32), k.astype(np.float32))
    with pytest.raises(ValueError, match="return_weights needs float32"):
        pyattn._core.scaled_dot_product_attention(q, k, k, return_weights=True)


def bf16(x):
    """float32 -> the nearest bfloat16 (ties to even), as float64."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def bf16_reference(q, k, v, pad, causal, offset, scale):
    """The quantity precision='bfloat16' computes, in float64: bfloat16 roundings of scale q, k and v, exact scores,
    probabilities exp(s - max) rounded to bfloat16 before P V, divided by the sum of the unrounded ones. Also returns
    how far rounding the probabilities can move each output: 2^-8 sum_j p_j |v_j| / sum_j p_j."""
    H, Lq, Lk = q.shape[1], q.shape[2], k.shape[2]
    qr = bf16(q.astype(np.float32) * np.float32(scale))
    kr, vr = (np.repeat(bf16(t), H // k.shape[1], axis=1) for t in (k, v))
    s = qr @ kr.transpose(0, 1, 3, 2)
    s[np.broadcast_to(pad[:, None, None, :], s.shape)] = -np.inf
    if causal:
        s[..., np.triu(np.ones((Lq, Lk), bool), k=1 + offset)] = -np.inf
    e = np.exp(s - s.max(-1, keepdims=True))
    total = e.sum(-1, keepdims=True)
    return bf16(e) @ vr / total, 2.0**-8 * (e @ np.abs(vr)) / total


@pytest.mark.parametrize(
    "B, H, Hkv, Lq, Lk, D, Dv, causal",
    [
        (2, 3, 3, 37, 300, 32, 32, False),  # two key blocks, the second partial
        (1, 4, 2, 50, 50, 64, 64, True),  # grouped-query heads, causal prefill
        (2, 2, 2, 17, 17, 33, 20, False),  # odd D (a half pair), Dv under a panel
        (1, 1, 1, 129, 531, 80, 40, True),  # causal with an offset over three key blocks
        (3, 12, 12, 128, 128, 32, 32, False),  # MiniLM's heads
    ],
)
def test_bfloat16_precision_against_its_float64_quantity(isa, rng, B, H, Hkv, Lq, Lk, D, Dv, causal):
    """precision='bfloat16' computes the attention of the bfloat16 roundings of scale q, k, the probabilities and v
    (within what rounding the probabilities near a tie can move) where the kernel set multiplies bfloat16 pairs; on
    every other kernel set it is float32's attention, bit for bit."""
    q = randn(rng, B, H, Lq, D)
    k, v = randn(rng, B, Hkv, Lk, D), randn(rng, B, Hkv, Lk, Dv)
    pad = np.zeros((B, Lk), bool)
    pad[-1, -3:] = True
    offset = Lk - Lq if causal else 0
    args = dict(key_padding_mask=pad, is_causal=causal, causal_offset=offset)
    got = pyattn._core.scaled_dot_product_attention(q, k, v, precision="bfloat16", **args)
    as32 = pyattn._core.scaled_dot_product_attention(q, k, v, **args)
    if isa != "avx512_bf16":
        np.testing.assert_array_equal(got, as32)
        return
    want, moved = bf16_reference(q, k, v, pad, causal, offset, 1 / np.sqrt(D))
    assert np.all(np.abs(got - want) <= moved + 1e-5)
    assert np.abs(got - as32).max() > 1e-4  # it did round
    # the decoding path (few query rows) stays float32
    np.testing.assert_array_equal(
        pyattn._core.scaled_dot_product_attention(q[:, :, :3], k, v, precision="bfloat16", key_padding_mask=pad),
        pyattn._core.scaled_dot_product_attention(q[:, :, :3], k, v, key_padding_mask=pad),
    )


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_precision_keeps_masked_rows_and_nan(isa, rng, causal):
    """A query with every key masked gets zeros, a NaN key poisons the rows that see it, as in float32."""
    q, k, v = qkv(rng, 2, 2, 40, 40, 16)
    pad = np.zeros((2, 40), bool)
    pad[1] = True
    k[0, 1, 5, 3] = np.nan
    got = F.scaled_dot_product_attention(q, k, v, key_padding_mask=pad, is_causal=causal, precision="bfloat16")
    assert np.all(got[1] == 0)
    assert np.all(np.isnan(got[0, 1, 5 if causal else 0 :]))
    if causal:
        assert not np.any(np.isnan(got[0, 1, :5]))
    assert not np.any(np.isnan(got[0, 0]))
    with pytest.raises(ValueError, match="precision must be"):
        F.scaled_dot_product_attention(q, k, v, precision="float16")
