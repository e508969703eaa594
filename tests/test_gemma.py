"""Gemma 2 and 3 (GGUF architectures gemma2 / gemma3, Hugging Face model_types gemma2 / gemma3_text) against
transformers on small random models: embeddings scaled by sqrt(d), RMSNorms of the attention's and the FFN's outputs
too (sandwich norms), GeGLU, layers over a sliding window of keys (Gemma 2: every other one; Gemma 3: five in six,
with a rotary base of their own, and a norm of each Q and K head), the scores scaled by query_pre_attn_scalar **
-0.5, Gemma 2's scores and logits soft-capped by tanh. The window is shorter than the prompts, so that prefill and
cached decoding both cross it. With llama-cpp-python installed (the bench extra), llama.cpp reads the same GGUF files
alike."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pyattn.models import LlamaModel
from pyattn.models.llama import HFWeights, hf_config
from pyattn.models.pretrained import read_weights

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_gguf_arch import llama_cpp_logits, write_gguf  # noqa: E402
from test_llama_hf import BASE, PROMPTS, assert_matches, build, left_padded, logits  # noqa: E402

GEMMA = dict(
    BASE,
    num_hidden_layers=7,  # Gemma 3: layer 5 global, the others windowed; Gemma 2: the even ones windowed
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=16,  # head_dim, as in Gemma 3 1B to 12B (llama.cpp's GGUF rule: 1 / sqrt(head_dim))
    sliding_window=4,
    hidden_activation="gelu_pytorch_tanh",
    pad_token_id=0,
)
# name -> (model_type, changes to GEMMA)
CASES = {
    "gemma3_1b_like": ("gemma3_text", {}),  # default rotary bases: 1e6 global, 1e4 local
    # Gemma 3 4B and larger: the global layers' positions scaled linearly
    "gemma3_linear_rope": (
        "gemma3_text",
        {
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            }
        },
    ),
    # a scale of the scores that is not head_dim ** -0.5: a Hugging Face folder says so; a GGUF cannot (no key)
    "gemma3_own_scale": ("gemma3_text", {"query_pre_attn_scalar": 24}),
    # Gemma 2, with caps small enough to matter on these small scores and logits (its own: 50 and 30)
    "gemma2_caps": ("gemma2", {"attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0}),
}
HF_ONLY = ("gemma3_own_scale",)
GGUF_ARCH = {"gemma3_text": "gemma3", "gemma2": "gemma2"}
WINDOWED = {"gemma3_text": (True,) * 5 + (False, True), "gemma2": (True, False) * 3 + (True,)}


def make(name):
    kind, changes = CASES[name]
    return build(kind, {**GEMMA, **changes})


@pytest.fixture(scope="module", params=list(CASES))
def gemma(request, tmp_path_factory):
    """(transformers model, its GGUF, its Hugging Face folder)."""
    tmp = tmp_path_factory.mktemp(request.param)
    ref = make(request.param)
    path = None
    if request.param not in HF_ONLY:
        path = tmp / "m.gguf"
        write_gguf(ref, path, GGUF_ARCH[CASES[request.param][0]])
    ref.save_pretrained(str(tmp / "hf"))
    return ref, path, tmp / "hf"


def loaded(gemma):
    _, path, folder = gemma
    models = {"hf": LlamaModel.from_pretrained(folder)}
    if path is not None:
        models["gguf"] = LlamaModel.from_gguf(path, dtype="float32")
    return models


def test_logits_and_greedy_ids_match_transformers(gemma):
    ref = gemma[0]
    for kind, model in loaded(gemma).items():
        assert model.llama_config.layer_windows == WINDOWED[ref.config.model_type], kind
        assert_matches(model, ref, steps=24, pad=0)


def test_left_padded_batch_matches_transformers(gemma):
    ref = gemma[0]
    ids, mask = left_padded(PROMPTS, 0)
    with torch.no_grad():
        want = ref.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=16, do_sample=False, pad_token_id=0
        ).numpy()
    for model in loaded(gemma).values():
        np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=16, pad_token_id=0), want)


def test_each_part_is_needed(gemma):
    """Without the window, the embeddings' scale, and where the model has them, Gemma 3's local layers' own rotary
    base, a scale of the scores that is not head_dim's, Gemma 2's soft caps, the logits differ from transformers':
    the tests above would see a reader that left any out."""
    ref, _, folder = gemma
    want = logits(ref, [PROMPTS[0]])
    config = hf_config(json.loads((folder / "config.json").read_text()), str(folder))
    changes = [dict(layer_windows=(False,) * 7), dict(embed_scale=None)]
    changes += [dict(local_rope_base=None)] if config.local_rope_base else []
    changes += [dict(attn_scale=None)] if config.attn_scale != 0.25 else []
    changes += [dict(attn_softcap=None), dict(final_softcap=None)] if config.attn_softcap else []
    assert len(changes) > 2
    for change in changes:
        weights = HFWeights(read_weights(folder), str(folder), gemma=True)
        model = LlamaModel(dataclasses.replace(config, **change), weights, "float32")
        assert np.abs(model(np.array([PROMPTS[0]]))["logits"] - want).max() > 1e-2, change


def test_other_settings_are_refused(gemma, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(gemma[2], folder)
    cfg = json.loads((folder / "config.json").read_text())
    for change, match in (
        ({"final_logit_softcapping": -1.0}, "final_logit_softcapping"),
        ({"attn_logit_softcapping": "50"}, "attn_logit_softcapping"),
        ({"use_bidirectional_attention": True}, "bidirectional"),
        ({"hidden_activation": "silu"}, "GeGLU"),
        ({"layer_types": ["full_attention"] * 3}, "layer_types"),
    ):
        (folder / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=match):
            LlamaModel.from_pretrained(folder)


def test_llama_cpp_reads_the_same_files_alike(gemma):
    """llama.cpp (float32 KV cache) on the same GGUF gives transformers' logits, so pyattn's: its own Gemma rules (the
    layer pattern, Gemma 3's local base, the scale) are the ones the reader takes. Within 2e-2, not 1e-4 as for the
    Llama family: llama.cpp 0.3.36 differed from transformers by up to 8.5e-3 here (logits' standard deviation 2.4),
    from the first position on (probably its float16 table of GELU, not checked), while every rule taken otherwise
    (no window, one window more, the global base for the local layers, another scale, unscaled embeddings) put
    pyattn 2.2 to 10.6 away from it."""
    ref, path, _ = gemma
    if path is None:
        pytest.skip("a Hugging Face folder only")
    model = LlamaModel.from_gguf(path, dtype="float32")
    for p, theirs in zip(PROMPTS, llama_cpp_logits(path, PROMPTS)):
        assert np.abs(theirs - logits(ref, [p])[0]).max() < 2e-2
        assert np.abs(theirs - model(np.array([p]))["logits"][0]).max() < 2e-2


def test_a_gemma2_gguf_without_caps_takes_llama_cpps(tmp_path):
    """llama.cpp soft-caps Gemma 2 at 50 (scores) and 30 (logits) when the file does not say (Gemma 2's own)."""
    from pyattn.io.gguf import read_gguf
    from pyattn.models.llama import gguf_config

    ref = build("gemma2", {**GEMMA, "attn_logit_softcapping": None, "final_logit_softcapping": None})
    write_gguf(ref, tmp_path / "m.gguf", "gemma2")
    config = gguf_config(read_gguf(tmp_path / "m.gguf"))
    assert (config.attn_softcap, config.final_softcap) == (50.0, 30.0)
