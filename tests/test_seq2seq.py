"""BART and Marian against transformers with the same weights: logits, KV-cache decoding, greedy and
beam-search ids."""

import numpy as np
import pytest
import torch

import pyattn
from pyattn.generation import generate
from pyattn.models import Seq2SeqModel

transformers = pytest.importorskip("transformers")


def build(kind, tmp_path, seed=0, **over):
    common = dict(
        vocab_size=60,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
    )
    common.update(over)
    if kind == "bart":
        cfg, cls = transformers.BartConfig(**common), transformers.BartForConditionalGeneration
    else:
        cfg = transformers.MarianConfig(
            pad_token_id=59,
            decoder_start_token_id=59,
            eos_token_id=0,
            forced_eos_token_id=0,
            scale_embedding=True,
            activation_function="swish",
            **common,
        )
        cls = transformers.MarianMTModel
    torch.manual_seed(seed)
    ref = cls(cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "layer_norm" in name or "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
        ref.model.shared.weight.mul_(4.0)  # peaked distributions: EOS appears, beams differ
        if hasattr(ref, "final_logits_bias"):
            ref.final_logits_bias.normal_()
    folder = tmp_path / f"{kind}{seed}"
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, pyattn.from_pretrained(folder)


def source(seed):
    rng = np.random.default_rng(seed)
    src = rng.integers(3, 59, (3, 7))
    mask = np.ones((3, 7), np.int64)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return src, mask


@pytest.mark.parametrize("kind", ["bart", "marian"])
def test_logits_and_cache(tmp_path, kind):
    ref, model = build(kind, tmp_path)
    assert isinstance(model, Seq2SeqModel)
    src, mask = source(0)
    tgt = np.random.default_rng(1).integers(3, 59, (3, 6))
    with torch.no_grad():
        want = ref(
            input_ids=torch.from_numpy(src),
            attention_mask=torch.from_numpy(mask),
            decoder_input_ids=torch.from_numpy(tgt),
        ).logits.numpy()
    got = model(src, mask, tgt)["logits"]
    assert np.abs(got - want).max() < 1e-4
    memory = model.encode(src, mask)
    state = model.init_state(memory, mask)
    steps = [model.decode(tgt[:, :2], state=state)] + [
        model.decode(tgt[:, t : t + 1], state=state) for t in range(2, 6)
    ]
    assert np.abs(np.concatenate(steps, 1) - got).max() < 1e-5


@pytest.mark.parametrize("kind", ["bart", "marian"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(num_beams=1),
        dict(num_beams=3),
        dict(num_beams=4, length_penalty=0.6, early_stopping=True),
        dict(num_beams=2, length_penalty=1.5, early_stopping="never"),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()),
)
@pytest.mark.parametrize("seed", [0, 1])
def test_generate_equals_transformers(tmp_path, kind, kw, seed):
    ref, model = build(kind, tmp_path, seed)
    src, mask = source(seed)
    with torch.no_grad():
        want = ref.generate(
            input_ids=torch.from_numpy(src),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=10,
            do_sample=False,
            **kw,
        ).numpy()
    np.testing.assert_array_equal(generate(model, src, mask, max_new_tokens=10, **kw), want)
    np.testing.assert_array_equal(model.generate(src, mask, max_new_tokens=10, **kw), want)


def test_errors(tmp_path):
    _, model = build("bart", tmp_path)
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(np.ones((1, 3), np.int64))
    with pytest.raises(ValueError, match="position"):
        model.encode(np.ones((1, 70), np.int64))
