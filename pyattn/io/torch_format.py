"""Export of torch.nn.Transformer / TransformerEncoder / TransformerDecoder / MultiheadAttention to a
folder of `model.safetensors` + `config.json`, and loading such a folder as the equivalent pyattn module.

No pickle anywhere: weights go through the safetensors format, the structure through JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Dict

import numpy as np

from .._checks import is_int, is_number
from ..nn import (
    FeedForward,
    LayerNorm,
    MultiHeadAttention,
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from .model_folder import (  # noqa: F401 - shared loading code, also importable from here as before
    SafetensorsFile,
    ShardedSafetensors,
    Weights,
    errors_name,
    read_config,
    read_safetensors,
)

FORMAT = "pyattn.torch.v1"
KINDS = (
    "Transformer",
    "TransformerEncoder",
    "TransformerDecoder",
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "MultiheadAttention",
    "Seq2SeqTransformer",
)


# ----------------------------------------------------------------------------------------------------
# builders: (config, weights, prefix) -> pyattn module
# ----------------------------------------------------------------------------------------------------
def _mha(w: Weights, p: str, num_heads: int) -> MultiHeadAttention:
    if f"{p}bias_k" in w or f"{p}bias_v" in w:
        raise ValueError(f"{w.source}: MultiheadAttention with add_bias_kv is not supported ('{p}bias_k')")
    if f"{p}in_proj_weight" in w:
        wi = w.get(f"{p}in_proj_weight")
        E = wi.shape[0] // 3
        wq, wk, wv = wi[:E], wi[E : 2 * E], wi[2 * E :]
    else:
        wq, wk, wv = w.get(f"{p}q_proj_weight"), w.get(f"{p}k_proj_weight"), w.get(f"{p}v_proj_weight")
        E = wq.shape[0]
    b = w.get(f"{p}in_proj_bias", optional=True)
    bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E : 2 * E], b[2 * E :])
    return MultiHeadAttention(
        num_heads,
        wq,
        wk,
        wv,
        w.get(f"{p}out_proj.weight"),
        bq,
        bk,
        bv,
        w.get(f"{p}out_proj.bias", optional=True),
        name=p.rstrip("."),
    )


def _norm(w: Weights, p: str, eps: float) -> LayerNorm:
    return LayerNorm(w.get(f"{p}weight"), w.get(f"{p}bias", optional=True), eps, name=p.rstrip("."))


def _ffn(w: Weights, p: str, activation: str) -> FeedForward:
    return FeedForward(
        w.get(f"{p}linear1.weight"),
        w.get(f"{p}linear1.bias", optional=True),
        w.get(f"{p}linear2.weight"),
        w.get(f"{p}linear2.bias", optional=True),
        activation,
        p.rstrip("."),
    )


def _encoder_layer(c: dict, w: Weights, p: str) -> TransformerEncoderLayer:
    eps = c["layer_norm_eps"]
    return TransformerEncoderLayer(
        _mha(w, f"{p}self_attn.", c["nhead"]),
        _ffn(w, p, c["activation"]),
        _norm(w, f"{p}norm1.", eps),
        _norm(w, f"{p}norm2.", eps),
        c["norm_first"],
    )


def _decoder_layer(c: dict, w: Weights, p: str) -> TransformerDecoderLayer:
    eps = c["layer_norm_eps"]
    return TransformerDecoderLayer(
        _mha(w, f"{p}self_attn.", c["nhead"]),
        _mha(w, f"{p}multihead_attn.", c["nhead"]),
        _ffn(w, p, c["activation"]),
        _norm(w, f"{p}norm1.", eps),
        _norm(w, f"{p}norm2.", eps),
        _norm(w, f"{p}norm3.", eps),
        c["norm_first"],
    )


def _stack(c: dict, w: Weights, p: str, n: int, make, cls):
    layers = [make(c, w, f"{p}layers.{i}.") for i in range(n)]
    norm = _norm(w, f"{p}norm.", c["layer_norm_eps"]) if f"{p}norm.weight" in w else None
    return cls(layers, norm)


_ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
_LAYER_COUNTS = {
    "TransformerEncoder": ("num_layers",),
    "TransformerDecoder": ("num_layers",),
    "Transformer": ("num_encoder_layers", "num_decoder_layers"),
    "Seq2SeqTransformer": ("num_encoder_layers", "num_decoder_layers"),
}


def _check_config(c: dict, kind: str, source: str) -> None:
    """The config values `build` uses, each of the type and range torch_config writes."""

    def positive_int(key):
        v = c[key]
        if not is_int(v) or v <= 0:
            raise ValueError(f"{source}: config '{key}' must be a positive integer, got {v!r}")

    def boolean(key):
        if not isinstance(c[key], bool):
            raise ValueError(f"{source}: config '{key}' must be true or false, got {c[key]!r}")

    for key in ("nhead",) + _LAYER_COUNTS.get(kind, ()):
        positive_int(key)
    for key in ("batch_first", "scale_embeddings"):
        if key in c:
            boolean(key)
    if kind == "MultiheadAttention":
        return
    if not isinstance(c["activation"], str) or c["activation"] not in _ACTIVATIONS:
        raise ValueError(f"{source}: config 'activation' must be one of {_ACTIVATIONS}, got {c['activation']!r}")
    boolean("norm_first")
    eps = c["layer_norm_eps"]
    if not is_number(eps) or not 0 <= eps < math.inf:
        raise ValueError(f"{source}: config 'layer_norm_eps' must be a finite number >= 0, got {eps!r}")


def build(config: dict, tensors: Mapping[str, np.ndarray], source: str = "weights"):
    """The pyattn module described by an exported config and its tensors (torch state_dict names)."""
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"{source}: unknown module kind {kind!r}, expected one of {KINDS}")
    c = dict(config)
    for key in ("nhead",) if kind == "MultiheadAttention" else ("nhead", "activation", "norm_first", "layer_norm_eps"):
        if key not in c:
            raise ValueError(f"{source}: config has no '{key}'")
    for key in _LAYER_COUNTS.get(kind, ()):
        if key not in c:
            raise ValueError(f"{source}: config has no '{key}'")
    _check_config(c, kind, source)
    if not c.get("batch_first", True):
        raise ValueError(f"{source}: only batch_first modules are supported (export with batch_first=True)")
    w = Weights(tensors, source)
    if kind == "MultiheadAttention":
        m = _mha(w, "", c["nhead"])
    elif kind == "TransformerEncoderLayer":
        m = _encoder_layer(c, w, "")
    elif kind == "TransformerDecoderLayer":
        m = _decoder_layer(c, w, "")
    elif kind == "TransformerEncoder":
        m = _stack(c, w, "", c["num_layers"], _encoder_layer, TransformerEncoder)
    elif kind == "TransformerDecoder":
        m = _stack(c, w, "", c["num_layers"], _decoder_layer, TransformerDecoder)
    elif kind == "Transformer":
        m = Transformer(
            _stack(c, w, "encoder.", c["num_encoder_layers"], _encoder_layer, TransformerEncoder),
            _stack(c, w, "decoder.", c["num_decoder_layers"], _decoder_layer, TransformerDecoder),
        )
    else:
        p = "transformer."
        t = Transformer(
            _stack(c, w, p + "encoder.", c["num_encoder_layers"], _encoder_layer, TransformerEncoder),
            _stack(c, w, p + "decoder.", c["num_decoder_layers"], _decoder_layer, TransformerDecoder),
        )
        from ..models.transformer import Seq2SeqTransformer  # the whole model sits above io (models import io)

        m = Seq2SeqTransformer(
            t,
            w.get("src_embedding.weight"),
            w.get("tgt_embedding.weight"),
            (w.get("generator.weight"), w.get("generator.bias", optional=True)),
            c.get("scale_embeddings", True),
        )
    w.check_all_used()
    return m


# ----------------------------------------------------------------------------------------------------
# torch side
# ----------------------------------------------------------------------------------------------------
def _activation_name(layer) -> str:
    import torch

    act = getattr(layer, "activation", None)
    if act is torch.nn.functional.relu or isinstance(act, torch.nn.ReLU):
        return "relu"
    if act is torch.nn.functional.gelu or isinstance(act, torch.nn.GELU):
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    raise ValueError(f"unsupported activation {act!r}: pyattn supports relu and gelu")


def torch_config(module) -> dict:
    """The JSON config of a torch module pyattn can load."""
    import torch.nn as tnn

    def layer_cfg(layer):
        return {
            "nhead": layer.self_attn.num_heads,
            "d_model": layer.self_attn.embed_dim,
            "dim_feedforward": layer.linear1.out_features,
            "activation": _activation_name(layer),
            "norm_first": bool(layer.norm_first),
            "layer_norm_eps": float(layer.norm1.eps),
            "batch_first": bool(layer.self_attn.batch_first),
        }

    if isinstance(module, tnn.Transformer):
        cfg = layer_cfg(module.encoder.layers[0])
        cfg.update(
            kind="Transformer",
            num_encoder_layers=len(module.encoder.layers),
            num_decoder_layers=len(module.decoder.layers),
        )
    elif isinstance(module, (tnn.TransformerEncoder, tnn.TransformerDecoder)):
        cfg = layer_cfg(module.layers[0])
        cfg.update(kind=type(module).__name__, num_layers=len(module.layers))
    elif isinstance(module, (tnn.TransformerEncoderLayer, tnn.TransformerDecoderLayer)):
        cfg = layer_cfg(module)
        cfg["kind"] = type(module).__name__
    elif isinstance(module, tnn.MultiheadAttention):
        cfg = {
            "kind": "MultiheadAttention",
            "nhead": module.num_heads,
            "d_model": module.embed_dim,
            "batch_first": bool(module.batch_first),
        }
    else:
        raise TypeError(f"cannot export {type(module).__name__}: expected one of {KINDS}")
    cfg["format"] = FORMAT
    return cfg


def torch_tensors(module) -> Dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy().copy() for k, v in module.state_dict().items()}


def _config_and_tensors(module, src_embedding=None, tgt_embedding=None, generator=None):
    cfg, tensors = torch_config(module), torch_tensors(module)
    extras = (src_embedding, tgt_embedding, generator)
    if any(e is not None for e in extras):
        if cfg["kind"] != "Transformer" or any(e is None for e in extras):
            raise ValueError("src_embedding, tgt_embedding and generator go together, with an nn.Transformer")
        cfg["kind"] = "Seq2SeqTransformer"
        cfg["scale_embeddings"] = True
        tensors = {f"transformer.{k}": v for k, v in tensors.items()}
        for name, m in zip(("src_embedding", "tgt_embedding", "generator"), extras):
            tensors.update({f"{name}.{k}": v for k, v in torch_tensors(m).items()})
    return cfg, tensors


def from_torch(module, *, src_embedding=None, tgt_embedding=None, generator=None):
    """The pyattn equivalent of a live torch module (same weights), without going through files."""
    cfg, tensors = _config_and_tensors(module, src_embedding, tgt_embedding, generator)
    return build(cfg, tensors, type(module).__name__)


def export_torch(module, path, *, src_embedding=None, tgt_embedding=None, generator=None) -> Path:
    """Writes `path/config.json` and `path/model.safetensors` for a torch module; returns the folder.

    With an nn.Transformer, `src_embedding` / `tgt_embedding` (nn.Embedding) and `generator` (nn.Linear to the
    target vocabulary) make it the paper's whole model (pyattn.io.Seq2SeqTransformer): embeddings scaled by
    sqrt(d_model) plus sinusoidal positions, then the final linear + softmax."""
    from safetensors.numpy import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg, tensors = _config_and_tensors(module, src_embedding, tgt_embedding, generator)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder


def load(path):
    """Loads a folder written by `export_torch` (config.json + model.safetensors) as a pyattn module."""
    folder = Path(path)
    cfg = read_config(folder, "a folder written by pyattn.io.export_torch")
    if cfg.get("format") != FORMAT:
        raise ValueError(
            f"{folder / 'config.json'}: not a pyattn export (format {cfg.get('format')!r}, expected {FORMAT!r})"
        )
    with errors_name(str(folder)):
        return build(cfg, read_safetensors(folder / "model.safetensors"), str(folder))
