"""A model folder as the loaders read it: `config.json`, one `.safetensors` file or shards named by an index (tensors
read lazily, bfloat16 widened), the tensors accounted for by name (`Weights`), and errors that name the folder. Shared
by every loader of Hugging Face-style folders (BERT, GPT-2, BART / Marian, Llama, the GRU seq2seq) and by the torch
export format (`torch_format`)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Dict

import numpy as np

from .._checks import is_int

__all__ = ["ShardedSafetensors", "SafetensorsFile", "Weights", "errors_name", "read_config", "read_safetensors"]


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
    return isinstance(v, list) and all(is_int(x) and x >= 0 for x in v)


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
