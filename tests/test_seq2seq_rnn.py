"""pyattn.models.Seq2Seq (GRU encoder + Bahdanau attention decoder) against the PyTorch tutorial's modules with the
same weights: identical greedy outputs, log-probabilities, attention weights and states within 1e-4."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_seq2seq as ref  # noqa: E402

from pyattn.models import Seq2Seq  # noqa: E402

EOS = 1


@pytest.fixture(scope="module")
def pair():
    enc, dec = ref.build(src_vocab=50, tgt_vocab=60, hidden=32, seed=3, max_length=12)
    return enc, dec, Seq2Seq.from_torch(enc, dec, sos_id=0, eos_id=EOS, max_length=12)


def sources(rng, B=4, S=7):
    return rng.integers(2, 50, (B, S))


def test_greedy_equals_torch(pair, rng):
    enc, dec, model = pair
    src = sources(rng)
    want = ref.greedy(enc, dec, torch.from_numpy(src), EOS)
    got = model.greedy(src)
    for b, (ids, attn, logp) in enumerate(want):
        assert got.ids[b] == ids
        np.testing.assert_allclose(got.attentions[b], attn, atol=1e-5)
        assert got.scores[b] == pytest.approx(float(sum(logp[t, i] for t, i in enumerate(ids))), abs=1e-4)


def test_teacher_forcing_states_equal_torch(pair, rng):
    enc, dec, model = pair
    src, tgt = sources(rng, 3, 9), rng.integers(0, 60, (3, 6))
    with torch.inference_mode():
        memory, hidden = enc(torch.from_numpy(src))
        logp, attn, hiddens = dec(memory, hidden, torch.from_numpy(tgt))
    mem, h = model.encode(src)
    np.testing.assert_allclose(mem, memory.numpy(), atol=1e-5)
    np.testing.assert_allclose(h, hidden.numpy(), atol=1e-5)
    inputs = np.concatenate([np.zeros((3, 1), np.int64), tgt[:, :-1]], 1)  # SOS, then the target shifted right
    my_logp, my_attn = model(src, inputs)
    np.testing.assert_allclose(my_logp, logp.numpy(), atol=1e-4)
    np.testing.assert_allclose(my_attn, attn.numpy(), atol=1e-5)


def test_beam_search(pair, rng):
    _, _, model = pair
    src = sources(rng, 3)
    g = model.greedy(src)
    b1 = model.beam_search(src, beam_size=1)
    assert b1.ids == g.ids
    b4 = model.beam_search(src, beam_size=4, length_penalty=0.0)
    for i in range(3):
        assert b4.scores[i] >= g.scores[i] - 1e-6  # length_penalty 0: the beam finds a sequence at least as likely
        assert b4.attentions[i].shape == (len(b4.ids[i]), src.shape[1])
        np.testing.assert_allclose(b4.attentions[i].sum(-1), 1.0, atol=1e-5)


def test_save_load_round_trip(pair, rng, tmp_path):
    _, _, model = pair
    model.save(tmp_path / "m")
    again = Seq2Seq.load(tmp_path / "m")
    src = sources(rng)
    assert again.greedy(src).ids == model.greedy(src).ids
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["kind"] = "something-else"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="kind"):
        Seq2Seq.load(tmp_path / "m")


def test_attention_heat_map(pair, rng, tmp_path):
    pytest.importorskip("matplotlib")
    from pyattn import plot

    _, _, model = pair
    t = model.greedy(sources(rng, 1))
    fig = plot.attention(
        t.attentions[0], [f"s{i}" for i in range(7)], [f"t{i}" for i in range(len(t.ids[0]))], tmp_path / "attn.png"
    )
    assert (tmp_path / "attn.png").stat().st_size > 1000
    assert fig is not None


def test_bad_models_and_inputs(pair):
    enc, dec, model = pair
    sd_enc = {k: v.numpy() for k, v in enc.state_dict().items()}
    sd_dec = {k: v.numpy() for k, v in dec.state_dict().items()}
    broken = dict(sd_dec)
    del broken["attention.Va.weight"]
    with pytest.raises(ValueError, match="attention.Va.weight"):
        Seq2Seq(sd_enc, broken)
    with pytest.raises(ValueError, match="eos_id"):
        Seq2Seq(sd_enc, sd_dec, eos_id=60)
    with pytest.raises(ValueError, match="max_length"):
        Seq2Seq(sd_enc, sd_dec, max_length=0)
    wide = dict(sd_dec, **{"gru.weight_ih_l0": np.zeros((96, 40), np.float32)})
    with pytest.raises(ValueError, match="decoder"):
        Seq2Seq(sd_enc, wide)
    with pytest.raises(ValueError, match="source ids"):
        model.greedy(np.zeros((2, 0), np.int64))
    with pytest.raises(ValueError, match="out of range"):
        model.greedy(np.array([[3, 99]]))
    with pytest.raises(ValueError, match="beam_size"):
        model.beam_search(np.array([[3, 4]]), beam_size=0)
