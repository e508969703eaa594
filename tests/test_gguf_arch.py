"""GGUF files of small random Hugging Face models written as llama.cpp's converter (convert_hf_to_gguf.py) writes
them -- llama with Q/K rows permuted for interleaved rotary pairs and Llama 3.x's rope_freqs.weight, qwen2 as stored
with its Q/K/V biases, qwen3 with its norms of each Q/K head, phi3 with Q/K/V and gate/up fused -- loaded by
LlamaModel.from_gguf against transformers running the same weights."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from pyattn.io.gguf import read_gguf
from pyattn.models import LlamaModel
from pyattn.models.llama import GGUFWeights, gguf_config

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_llama_hf import BASE, CONFIGS, PROMPTS, assert_matches, build, logits  # noqa: E402  (the same small random models)


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's reordering of a llama Q or K projection (rows, or a bias): within each head, the
    rotate-half pairs (i, i + D/2) become adjacent rows (2i, 2i + 1)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_factors(cfg) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's converter computes it from a llama3 rope scaling."""
    p = cfg.rope_parameters
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    freqs = 1.0 / (p["rope_theta"] ** (np.arange(0, D, 2, dtype=np.float32) / D))
    old, lo, hi, factor = (
        p["original_max_position_embeddings"],
        p["low_freq_factor"],
        p["high_freq_factor"],
        p["factor"],
    )
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


# the norms as the converter names them: Llama's (and Qwen3's norms of each head), Gemma 3's (its
# post_attention_layernorm follows the attention, where Llama's is the FFN's pre-norm)
HEAD_NORMS = {"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", **HEAD_NORMS}
GEMMA_NORMS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    **HEAD_NORMS,
}


def write_gguf(model, path, arch: str, extra: dict | None = None) -> None:
    """`model`'s float32 weights as a GGUF of architecture `arch`, with a vocabulary of placeholder tokens (so that
    llama.cpp, which needs one, loads the file too); `extra` tensors are added as they are. gemma2 / gemma3: the norms
    stored as 1 + w, the global layers' rotary settings, the window and the soft caps in the metadata (the local
    layers' base and the layer pattern are llama.cpp's own rules)."""
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    gemma = arch in ("gemma2", "gemma3")
    if gemma:  # the converter's 1 + w
        sd = {k: v + 1 if "norm" in k else v for k, v in sd.items()}
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)  # Gemma 3's are per layer type
    H, Hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    D = getattr(cfg, "head_dim", None) or d // H
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", cfg.num_hidden_layers)
    w.add_uint32(f"{arch}.context_length", cfg.max_position_embeddings)
    w.add_uint32(f"{arch}.embedding_length", d)
    w.add_uint32(f"{arch}.feed_forward_length", cfg.intermediate_size)
    w.add_uint32(f"{arch}.attention.head_count", H)
    w.add_uint32(f"{arch}.attention.head_count_kv", Hkv)
    if D != d // H or gemma:
        w.add_uint32(f"{arch}.attention.key_length", D)
        w.add_uint32(f"{arch}.attention.value_length", D)
    w.add_float32(f"{arch}.rope.freq_base", float(rope["rope_theta"]))
    if rope.get("rope_type") == "linear":
        w.add_string(f"{arch}.rope.scaling.type", "linear")
        w.add_float32(f"{arch}.rope.scaling.factor", float(rope["factor"]))
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):  # Gemma 2's
        if getattr(cfg, key, None):
            w.add_float32(f"{arch}.{key}", float(getattr(cfg, key)))
    w.add_uint32(f"{arch}.rope.dimension_count", int(D * getattr(cfg, "partial_rotary_factor", 1.0)))
    if getattr(cfg, "sliding_window", None):
        w.add_uint32(f"{arch}.attention.sliding_window", cfg.sliding_window)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = [f"<t{i}>" for i in range(cfg.vocab_size - 1)] + ["<t3><t4>"]  # one merge: GGUF has no empty lists
    w.add_token_list(tokens)
    w.add_token_merges(["<t3> <t4>"])
    w.add_token_types([3 if i < 3 else 1 for i in range(cfg.vocab_size)])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    interleave = arch == "llama"
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        tensors["output.weight"] = sd["lm_head.weight"]
    if rope.get("rope_type") == "llama3":
        tensors["rope_freqs.weight"] = llama3_factors(cfg)
    if rope.get("rope_type") == "longrope":  # as the converter writes Phi-3.5's: two factor sets, the scale of cos/sin
        old = rope["original_max_position_embeddings"]
        w.add_uint32(f"{arch}.rope.scaling.original_context_length", old)
        scale = math.sqrt(1 + math.log(cfg.max_position_embeddings / old) / math.log(old))
        w.add_float32(f"{arch}.rope.scaling.attn_factor", scale)
        tensors["rope_factors_long.weight"] = np.array(rope["long_factor"], np.float32)
        tensors["rope_factors_short.weight"] = np.array(rope["short_factor"], np.float32)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for theirs, ours in (GEMMA_NORMS if gemma else NORMS).items():
            if f"{p}{theirs}.weight" in sd:
                tensors[f"blk.{i}.{ours}.weight"] = sd[f"{p}{theirs}.weight"]
        if arch == "phi3":  # Q/K/V in one tensor, gate and up in one (ffn_up)
            tensors[f"blk.{i}.attn_qkv.weight"] = sd[p + "self_attn.qkv_proj.weight"]
            tensors[f"blk.{i}.attn_output.weight"] = sd[p + "self_attn.o_proj.weight"]
            tensors[f"blk.{i}.ffn_up.weight"] = sd[p + "mlp.gate_up_proj.weight"]
            tensors[f"blk.{i}.ffn_down.weight"] = sd[p + "mlp.down_proj.weight"]
            continue
        for ours, theirs, heads in (("q", "q", H), ("k", "k", Hkv), ("v", "v", None), ("output", "o", None)):
            for kind in ("weight", "bias"):
                t = sd.get(f"{p}self_attn.{theirs}_proj.{kind}")
                if t is not None:
                    tensors[f"blk.{i}.attn_{ours}.{kind}"] = permute(t, heads) if interleave and heads else t
        for part in ("gate", "up", "down"):
            tensors[f"blk.{i}.ffn_{part}.weight"] = sd[f"{p}mlp.{part}_proj.weight"]
    tensors.update(extra or {})
    for name, t in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(t, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


LONGROPE = dict(
    num_key_value_heads=2,
    partial_rotary_factor=0.75,  # 12 of 16 dims rotate: 6 factors
    max_position_embeddings=2048,
    original_max_position_embeddings=512,
    rope_scaling=dict(
        rope_type="longrope",
        short_factor=[1.0, 1.3, 1.9, 2.6, 3.1, 3.9],
        long_factor=[2.0, 5.0, 9.0, 14.0, 18.0, 22.0],
    ),
)
CASES = {
    "qwen2_tied": ("qwen2", dict(num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True)),
    "qwen2_untied_mqa": ("qwen2", dict(num_key_value_heads=1, tie_word_embeddings=False)),
    "llama3_rope": ("llama", CONFIGS["llama3_rope"]),  # Llama 3.1's rope scaling
    "llama_attention_bias_hd24": ("llama", dict(num_key_value_heads=2, head_dim=24, attention_bias=True)),
    "qwen3_tied_hd24": ("qwen3", dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=True)),
    "phi3_partial_rope": ("phi3", dict(num_key_value_heads=2, partial_rotary_factor=0.75, sliding_window=64)),
    # the window shorter than the prompts: in every layer, as transformers runs Phi-3 (not llama.cpp: test below)
    "phi3_window": ("phi3", dict(num_key_value_heads=2, sliding_window=4)),
    # Phi-3.5 / Phi-4-mini's LongRoPE: the short factors within the original context (llama.cpp pads n_ctx 64 to 256)
    "phi3_longrope": ("phi3", LONGROPE),
}
LONG_PROMPT = [1] + [int(x) for x in np.random.default_rng(1).integers(3, 96, 529)]  # beyond the original 512


@pytest.mark.parametrize("name", list(CASES))
def test_logits_and_greedy_ids_match_transformers(tmp_path, name):
    arch, extra = CASES[name]
    ref = build(arch, {**BASE, **extra})
    write_gguf(ref, tmp_path / "m.gguf", arch)
    assert_matches(LlamaModel.from_gguf(tmp_path / "m.gguf", dtype="float32"), ref, steps=24)


def test_layout_and_factors_are_needed(tmp_path):
    """The same llama3-rope model with its Q/K rows not permuted, or without rope_freqs.weight, gives other logits:
    the test above would see a reader that ignored either."""
    arch, extra = CASES["llama3_rope"]
    ref = build(arch, {**BASE, **extra})
    want = logits(ref, [PROMPTS[0]])
    write_gguf(ref, tmp_path / "as_qwen2.gguf", "qwen2")  # no permutation, read with rotate-half
    got = LlamaModel.from_gguf(tmp_path / "as_qwen2.gguf", dtype="float32")(np.array([PROMPTS[0]]))["logits"]
    assert np.abs(got - want).max() < 1e-4  # the layouts are each other's inverse: the same model
    ref.config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    write_gguf(ref, tmp_path / "no_factors.gguf", "llama")
    got = LlamaModel.from_gguf(tmp_path / "no_factors.gguf", dtype="float32")(np.array([PROMPTS[0]]))["logits"]
    assert np.abs(got - want).max() > 1e-2


def test_tensors_the_model_would_leave_out_are_refused(tmp_path):
    ref = build("qwen2", {**BASE, "num_key_value_heads": 2})
    write_gguf(ref, tmp_path / "m.gguf", "qwen2", {"blk.0.attn_q_norm.weight": np.ones(16, np.float32)})
    with pytest.raises(ValueError, match="tensors the 'qwen2' model does not use: blk.0.attn_q_norm.weight"):
        LlamaModel.from_gguf(tmp_path / "m.gguf")
    # saved rotary frequencies are recomputed, not refused
    write_gguf(ref, tmp_path / "r.gguf", "qwen2", {"blk.1.attn_rot_embd": np.ones(8, np.float32)})
    want = logits(ref, [PROMPTS[0]])
    got = LlamaModel.from_gguf(tmp_path / "r.gguf", dtype="float32")(np.array([PROMPTS[0]]))["logits"]
    assert np.abs(got - want).max() < 1e-4


@pytest.fixture(scope="module")
def longrope(tmp_path_factory):
    """(transformers Phi-3 with LongRoPE, its GGUF, its Hugging Face folder)."""
    tmp = tmp_path_factory.mktemp("longrope")
    ref = build("phi3", {**BASE, **LONGROPE})
    write_gguf(ref, tmp / "m.gguf", "phi3")
    ref.save_pretrained(str(tmp / "hf"))
    return ref, tmp / "m.gguf", tmp / "hf"


def test_longrope_takes_the_long_factors_for_a_longer_context(longrope):
    """A context beyond the original 512 takes the long factors for every position, as transformers does for a
    forward pass that long (and llama.cpp for an n_ctx that long); without asking, the context is the original one."""
    ref, path, folder = longrope
    for model in (
        LlamaModel.from_gguf(path, dtype="float32", context_length=1024),
        LlamaModel.from_pretrained(folder, context_length=1024),
    ):
        assert model.long_rope and model.context_length == 1024
        assert_matches(model, ref, [LONG_PROMPT])
    model = LlamaModel.from_gguf(path, dtype="float32")
    assert not model.long_rope and model.context_length == 512
    with pytest.raises(ValueError, match="beyond the 512"):
        model(np.array([LONG_PROMPT]))
    with pytest.raises(ValueError, match="context_length must be a positive integer up to 2048"):
        LlamaModel.from_gguf(path, context_length=4096)


def test_longrope_factors_and_scale_are_needed(longrope):
    """The long factors on a short prompt, or cos and sin not scaled, give other logits than transformers': the
    tests above would see a reader that ignored either."""
    ref, path, _ = longrope
    want = logits(ref, [PROMPTS[0]])
    good = LlamaModel.from_gguf(path, dtype="float32")
    assert good.rope_scaling["attention_factor"] == pytest.approx(math.sqrt(1 + math.log(4) / math.log(512)))
    assert np.abs(good(np.array([PROMPTS[0]]))["logits"] - want).max() < 1e-4
    got = LlamaModel.from_gguf(path, dtype="float32", context_length=1024)(np.array([PROMPTS[0]]))["logits"]
    assert np.abs(got - want).max() > 1e-2
    config = gguf_config(read_gguf(path))
    config.rope_scaling["attention_factor"] = 1.0
    got = LlamaModel(config, GGUFWeights(read_gguf(path)), "float32")(np.array([PROMPTS[0]]))["logits"]
    assert np.abs(got - want).max() > 1e-2


def test_longrope_needs_both_factor_sets(tmp_path):
    ref = build("phi3", {**BASE, "num_key_value_heads": 2})
    write_gguf(ref, tmp_path / "m.gguf", "phi3", {"rope_factors_long.weight": np.ones(8, np.float32)})
    with pytest.raises(ValueError, match="LongRoPE needs rope_factors_long and rope_factors_short"):
        LlamaModel.from_gguf(tmp_path / "m.gguf")


@pytest.mark.parametrize("name", [n for n in CASES if n != "phi3_window"])
def test_llama_cpp_reads_the_same_files_alike(tmp_path, name):
    """The files are what llama.cpp's converter writes: llama.cpp (llama-cpp-python, the bench extra; float32 KV
    cache) gives transformers' logits on them, and so pyattn's. Measured with 0.3.36: within 4.2e-6 of transformers
    and 5.3e-6 of pyattn, logits of standard deviation 1.2-1.3."""
    arch, extra = CASES[name]
    ref = build(arch, {**BASE, **extra})
    path = tmp_path / "m.gguf"
    write_gguf(ref, path, arch)
    model = LlamaModel.from_gguf(path, dtype="float32")
    for p, theirs in zip(PROMPTS, llama_cpp_logits(path, PROMPTS)):
        assert np.abs(theirs - logits(ref, [p])[0]).max() < 1e-4
        assert np.abs(theirs - model(np.array([p]))["logits"][0]).max() < 1e-4


def test_llama_cpp_runs_phi3_without_its_window(tmp_path):
    """llama.cpp 0.3.36 runs a phi3 GGUF with full attention (measured here, not looked up): beyond the window it
    gives the logits of pyattn without the window, not transformers' (which pyattn gives, test above)."""
    arch, extra = CASES["phi3_window"]
    ref = build(arch, {**BASE, **extra})
    path = tmp_path / "m.gguf"
    write_gguf(ref, path, arch)
    (theirs,) = llama_cpp_logits(path, PROMPTS[:1])
    config = gguf_config(read_gguf(path))
    full = LlamaModel(dataclasses.replace(config, sliding_window=None), GGUFWeights(read_gguf(path)), "float32")
    assert np.abs(theirs - full(np.array(PROMPTS[:1]))["logits"][0]).max() < 1e-4
    assert np.abs(theirs - logits(ref, PROMPTS[:1])[0]).max() > 1e-2


def test_llama_cpp_takes_the_long_factors_alike(longrope):
    """llama.cpp with an n_ctx beyond the original context rotates with the long factors: its logits are
    transformers' (one forward pass over 530 tokens) and pyattn's with that context_length."""
    ref, path, _ = longrope
    (theirs,) = llama_cpp_logits(path, [LONG_PROMPT], n_ctx=1024)
    model = LlamaModel.from_gguf(path, dtype="float32", context_length=1024)
    assert np.abs(theirs - logits(ref, [LONG_PROMPT])[0]).max() < 1e-4
    assert np.abs(theirs - model(np.array([LONG_PROMPT]))["logits"][0]).max() < 1e-4


def llama_cpp_logits(path, prompts, n_ctx: int = 64) -> list:
    """llama.cpp's logits (L, vocab) of each prompt on the GGUF at `path` (float32 KV cache, 1 thread); skips the
    test without llama-cpp-python."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the bench extra, not the test one")
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=n_ctx, n_threads=1, type_k=0, type_v=0, verbose=False)
    out = []
    for p in prompts:
        llm.reset()
        llm.eval(p)
        out.append(np.array(llm.scores[: len(p)]))
    return out
