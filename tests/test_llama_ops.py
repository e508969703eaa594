"""The Llama family's ops against float64 references on every kernel set: RMSNorm (fused with the residual add)
and rotary position embedding in both layouts (Hugging Face's rotate_half and GGUF's interleaved pairs)."""

import numpy as np
import pytest
import torch

import pyattn
from pyattn import _core
from pyattn import functional as F

ISAS = pyattn.cpu_info()["available_isas"]


@pytest.fixture(params=ISAS)
def isa(request):
    old = pyattn.get_isa()
    pyattn.set_isa(request.param)
    yield request.param
    pyattn.set_isa(old)


@pytest.mark.parametrize("n", [1, 7, 8, 17, 576, 1000])
def test_rms_norm_against_float64(isa, rng, n):
    x = (rng.standard_normal((5, n)) * 3 + 1).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(F.rms_norm(x, w, 1e-5), want, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(F.rms_norm(x, None, 1e-5), want / w, rtol=2e-6, atol=2e-6)
    # torch's own, the reference the models are checked against
    ref = torch.nn.functional.rms_norm(torch.from_numpy(x), (n,), torch.from_numpy(w), 1e-5).numpy()
    np.testing.assert_allclose(F.rms_norm(x, w, 1e-5), ref, rtol=2e-6, atol=2e-6)


def test_rms_norm_adds_into_the_residual_stream(rng):
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    stream = rng.standard_normal((2, 3, 64)).astype(np.float32)
    w = rng.standard_normal(64).astype(np.float32)
    total = stream.astype(np.float64) + x
    y = F.rms_norm(x, w, 1e-6, residual=stream)
    np.testing.assert_allclose(stream, total, rtol=1e-6, atol=1e-6)  # updated in place
    np.testing.assert_allclose(y, total / np.sqrt((total**2).mean(-1, keepdims=True) + 1e-6) * w, rtol=2e-6, atol=2e-6)
    with pytest.raises(ValueError, match="residual"):
        F.rms_norm(x, w, residual=stream[:, :2].copy())
    with pytest.raises(TypeError, match="residual"):
        F.rms_norm(x, w, residual=stream.astype(np.float64))


def rope_reference(x, positions, rot, base, interleaved):
    """The rotation in float64, by the angles rope_tables specifies: float32 inverse frequencies times float32
    positions, as Hugging Face's Llama computes them (at position 500 their rounding moves an angle by ~3e-5)."""
    x = x.astype(np.float64).copy()
    inv = (np.float32(1) / np.float32(base) ** (np.arange(0, rot, 2, dtype=np.float32) / np.float32(rot))).astype(
        np.float32
    )
    ang = (positions[..., None].astype(np.float32) * inv).astype(np.float64)  # (B, L, rot / 2)
    c, s = np.cos(ang)[:, :, None, :], np.sin(ang)[:, :, None, :]
    if interleaved:
        a, b = x[..., 0:rot:2].copy(), x[..., 1:rot:2].copy()
        x[..., 0:rot:2], x[..., 1:rot:2] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., : rot // 2].copy(), x[..., rot // 2 : rot].copy()
        x[..., : rot // 2], x[..., rot // 2 : rot] = a * c - b * s, a * s + b * c
    return x


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("D, rot", [(64, 64), (64, 32), (10, 6)])
def test_rope_against_float64(isa, rng, interleaved, D, rot):
    B, L, H = 2, 9, 3
    base = 100000.0
    qkv = rng.standard_normal((B, L, 3 * H * D)).astype(np.float32)
    x = qkv[..., : H * D].reshape(B, L, H, D)  # heads rotated where they lie: a strided view
    before = x.copy()
    positions = rng.integers(0, 500, (B, L))
    cos, sin = F.rope_tables(512, rot, base)
    F.rotary_embedding(x, positions, cos, sin, interleaved=interleaved)
    want = rope_reference(before, positions, rot, base, interleaved)
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=2e-6)
    np.testing.assert_array_equal(qkv[..., H * D :], qkv[..., H * D :])  # the rest of the row untouched


def test_rope_matches_transformers_llama():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as ml

    cfg = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, rope_theta=100000.0, max_position_embeddings=64
    )
    emb = ml.LlamaRotaryEmbedding(cfg)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 11, 16)).astype(np.float32)  # (B, H, L, D) as HF holds it
    pos = np.arange(11)[None]
    c, s = emb(torch.from_numpy(q), torch.from_numpy(pos))
    want, _ = ml.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(q), c, s)
    cos, sin = F.rope_tables(64, 16, 100000.0)
    x = q.transpose(0, 2, 1, 3)  # (B, L, H, D) view
    F.rotary_embedding(x, pos, cos, sin)
    np.testing.assert_allclose(q, want.numpy(), rtol=1e-6, atol=1e-6)


def test_rope_refuses(rng):
    cos, sin = F.rope_tables(16, 8)
    x = rng.standard_normal((1, 2, 2, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="position 16 is outside the 16 positions"):
        F.rotary_embedding(x, [[0, 16]], cos, sin)
    with pytest.raises(TypeError, match="integers"):
        F.rotary_embedding(x, [[0.5, 1]], cos, sin)
    with pytest.raises(TypeError, match="rotated in place"):
        F.rotary_embedding(x.tolist(), [[0, 1]], cos, sin)
    with pytest.raises(TypeError, match="rotated in place"):
        _core.rope(x.tolist(), np.zeros((1, 2), np.int64), cos, sin)
    with pytest.raises(ValueError, match="rotate 16 dims, heads have 8"):
        F.rotary_embedding(x, [[0, 1]], *F.rope_tables(16, 16))
    with pytest.raises(ValueError, match="read-only"):
        y = x.copy()
        y.flags.writeable = False
        F.rotary_embedding(y, [[0, 1]], cos, sin)
    with pytest.raises(ValueError, match="even integer"):
        F.rope_tables(16, 7)


@pytest.mark.parametrize("F_", [1, 7, 64, 1536])
def test_swiglu_against_float64(isa, rng, F_):
    gu = (rng.standard_normal((3, 4, 2 * F_)) * 4).astype(np.float32)
    g, u = gu[..., :F_].astype(np.float64), gu[..., F_:].astype(np.float64)
    want = g / (1 + np.exp(-g)) * u
    np.testing.assert_allclose(F.swiglu(gu), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2 F\)"):
        F.swiglu(gu[..., :-1])


@pytest.mark.parametrize("F_", [1, 7, 64, 1536])
def test_geglu_against_float64(isa, rng, F_):
    """Gemma's gate: gelu with the tanh approximation (transformers' gelu_pytorch_tanh), times up."""
    gu = (rng.standard_normal((3, 4, 2 * F_)) * 4).astype(np.float32)
    g, u = gu[..., :F_].astype(np.float64), gu[..., F_:].astype(np.float64)
    want = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3))) * u
    np.testing.assert_allclose(F.geglu(gu), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        _core.swiglu(gu, "swish")
