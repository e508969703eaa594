"""Multi-head attention with a KV cache: self-attention (fused Q/K/V projection) and encoder-decoder
(cross) attention whose K/V are computed once per source."""

from __future__ import annotations

from collections.abc import Mapping
from typing import List, Optional

import numpy as np

from .. import _core
from .. import functional as F
from .._checks import is_int
from ..precision import attention_precision
from .layers import Linear, Module, StorageAware, as_linear, as_weight, check_storage


class _PositionCache:
    """What the two cache layouts share: keys and values `k`, `v` with the batch rows on axis 0 and the positions on
    axis `AXIS`, of which the first `length` are filled and the rest is room to append. Rows are reordered (beam
    search), merged with another cache's rows and trimmed at the left (continuous batching)."""

    AXIS = 1

    def _shape(self, rows: int, capacity: int) -> tuple:
        shape = list(self.k.shape)
        shape[0], shape[self.AXIS] = rows, capacity
        return tuple(shape)

    def _positions(self, a: np.ndarray, start: int, stop: int) -> np.ndarray:
        """a[..., start:stop, ...] on the position axis."""
        index = [slice(None)] * a.ndim
        index[self.AXIS] = slice(start, stop)
        return a[tuple(index)]

    def reserve(self, need: int) -> None:
        """Room for `need` positions (capacity at least doubles when it grows: appends cost amortised O(1))."""
        if need > self.k.shape[self.AXIS]:
            shape = self._shape(self.k.shape[0], max(need, 2 * self.k.shape[self.AXIS]))
            for name in ("k", "v"):
                new = np.empty(shape, self.k.dtype)
                self._positions(new, 0, self.length)[...] = self._positions(getattr(self, name), 0, self.length)
                setattr(self, name, new)

    def reorder(self, index: np.ndarray) -> None:
        """Keeps batch rows `index` (beam search): row i of the new cache is row index[i] of the old. Only the
        positions written so far are copied, not the capacity beyond them."""
        index = np.asarray(index, np.int64).reshape(-1)
        if index.size == self.k.shape[0] and np.array_equal(index, np.arange(index.size)):
            return  # every row stays
        for name in ("k", "v"):
            old = getattr(self, name)
            new = np.empty(self._shape(index.size, old.shape[self.AXIS]), old.dtype)
            filled = tuple(slice(0, self.length) if a == self.AXIS else slice(None) for a in range(1, old.ndim))
            for i, j in enumerate(index.tolist()):  # row by row, each a contiguous copy (np.take into the
                new[i][filled] = old[j][filled]  # strided part measured slower than copying the whole capacity)
            setattr(self, name, new)

    def merge(self, other: _PositionCache) -> None:
        """Appends the rows of `other` (a cache of the same layout and heads) after these. The shorter of the two is
        left-padded with zeros to the longer one's length: the caller's attention mask marks those positions 0."""
        if type(other) is not type(self) or self._shape(0, 0) != other._shape(0, 0) or self.k.dtype != other.k.dtype:
            raise ValueError(
                f"merge: expected a {self.k.dtype} {type(self).__name__} like {self.k.shape} (any rows and positions), "
                f"got a {other.k.dtype} {type(other).__name__} of shape {other.k.shape}"
            )
        n = max(self.length, other.length)
        rows = self.k.shape[0]
        shape = self._shape(rows + other.k.shape[0], max(n, self.k.shape[self.AXIS], other.k.shape[self.AXIS]))
        for name in ("k", "v"):
            new = np.empty(shape, self.k.dtype)
            for part, cache in ((new[:rows], self), (new[rows:], other)):
                pad = n - cache.length
                self._positions(part, 0, pad)[...] = 0.0
                self._positions(part, pad, n)[...] = self._positions(getattr(cache, name), 0, cache.length)
            setattr(self, name, new)
        self.length = n

    def trim_left(self, n: int) -> None:
        """Drops the first `n` positions of every row (columns that are padding in every row), keeping the
        capacity."""
        if not 0 <= n <= self.length:
            raise ValueError(f"trim_left: n must be in [0, {self.length}], got {n}")
        if n == 0:
            return
        for name in ("k", "v"):
            old = getattr(self, name)
            new = np.empty_like(old)
            self._positions(new, 0, self.length - n)[...] = self._positions(old, n, self.length)
            setattr(self, name, new)
        self.length -= n


class KVCache(_PositionCache):
    """Keys and values of the positions seen so far, for one attention layer.

    Stored as (B, capacity, E) buffers so that appending a step is a contiguous copy, and the heads are
    strided (B, H, length, d) views that the attention kernel reads in place. Capacity doubles as needed.
    """

    AXIS = 1

    def __init__(self, batch: int, dim: int, capacity: int = 32):
        self.k = np.empty((batch, max(capacity, 1), dim), np.float32)
        self.v = np.empty_like(self.k)
        self.length = 0

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        # k, v: (B, L_new, E)
        B, L, E = k.shape
        if B != self.k.shape[0] or E != self.k.shape[2]:
            raise ValueError(f"KV cache holds (B={self.k.shape[0]}, E={self.k.shape[2]}), got keys {k.shape}")
        need = self.length + L
        self.reserve(need)
        self.k[:, self.length : need] = k
        self.v[:, self.length : need] = v
        self.length = need

    def heads(self, num_heads: int):
        """(B, H, length, d) views of keys and values."""
        B, _, E = self.k.shape
        d = E // num_heads
        k = self.k[:, : self.length].reshape(B, self.length, num_heads, d).transpose(0, 2, 1, 3)
        v = self.v[:, : self.length].reshape(B, self.length, num_heads, d).transpose(0, 2, 1, 3)
        return k, v


class HeadKVCache(_PositionCache):
    """Keys and values of one layer, head-major: (B, Hkv, capacity, D) buffers, so that each head's keys are one
    contiguous stream for the decoding step that reads them (the Llama decoder stack, cpp/layers/decoder_layer.h;
    rows at a stride of Hkv D measured 1.5x slower to read cold). Written in place by the core; capacity doubles as
    needed. dtype float16 halves the bytes a decoding step reads and the cache's memory (as llama.cpp's default
    cache does): the core rounds K and V to nearest when it writes them and widens them as attention reads them;
    magnitudes beyond 65504 would become inf."""

    AXIS = 2

    def __init__(self, batch: int, heads: int, head_dim: int, capacity: int = 32, dtype=np.float32):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"a KV cache holds float32 or float16, not {dtype}")
        self.k = np.empty((batch, heads, max(capacity, 1), head_dim), dtype)
        self.v = np.empty_like(self.k)
        self.length = 0

    def heads(self, num_heads: Optional[int] = None):
        """(B, Hkv, length, D) views of keys and values (num_heads, if given, must be Hkv)."""
        if num_heads is not None and num_heads != self.k.shape[1]:
            raise ValueError(f"this cache holds {self.k.shape[1]} heads, not {num_heads}")
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class CacheState:
    """The per-layer KV caches of a decoder-only model's batch being decoded (GPT-2, Llama): what generation steps
    through (its `length`, `reorder` for beam search, `merge` and `trim_left` for continuous batching; see
    pyattn.generation.protocol)."""

    def __init__(self, caches: List[_PositionCache]):
        self.caches = caches

    @property
    def length(self) -> int:
        return self.caches[0].length

    @property
    def batch(self) -> int:
        return self.caches[0].k.shape[0]

    def reorder(self, index: np.ndarray) -> None:
        for c in self.caches:
            c.reorder(index)

    def merge(self, other: CacheState) -> None:
        """Appends the rows of `other` (a state of the same model) after these; the shorter state is left-padded
        to the longer one's length (zeros, which the caller's attention mask marks as padding)."""
        if not isinstance(other, CacheState) or len(other.caches) != len(self.caches):
            n = len(other.caches) if isinstance(other, CacheState) else type(other).__name__
            raise ValueError(f"merge: expected a CacheState of {len(self.caches)} layers, got {n}")
        for mine, theirs in zip(self.caches, other.caches):
            mine.merge(theirs)

    def trim_left(self, n: int) -> None:
        """Drops the first `n` positions of every row and layer (padding in every row)."""
        for c in self.caches:
            c.trim_left(n)


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """(B, L, H * d) -> (B, H, L, d) as a strided view (no copy)."""
    B, L, E = x.shape
    return x.reshape(B, L, num_heads, E // num_heads).transpose(0, 2, 1, 3)


class MultiHeadAttention(StorageAware, Module):
    """softmax(Q K^T / sqrt(d_k) + mask) V over `num_heads` heads, then W_O.

    Weights in PyTorch's layout: w_q (E, E), w_k (E, kdim), w_v (E, vdim), w_o (E, E). For self-attention
    Q, K and V come from one fused GEMM; for cross-attention Q is projected from the decoder states and the
    fused K/V projection of the encoder output is computed once (see `project_kv`) and reused every step.

    Instead of w_q, w_k, w_v (and their biases), `projections` may hand over the projections already built, as
    Linears that carry their biases: {"qkv": (3E, E)} for self-attention, {"q": (E, E), "kv": (2E, kdim)} for
    cross-attention, or all three. A model whose file stores them fused (CTranslate2), or quantized (int8), passes
    them so; the layer then uses only those, and holds no float copy. w_o may likewise be a Linear (b_o None).

    Given w_q, w_k, w_v, the layer packs the projection a call needs on first use (Q/K/V fused for self-attention,
    Q and K/V for cross-attention) and then drops the float copies it packed: like a Linear it holds each weight
    once. `w_q`, `w_k`, `w_v` read back from the packed projection when their float copy is gone (unpacked: for a
    float32 layer the same values).
    """

    _FUSED = ("qkv", "q", "kv")

    def __init__(
        self,
        num_heads: int,
        w_q=None,
        w_k=None,
        w_v=None,
        w_o=None,
        b_q=None,
        b_k=None,
        b_v=None,
        b_o=None,
        scale: Optional[float] = None,
        name: str = "attention",
        *,
        projections: Optional[Mapping[str, Linear]] = None,
    ):
        if not is_int(num_heads) or num_heads < 1:
            raise ValueError(f"{name}: num_heads must be a positive integer, got {num_heads!r}")
        self._name = name
        self._packed = {}  # "q", "kv", "qkv" -> Linear, packed on first use: a layer packs only what it uses
        if projections is None:
            E = self._raw_projections(num_heads, w_q, w_k, w_v, b_q, b_k, b_v, name)
        else:
            if any(x is not None for x in (w_q, w_k, w_v, b_q, b_k, b_v)):
                raise ValueError(f"{name}: give w_q, w_k, w_v (and their biases) or projections, not both")
            E = self._given_projections(projections, name)
            self._packed = dict(projections)
            self._raw = None
            self.b_q = self.b_k = self.b_v = None
        if E % num_heads:
            raise ValueError(f"{name}: num_heads ({num_heads}) must divide d_model ({E})")
        self.num_heads, self.d_model = int(num_heads), E
        self.scale = scale
        self._storage = None  # the storage of projections packed later (None: float32)
        # The storage the Q/K/V projections take when int8 is asked (StorageAware): a model whose attention reads
        # LayerNorm outputs with outlier channels (BERT) keeps them finer. None: int8. It governs given projections
        # too (set_storage).
        self.int8_fallback = None
        # int8 only: the fused Q/K/V projection's input scale (Linear's input_scale), set by a model that calibrated
        # its inputs' outlier features (BertModel). None: none.
        self.int8_input_scale: Optional[np.ndarray] = None
        if w_o is None:
            raise ValueError(f"missing weight {name}.w_o")
        self.out_proj = as_linear(w_o, b_o, f"{name}.out_proj")
        if self.out_proj.shape != (E, E):
            raise ValueError(f"{name}: out_proj weight has shape {self.out_proj.shape}, expected {(E, E)}")

    def _raw_projections(self, num_heads, w_q, w_k, w_v, b_q, b_k, b_v, name) -> int:
        """Keeps float Q/K/V weights (and biases), from which _projection packs what is used; returns d_model."""
        w_q = as_weight(w_q, f"{name}.w_q")
        if w_q.ndim != 2:
            raise ValueError(f"{name}: w_q must be 2-D (E, E), got {w_q.shape}")
        E = w_q.shape[0]
        if E % num_heads:
            raise ValueError(f"{name}: num_heads ({num_heads}) must divide d_model ({E})")
        w_k = as_weight(w_k, f"{name}.w_k")
        w_v = as_weight(w_v, f"{name}.w_v")
        if w_k.ndim != 2 or w_v.ndim != 2 or w_k.shape[0] != E or w_v.shape[0] != E:
            raise ValueError(f"{name}: w_k {w_k.shape} and w_v {w_v.shape} must have {E} rows like w_q {w_q.shape}")
        if w_q.shape != (E, E):
            raise ValueError(f"{name}: w_q has shape {w_q.shape}, expected {(E, E)}")
        self._raw = {"q": w_q, "k": w_k, "v": w_v}  # until packed (see _projection)
        self.kdim, self.vdim = w_k.shape[1], w_v.shape[1]
        has_bias = any(b is not None for b in (b_q, b_k, b_v))
        zeros = np.zeros(E, np.float32)
        self.b_q, self.b_k, self.b_v = (
            ((zeros if b is None else as_weight(b, f"{name}.b", (E,))) for b in (b_q, b_k, b_v))
            if has_bias
            else (None, None, None)
        )
        return E

    def _given_projections(self, projections, name) -> int:
        """Checks prebuilt projections against each other; returns d_model."""
        if not isinstance(projections, Mapping):
            raise TypeError(f"{name}: projections must map 'qkv', 'q', 'kv' to Linears, got {type(projections)}")
        unknown = [k for k in projections if k not in self._FUSED]
        if unknown:
            raise ValueError(f"{name}: unknown projections {unknown}, expected some of {list(self._FUSED)}")
        for k, lin in projections.items():
            if not isinstance(lin, Linear):
                raise TypeError(f"{name}: projection {k!r} must be a pyattn.nn.Linear, got {type(lin).__name__}")
        if "qkv" not in projections and not {"q", "kv"} <= set(projections):
            raise ValueError(
                f"{name}: projections must hold 'qkv' (self-attention), 'q' and 'kv' (cross-attention), or all "
                f"three; got {sorted(projections)}"
            )
        qkv, q, kv = (projections.get(k) for k in self._FUSED)
        E = qkv.out_features // 3 if qkv is not None else q.out_features
        expected = {"qkv": (3 * E, E), "q": (E, E), "kv": (2 * E, kv.in_features if kv is not None else E)}
        for k, lin in projections.items():
            if lin.shape != expected[k]:
                shapes = {k: v.shape for k, v in projections.items()}
                raise ValueError(f"{name}: projection {k!r} has shape {lin.shape}, expected {expected[k]} ({shapes})")
        self.kdim = self.vdim = kv.in_features if kv is not None else E
        return E

    def _weight(self, c: str) -> Optional[np.ndarray]:
        """The float weight of projection c ("q", "k" or "v"): its copy until packed, then read back from the
        packed projection holding it; None for a layer given its projections."""
        if self._raw is None:
            return None
        if c in self._raw:
            return self._raw[c]
        for which, lin in self._packed.items():
            if c in which:
                i = which.index(c)
                rows = lin.out_features // len(which)  # "q" E rows, "kv" 2 E, "qkv" 3 E (kdim = vdim = E when fused)
                return lin.weight[i * rows : (i + 1) * rows]
        raise AssertionError(f"{self._name}: projection {c!r} is neither held nor packed")

    w_q = property(lambda self: self._weight("q"), doc="(E, E); None when the projections were given")
    w_k = property(lambda self: self._weight("k"), doc="(E, kdim); None when the projections were given")
    w_v = property(lambda self: self._weight("v"), doc="(E, vdim); None when the projections were given")

    def _projection(self, which: str) -> Linear:
        """Q alone (cross-attention queries), K and V fused (an encoder output), or all three fused
        (self-attention: one GEMM)."""
        lin = self._packed.get(which)
        if lin is None:
            if self._raw is None:
                raise ValueError(
                    f"{self._name}: this attention was given the projections {sorted(self._packed)}, and this call "
                    f"needs {which!r}"
                )
            parts = which  # one letter per projection: "q", "kv" or "qkv"
            ws = [self._weight(c) for c in parts]
            if len({w.shape[1] for w in ws}) != 1:
                raise ValueError(
                    f"{self._name}: a fused {which.upper()} projection needs equal input widths, got "
                    f"{[w.shape for w in ws]}"
                )
            bias = None if self.b_q is None else np.concatenate([getattr(self, f"b_{c}") for c in parts])
            lin = Linear(
                np.concatenate(ws) if len(ws) > 1 else ws[0],
                bias,
                f"{self._name}.{which}_proj",
                self._storage,
                self.int8_fallback,
                self.int8_input_scale if which == "qkv" else None,
            )
            self._packed[which] = lin
            for c in parts:  # packed: the float copy goes (read back through w_q / w_k / w_v)
                self._raw.pop(c, None)
        return lin

    def named_weights(self, prefix: str = ""):
        yield from super().named_weights(prefix)
        if self._raw is None:  # given projections: their weights live only in them
            for which in self._FUSED:
                if which in self._packed:
                    yield from self._packed[which].named_weights(f"{prefix}{which}_proj.")
        else:
            for c in "qkv":
                yield f"{prefix}w_{c}", self._weight(c)

    def set_storage(self, storage: str) -> None:
        """Q/K/V projections packed now and later are held as `storage` (out_proj is a Linear of its own). Given
        projections are repacked as any Linear: one held as given in int8 raises for another storage."""
        self._storage = check_storage(storage)
        for which, lin in self._packed.items():
            lin.int8_fallback = self.int8_fallback
            if which == "qkv":
                lin.input_scale = self.int8_input_scale
            lin.set_storage(storage)

    def project_kv(self, memory: np.ndarray, dtype="float32") -> HeadKVCache:
        """K and V of an encoder output (B, Lk, kdim), computed once for all decoding steps, held as `dtype`
        (float32, or float16: rounded to nearest, half the bytes each step reads). Held head-major, so that a step
        reads each head's keys as one contiguous stream: Whisper tiny.en's 1500 frames at a row stride of all heads
        measured 0.52 ms a layer-step (2 threads, evicted between steps by the output projection's weights),
        head-major 0.31 ms, and 0.16 ms in float16."""
        kv = self._projection("kv")(memory)  # (B, Lk, 2E)
        B, Lk, _ = kv.shape
        H, E = self.num_heads, self.d_model

        # Beyond float16's range (|x| >= 65520 rounds to inf) a finite K or V is held as float32 instead.
        if np.dtype(dtype) == np.float16 and Lk and float(np.abs(kv).max()) >= 65520.0 and np.isfinite(kv).all():
            dtype = "float32"
        cache = HeadKVCache(B, H, E // H, Lk, dtype)
        for held, part in ((cache.k, kv[..., :E]), (cache.v, kv[..., E:])):
            if held.dtype == np.float16:  # the core's F16C rounding (numpy's own cast is a scalar loop: 10x longer)
                _core.to_float16(split_heads(part, H), held[:, :, :Lk])
            else:
                held[:, :, :Lk] = split_heads(part, H)
        cache.length = Lk
        return cache

    def __call__(
        self,
        query: np.ndarray,
        key: Optional[np.ndarray] = None,
        *,
        memory_kv: Optional[HeadKVCache] = None,
        cache: Optional[KVCache] = None,
        attn_mask=None,
        key_padding_mask=None,
        is_causal: bool = False,
        need_weights: bool = False,
    ):
        """Self-attention when `key` is None (or is `query`); cross-attention against `key` (= value, an
        encoder output) or against precomputed `memory_kv`.

        query (B, Lq, E). With `cache`, the new keys/values are appended and attention runs over all cached
        positions; `is_causal` then lets query i (absolute position past + i) see keys <= past + i. Masks as
        in `functional.multi_head_attention`, with key_padding_mask covering every key attended (cached ones
        included). Returns (output (B, Lq, E), weights (B, H, Lq, Lk) or None).
        """
        B, Lq, E = query.shape
        H = self.num_heads
        offset = 0
        precision = "float32"
        rows = memory_kv.k.shape[0] if memory_kv is not None else B
        if (
            rows < B
            and B % rows == 0
            and attn_mask is None
            and (key_padding_mask is None or np.shape(key_padding_mask)[0] == rows)
            and not need_weights
        ):
            # Groups of B / rows consecutive rows (beams) against one source row each: fold each group into the
            # query length of its source row, so the cross K/V are read once instead of being copied per row. Keys
            # are never causal here and padding is per source row, so this is exactly equivalent.
            out, _ = self(
                query.reshape(rows, (B // rows) * Lq, E), memory_kv=memory_kv, key_padding_mask=key_padding_mask
            )
            return out.reshape(B, Lq, E), None
        if memory_kv is not None:
            q = self._projection("q")(query)
            k, v = memory_kv.heads(H)
        elif key is None or key is query:
            projection = self._projection("qkv")
            qkv = projection(query)  # (B, Lq, 3E): one GEMM for Q, K and V
            q = qkv[..., :E]
            if cache is None and not is_causal:  # an encoder's self-attention: as the fused layer runs it
                precision = attention_precision(projection.storage)
            if cache is not None:
                offset = cache.length
                cache.append(qkv[..., E : 2 * E], qkv[..., 2 * E :])
                k, v = cache.heads(H)
            else:
                k, v = split_heads(qkv[..., E : 2 * E], H), split_heads(qkv[..., 2 * E :], H)
        else:
            q = self._projection("q")(query)
            kv = self._projection("kv")(key)
            k, v = split_heads(kv[..., :E], H), split_heads(kv[..., E:], H)
        Lk = k.shape[2]
        m = F._attn_mask_4d(F._mask(attn_mask, "attn_mask"), B, H, Lq, Lk, "batch_heads")
        kp = F._key_padding(F._mask(key_padding_mask, "key_padding_mask"), B, Lk)
        concat = np.empty((B, Lq, H, E // H), np.float32)  # heads written in place, already concatenated
        res = _core.scaled_dot_product_attention(
            split_heads(q, H),
            k,
            v,
            attn_mask=m,
            key_padding_mask=kp,
            is_causal=bool(is_causal),
            causal_offset=offset,
            scale=self.scale,
            return_weights=bool(need_weights),
            out=concat.transpose(0, 2, 1, 3),
            precision=precision,
        )
        out = self.out_proj(concat.reshape(B, Lq, E))
        return out, (res[1] if need_weights else None)
