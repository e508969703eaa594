"""GPT-2 against transformers (logits, KV cache) and generate(): greedy and beam ids equal transformers'."""

import numpy as np
import pytest
import torch

import pyattn
from pyattn.generation import generate
from pyattn.models import GPT2Model

transformers = pytest.importorskip("transformers")
EOS = 7


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    cfg = transformers.GPT2Config(
        vocab_size=50, n_embd=64, n_layer=2, n_head=4, n_positions=128, eos_token_id=EOS, bos_token_id=EOS
    )
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        ref.transformer.wte.weight.mul_(8.0)  # peaked distributions: EOS gets generated, beams diverge
        for name, p in ref.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("gpt2")
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, pyattn.from_pretrained(folder)


def prompts(seed, B=3, L=6):
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, 50, (B, L))
    mask = np.ones((B, L), np.int64)
    mask[1, :2] = 0  # left padding, rows of different lengths
    mask[2, : L - 2] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_logits_and_cache(gpt2):
    ref, model = gpt2
    assert isinstance(model, GPT2Model)
    ids, mask = prompts(0)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    got = model(ids, mask)["logits"]
    real = mask.astype(bool)
    assert np.abs(got - want)[real].max() < 1e-4
    # KV cache: a prefix, then token by token, equals the full pass
    state = model.init_state(3)
    steps = [model(ids[:, :3], mask[:, :3], state=state)["logits"]]
    for t in range(3, 6):
        steps.append(model(ids[:, t : t + 1], mask[:, : t + 1], state=state)["logits"])
    assert np.abs(np.concatenate(steps, 1) - got)[real].max() < 1e-5


SETTINGS = [
    dict(num_beams=1),
    dict(num_beams=3),
    dict(num_beams=4, length_penalty=0.5, early_stopping=True),
    dict(num_beams=2, length_penalty=1.2, early_stopping="never"),
    dict(num_beams=5, length_penalty=2.0),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kw", SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_greedy_and_beam_ids_equal_transformers(gpt2, seed, kw):
    ref, model = gpt2
    ids, mask = prompts(seed)
    with torch.no_grad():
        want = ref.generate(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=EOS,
            **kw,
        ).numpy()
    got = generate(model, ids, mask, max_new_tokens=12, eos_token_id=EOS, pad_token_id=0, **kw)
    np.testing.assert_array_equal(got, want)


def test_streaming_callback_and_sampling(gpt2):
    _, model = gpt2
    ids, mask = prompts(3)
    seen = []
    out = generate(
        model,
        ids,
        mask,
        max_new_tokens=8,
        eos_token_id=EOS,
        pad_token_id=0,
        callback=lambda step, toks: seen.append(toks),
    )
    np.testing.assert_array_equal(np.stack(seen, 1), out[:, 6:])
    a = generate(model, ids, mask, max_new_tokens=10, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=5)
    b = generate(model, ids, mask, max_new_tokens=10, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=5)
    np.testing.assert_array_equal(a, b)  # seeded
    assert a.shape == (3, 16) and a.min() >= 0 and a.max() < 50
    greedy = generate(model, ids, mask, max_new_tokens=10)
    cold = generate(model, ids, mask, max_new_tokens=10, do_sample=True, top_k=1, seed=1)
    np.testing.assert_array_equal(cold, greedy)  # top_k=1 sampling is greedy


def test_top_p_keeps_the_nucleus():
    from pyattn.generation import Temperature, TopK, TopP, apply

    def kept(top_k, top_p):  # the sampling processors in generate's order
        return np.isfinite(apply([Temperature(1.0), TopK(top_k), TopP(top_p)], None, logits))

    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    np.testing.assert_array_equal(kept(0, 0.7), [[True, True, False, False]])
    np.testing.assert_array_equal(kept(3, 1.0), [[True, True, True, False]])


def test_generation_errors(gpt2):
    _, model = gpt2
    ids, mask = prompts(0)
    for kw, msg in [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=0.0), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(num_beams=0), "num_beams"),
        (dict(num_beams=2, do_sample=True), "beam sampling"),
        (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
    ]:
        with pytest.raises(ValueError, match=msg):
            generate(model, ids, mask, **kw)
    with pytest.raises(ValueError, match="no real token"):
        generate(model, ids, np.zeros_like(mask))
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, ids.astype(np.float32))
    with pytest.raises(ValueError, match="position"):
        generate(model, ids, mask, max_new_tokens=200)
