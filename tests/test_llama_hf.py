"""LlamaModel.from_pretrained on Hugging Face folders: small random LlamaForCausalLM (and Mistral, Qwen2) models built
with transformers, saved in float32 and bfloat16, against transformers running the same weights in float32."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest

import pyattn
from pyattn.models import LlamaModel
from pyattn.models.llama import HFWeights
from pyattn.models.pretrained import read_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BASE = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    initializer_range=0.15,  # large enough that the logits are not all near zero
)
CONFIGS = {
    # grouped-query attention, separate lm_head, head_dim 16
    "gqa_untied": dict(num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=False),
    # one KV head, tied embeddings, head_dim 24 (not hidden / heads), rope_theta 500000
    "mqa_tied_hd24": dict(num_key_value_heads=1, head_dim=24, rope_theta=500000.0, tie_word_embeddings=True),
    # full multi-head attention, head_dim 80 (wider than d_model / heads), biases in attention and MLP
    "mha_bias_hd80": dict(
        num_key_value_heads=4, head_dim=80, rope_theta=10000.0, attention_bias=True, mlp_bias=True, eos_token_id=[2, 5]
    ),
    # Llama 3.1's rope scaling
    "llama3_rope": dict(
        num_key_value_heads=2,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
        rope_theta=500000.0,
    ),
    "linear_rope": dict(num_key_value_heads=2, rope_scaling=dict(rope_type="linear", factor=4.0)),
}
PROMPTS = [[1, 17, 42, 8, 77, 30, 5, 61, 12, 90, 33], [1, 4, 60, 23], [1, 88, 14, 9, 50, 71, 3]]


def _randomize_norms(model, seed=0):
    """RMSNorm weights start as ones and biases as zeros: give them values, so that the test sees them used."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def build(kind: str, cfg: dict, seed: int = 0):
    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
        "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
    }
    config_cls, model_cls = classes[kind]
    cfg = dict(cfg)
    if kind == "phi3":
        cfg.setdefault("pad_token_id", 0)  # Phi3Config's default, 32000, is outside the small vocabularies
    if "rope_scaling" in cfg:
        cfg["rope_parameters"] = dict(cfg.pop("rope_scaling"), rope_theta=cfg.pop("rope_theta", 10000.0))
    torch.manual_seed(seed)
    model = model_cls(config_cls(**cfg)).eval()
    _randomize_norms(model, seed)
    return model


def save(model, folder, dtype=torch.float32):
    (copy.deepcopy(model).to(dtype) if dtype != torch.float32 else model).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> (transformers model in float32, folder in float32, folder in bfloat16, transformers model of the
    bfloat16 folder loaded in float32)."""
    out = {}
    for name, extra in CONFIGS.items():
        model = build("llama", {**BASE, **extra})
        f32 = save(model, tmp_path_factory.mktemp(name + "_f32"))
        bf16 = save(model, tmp_path_factory.mktemp(name + "_bf16"), torch.bfloat16)
        ref16 = transformers.AutoModelForCausalLM.from_pretrained(str(bf16), dtype=torch.float32).eval()
        out[name] = (model, f32, bf16, ref16)
    return out


def logits(model, ids, mask=None):
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(ids), **kw).logits.numpy()


def assert_matches(model, ref, prompts=PROMPTS, steps: int = 0, pad: int = 2) -> None:
    """pyattn's `model` gives transformers' `ref`'s logits within 1e-4 on each prompt and, for `steps` > 0, its greedy
    ids for that many new tokens after the first prompt (pad: the pad_token_id both generate with)."""
    for p in prompts:
        got, want = model(np.array([p]))["logits"], logits(ref, [p])
        assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
    if steps:
        with torch.no_grad():
            want = ref.generate(torch.tensor([prompts[0]]), max_new_tokens=steps, do_sample=False, pad_token_id=pad)
        got = model.generate(np.array([prompts[0]]), max_new_tokens=steps, pad_token_id=pad)
        np.testing.assert_array_equal(got, want.numpy())


def left_padded(prompts, pad):
    L = max(map(len, prompts))
    ids = np.array([[pad] * (L - len(p)) + p for p in prompts])
    mask = np.array([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("name", list(CONFIGS))
def test_float32_file_matches_transformers(folders, name):
    ref, f32, _, _ = folders[name]
    model = LlamaModel.from_pretrained(f32, dtype="float32")
    assert_matches(model, ref)
    # a left-padded batch: each row as alone (positions count real tokens only)
    ids, mask = left_padded(PROMPTS, 0)
    got = model(ids, mask, np.maximum(np.cumsum(mask, 1) - 1, 0))["logits"]
    for row, p in enumerate(PROMPTS):
        assert np.abs(got[row, ids.shape[1] - len(p) :] - logits(ref, [p])[0]).max() < 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bfloat16_file_equals_transformers_upcast(folders, name):
    _, _, bf16, ref16 = folders[name]
    assert_matches(LlamaModel.from_pretrained(bf16, dtype="float32"), ref16)


def test_bfloat16_values_are_widened_exactly(folders):
    _, _, bf16, ref16 = folders["gqa_untied"]
    tensors = pyattn.io.read_safetensors(bf16 / "model.safetensors")
    state = ref16.state_dict()
    for name in tensors:
        got = tensors[name]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, state[name].numpy())


@pytest.mark.parametrize("name", ["gqa_untied", "mqa_tied_hd24", "mha_bias_hd80"])
def test_greedy_generate_left_padded_batch_matches_transformers(folders, name):
    ref, f32, _, _ = folders[name]
    model = pyattn.from_pretrained(f32, dtype="float32")
    ids, mask = left_padded(PROMPTS, 2)
    with torch.no_grad():
        want = ref.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=20, do_sample=False, pad_token_id=2
        ).numpy()
    got = model.generate(ids, mask, max_new_tokens=20)  # eos and pad from the folder's config
    np.testing.assert_array_equal(got, want)


def test_kv_cache_decoding_equals_recomputation(folders):
    model = LlamaModel.from_pretrained(folders["mqa_tied_hd24"][1], dtype="float32")
    ids = np.array([PROMPTS[0]])
    full = model(ids)["logits"]
    state = model.init_state(1)
    steps = [model(ids[:, :5], state=state)["logits"]]
    steps += [model(ids[:, t : t + 1], state=state)["logits"] for t in range(5, ids.shape[1])]
    np.testing.assert_allclose(np.concatenate(steps, 1), full, rtol=1e-4, atol=1e-5)


def test_from_pretrained_dispatches_llama_folders(folders):
    model = pyattn.from_pretrained(folders["gqa_untied"][1])
    assert isinstance(model, LlamaModel)
    assert model.dtype == "float32" and model.lm_head.storage == "float32"  # a folder's default: float32
    assert not model.interleaved
    assert model.config == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}
    assert LlamaModel.from_pretrained(folders["mha_bias_hd80"][1]).config["eos_token_id"] == [2, 5]


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_reduced_precision_keeps_the_predictions(folders, dtype):
    _, f32, bf16, _ = folders["gqa_untied"]
    reference = LlamaModel.from_pretrained(f32, dtype="float32")
    for folder in (f32, bf16):
        model = LlamaModel.from_pretrained(folder, dtype=dtype)
        assert model.lm_head.storage == dtype
        for p in PROMPTS:
            a = model(np.array([p]))["logits"][0, -1]
            b = reference(np.array([p]))["logits"][0, -1]
            assert (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_sharded_checkpoint(folders, tmp_path):
    ref, f32, _, _ = folders["gqa_untied"]
    ref.save_pretrained(str(tmp_path), max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    got = LlamaModel.from_pretrained(tmp_path)(np.array([PROMPTS[0]]))["logits"]
    np.testing.assert_array_equal(got, LlamaModel.from_pretrained(f32)(np.array([PROMPTS[0]]))["logits"])
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "../model.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a file of this folder"):
        LlamaModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("mistral", dict(num_key_value_heads=2, sliding_window=None, tie_word_embeddings=False)),
        ("mistral", dict(num_key_value_heads=2, sliding_window=64, head_dim=32)),
        ("qwen2", dict(num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True)),
        ("qwen2", dict(num_key_value_heads=1, tie_word_embeddings=False, eos_token_id=[2, 3])),
        # a norm of each query and key head; head_dim 24, not hidden / heads (Qwen3-0.6B: 128 of 1024 / 16)
        ("qwen3", dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=True)),
        ("qwen3", dict(num_key_value_heads=1, head_dim=16, rope_theta=1000000.0, tie_word_embeddings=False)),
        # Q/K/V in one matrix, gate and up in one; Phi-4-mini rotates 3/4 of each head
        ("phi3", dict(num_key_value_heads=2)),
        ("phi3", dict(num_key_value_heads=4, partial_rotary_factor=0.75, sliding_window=64)),
        # Phi-3.5's LongRoPE, within the original context: the short factors, cos and sin scaled
        (
            "phi3",
            dict(
                num_key_value_heads=2,
                max_position_embeddings=1024,
                original_max_position_embeddings=128,
                rope_scaling=dict(rope_type="longrope", short_factor=[1.5] * 4 + [3.0] * 4, long_factor=[9.0] * 8),
            ),
        ),
    ],
)
def test_mistral_and_qwen(tmp_path, kind, extra):
    ref = build(kind, {**BASE, **extra})
    save(ref, tmp_path)
    model = pyattn.from_pretrained(tmp_path, dtype="float32")
    assert isinstance(model, LlamaModel)
    assert_matches(model, ref)
    ids, mask = left_padded(PROMPTS, 2)
    with torch.no_grad():
        want = ref.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=20, do_sample=False, pad_token_id=2
        ).numpy()
    np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=20, pad_token_id=2), want)


@pytest.mark.parametrize("kind", ["mistral", "phi3"])
def test_sliding_window_beyond_its_length_matches_transformers(tmp_path, kind):
    """Mistral's and Phi-3's sliding window in every layer (the fused attention kernel's window): prompts and cached
    decoding longer than it give transformers' logits and ids; without the window they would not."""
    ref = build(kind, {**BASE, "num_key_value_heads": 2, "sliding_window": 4})
    save(ref, tmp_path)
    model = LlamaModel.from_pretrained(tmp_path)
    assert_matches(model, ref, steps=16)
    full = LlamaModel(dataclasses.replace(model.llama_config, sliding_window=None), HFWeights(read_weights(tmp_path),
                      str(tmp_path)), "float32")  # fmt: skip
    assert np.abs(full(np.array([PROMPTS[0]]))["logits"] - logits(ref, [PROMPTS[0]])).max() > 1e-2


# ----------------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def folder(folders, tmp_path):
    """A copy of the float32 gqa_untied folder, to corrupt."""
    dst = tmp_path / "m"
    shutil.copytree(folders["gqa_untied"][1], dst)
    return dst


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def edit_tensors(folder, fn):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def test_unknown_model_type(folder):
    edit_config(folder, model_type="gemma")
    with pytest.raises(ValueError, match="unsupported model_type 'gemma'"):
        pyattn.from_pretrained(folder)
    with pytest.raises(ValueError, match="model_type 'gemma' is not one pyattn loads as Llama"):
        LlamaModel.from_pretrained(folder)


@pytest.mark.parametrize(
    "changes",
    [
        dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}),
        dict(rope_parameters=None, rope_theta=10000.0, rope_scaling={"type": "dynamic", "factor": 2.0}),
    ],
)
def test_unsupported_rope_scaling(folder, changes):
    edit_config(folder, **changes)
    with pytest.raises(ValueError, match=r"rope_scaling type '(yarn|dynamic)' is not supported"):
        pyattn.from_pretrained(folder)


@pytest.mark.parametrize(
    "scaling, match",
    [
        ({"rope_type": "longrope", "rope_theta": 10000.0}, "original_max_position_embeddings must be an integer"),
        ({"rope_type": "longrope", "original_max_position_embeddings": 64}, "'long_factor' must be a list"),
        (
            {"rope_type": "longrope", "original_max_position_embeddings": 64, "long_factor": [1.0] * 8},
            "'short_factor' must be a list",
        ),
        (
            {"type": "su", "original_max_position_embeddings": 64, "long_factor": [1.0] * 8, "short_factor": [0.0] * 8},
            "'short_factor' must be a list of positive numbers",
        ),
        (
            {
                "type": "longrope",
                "original_max_position_embeddings": 64,
                "long_factor": [1] * 7,
                "short_factor": [2] * 7,
            },
            "'long_factor' holds 7 factors, expected 8",
        ),
    ],
)
def test_malformed_longrope_is_refused(folder, scaling, match):
    edit_config(folder, rope_parameters=None, rope_theta=10000.0, rope_scaling=scaling)
    with pytest.raises(ValueError, match=match):
        pyattn.from_pretrained(folder)


def test_old_style_rope_settings_are_read(folders, folder):
    """Configs written before transformers 5: rope_theta and rope_scaling at the top level."""
    edit_config(folder, rope_parameters=None, rope_theta=10000.0, rope_scaling=None)
    want = LlamaModel.from_pretrained(folders["gqa_untied"][1])(np.array([PROMPTS[0]]))["logits"]
    np.testing.assert_array_equal(LlamaModel.from_pretrained(folder)(np.array([PROMPTS[0]]))["logits"], want)


def test_other_refused_settings(folder):
    edit_config(folder, hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act 'gelu' is not supported"):
        pyattn.from_pretrained(folder)
    edit_config(folder, hidden_act="silu", model_type="qwen2", use_sliding_window=True)
    with pytest.raises(ValueError, match="sliding window"):
        pyattn.from_pretrained(folder)


def test_missing_tensor(folder):
    edit_tensors(folder, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.1\.mlp\.down_proj\.weight'"):
        pyattn.from_pretrained(folder)


def test_missing_lm_head_of_an_untied_model(folder):
    edit_tensors(folder, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match="missing tensor 'lm_head.weight'"):
        pyattn.from_pretrained(folder)


def test_wrong_shape(folder):
    def transpose(t):
        name = "model.layers.0.self_attn.k_proj.weight"
        t[name] = np.ascontiguousarray(t[name].T)

    edit_tensors(folder, transpose)
    with pytest.raises(ValueError, match=r"k_proj\.weight' has shape \(64, 32\), expected \(32, 64\)"):
        pyattn.from_pretrained(folder)


def test_unexpected_tensor(folder):
    edit_tensors(folder, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected tensors \['model\.layers\.0\.self_attn\.o_proj\.bias'\]"):
        pyattn.from_pretrained(folder)


@pytest.mark.parametrize("which", [1, 2])  # float32, bfloat16
def test_truncated_safetensors(folders, tmp_path, which):
    src = folders["gqa_untied"][which]
    shutil.copytree(src, tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    raw = path.read_bytes()
    for cut in (0, 7, 100, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            pyattn.from_pretrained(tmp_path / "m")


def test_bfloat16_entries_checked_against_the_file(tmp_path):
    """The BF16 reader's own checks (behind the safetensors package's): offsets beyond the data are refused even
    when the file is cut after it was opened."""
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    save_file({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3).to(torch.bfloat16)}, str(path))
    t = pyattn.io.read_safetensors(path)
    np.testing.assert_array_equal(t["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    raw = path.read_bytes()
    path.write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="cut short"):
        t["a"]


# ----------------------------------------------------------------------------------------------------
# tokenizer and chat template
# ----------------------------------------------------------------------------------------------------
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_tokenizer_and_chat_template(folders, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder = tmp_path / "m"
    shutil.copytree(folders["gqa_untied"][1], folder)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=96, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["hello world, the cat sat on the mat"] * 20, trainer)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "chat_template": TEMPLATE,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    model = pyattn.from_pretrained(folder)
    ref = transformers.AutoTokenizer.from_pretrained(str(folder))
    text = "hello the cat, world!"
    assert model.encode(text) == ref(text, add_special_tokens=False).input_ids
    assert model.decode(model.encode(text)) == text
    messages = [{"role": "user", "content": "hi"}]
    assert model.apply_chat_template(messages) == ref.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    # a prompt's ids: BOS first only where the tokenizer's post-processing adds it (Llama's does), once
    assert model.encode_prompt(text) == model.encode(text) == ref(text).input_ids
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    model = pyattn.from_pretrained(folder)
    ref = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert model.encode_prompt(text) == ref(text).input_ids == [1] + model.encode(text)
    assert model.encode_prompt("<s>" + text) == [1] + model.encode(text)  # not twice (transformers: twice)


# What transformers' template environment has beyond plain jinja2: raise_exception, strftime_now, a tojson that keeps
# non-ASCII and HTML characters, {% break %}, the {% generation %} block, and keyword arguments such as tools.
RICH_TEMPLATE = (
    "{{ bos_token }}{% if tools %}Tools: {{ tools | tojson }}\n{% endif %}"
    "Date: {{ strftime_now('%Y-%m-%d') }}\n"
    "{% for m in messages %}"
    "{% if m.role == 'user' and loop.index0 % 2 == 1 %}{{ raise_exception('roles must alternate') }}{% endif %}"
    "{% if m.role == 'stop' %}{% break %}{% endif %}"
    "<|{{ m.role }}|>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
    "{% else %}{{ m.content | tojson }}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_template_environment_as_transformers(folders, tmp_path):
    import jinja2
    from tokenizers import Tokenizer, models

    folder = tmp_path / "m"
    shutil.copytree(folders["gqa_untied"][1], folder)
    tok = Tokenizer(models.BPE(vocab={"<unk>": 0, "<s>": 1, "</s>": 2}, merges=[], unk_token="<unk>"))
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": RICH_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    model = pyattn.from_pretrained(folder)
    ref = transformers.AutoTokenizer.from_pretrained(str(folder))
    tools = [{"name": "météo", "description": "a < b & 'c'"}]
    messages = [{"role": "user", "content": "héllo <b> & 'x'"}, {"role": "assistant", "content": "ok"}]
    messages += [{"role": "stop", "content": ""}, {"role": "user", "content": "after the break"}]
    for kw in ({}, {"tools": tools}):
        want = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
        assert model.apply_chat_template(messages, **kw) == want
    bad = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
        ref.apply_chat_template(bad, tokenize=False)
    with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
        model.apply_chat_template(bad)


def test_no_tokenizer_is_a_clear_error(folders):
    model = LlamaModel.from_pretrained(folders["gqa_untied"][1])
    with pytest.raises(ValueError, match="no tokenizer"):
        model.encode("hello")


def test_eos_list_stops_rows_like_transformers(folders):
    """Generation stops a row on any id of an eos list (a token the model does emit, so that stopping happens)."""
    ref, f32, _, _ = folders["gqa_untied"]
    model = LlamaModel.from_pretrained(f32)
    ids, mask = left_padded(PROMPTS, 0)
    free = model.generate(ids, mask, max_new_tokens=8, eos_token_id=95)
    eos = [95, int(free[0, ids.shape[1] + 2])]  # row 0's third new token
    got = model.generate(ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    settings = dict(max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=0)
    with torch.no_grad():
        want = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **settings).numpy()
    np.testing.assert_array_equal(got, want)
    assert got[0, ids.shape[1] + 3 :].tolist() == [0] * (got.shape[1] - ids.shape[1] - 3)  # row 0 stopped


def test_tied_checkpoint_that_also_saves_lm_head(folders, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = folders["mqa_tied_hd24"][1]
    shutil.copytree(src, tmp_path / "m")
    tensors = load_file(str(src / "model.safetensors"))
    save_file(
        {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}, str(tmp_path / "m" / "model.safetensors")
    )
    ids = np.array([PROMPTS[0]])
    np.testing.assert_array_equal(
        LlamaModel.from_pretrained(tmp_path / "m")(ids)["logits"], LlamaModel.from_pretrained(src)(ids)["logits"]
    )
