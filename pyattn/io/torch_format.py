"""Export of torch.nn.Transformer / TransformerEncoder / TransformerDecoder / MultiheadAttention to a
folder of `model.safetensors` + `config.json`, and loading such a folder as the equivalent pyattn module.

No pickle anywhere: weights go through the safetensors format, the structure through JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Dict

import numpy as np

from ..nn import (
    FeedForward,
    LayerNorm,
    MultiHeadAttention,
    Seq2SeqTransformer,
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
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


class Weights:
    """A name -> array mapping that reports missing and unused tensors by name."""

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str):
        self._t = tensors  # may be lazy (SafetensorsFile): tensors are read as they are asked for
        self._used = set()
        self.source = source
        self._prefix = getattr(tensors, "prefix", "")  # a view of the tensors under a prefix names them in full

    def name(self, name: str) -> str:
        """`name` as the file spells it (with the prefix the view strips)."""
        return self._prefix + name

    def get(self, name: str, optional: bool = False, buffer: bool = False):
        """The tensor `name`: a floating-point array of at least one dimension, unless it is a `buffer` (an
        integer or bool array some checkpoints carry, read only to be accounted for)."""
        if name not in self._t:
            if optional:
                return None
            raise KeyError(f"{self.source}: missing tensor '{self.name(name)}'")
        self._used.add(name)
        t = self._t[name]
        if not buffer:
            dtype, ndim = getattr(t, "dtype", None), getattr(t, "ndim", None)
            if dtype is None or dtype.kind != "f":
                raise TypeError(
                    f"{self.source}: tensor '{self.name(name)}' is "
                    f"{dtype if dtype is not None else type(t).__name__}, expected floating point"
                )
            if ndim == 0:
                raise ValueError(f"{self.source}: tensor '{self.name(name)}' is a scalar, expected an array")
        return t

    def __contains__(self, name):
        return name in self._t

    def names(self):
        """The names of every tensor, used or not."""
        return list(self._t.keys())

    def check_all_used(self):
        unused = sorted(self.name(k) for k in set(self._t.keys()) - self._used)
        if unused:
            raise ValueError(f"{self.source}: unexpected tensors {unused[:8]}{' ...' if len(unused) > 8 else ''}")


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
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
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
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
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


class SafetensorsFile(Mapping):
    """The tensors of a .safetensors file, each read when first asked for (through the safetensors package,
    which memory-maps the file): a model under construction holds one raw tensor at a time next to its
    packed weights, not the whole file. The header is validated when the file is opened.

    BF16 tensors, which numpy cannot hold, come out as float32 (exact: a bfloat16 is the high half of the float32
    of the same value); every other dtype as the safetensors package gives it (F16 as float16)."""

    def __init__(self, path):
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no weights file at {self.path}")
        try:
            self._file = safe_open(str(self.path), framework="numpy")
            self._names = set(self._file.keys())
            self._bf16 = {n for n in self._names if self._file.get_slice(n).get_dtype() == "BF16"}
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{self.path}: not a readable safetensors file ({e})") from None
        # the safetensors package does not give a BF16 tensor's bytes to numpy: their offsets come from the header
        self._bf16_entries = _bf16_entries(self.path, self._bf16) if self._bf16 else {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        if name in self._bf16:
            return self._read_bf16(name)
        try:
            return self._file.get_tensor(name)
        except Exception as e:  # noqa: BLE001 - whatever the reader raises, name the file and tensor
            raise ValueError(f"{self.path}: cannot read tensor '{name}' ({e})") from None

    def _read_bf16(self, name: str) -> np.ndarray:
        start, shape = self._bf16_entries[name]
        count = math.prod(shape)
        with open(self.path, "rb") as fh:
            fh.seek(start)
            raw = fh.read(2 * count)
        if len(raw) != 2 * count:  # the file changed since it was opened
            raise ValueError(f"{self.path}: tensor '{name}' is cut short (file truncated?)")
        bits = np.frombuffer(raw, "<u2").reshape(shape)
        return (bits.astype(np.uint32) << 16).view(np.float32)

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)


def _whole_numbers(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def _bf16_entries(path: Path, names) -> Dict[str, tuple]:
    """name -> (absolute byte offset, shape) of the BF16 tensors `names`, from the file's header (8 bytes of
    little-endian header length, then a JSON object name -> {dtype, shape, data_offsets [begin, end) relative to
    the end of the header}). The safetensors package has validated the header already; each entry is checked
    again against the file's length before it is used."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= size - 8:
            raise ValueError(f"{path}: safetensors header length {n} does not fit the file's {size} bytes")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, RecursionError) as e:
            raise ValueError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    out = {}
    for name in names:
        e = header.get(name)
        shape, offsets = (e.get("shape"), e.get("data_offsets")) if isinstance(e, dict) else (None, None)
        whole = _whole_numbers(shape) and _whole_numbers(offsets) and len(offsets) == 2
        if not (isinstance(e, dict) and e.get("dtype") == "BF16" and whole):
            raise ValueError(f"{path}: header entry of tensor '{name}' is not a BF16 entry with shape and offsets")
        begin, end = offsets
        if not begin <= end <= size - 8 - n or end - begin != 2 * math.prod(shape):
            raise ValueError(
                f"{path}: tensor '{name}' (BF16, shape {shape}) has data_offsets {offsets}, which do not hold "
                f"{2 * math.prod(shape)} bytes inside the {size - 8 - n} bytes of data"
            )
        out[name] = (8 + n + begin, tuple(shape))
    return out


class ShardedSafetensors(Mapping):
    """The tensors of a checkpoint split over several .safetensors files (model-00001-of-00002.safetensors ...),
    named by `model.safetensors.index.json` (its "weight_map": tensor name -> file name in the same folder).
    Each file is opened (and its header validated) once, tensors are read when asked for."""

    def __init__(self, index_path):
        self.path = Path(index_path)
        folder = self.path.parent
        try:
            index = json.loads(self.path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ValueError(f"{self.path}: not a valid JSON index ({e})") from None
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
            raise ValueError(f"{self.path}: expected a non-empty 'weight_map' of tensor name -> file name")
        self._files = {}
        for shard in sorted(set(wm.values())):
            if Path(shard).name != shard or shard in ("", ".", ".."):
                raise ValueError(f"{self.path}: weight_map names {shard!r}, not a file of this folder")
            self._files[shard] = SafetensorsFile(folder / shard)
        self._where = {}
        for name, shard in wm.items():
            if name not in self._files[shard]:
                raise ValueError(f"{self.path}: tensor '{name}' is not in {folder / shard}, where weight_map puts it")
            self._where[name] = self._files[shard]

    def __getitem__(self, name: str) -> np.ndarray:
        return self._where[name][name]

    def __contains__(self, name) -> bool:
        return name in self._where

    def __iter__(self):
        return iter(sorted(self._where))

    def __len__(self) -> int:
        return len(self._where)


def read_safetensors(path) -> SafetensorsFile:
    """The tensors of a .safetensors file as a lazy mapping (BF16 tensors widened to float32); corrupt or
    truncated files raise ValueError."""
    return SafetensorsFile(path)


def read_config(folder, expected: str) -> dict:
    """`folder/config.json` as a dict; `expected` says what kind of folder was expected, for the errors."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected {expected})")
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ValueError(f"{path}: invalid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, and integers of more digits than Python converts
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


@contextlib.contextmanager
def errors_name(source: str):
    """Errors raised while a model is built from the files of `source` name it: a ValueError, TypeError or
    KeyError whose message does not mention `source` gets it in front (the message keeps its own detail:
    the tensor, key or shape). Other exception types pass unchanged."""
    try:
        yield
    except (ValueError, TypeError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
        if type(e) not in (ValueError, TypeError, KeyError) or source in str(message):
            raise
        raise type(e)(f"{source}: {message}").with_traceback(e.__traceback__) from None


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
