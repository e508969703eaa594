"""Basic modules holding weights: Linear (prepacked), Embedding, LayerNorm, positional encodings."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .. import _core
from .. import functional as F
from ..precision import WEIGHT_TYPES


def as_weight(x, name: str, shape: Optional[tuple] = None) -> np.ndarray:
    """A C-contiguous float32 copy-or-view of a weight, with an optional shape check naming the tensor."""
    if x is None:
        raise ValueError(f"missing weight {name}")
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(f"weight {name} must be floating-point, got {a.dtype}")
    a = F._c_aligned(a, np.float32)
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"weight {name} has shape {a.shape}, expected {tuple(shape)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"weight {name} contains NaN or infinite values")
    return a


class Module:
    """Base class: a callable holding numpy weights. `named_weights()` lists them (a state dict)."""

    # Bumped whenever any module's weights change hands: a Linear repacked (set_storage), or a module, array, list or
    # tuple assigned to a public attribute (a projection replaced, a norm's weight swapped). C++ layers built over
    # packed weights and arrays (LlamaModel's fused stack) rebuild when it moves; checking one counter, not 120
    # objects, keeps a decoding step's glue small. Assigning into a list in place (layers[3] = ...) is not seen.
    revision = 0

    def __setattr__(self, name: str, value) -> None:
        if not name.startswith("_") and isinstance(value, (Module, np.ndarray, list, tuple)):
            Module.revision += 1
        object.__setattr__(self, name, value)

    def named_weights(self, prefix: str = ""):
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, np.ndarray):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_weights(f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)):
                for i, m in enumerate(value):
                    if isinstance(m, Module):
                        yield from m.named_weights(f"{prefix}{name}.{i}.")

    def num_parameters(self) -> int:
        return sum(int(w.size) for _, w in self.named_weights())

    def modules(self):
        """This module and every module under it (lists, tuples and dicts of modules included), once each."""
        seen, stack = set(), [self]
        while stack:
            m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield m
            for value in vars(m).values():
                items = (
                    value.values()
                    if isinstance(value, dict)
                    else value
                    if isinstance(value, (list, tuple))
                    else [value]
                )
                stack.extend(v for v in items if isinstance(v, Module))

    def set_weight_storage(self, storage: str) -> Module:
        """Holds every Linear weight as `storage` (see `WEIGHT_TYPES`): "float32"; "float16" or "bfloat16" (half
        the memory, and half the bytes a decoding step streams); "int8" (about a quarter: blocks of 32 weights
        share a scale, and the activations are quantized the same way at each GEMM's input); "q4_0" / "q4_1"
        (GGUF's 4-bit blocks, quantized by ggml's reference rules: about a sixth); "q5_0" / "q5_1" (5-bit: about a
        fifth); "q6_k" (6-bit, two int8 sub-scales per block of 32, pyattn's own rounding: about a fifth); "q4_k" /
        "q5_k" (GGUF's K-quant super-blocks of 256 with 6-bit sub-scales and minima per 32, pyattn's own rounding:
        about 0.58 / 0.70 bytes per weight; in_features a multiple of 256); "q3_k" / "q2_k" (GGUF's 3- and 2-bit
        K-quants, sub-scales per 16: 0.45 / 0.33 bytes per weight; coarse, for models too large otherwise). Products
        and sums stay float32 (int32 within an int8 block). Layers a model marks as sensitive keep a finer type when
        int8 is asked (`Linear.int8_fallback`). Converting weights already rounded to a coarser type to another type is
        an error: load the model again. Returns self."""
        check_storage(storage)
        for m in self.modules():
            if isinstance(m, (Linear, StorageAware)):
                m.set_storage(storage)
        return self

    def set_int8_fallback(self, storage: Optional[str]) -> Module:
        """Every Linear under this module (those packed later included) takes `storage` when int8 is asked (None:
        int8). For the parts of a model where int8 costs accuracy and buys no speed. Returns self."""
        if storage is not None:
            check_storage(storage)
        for m in self.modules():
            if isinstance(m, (Linear, StorageAware)):
                m.int8_fallback = storage
        return self


def _check_range(w: np.ndarray, storage: str, name: str) -> None:
    """float16 holds magnitudes up to 65504: a larger weight would turn into inf (and the outputs into inf/NaN)."""
    if storage == "float16" and w.dtype != np.float16 and w.size and float(np.abs(w).max()) > 65504.0:
        raise ValueError(f"{name}: weights up to {float(np.abs(w).max()):.3g} do not fit float16 (max 65504)")


def _holds_exactly(w: np.ndarray, storage: str) -> bool:
    """Whether `storage` holds every value of w as it is (float16 weights, or float32 ones that are halves)."""
    if storage == "float32" or w.dtype == np.float16 and storage == "float16":
        return True
    return storage == "float16" and bool(np.array_equal(w.astype(np.float16).astype(np.float32), w))


def check_storage(storage) -> str:
    if storage not in WEIGHT_TYPES:
        raise ValueError(f"storage must be one of {', '.join(WEIGHT_TYPES)}, got {storage!r}")
    return storage


class StorageAware:
    """A module that packs Linear layers of its own later (on first use) and must pack them as the model's
    storage asks: it implements set_storage(storage) and honours `int8_fallback` (see Linear) for them."""

    int8_fallback: Optional[str] = None

    def set_storage(self, storage: str) -> None:
        raise NotImplementedError


class Linear(Module):
    """y = act(x W^T + b), W in PyTorch's (out_features, in_features) layout, packed once at construction.

    Only the packed copy is kept (plus the bias): `weight` unpacks it on request, so a model does not hold
    its matrices twice."""

    def __init__(
        self,
        weight,
        bias=None,
        name: str = "linear",
        storage: Optional[str] = None,
        int8_fallback: Optional[str] = None,
        input_scale: Optional[np.ndarray] = None,
    ):
        """storage: one of WEIGHT_TYPES (see Module.set_weight_storage), or None: float16 for a float16 weight,
        float32 otherwise. int8_fallback: the storage this layer takes when int8 is asked (a layer whose input
        int8 blocks cannot resolve, such as a projection of a LayerNorm output with outlier channels), or None.
        input_scale: (in_features,) positive floats a for int8 storage: the weight is quantized as W / a and each
        input x * a, so that outlier input features do not take every block's range (SmoothQuant); None: none."""
        if isinstance(weight, np.ndarray) and weight.dtype == np.float16:
            w = F._c_aligned(weight)
            if not np.all(np.isfinite(w)):
                raise ValueError(f"weight {name}.weight contains NaN or infinite values")
        else:
            w = as_weight(weight, f"{name}.weight")
        if w.ndim != 2:
            raise ValueError(f"weight {name}.weight must be 2-D (out_features, in_features), got {w.shape}")
        if storage is not None:
            check_storage(storage)
        if int8_fallback is not None:
            check_storage(int8_fallback)
        self.int8_fallback = int8_fallback
        self.input_scale = input_scale
        self.bias = None if bias is None else as_weight(bias, f"{name}.bias", (w.shape[0],))
        storage = self._effective(storage or ("float16" if w.dtype == np.float16 else "float32"))
        self._name = name
        _check_range(w, storage, name)
        self._packed = self._pack(w, storage)
        # whether the packed values are the values given, from which every other storage can still be derived
        self._exact = _holds_exactly(w, storage)

    @classmethod
    def from_int8(cls, q, scales, bias=None, name: str = "linear") -> Linear:
        """A Linear holding an int8 weight quantized elsewhere, as given (no value is quantized again): q (out, in)
        int8 and scales (out,) -- one per row, as CTranslate2's int8 -- or (out, ceil(in / 32)) -- one per block of
        32 along `in`, as GGUF's Q8_0 --, with weight ~ q * scale (CTranslate2 stores the reciprocal: pass 1 / its
        scale). Activations are quantized at each call as for storage "int8". The float values the weight came
        from are unknown, so set_storage to another type raises: load the model again with that type."""
        q = np.asarray(q)
        if q.dtype != np.int8:
            raise TypeError(f"weight {name}.weight: expected int8 values, got {q.dtype}")
        if q.ndim != 2 or 0 in q.shape:
            raise ValueError(
                f"weight {name}.weight must be 2-D (out_features, in_features) and non-empty, got {q.shape}"
            )
        s = np.asarray(scales)
        if s.dtype.kind != "f":
            raise TypeError(f"weight {name}.weight: scales must be floating-point, got {s.dtype}")
        s = F._c_aligned(s, np.float32)
        if not np.all(np.isfinite(s)):
            raise ValueError(f"weight {name}.weight: scales contain NaN or infinite values (or overflow float32)")
        lin = cls.__new__(cls)
        lin.int8_fallback = lin.input_scale = None
        lin.bias = None if bias is None else as_weight(bias, f"{name}.bias", (q.shape[0],))
        try:
            lin._packed = _core.PackedLinear.from_int8(F._c_aligned(q), s, lin.bias)
        except ValueError as e:
            raise ValueError(f"weight {name}.weight {q.shape}: {e}") from None
        lin._exact = False  # held as given: no finer values to derive another storage from
        lin._name = name
        return lin

    @classmethod
    def from_gguf(cls, raw, kind: str, in_features: int, bias=None, name: str = "linear") -> Linear:
        """A Linear holding a 4-, 5- or 6-bit weight as a GGUF file stores it, read by the GEMM as stored (0.56 to 0.875
        bytes per weight, no widening in memory): raw (out, in / 32 * block bytes) uint8, kind "q4_0" (18-byte blocks:
        a half scale d and 32 nibbles u, w = d (u - 8)), "q4_1" (20 bytes: d, a half minimum m, w = d u + m), "q5_0"
        (22 bytes: d, 32 fifth bits, nibbles; w = d (u - 16)), "q5_1" (24 bytes: d, m, fifth bits, nibbles),
        "q6_k" (28 bytes: d, int8 sc_0 and sc_1, fifth bits, sixth bits, nibbles; w = d sc_h (u - 32), h the half of
        the block; pyattn.io.gguf.q6_k_as_q6 re-lays GGUF's Q6_K so) or "q4_k" / "q5_k" (GGUF's Q4_K / Q5_K: 144 / 176
        bytes per 256 weights, w = d sc u - dmin m; in_features a multiple of 256), "q2_k" (84 bytes per 256: 4-bit sc
        and m per 16, 2-bit u) or "q3_k" (110 bytes per 256: 6-bit sc per 16, 3-bit u, w = d sc (u - 4)).
        Activations are quantized per block of 32 to int8 at each call. As for from_int8, set_storage to another
        type raises."""
        raw = np.asarray(raw)
        if raw.dtype != np.uint8:
            raise TypeError(f"weight {name}.weight: expected the blocks' bytes as uint8, got {raw.dtype}")
        lin = cls.__new__(cls)
        lin.int8_fallback = lin.input_scale = None
        lin.bias = None if bias is None else as_weight(bias, f"{name}.bias", (raw.shape[0],))
        try:
            lin._packed = _core.PackedLinear.from_gguf(np.ascontiguousarray(raw), kind, int(in_features), lin.bias)
        except ValueError as e:
            raise ValueError(f"weight {name}.weight: {e}") from None
        lin._exact = False
        lin._name = name
        return lin

    def _pack(self, w: np.ndarray, storage: str) -> _core.PackedLinear:
        if storage == "int8" and self.input_scale is not None:
            scale = np.ascontiguousarray(self.input_scale, np.float32)
            return _core.PackedLinear(np.ascontiguousarray(w, np.float32), self.bias, storage, input_scale=scale)
        return _core.PackedLinear(w, self.bias, storage)

    def _effective(self, storage: str) -> str:
        return self.int8_fallback if storage == "int8" and self.int8_fallback else storage

    @property
    def storage(self) -> str:
        return self._packed.storage

    def set_storage(self, storage: str) -> None:
        """Repacks the weight as `storage` (a no-op when it already is). ValueError when the weight was already
        rounded to another type: its original values are gone."""
        storage = self._effective(check_storage(storage))
        if storage == self.storage:
            return
        if not self._exact:
            raise ValueError(
                f"{self._name}: the weight is held as {self.storage}, rounded from its original values; "
                f"to hold it as {storage}, load the model again with that type"
            )
        w = self._packed.weight()
        _check_range(w, storage, self._name)
        self._packed = self._pack(w, storage)
        self._exact = _holds_exactly(w, storage)
        Module.revision += 1

    @property
    def weight(self) -> np.ndarray:
        """(out_features, in_features), unpacked into a new array: the values the GEMM multiplies by (for int8,
        each block's integers times its scale)."""
        return self._packed.weight()

    @property
    def in_features(self) -> int:
        return self._packed.in_features

    @property
    def out_features(self) -> int:
        return self._packed.out_features

    @property
    def shape(self) -> tuple:
        return (self.out_features, self.in_features)

    def named_weights(self, prefix: str = ""):
        yield prefix + "weight", self.weight
        if self.bias is not None:
            yield prefix + "bias", self.bias

    def __call__(self, x: np.ndarray, activation: str = "none") -> np.ndarray:
        # (..., in_features) -> (..., out_features)
        return self._packed(F._c_aligned(x, np.float32), activation)


def as_linear(weight, bias, name: str) -> Linear:
    """`weight` itself when it is a Linear already built (int8 from a file, say; it carries its own bias, so `bias`
    must be None), else a Linear of the (out_features, in_features) array and `bias`."""
    if isinstance(weight, Linear):
        if bias is not None:
            raise ValueError(f"{name}: give the bias inside the Linear, not beside it")
        return weight
    return Linear(weight, bias, name)


class Embedding(Module):
    """Rows of a (num_embeddings, dim) table looked up by integer ids."""

    def __init__(self, weight, name: str = "embedding"):
        self.weight = as_weight(weight, f"{name}.weight")
        if self.weight.ndim != 2 or 0 in self.weight.shape:
            raise ValueError(
                f"weight {name}.weight must be 2-D with at least one row and column, got {self.weight.shape}"
            )
        self._name = name

    def __call__(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{self._name}: ids must be integers, got {ids.dtype}")
        n = self.weight.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            bad = ids[(ids < 0) | (ids >= n)].flat[0]
            raise ValueError(f"{self._name}: id {bad} is out of range for a table of {n} rows")
        return self.weight[ids]


class LayerNorm(Module):
    def __init__(self, weight, bias, eps: float = 1e-5, name: str = "layer_norm"):
        self.weight = as_weight(weight, f"{name}.weight")
        if self.weight.ndim != 1:
            raise ValueError(f"weight {name}.weight must be 1-D, got {self.weight.shape}")
        self.bias = None if bias is None else as_weight(bias, f"{name}.bias", self.weight.shape)
        self.eps = float(eps)
        if not 0 <= self.eps < math.inf:
            raise ValueError(f"{name}: eps must be a finite number >= 0, got {eps!r}")

    def __call__(self, x: np.ndarray, residual: Optional[np.ndarray] = None) -> np.ndarray:
        """LayerNorm(x), or LayerNorm(x + residual) in one pass."""
        return F.layer_norm(x, self.weight, self.bias, self.eps, residual=residual)


def sinusoidal_table(num_positions: int, dim: int) -> np.ndarray:
    """The paper's encoding: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same)."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    inv = np.exp(-math.log(10000.0) * np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.zeros((num_positions, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(pos * inv)
    table[:, 1::2] = np.cos(pos * inv)[:, : dim // 2]
    return table.astype(np.float32)


class SinusoidalPositionalEncoding(Module):
    """Fixed sinusoidal positions (Vaswani et al. 2017, section 3.5); grows its table on demand."""

    def __init__(self, dim: int, max_len: int = 1024, offset: int = 0):
        self.dim, self.offset = int(dim), int(offset)
        self._table = sinusoidal_table(max_len + offset, self.dim)

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions) + self.offset
        need = int(positions.max()) + 1 if positions.size else 0
        if need > self._table.shape[0]:
            self._table = sinusoidal_table(max(need, 2 * self._table.shape[0]), self.dim)
        return self._table[positions]


class LearnedPositionalEmbedding(Embedding):
    """A learned (num_positions, dim) table, indexed by position + offset (BART stores 2 extra rows)."""

    def __init__(self, weight, offset: int = 0, name: str = "position_embeddings"):
        super().__init__(weight, name)
        self.offset = int(offset)

    def __call__(self, positions) -> np.ndarray:
        return super().__call__(np.asarray(positions) + self.offset)
