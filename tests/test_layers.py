"""Whole-layer C++ steps (cpp/layers/): the fused encoder layer against the same layer run op by op in Python."""

import numpy as np
import pytest
from conftest import randn

import pyattn
from pyattn import _core
from pyattn.nn import FeedForward, LayerNorm, MultiHeadAttention, TransformerEncoderLayer


def make_layer(rng, E=48, H=4, F=80, norm_first=False, activation="gelu", bias=True):
    def b(n):
        return randn(rng, n, scale=0.1) if bias else None

    attn = MultiHeadAttention(
        H, *(randn(rng, E, E, scale=E**-0.5) for _ in range(4)), b(E), b(E), b(E), b(E), name="attn"
    )
    ffn = FeedForward(randn(rng, F, E, scale=E**-0.5), b(F), randn(rng, E, F, scale=F**-0.5), b(E), activation)
    norms = [LayerNorm(1 + randn(rng, E, scale=0.1), b(E), eps=1e-5) for _ in range(2)]
    return TransformerEncoderLayer(attn, ffn, *norms, norm_first=norm_first)


def op_by_op(layer, x, pad):
    layer.fused = False  # every op a call of its own, as before the fused layer existed
    try:
        return layer(x, src_key_padding_mask=pad)[0]
    finally:
        del layer.fused


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
def test_fused_encoder_layer_equals_the_op_by_op_layer(rng, norm_first, activation, storage):
    layer = make_layer(rng, norm_first=norm_first, activation=activation, bias=activation != "silu")
    layer.set_weight_storage(storage)
    x = randn(rng, 3, 11, 48)
    pad = np.zeros((3, 11), bool)
    pad[1, 7:] = True
    pad[2, 1:] = True
    for p in (None, pad):
        fused, weights = layer(x, src_key_padding_mask=p)
        assert weights is None
        np.testing.assert_allclose(fused, op_by_op(layer, x, p), rtol=2e-5, atol=2e-5)
        # and with the attention weights (another attention path: the scores are materialised)
        np.testing.assert_allclose(
            fused,
            layer(x, src_key_padding_mask=p, need_weights=True)[0],
            rtol=2e-2 if storage == "bfloat16" else 2e-5,
            atol=1e-3 if storage == "bfloat16" else 2e-5,
        )


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("storage", ["float32", "int8"])
@pytest.mark.parametrize("fused", [True, False])
def test_packed_sequences_equal_each_sequence_alone(rng, norm_first, storage, fused):
    """Sequences packed without padding (lengths 1 to 70, an empty one among them): each sequence's rows equal the
    layer run on that sequence alone; the fused layer packs, the op-by-op one pads and masks."""
    layer = make_layer(rng, norm_first=norm_first)
    layer.set_weight_storage(storage)
    lengths = [9, 1, 0, 70, 3, 17]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    x = randn(rng, int(offsets[-1]), 48)
    if not fused:
        layer.fused = False
    try:
        got = layer.packed(x, offsets)
    finally:
        layer.__dict__.pop("fused", None)
    assert got.shape == x.shape and got.dtype == np.float32
    # Op by op, the sequences are padded to the longest (70 rows), which takes the blocked attention path, in
    # bfloat16 for int8 weights (precision.attention_precision) on CPUs with the pair kernels, where a short sequence
    # alone takes the float32 path of few rows. The fused layer runs each sequence as it would alone.
    tol = 3e-2 if storage == "int8" and not fused and pyattn.get_isa() in ("avx512_bf16", "amx") else 2e-5
    for b, n in enumerate(lengths):
        if n:
            rows = slice(offsets[b], offsets[b + 1])
            alone = op_by_op(layer, x[None, rows], None)[0]
            np.testing.assert_allclose(got[rows], alone, rtol=tol, atol=tol, err_msg=f"sequence {b}")


def test_packed_binding_checks(rng):
    fused = make_layer(rng)._fused()
    x = randn(rng, 10, 48)
    assert fused.packed(np.zeros((0, 48), np.float32), np.zeros(1, np.int64)).shape == (0, 48)
    with pytest.raises(ValueError, match="start at 0 and end at the 10 rows"):
        fused.packed(x, np.array([0, 4, 9], np.int64))
    with pytest.raises(ValueError, match="must not decrease"):
        fused.packed(x, np.array([0, 6, 4, 10], np.int64))
    with pytest.raises(TypeError, match="int64"):
        fused.packed(x, np.array([0, 10], np.int32))
    with pytest.raises(ValueError, match="at least one entry"):
        fused.packed(x, np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"expected x of shape \(tokens, 48\)"):
        fused.packed(randn(rng, 10, 40), np.array([0, 10], np.int64))
    with pytest.raises(TypeError, match="float32"):
        fused.packed(x.astype(np.float64), np.array([0, 10], np.int64))


def test_fused_layer_follows_repacking(rng):
    layer = make_layer(rng)
    x = randn(rng, 2, 5, 48)
    before = layer(x)[0]
    layer.set_weight_storage("int8")
    after = layer(x)[0]
    assert not np.array_equal(before, after)
    np.testing.assert_allclose(after, op_by_op(layer, x, None), rtol=2e-5, atol=2e-5)


def test_encoder_layer_binding_checks(rng):
    layer = make_layer(rng)
    fused = layer._fused()
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, seq, 48\)"):
        fused(randn(rng, 2, 5, 40))
    with pytest.raises(TypeError, match="float32"):
        fused(np.zeros((2, 5, 48)))
    with pytest.raises(TypeError, match="bool"):
        fused(randn(rng, 2, 5, 48), np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"key_padding_mask of shape \(2, 5\)"):
        fused(randn(rng, 2, 5, 48), np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="zero-length|empty|length 0"):
        fused(randn(rng, 2, 0, 48))
    attn, ffn = layer.self_attn, layer.ffn
    qkv = attn._projection("qkv")._packed
    norm = layer.norm1
    args = (norm.weight, norm.bias, 1e-5, norm.weight, norm.bias, 1e-5, 4, "gelu", False)
    with pytest.raises(TypeError, match="PackedLinear"):
        _core.EncoderLayer(qkv, np.zeros((48, 48), np.float32), ffn.linear1._packed, ffn.linear2._packed, *args)
    with pytest.raises(ValueError, match="qkv maps 48 -> 48 features, expected 48 -> 144"):
        _core.EncoderLayer(
            attn.out_proj._packed, attn.out_proj._packed, ffn.linear1._packed, ffn.linear2._packed, *args
        )
    with pytest.raises(ValueError, match="num_heads"):
        _core.EncoderLayer(
            qkv, attn.out_proj._packed, ffn.linear1._packed, ffn.linear2._packed, *args[:6], 5, "gelu", False
        )
    with pytest.raises(ValueError, match="unknown activation"):
        _core.EncoderLayer(
            qkv, attn.out_proj._packed, ffn.linear1._packed, ffn.linear2._packed, *args[:6], 4, "tanh", False
        )
