"""Reader for CTranslate2's `model.bin`: the variables (name -> numpy array), aliases and spec of a converted
model, plus the `config.json` next to it. Generic: what a given family's names mean lives with that family.

A weight converted with quantization="int8" is an int8 array `.../weight` [out, in] beside a float32
`.../weight_scale` [out] with q = round(w * scale), so w ~ q / scale; an alias of the weight stands for its scale
too. They are handed out as stored: pyattn.models.Whisper holds them as int8 (nn.Linear.from_int8, scales
1 / scale) and checks the scales.

Layout (little-endian, no padding, no alignment; see CTranslate2's python/ctranslate2/specs/model_spec.py):

    u32 binary version
    string spec name, u32 spec revision                        (versions >= 2; else spec "" and revision 1)
    u32 number of variables, then for each:
        string name, u8 rank, rank x u32 dims,
        u8 dtype code, u32 byte count                          (versions >= 4)
        u8 item size, u32 element count                        (versions 1-3: 4 float32, 2 int16, 1 int8)
        the row-major data
    u32 number of aliases, then (alias, target) string pairs   (versions >= 3)
    string = u16 length counting a trailing NUL, the UTF-8 bytes, the NUL

The file is untrusted input: every count and length is checked against the bytes that remain before anything is
allocated, and every defect raises `ModelFileError` naming the file, the byte offset and the variable.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

__all__ = ["CT2File", "ModelFileError", "SUPPORTED_VERSIONS", "parse_model_bin", "read_model_bin"]

# CTranslate2's C++ loader reads versions 1 to 6 and its converters write 6. What changes with the version is
# data: the fields a version has (versions 5 and 6 lay out the file as 4 does).
SUPPORTED_VERSIONS = range(1, 7)
_FIRST_WITH_SPEC = 2
_FIRST_WITH_ALIASES = 3
_FIRST_WITH_DTYPE_CODE = 4

# dtype code -> (name, layout in the file, dtype of the array handed out). numpy has no bfloat16: its 16 bits
# are the high half of a float32, so widening to float32 is exact.
_DTYPES = {
    0: ("float32", np.dtype("<f4"), np.dtype(np.float32)),
    1: ("int8", np.dtype("i1"), np.dtype(np.int8)),
    2: ("int16", np.dtype("<i2"), np.dtype(np.int16)),
    3: ("int32", np.dtype("<i4"), np.dtype(np.int32)),
    4: ("float16", np.dtype("<f2"), np.dtype(np.float16)),
    5: ("bfloat16", np.dtype("<u2"), np.dtype(np.float32)),
}
_BFLOAT16 = 5
_ITEM_SIZE = {name: stored.itemsize for name, stored, _ in _DTYPES.values()}
# Versions 1-3 stored an item size instead of a type; CTranslate2 maps it like this (so float16 reads as int16).
_CODE_OF_ITEM_SIZE = {4: 0, 2: 2, 1: 1}

# numpy 1.x arrays have at most 32 dimensions (the format allows 255); no model comes close.
MAX_RANK = 32
_MAX_ARRAY_BYTES = np.iinfo(np.intp).max
# The smallest records (a one-byte name): bounds the declared counts before looping over them.
_MIN_VARIABLE_BYTES = (2 + 2) + 1 + 1 + 4
_MIN_ALIAS_BYTES = 2 * (2 + 2)
_SCALE_SUFFIX = "_scale"


class ModelFileError(ValueError):
    """A model.bin or config.json that cannot be read: says which file, at which byte, what, and which variable."""

    def __init__(self, path, offset: Optional[int], reason: str, variable: Optional[str] = None):
        self.path, self.offset, self.reason, self.variable = str(path), offset, reason, variable
        where = self.path if offset is None else f"{self.path}: byte {offset}"
        what = reason if variable is None else f"variable {variable!r}: {reason}"
        super().__init__(f"{where}: {what}")

    def __reduce__(self):
        return type(self), (self.path, self.offset, self.reason, self.variable)


@dataclass(eq=False, repr=False)
class CT2File(Mapping):
    """The contents of a model.bin. A read-only mapping over the variable names and the alias names.

    `variables` keeps the file's order; each array is C-contiguous, owns its memory and has the stored dtype
    (float32, int8, int16, int32, float16), except bfloat16, handed out as float32 (exact); `stored_dtypes` names
    the type each was stored as. `aliases` maps each alias to its target as written. `offsets` gives the byte at
    which each variable's record starts."""

    path: str
    binary_version: int
    spec: str
    revision: int
    variables: Dict[str, np.ndarray]
    aliases: Dict[str, str]
    config: dict = field(default_factory=dict)
    offsets: Dict[str, int] = field(default_factory=dict)
    stored_dtypes: Dict[str, str] = field(default_factory=dict)

    # identity, not Mapping's element-wise comparison (arrays have no single truth value)
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def _resolve(self, name: str) -> Optional[str]:
        """The variable `name` stands for, or None. Like CTranslate2, an alias `a` -> `t` also makes `a_scale`
        stand for `t_scale` (the quantisation scale of a tied int8 weight)."""
        for _ in range(len(self.aliases) + 1):  # aliases may point to earlier aliases, never in a cycle
            if name in self.variables:
                return name
            if name in self.aliases:
                name = self.aliases[name]
            elif name.endswith(_SCALE_SUFFIX) and name[: -len(_SCALE_SUFFIX)] in self.aliases:
                target = self._resolve(name[: -len(_SCALE_SUFFIX)])
                return self._resolve(target + _SCALE_SUFFIX) if target is not None else None
            else:
                return None
        return None

    def __getitem__(self, name: str) -> np.ndarray:
        resolved = self._resolve(name) if isinstance(name, str) else None
        if resolved is None:
            raise KeyError(f"{self.path}: no variable or alias {name!r}")
        return self.variables[resolved]

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and self._resolve(name) is not None

    def names(self) -> List[str]:
        """Variable names in file order, then alias names (including the implied `_scale` aliases)."""
        implied = [
            a + _SCALE_SUFFIX
            for a in self.aliases
            if a + _SCALE_SUFFIX not in self.aliases
            and a + _SCALE_SUFFIX not in self.variables
            and self._resolve(a + _SCALE_SUFFIX) is not None
        ]
        return list(self.variables) + list(self.aliases) + implied

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def scalar(self, name: str):
        """A 0-d or one-element variable as a Python int or float."""
        value = self[name]
        if value.size != 1:
            resolved = self._resolve(name)
            raise ModelFileError(
                self.path, self.offsets.get(resolved), f"expected a scalar, got shape {value.shape}", variable=name
            )
        return value.reshape(-1)[0].item()

    def describe(self) -> str:
        """A few lines: version, spec, counts and bytes per dtype, scalars, aliases."""
        lines = [
            f"{self.path}: CTranslate2 model.bin version {self.binary_version}, "
            f"spec {self.spec or '(none)'} revision {self.revision}, {len(self.variables)} variables"
        ]
        per_dtype: Dict[str, List[int]] = {}
        for name, a in self.variables.items():
            n = per_dtype.setdefault(self.stored_dtypes.get(name, a.dtype.name), [0, 0, 0])
            n[0] += 1
            n[1] += a.size
            n[2] += a.size * _ITEM_SIZE[self.stored_dtypes.get(name, a.dtype.name)]
        for dtype, (count, values, nbytes) in sorted(per_dtype.items()):
            lines.append(f"  {dtype:8s} {count:5d} tensors {values:14,d} values {nbytes:14,d} bytes")
        scalars = [f"{k}={v.reshape(-1)[0].item()}" for k, v in self.variables.items() if v.ndim == 0]
        if scalars:
            lines.append("  scalars: " + ", ".join(scalars))
        lines += [f"  alias {a} -> {t}" for a, t in self.aliases.items()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"CT2File({self.path!r}, version={self.binary_version}, spec={self.spec!r}, "
            f"revision={self.revision}, {len(self.variables)} variables, {len(self.aliases)} aliases)"
        )


class _Cursor:
    """Reads the fields of a buffer in order; every read checks the bytes remaining first."""

    def __init__(self, buf, path: str):
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)
        self.variable: Optional[str] = None  # the variable being read, for the error messages

    def fail(self, reason: str, at: Optional[int] = None):
        raise ModelFileError(self.path, self.pos if at is None else at, reason, self.variable)

    def need(self, n: int, what: str):
        if n > self.size - self.pos:
            self.fail(f"truncated: {what} needs {n} bytes, {self.size - self.pos} remain")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return values

    def u8(self, what: str) -> int:
        return self.unpack("<B", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def string(self, what: str, allow_empty: bool = False) -> str:
        start = self.pos
        (length,) = self.unpack("<H", f"length of {what}")
        if length == 0:
            self.fail(f"{what} has length 0 (the length counts the trailing NUL, so it is at least 1)", start)
        self.need(length, what)
        raw = bytes(self.buf[self.pos : self.pos + length])
        if raw[-1] != 0:
            self.fail(f"{what} is not NUL-terminated (last byte {raw[-1]:#04x})", self.pos + length - 1)
        nul = raw.find(0)
        if nul < length - 1:
            self.fail(f"{what} contains a NUL byte before its end", self.pos + nul)
        try:
            text = raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            text, bad = None, e
        if text is None:
            self.fail(f"{what} is not valid UTF-8 ({bad.reason})", self.pos + bad.start)
        if not text and not allow_empty:
            self.fail(f"{what} is empty", start)
        self.pos += length
        return text


def _shape_and_dtype(cur: _Cursor, version: int):
    """Reads rank, dims and the type fields of a variable; returns (shape, dtype code, byte count)."""
    rank_at = cur.pos
    rank = cur.u8("rank")
    if rank > MAX_RANK:
        cur.fail(f"rank {rank} exceeds the supported maximum of {MAX_RANK}", rank_at)
    shape = cur.unpack(f"<{rank}I", f"{rank} dims")
    type_at = cur.pos
    if version >= _FIRST_WITH_DTYPE_CODE:
        code, nbytes = cur.unpack("<BI", "dtype code and byte count")
        if code not in _DTYPES:
            cur.fail(
                f"unknown dtype code {code} (expected 0-{len(_DTYPES) - 1}: "
                f"{', '.join(d[0] for d in _DTYPES.values())})",
                type_at,
            )
    else:
        item_size, count = cur.unpack("<BI", "item size and element count")
        if item_size not in _CODE_OF_ITEM_SIZE:
            cur.fail(f"unknown item size {item_size} (expected 4, 2 or 1)", type_at)
        code, nbytes = _CODE_OF_ITEM_SIZE[item_size], count * item_size
    name, stored, out = _DTYPES[code]
    numel = math.prod(shape)
    if nbytes != numel * stored.itemsize:
        cur.fail(
            f"byte count {nbytes} does not match shape {shape} of {name} "
            f"({numel} x {stored.itemsize} = {numel * stored.itemsize} bytes)",
            type_at,
        )
    # numpy refuses shapes whose non-zero dims overflow, even when another dim is 0
    if math.prod(max(d, 1) for d in shape) * out.itemsize > _MAX_ARRAY_BYTES:
        cur.fail(f"shape {shape} is too large for an array", rank_at)
    return shape, code, nbytes


def _copy_out(buf, offset: int, shape, code: int) -> np.ndarray:
    """The array at `offset`: an aligned, owning, C-contiguous copy in native byte order."""
    _, stored, out = _DTYPES[code]
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, out)
    raw = np.frombuffer(buf, dtype=stored, count=count, offset=offset).reshape(shape)
    if code == _BFLOAT16:
        result = np.empty(shape, np.float32)
        bits = result.view(np.uint32)
        bits[...] = raw
        bits <<= 16
        return result
    return raw.astype(out)  # copies: also converts to native order


def parse_model_bin(data, path: str = "<memory>") -> CT2File:
    """Parses the bytes of a model.bin (bytes, bytearray, memoryview or mmap); `path` names it in errors.
    The arrays are copies: `data` can be released afterwards. `config` is left empty."""
    cur = _Cursor(data, str(path))
    version = cur.u32("binary version")
    if version not in SUPPORTED_VERSIONS:
        cur.fail(
            f"unsupported binary version {version}: this reader supports versions "
            f"{SUPPORTED_VERSIONS.start}-{SUPPORTED_VERSIONS.stop - 1} (CTranslate2 writes 6)",
            0,
        )
    spec, revision = "", 1
    if version >= _FIRST_WITH_SPEC:
        spec = cur.string("spec name", allow_empty=True)
        revision = cur.u32("spec revision")

    count_at = cur.pos
    count = cur.u32("number of variables")
    if count * _MIN_VARIABLE_BYTES > cur.size - cur.pos:
        cur.fail(
            f"{count} variables declared but only {cur.size - cur.pos} bytes remain "
            f"(a variable takes at least {_MIN_VARIABLE_BYTES})",
            count_at,
        )
    variables: Dict[str, np.ndarray] = {}
    offsets: Dict[str, int] = {}
    stored_dtypes: Dict[str, str] = {}
    for i in range(count):
        start = cur.pos
        name = cur.string(f"name of variable #{i}")
        if name in variables:
            cur.fail(f"variable #{i} repeats the name {name!r} (first at byte {offsets[name]})", start)
        cur.variable = name
        shape, code, nbytes = _shape_and_dtype(cur, version)
        cur.need(nbytes, "data")
        variables[name] = _copy_out(data, cur.pos, shape, code)
        offsets[name] = start
        stored_dtypes[name] = _DTYPES[code][0]
        cur.pos += nbytes
        cur.variable = None

    aliases: Dict[str, str] = {}
    if version >= _FIRST_WITH_ALIASES:
        count_at = cur.pos
        count = cur.u32("number of aliases")
        if count * _MIN_ALIAS_BYTES > cur.size - cur.pos:
            cur.fail(
                f"{count} aliases declared but only {cur.size - cur.pos} bytes remain "
                f"(an alias takes at least {_MIN_ALIAS_BYTES})",
                count_at,
            )
        for i in range(count):
            start = cur.pos
            alias = cur.string(f"name of alias #{i}")
            target = cur.string(f"target of alias {alias!r}")
            if alias in variables or alias in aliases:
                cur.fail(
                    f"alias {alias!r} repeats the name of {'a variable' if alias in variables else 'an alias'}", start
                )
            if target not in variables and target not in aliases:
                cur.fail(f"alias {alias!r} points to {target!r}, which is not a variable", start)
            aliases[alias] = target

    if cur.pos != cur.size:
        cur.fail(
            f"{cur.size - cur.pos} unexpected bytes after the "
            f"{'aliases' if version >= _FIRST_WITH_ALIASES else 'variables'}"
        )
    return CT2File(str(path), version, spec, revision, variables, aliases, {}, offsets, stored_dtypes)


def _read_config(path: Path) -> dict:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ModelFileError(path, e.start, f"not valid UTF-8 ({e.reason})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(path, len(text[: e.pos].encode("utf-8")), f"invalid JSON ({e.msg})") from None
    except RecursionError:
        raise ModelFileError(path, None, "invalid JSON (nested too deeply)") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise ModelFileError(path, None, f"invalid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelFileError(path, 0, f"expected a JSON object, got {type(config).__name__}")
    return config


def read_model_bin(path) -> CT2File:
    """Reads `path` (a model.bin, or the folder holding one) and the folder's config.json if there is one.

    The file is memory-mapped once and each tensor copied out (the offsets are unaligned), so the file is not held
    in memory twice; like any memory map, a file truncated by another process during the read can end the process
    with SIGBUS. A missing file raises FileNotFoundError; anything wrong inside the files raises ModelFileError."""
    path = Path(path)
    file = path / "model.bin" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no CTranslate2 model.bin here")
    with open(file, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # empty files and file systems without mmap
            buf = f.read()
    try:
        model = parse_model_bin(buf, str(file))
    finally:
        if isinstance(buf, mmap.mmap):
            try:
                buf.close()
            except BufferError:  # a view is still alive in a traceback: the garbage collector will unmap it
                pass
    config_path = file.parent / "config.json"
    if config_path.is_file():
        model.config = _read_config(config_path)
    return model
