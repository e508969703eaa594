"""pyattn.nn.GRU against torch.nn.GRU with the same weights, on every ISA."""

import numpy as np
import pytest

from pyattn.nn import GRU

torch = pytest.importorskip("torch")


def torch_gru(I, H, layers=1, bidirectional=False, seed=0, scale=1.0):
    torch.manual_seed(seed)
    g = torch.nn.GRU(I, H, num_layers=layers, batch_first=True, bidirectional=bidirectional)
    with torch.no_grad():
        for p in g.parameters():
            p.mul_(scale)
    return g.eval()


@pytest.mark.parametrize(
    "I,H,layers,bidir,B,T",
    [
        (1, 1, 1, False, 1, 1),
        (7, 5, 1, False, 3, 4),
        (16, 33, 2, False, 2, 9),
        (12, 24, 2, True, 3, 6),
        (64, 128, 1, False, 5, 17),
        (256, 256, 1, False, 1, 10),
    ],
)
def test_gru_matches_torch(isa, rng, I, H, layers, bidir, B, T):
    g = torch_gru(I, H, layers, bidir)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = rng.standard_normal((layers * (2 if bidir else 1), B, H)).astype(np.float32)
    mine = GRU.from_torch(g)
    with torch.no_grad():
        want_out, want_h = g(torch.from_numpy(x), torch.from_numpy(h0))
        want_out0, want_h0 = g(torch.from_numpy(x))
    out, h = mine(x, h0)
    assert out.shape == tuple(want_out.shape) and h.shape == tuple(want_h.shape)
    np.testing.assert_allclose(out, want_out.numpy(), atol=2e-5)
    np.testing.assert_allclose(h, want_h.numpy(), atol=2e-5)
    out0, h0_ = mine(x)
    np.testing.assert_allclose(out0, want_out0.numpy(), atol=2e-5)
    np.testing.assert_allclose(h0_, want_h0.numpy(), atol=2e-5)


def test_gru_saturated_gates_stay_finite(rng):
    """Large pre-activations (weights x 50): sigmoid and tanh saturate without overflow or NaN."""
    g = torch_gru(8, 16, scale=50.0)
    x = (rng.standard_normal((2, 5, 8)) * 10).astype(np.float32)
    with torch.no_grad():
        want, _ = g(torch.from_numpy(x))
    out, _ = GRU.from_torch(g)(x)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, want.numpy(), atol=1e-5)


def test_gru_step_by_step_equals_sequence(rng):
    g = GRU.from_torch(torch_gru(10, 20, layers=2))
    x = rng.standard_normal((3, 7, 10)).astype(np.float32)
    out, h = g(x)
    hs, steps = None, []
    for t in range(7):
        o, hs = g(x[:, t : t + 1], hs)
        steps.append(o)
    np.testing.assert_allclose(np.concatenate(steps, 1), out, atol=1e-6)
    np.testing.assert_allclose(hs, h, atol=1e-6)


def test_gru_errors(rng):
    g = torch_gru(4, 6)
    sd = {k: v.numpy() for k, v in g.state_dict().items()}
    mine = GRU(sd)
    with pytest.raises(ValueError, match="input of shape"):
        mine(np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match="input of shape"):
        mine(np.zeros((2, 0, 4), np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        mine(np.zeros((2, 3, 4), np.int64))
    with pytest.raises(ValueError, match="h0"):
        mine(np.zeros((2, 3, 4), np.float32), np.zeros((1, 3, 6), np.float32))
    bad = dict(sd, weight_hh_l0=np.zeros((18, 5), np.float32))
    with pytest.raises(ValueError, match="weight_hh_l0"):
        GRU(bad)
    with pytest.raises(ValueError, match="weight_ih_l0"):
        GRU({})
    with pytest.raises(ValueError, match="unexpected"):
        GRU(dict(sd, extra=np.zeros(3)))
    with pytest.raises(ValueError, match="batch_first"):
        GRU.from_torch(torch.nn.GRU(4, 6))
    nan = dict(sd)
    nan["weight_ih_l0"] = sd["weight_ih_l0"].copy()
    nan["weight_ih_l0"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GRU(nan)
