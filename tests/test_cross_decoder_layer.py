"""The decoder layer with encoder-decoder attention as one C++ step (_core.CrossDecoderLayer): the same bits as the
layer op by op, for post- and pre-LN, weight types, float16 memory K/V, beams reading one memory row, padding; and a
clear error for every bad argument."""

import pathlib

import numpy as np
import pytest

from pyattn import _core
from pyattn.nn import (
    FeedForward,
    LayerNorm,
    MultiHeadAttention,
    TransformerDecoder,
    TransformerDecoderLayer,
)

E, H, F, KDIM = 48, 4, 96, 40


def make_decoder(rng, norm_first: bool, layers: int = 2) -> TransformerDecoder:
    def w(o, i):
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    def b(n):
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    def norm():
        return LayerNorm(1 + 0.1 * rng.standard_normal(E).astype(np.float32), b(E))

    def layer():
        self_attn = MultiHeadAttention(H, w(E, E), w(E, E), w(E, E), w(E, E), b(E), b(E), b(E), b(E))
        cross = MultiHeadAttention(H, w(E, E), w(E, KDIM), w(E, KDIM), w(E, E), b(E), b(E), b(E), b(E))
        ffn = FeedForward(w(F, E), b(F), w(E, F), b(E), "gelu")
        return TransformerDecoderLayer(self_attn, cross, ffn, norm(), norm(), norm(), norm_first=norm_first)

    return TransformerDecoder([layer() for _ in range(layers)], norm())


def decode(decoder, memory, pad, tgt, kv_dtype, beams, fused: bool, monkeypatch):
    """A 3-token prefix, then one token at a time, the rows expanded to `beams` after the prefix (beam search's
    reorder); returns the outputs of every step and the caches at the end."""
    monkeypatch.setattr(TransformerDecoderLayer, "fused", fused)
    state = decoder.init_state(memory, pad, memory_kv_dtype=kv_dtype)
    outs = [decoder(tgt[:, :3], state=state)]
    state.reorder(np.repeat(np.arange(memory.shape[0]), beams))
    steps = np.repeat(tgt, beams, axis=0)
    for t in range(3, tgt.shape[1]):
        outs.append(decoder(steps[:, t : t + 1], state=state))
    return outs, [(c.k[:, : c.length].copy(), c.v[:, : c.length].copy()) for c in state.self_caches]


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("storage", ["float32", "int8", "bfloat16"])
@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
@pytest.mark.parametrize("beams", [1, 3])
def test_fused_step_is_the_layer_op_by_op(norm_first, storage, kv_dtype, beams, monkeypatch):
    rng = np.random.default_rng(7)
    decoder = make_decoder(rng, norm_first)
    decoder.set_weight_storage(storage)
    memory = rng.standard_normal((2, 11, KDIM)).astype(np.float32)
    pad = np.zeros((2, 11), bool)
    pad[1, 8:] = True
    tgt = rng.standard_normal((2, 6, E)).astype(np.float32)
    fused = decode(decoder, memory, pad, tgt, kv_dtype, beams, True, monkeypatch)
    op_by_op = decode(decoder, memory, pad, tgt, kv_dtype, beams, False, monkeypatch)
    for got, want in zip(fused[0], op_by_op[0]):
        np.testing.assert_array_equal(got, want)
    for (gk, gv), (wk, wv) in zip(fused[1], op_by_op[1]):
        np.testing.assert_array_equal(gk, wk)
        np.testing.assert_array_equal(gv, wv)
    assert all(np.isfinite(o).all() for o in fused[0])


def test_fused_step_with_target_padding_and_without_the_causal_mask(monkeypatch):
    """A left-padded batch (continuous batching's rows) and a non-causal step go the same way op by op and fused."""
    rng = np.random.default_rng(8)
    decoder = make_decoder(rng, True)
    memory = rng.standard_normal((2, 7, KDIM)).astype(np.float32)
    tgt = rng.standard_normal((2, 4, E)).astype(np.float32)
    tpad = np.zeros((2, 4), bool)
    tpad[0, :2] = True
    results = []
    for fused in (True, False):
        monkeypatch.setattr(TransformerDecoderLayer, "fused", fused)
        state = decoder.init_state(memory)
        a = decoder(tgt[:, :3], state=state, tgt_key_padding_mask=tpad[:, :3], tgt_is_causal=False)
        b = decoder(tgt[:, 3:], state=state, tgt_key_padding_mask=tpad)
        results.append((a, b))
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)


def test_the_fused_step_is_taken_and_follows_a_repacked_weight(monkeypatch):
    rng = np.random.default_rng(9)
    decoder = make_decoder(rng, True, layers=1)
    calls = []
    step = _core.CrossDecoderLayer.step
    monkeypatch.setattr(_core.CrossDecoderLayer, "step", lambda self, *a: calls.append(1) or step(self, *a))
    memory = rng.standard_normal((1, 5, KDIM)).astype(np.float32)
    x = rng.standard_normal((1, 1, E)).astype(np.float32)
    first = decoder(x, state=decoder.init_state(memory))
    assert calls == [1]
    decoder.set_weight_storage("int8")  # repacked: the C++ layer is rebuilt over the new matrices
    second = decoder(x, state=decoder.init_state(memory))
    monkeypatch.setattr(TransformerDecoderLayer, "fused", False)
    np.testing.assert_array_equal(second, decoder(x, state=decoder.init_state(memory)))
    assert not np.array_equal(first, second)


def test_bad_step_arguments():
    rng = np.random.default_rng(10)
    layer = make_decoder(rng, True, layers=1).layers[0]
    fused = layer._fused()
    x = rng.standard_normal((2, 1, E)).astype(np.float32)
    ck, cv = (np.zeros((2, 4, E), np.float32) for _ in range(2))
    mk, mv = (np.zeros((1, H, 6, E // H), np.float16) for _ in range(2))
    fused.step(x, ck, cv, 0, mk, mv, 6)  # fine: two beams read the one memory row
    with pytest.raises(ValueError, match="exceed the cache's capacity 4"):
        fused.step(x, ck, cv, 4, mk, mv, 6)
    with pytest.raises(ValueError, match="past"):
        fused.step(x, ck, cv, -1, mk, mv, 6)
    with pytest.raises(ValueError, match="memory_length must be in \\[1, 6\\]"):
        fused.step(x, ck, cv, 0, mk, mv, 7)
    with pytest.raises(ValueError, match="rows must divide the batch"):
        fused.step(x[:1], ck[:1], cv[:1], 0, np.zeros((2, H, 6, E // H), np.float16), mv[:1].repeat(2, 0), 6)
    with pytest.raises(TypeError, match="float32 or float16 like memory_k"):
        fused.step(x, ck, cv, 0, mk, mv.astype(np.float32), 6)
    with pytest.raises(ValueError, match="memory_k of shape"):
        fused.step(x, ck, cv, 0, mk[:, :2], mv[:, :2], 6)
    with pytest.raises(ValueError, match="cache_k of shape"):
        fused.step(x, np.zeros((2, 4, 8), np.float32), cv, 0, mk, mv, 6)
    with pytest.raises(ValueError, match="expected x of shape"):
        fused.step(np.zeros((2, 1, 8), np.float32), ck, cv, 0, mk, mv, 6)
    with pytest.raises(TypeError, match="bool"):
        fused.step(x, ck, cv, 0, mk, mv, 6, np.zeros((2, 1), np.float32))
    with pytest.raises(ValueError, match="key_padding_mask of shape \\(2, 1\\)"):
        fused.step(x, ck, cv, 0, mk, mv, 6, np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="memory_key_padding_mask of shape \\(1, 6\\)"):
        fused.step(x, ck, cv, 0, mk, mv, 6, None, np.zeros((2, 6), bool))
    with pytest.raises(ValueError, match="cache_v"):
        fused.step(x, ck, ck, 0, mk, mv, 6)  # one buffer for both: the values would overwrite the keys
    ro = ck.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fused.step(x, ro, cv, 0, mk, mv, 6)
    with pytest.raises(ValueError, match="must divide d_model"):
        _core.CrossDecoderLayer(*(lin._packed for lin in layer._step_linears()), *_norms(layer), 5, "gelu", True)


def _norms(layer):
    return [a for n in (layer.norm1, layer.norm2, layer.norm3) for a in (n.weight, n.bias, n.eps)]


def test_whisper_decodes_the_same_fused_and_op_by_op(monkeypatch):
    """tiny.en's greedy and beam-5 tokens and their log-probabilities, fused against op by op."""
    from pyattn.audio import load_audio
    from pyattn.models.whisper import Whisper

    m = Whisper.from_pretrained(compute_type="int8")
    memory = m.encode(m.features(load_audio(pathlib.Path(__file__).parent / "data" / "fox.wav")))
    for beam in (1, 5):
        results = []
        for fused in (True, False):
            monkeypatch.setattr(TransformerDecoderLayer, "fused", fused)
            results.append(m._generate(memory=memory, beam_size=beam))
        assert results[0][0] == results[1][0] and results[0][1] == results[1][1]
