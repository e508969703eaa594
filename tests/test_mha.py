"""multi_head_attention against torch.nn.MultiheadAttention(batch_first=True) with the same weights."""

import numpy as np
import pytest
import torch
from conftest import randn

from pyattn import functional as F


def make_mha(E, H, bias=True, kdim=None, vdim=None, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(E, H, bias=bias, batch_first=True, kdim=kdim, vdim=vdim).eval()
    if bias:  # torch initialises the biases to zero: make them matter
        with torch.no_grad():
            m.in_proj_bias.normal_()
            m.out_proj.bias.normal_()
    return m


def weights_of(m):
    E = m.embed_dim
    if m._qkv_same_embed_dim:
        w_q, w_k, w_v = (m.in_proj_weight[i * E : (i + 1) * E] for i in range(3))
    else:
        w_q, w_k, w_v = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    d = dict(w_q=w_q, w_k=w_k, w_v=w_v, w_o=m.out_proj.weight)
    if m.in_proj_bias is not None:
        d.update(
            b_q=m.in_proj_bias[:E], b_k=m.in_proj_bias[E : 2 * E], b_v=m.in_proj_bias[2 * E :], b_o=m.out_proj.bias
        )
    return {k: v.detach().numpy() for k, v in d.items()}


def run_torch(m, q, k, v, **kw):
    with torch.no_grad():
        conv = {key: (torch.from_numpy(val) if isinstance(val, np.ndarray) else val) for key, val in kw.items()}
        out, w = m(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), **conv)
    return out.numpy(), (None if w is None else w.numpy())


def close(a, b, tol=1e-4):
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("E,H,L", [(512, 8, 10), (64, 4, 1), (48, 3, 33)])
def test_self_attention(rng, bias, E, H, L):
    m = make_mha(E, H, bias)
    x = randn(rng, 2, L, E)
    want, _ = run_torch(m, x, x, x, need_weights=False)
    got, w = F.multi_head_attention(x, x, x, num_heads=H, **weights_of(m))
    assert w is None
    close(got, want)


def test_cross_attention_with_kdim_vdim(rng):
    E, H = 64, 8
    m = make_mha(E, H, kdim=40, vdim=24)
    q, mem = randn(rng, 3, 7, E), randn(rng, 3, 19, 40)
    val = randn(rng, 3, 19, 24)
    want, wts = run_torch(m, q, mem, val)
    got, w = F.multi_head_attention(q, mem, val, num_heads=H, need_weights=True, **weights_of(m))
    close(got, want)
    close(w, wts)


def test_encoder_decoder_attention(rng):
    E, H = 64, 4
    m = make_mha(E, H)
    tgt, memory = randn(rng, 2, 5, E), randn(rng, 2, 12, E)
    pad = np.zeros((2, 12), bool)
    pad[0, 9:] = True
    want, _ = run_torch(m, tgt, memory, memory, key_padding_mask=pad)
    got, _ = F.multi_head_attention(tgt, memory, memory, num_heads=H, key_padding_mask=pad, **weights_of(m))
    close(got, want)


@pytest.mark.parametrize("mask_kind", ["bool2d", "float2d", "bool3d", "causal", "causal+padding", "padding_float"])
def test_masks(rng, mask_kind):
    E, H, B, L = 32, 4, 2, 9
    m = make_mha(E, H)
    x = randn(rng, B, L, E)
    causal = np.triu(np.ones((L, L), bool), 1)  # True above the diagonal = masked (torch and pyattn)
    pad = np.zeros((B, L), bool)
    pad[1, 6:] = True
    kw_t, kw_p = {}, {}
    if mask_kind == "bool2d":
        am = rng.random((L, L)) < 0.3
        np.fill_diagonal(am, False)
        kw_t = kw_p = dict(attn_mask=am)
    elif mask_kind == "float2d":
        kw_t = kw_p = dict(attn_mask=randn(rng, L, L))
    elif mask_kind == "bool3d":
        am = rng.random((B * H, L, L)) < 0.3
        am[:, np.arange(L), np.arange(L)] = False
        kw_t = kw_p = dict(attn_mask=am)
    elif mask_kind == "causal":
        kw_t, kw_p = dict(attn_mask=causal), dict(is_causal=True)
    elif mask_kind == "causal+padding":
        kw_t, kw_p = dict(attn_mask=causal, key_padding_mask=pad), dict(is_causal=True, key_padding_mask=pad)
    elif mask_kind == "padding_float":
        kw_t = kw_p = dict(key_padding_mask=np.where(pad, -1e4, 0.0).astype(np.float32))
    want, wts = run_torch(m, x, x, x, **kw_t)
    got, w = F.multi_head_attention(x, x, x, num_heads=H, need_weights=True, **kw_p, **weights_of(m))
    close(got, want)
    close(w, wts)


def test_per_head_weights(rng):
    E, H = 32, 4
    m = make_mha(E, H)
    x, mem = randn(rng, 2, 6, E), randn(rng, 2, 8, E)
    _, wts = run_torch(m, x, mem, mem, average_attn_weights=False)
    _, w = F.multi_head_attention(
        x, mem, mem, num_heads=H, need_weights=True, average_attn_weights=False, **weights_of(m)
    )
    assert w.shape == (2, H, 6, 8)
    close(w, wts)


def test_unbatched_input(rng):
    E, H = 32, 2
    m = make_mha(E, H)
    x = randn(rng, 7, E)
    want, wts = run_torch(m, x, x, x)
    got, w = F.multi_head_attention(x, x, x, num_heads=H, need_weights=True, **weights_of(m))
    assert got.shape == (7, E) and w.shape == (7, 7)
    close(got, want)
    close(w, wts)


def test_float64_inputs_are_converted(rng):
    E, H = 16, 2
    m = make_mha(E, H)
    x = randn(rng, 1, 4, E)
    want, _ = run_torch(m, x, x, x)
    w64 = {k: v.astype(np.float64) for k, v in weights_of(m).items()}
    got, _ = F.multi_head_attention(
        x.astype(np.float64), x.astype(np.float64), x.astype(np.float64), num_heads=H, **w64
    )
    assert got.dtype == np.float32
    close(got, want)
