"""Encoder and decoder layers and stacks (post-LN as in the paper, pre-LN as most modern models)."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from .. import _core
from .. import functional as F
from .attention import HeadKVCache, KVCache, MultiHeadAttention
from .layers import LayerNorm, Module, as_linear

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")


class FeedForward(Module):
    """FFN(x) = act(x W1^T + b1) W2^T + b2; the activation runs fused into the first GEMM. w1 and w2 may be Linears
    already built (int8 from a file, say), their biases inside them (b1, b2 None)."""

    def __init__(self, w1, b1, w2, b2, activation: str = "relu", name: str = "ffn"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"{name}: unknown activation {activation!r}, expected one of {ACTIVATIONS}")
        self.linear1 = as_linear(w1, b1, f"{name}.linear1")
        self.linear2 = as_linear(w2, b2, f"{name}.linear2")
        if self.linear2.in_features != self.linear1.out_features:
            raise ValueError(
                f"{name}: linear2.weight {self.linear2.shape} does not take linear1's "
                f"{self.linear1.out_features} outputs (linear1.weight {self.linear1.shape})"
            )
        self.activation = activation

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.linear2(self.linear1(x, self.activation))


def check_widths(d_model: int, ffn: FeedForward, norms, name: str) -> None:
    """Every sub-layer of a layer must read and write d_model features."""
    if ffn.linear1.in_features != d_model or ffn.linear2.out_features != d_model:
        raise ValueError(
            f"{name}: feed-forward weights linear1 {ffn.linear1.shape} / linear2 "
            f"{ffn.linear2.shape} do not match d_model {d_model}"
        )
    for i, n in enumerate(norms, 1):
        if n.weight.shape != (d_model,):
            raise ValueError(f"{name}: norm{i}.weight has shape {n.weight.shape}, expected ({d_model},)")


def check_attention_inputs(attn: MultiHeadAttention, query_width: int, key_width: Optional[int], name: str) -> None:
    """Q reads `query_width` features, K and V `key_width` (None: any width, the same for both)."""
    kdim, vdim = attn.kdim, attn.vdim
    if attn.d_model != query_width or kdim != vdim or (key_width is not None and kdim != key_width):
        want = f"{key_width}" if key_width is not None else "one width"
        raise ValueError(
            f"{name}: the attention reads {attn.d_model} query, {kdim} key and {vdim} value features, "
            f"not {query_width} query features and {want} for keys and values"
        )


def check_stack(layers, norm: Optional[LayerNorm], name: str) -> None:
    """The layers of a stack, and its final norm, share one d_model."""
    widths = {layer.self_attn.d_model for layer in layers}
    if len(widths) > 1:
        raise ValueError(f"{name}: layers of different widths {sorted(widths)}")
    if norm is not None and widths and norm.weight.shape != (widths.pop(),):
        raise ValueError(
            f"{name}: norm.weight has shape {norm.weight.shape}, the layers are {layers[0].self_attn.d_model} wide"
        )


def core_layer(owner: Module, lins, norms, build):
    """owner's C++ layer (build() makes it) over the packed matrices of `lins` and the arrays of `norms`, kept on
    owner and rebuilt when one of them was replaced (a weight repacked by set_storage, say)."""
    key = tuple(id(lin._packed) for lin in lins) + tuple(id(a) for n in norms for a in (n.weight, n.bias))
    cached = getattr(owner, "_fused_layer", None)
    if cached is None or cached[0] != key:
        owner._fused_layer = cached = (key, build())
    return cached[1]


class TransformerEncoderLayer(Module):
    """x -> x + SelfAttn(x) -> x + FFN(x), each sub-layer wrapped in a residual connection and LayerNorm:
    after it (norm_first=False, the paper) or before it (norm_first=True).

    Without attention weights, an attn_mask or is_causal, the whole layer runs in one C++ call
    (`_core.EncoderLayer`); `fused = False` (on the class or one layer) runs it op by op instead."""

    fused = True

    def __init__(
        self,
        self_attn: MultiHeadAttention,
        ffn: FeedForward,
        norm1: LayerNorm,
        norm2: LayerNorm,
        norm_first: bool = False,
    ):
        check_widths(self_attn.d_model, ffn, (norm1, norm2), "encoder layer")
        check_attention_inputs(self_attn, self_attn.d_model, self_attn.d_model, "encoder layer: self-attention")
        self.self_attn, self.ffn, self.norm1, self.norm2 = self_attn, ffn, norm1, norm2
        self.norm_first = bool(norm_first)

    def __call__(self, x, *, src_mask=None, src_key_padding_mask=None, is_causal=False, need_weights=False):
        # x: (batch, seq, d_model)
        pad = src_key_padding_mask
        if (
            self.fused
            and src_mask is None
            and not is_causal
            and not need_weights
            and (pad is None or isinstance(pad, np.ndarray) and pad.dtype == np.bool_)
            and isinstance(x, np.ndarray)
            and x.ndim == 3
        ):
            # the whole layer in one C++ call (cpp/layers/encoder_layer.h): the same steps, no Python between them
            return self._fused()(F._c_aligned(x, np.float32), None if pad is None else F._c_aligned(pad)), None
        if self.norm_first:
            a, w = self.self_attn(
                self.norm1(x),
                attn_mask=src_mask,
                key_padding_mask=src_key_padding_mask,
                is_causal=is_causal,
                need_weights=need_weights,
            )
            x = x + a
            x = x + self.ffn(self.norm2(x))
        else:
            a, w = self.self_attn(
                x,
                attn_mask=src_mask,
                key_padding_mask=src_key_padding_mask,
                is_causal=is_causal,
                need_weights=need_weights,
            )
            x = self.norm1(a, residual=x)
            x = self.norm2(self.ffn(x), residual=x)
        return x, w

    def packed(self, x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """x (T, E): sequences packed one after another without padding, sequence b the rows [offsets[b],
        offsets[b + 1]), each attending to itself only; returns (T, E). A batch of mixed lengths then costs its real
        tokens. One C++ call when fused; otherwise op by op on the padded batch, masked."""
        offsets = np.ascontiguousarray(offsets, np.int64)
        if self.fused and isinstance(x, np.ndarray):
            return self._fused().packed(F._c_aligned(x, np.float32), offsets)
        padded, pad = pad_packed(x, offsets)
        y, _ = self(padded, src_key_padding_mask=pad)
        return np.ascontiguousarray(y[~pad])

    def _fused(self) -> _core.EncoderLayer:
        """The C++ layer over this layer's packed weights, rebuilt when a weight was repacked (set_storage)."""
        lins = (self.self_attn._projection("qkv"), self.self_attn.out_proj, self.ffn.linear1, self.ffn.linear2)
        norms = (self.norm1, self.norm2)
        return core_layer(
            self,
            lins,
            norms,
            lambda: _core.EncoderLayer(
                *(lin._packed for lin in lins),
                *(a for n in norms for a in (n.weight, n.bias, n.eps)),
                self.self_attn.num_heads,
                self.ffn.activation,
                self.norm_first,
                self.self_attn.scale,
            ),
        )


class TransformerDecoderLayer(Module):
    """Masked self-attention, encoder-decoder attention (Q from the decoder, K and V from the encoder
    output), feed-forward; residual + LayerNorm around each (post- or pre-LN).

    A decoding step (a KV cache and projected memory K/V given) without attention weights or a tgt_mask runs in one
    C++ call (`_core.CrossDecoderLayer`), the same bits as op by op; `fused = False` (on the class or one layer) runs
    it op by op instead."""

    fused = True

    def __init__(
        self,
        self_attn: MultiHeadAttention,
        cross_attn: MultiHeadAttention,
        ffn: FeedForward,
        norm1: LayerNorm,
        norm2: LayerNorm,
        norm3: LayerNorm,
        norm_first: bool = False,
    ):
        check_widths(self_attn.d_model, ffn, (norm1, norm2, norm3), "decoder layer")
        if cross_attn.d_model != self_attn.d_model:
            raise ValueError(f"decoder layer: cross-attention d_model {cross_attn.d_model} != {self_attn.d_model}")
        check_attention_inputs(self_attn, self_attn.d_model, self_attn.d_model, "decoder layer: self-attention")
        check_attention_inputs(cross_attn, self_attn.d_model, None, "decoder layer: cross-attention")
        self.self_attn, self.cross_attn, self.ffn = self_attn, cross_attn, ffn
        self.norm1, self.norm2, self.norm3 = norm1, norm2, norm3
        self.norm_first = bool(norm_first)

    def __call__(
        self,
        x,
        memory=None,
        *,
        memory_kv: Optional[HeadKVCache] = None,
        cache: Optional[KVCache] = None,
        tgt_mask=None,
        tgt_key_padding_mask=None,
        tgt_is_causal=True,
        memory_key_padding_mask=None,
        need_weights=False,
    ):
        # x: (batch, tgt_len, d_model); memory: (batch, src_len, d_model) or its projected memory_kv
        if self._takes_fused_step(
            x, memory_kv, cache, tgt_mask, tgt_key_padding_mask, memory_key_padding_mask, need_weights
        ):
            # the whole step in one C++ call (cpp/layers/cross_decoder_layer.h): the same steps, no Python between
            past, steps = cache.length, x.shape[1]
            cache.reserve(past + steps)
            y = self._fused().step(
                F._c_aligned(x, np.float32),
                cache.k,
                cache.v,
                past,
                memory_kv.k,
                memory_kv.v,
                memory_kv.length,
                None if tgt_key_padding_mask is None else np.ascontiguousarray(tgt_key_padding_mask),
                None if memory_key_padding_mask is None else np.ascontiguousarray(memory_key_padding_mask),
                bool(tgt_is_causal),
            )
            cache.length = past + steps
            return y, (None, None)

        def sa(h):
            return self.self_attn(
                h,
                cache=cache,
                attn_mask=tgt_mask,
                key_padding_mask=tgt_key_padding_mask,
                is_causal=tgt_is_causal,
                need_weights=need_weights,
            )

        def ca(h):
            if memory_kv is not None:
                return self.cross_attn(
                    h, memory_kv=memory_kv, key_padding_mask=memory_key_padding_mask, need_weights=need_weights
                )
            return self.cross_attn(h, memory, key_padding_mask=memory_key_padding_mask, need_weights=need_weights)

        if self.norm_first:
            a, w_self = sa(self.norm1(x))
            x = x + a
            c, w_cross = ca(self.norm2(x))
            x = x + c
            x = x + self.ffn(self.norm3(x))
        else:
            a, w_self = sa(x)
            x = self.norm1(a, residual=x)
            c, w_cross = ca(x)
            x = self.norm2(c, residual=x)
            x = self.norm3(self.ffn(x), residual=x)
        return x, (w_self, w_cross)

    def _takes_fused_step(self, x, memory_kv, cache, tgt_mask, tgt_padding, memory_padding, need_weights=False) -> bool:
        """Whether a call can run as one C++ step: a float32 KV cache and projected memory K/V whose rows divide
        the batch, bool padding masks (or none), no tgt_mask, no weights asked."""
        if not (self.fused and type(cache) is KVCache and isinstance(memory_kv, HeadKVCache) and tgt_mask is None):
            return False
        if not (isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[1] and not need_weights):
            return False
        rows = memory_kv.k.shape[0]
        if x.shape[0] % rows or not memory_kv.k.flags.c_contiguous or not memory_kv.v.flags.c_contiguous:
            return False

        def bool_mask(m, shape) -> bool:
            return m is None or isinstance(m, np.ndarray) and m.dtype == np.bool_ and m.shape == shape

        return bool_mask(tgt_padding, (x.shape[0], cache.length + x.shape[1])) and bool_mask(
            memory_padding, (rows, memory_kv.length)
        )

    def _step_linears(self) -> tuple:
        """The Linears of the C++ step, in its order: Q/K/V, self-attention's out, cross-attention's Q and out, the
        FFN's two."""
        return (
            self.self_attn._projection("qkv"),
            self.self_attn.out_proj,
            self.cross_attn._projection("q"),
            self.cross_attn.out_proj,
            self.ffn.linear1,
            self.ffn.linear2,
        )

    def _fused(self) -> _core.CrossDecoderLayer:
        """The C++ layer over this layer's packed weights, rebuilt when a weight was repacked (set_storage)."""
        lins, norms = self._step_linears(), (self.norm1, self.norm2, self.norm3)
        return core_layer(
            self,
            lins,
            norms,
            lambda: _core.CrossDecoderLayer(
                *(lin._packed for lin in lins),
                *(a for n in norms for a in (n.weight, n.bias, n.eps)),
                self.self_attn.num_heads,
                self.ffn.activation,
                self.norm_first,
                self.self_attn.scale,
                self.cross_attn.scale,
            ),
        )


def packed_lengths(offsets: np.ndarray, rows: int, what: str = "rows") -> np.ndarray:
    """The sequence lengths of packed offsets (B + 1,) over `rows` rows: ValueError unless they run from 0 to `rows`
    without decreasing."""
    offsets = np.asarray(offsets)
    lengths = np.diff(offsets) if offsets.ndim == 1 else None
    if lengths is None or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != rows or (lengths < 0).any():
        raise ValueError(f"offsets must run from 0 to the {rows} {what} without decreasing, got {offsets}")
    return lengths


def pad_packed(x: np.ndarray, offsets: np.ndarray):
    """Packed rows x (T, ...) of len(offsets) - 1 sequences -> (padded (B, Lmax, ...), padding mask (B, Lmax) bool,
    True = padding); `padded[~mask]` gives x back."""
    x = np.asarray(x)
    lengths = packed_lengths(offsets, len(x))
    pad = np.arange(lengths.max(initial=0))[None, :] >= lengths[:, None]
    padded = np.zeros(pad.shape + x.shape[1:], x.dtype)
    padded[~pad] = x
    return padded, pad


class TransformerEncoder(Module):
    def __init__(self, layers: List[TransformerEncoderLayer], norm: Optional[LayerNorm] = None):
        self.layers, self.norm = list(layers), norm
        check_stack(self.layers, norm, "encoder")

    def packed(self, x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The stack over sequences packed without padding (TransformerEncoderLayer.packed): x (T, E) -> (T, E)."""
        for layer in self.layers:
            x = layer.packed(x, offsets)
        return x if self.norm is None else self.norm(x)

    def __call__(self, x, *, mask=None, src_key_padding_mask=None, is_causal=False, output_attentions=False):
        attentions = []
        for layer in self.layers:
            x, w = layer(
                x,
                src_mask=mask,
                src_key_padding_mask=src_key_padding_mask,
                is_causal=is_causal,
                need_weights=output_attentions,
            )
            attentions.append(w)
        if self.norm is not None:
            x = self.norm(x)
        return (x, attentions) if output_attentions else x


class DecoderState:
    """Per-layer self-attention caches and projected encoder K/V for incremental decoding.

    The decoder's rows may outnumber the memory's: after `reorder` expands each row to k beams (rows repeated in
    groups, np.repeat(np.arange(B), k)), decoder rows g*i .. g*i + g - 1 all read memory row i, and the encoder
    K/V (and padding mask) stay B rows -- never copied per beam; the cross-attention folds a group's queries
    into one row (MultiHeadAttention). A reorder that keeps the groups (beam search's: beams stay within their
    input row) moves only the self-attention caches; any other copies the memory rows it needs."""

    def __init__(self, self_caches: List[KVCache], memory_kv: List[HeadKVCache], memory_key_padding_mask=None):
        self.self_caches, self.memory_kv = self_caches, memory_kv
        self.memory_key_padding_mask = memory_key_padding_mask
        self.group = 1  # decoder rows per memory row

    @property
    def length(self) -> int:
        return self.self_caches[0].length if self.self_caches else 0

    def reorder(self, index: np.ndarray) -> None:
        """Row i becomes row index[i] (any length, rows repeated or dropped: the decoder protocol's reorder)."""
        index = np.asarray(index, np.int64).reshape(-1)
        for c in self.self_caches:
            c.reorder(index)
        if not self.memory_kv:
            return
        rows, n = self.memory_kv[0].k.shape[0], index.size
        source = index // self.group  # the memory row each new decoder row reads
        if n % rows == 0 and np.array_equal(source, np.arange(n) // (n // rows)):
            self.group = n // rows
            return
        for c in self.memory_kv:
            c.reorder(source)
        if self.memory_key_padding_mask is not None:
            self.memory_key_padding_mask = self.memory_key_padding_mask[source]
        self.group = 1


class TransformerDecoder(Module):
    def __init__(self, layers: List[TransformerDecoderLayer], norm: Optional[LayerNorm] = None):
        self.layers, self.norm = list(layers), norm
        check_stack(self.layers, norm, "decoder")
        if len({layer.cross_attn.kdim for layer in self.layers}) > 1:
            raise ValueError("decoder: the layers' cross-attentions read memories of different widths")

    def init_state(self, memory: np.ndarray, memory_key_padding_mask=None, memory_kv_dtype="float32") -> DecoderState:
        """Projects the encoder output once per layer (K/V held as memory_kv_dtype, float32 or float16); each
        decoding step then costs O(current length)."""
        B = memory.shape[0]
        d = self.layers[0].self_attn.d_model
        return DecoderState(
            [KVCache(B, d) for _ in self.layers],
            [layer.cross_attn.project_kv(memory, memory_kv_dtype) for layer in self.layers],
            memory_key_padding_mask,
        )

    def __call__(
        self,
        x,
        memory=None,
        *,
        state: Optional[DecoderState] = None,
        tgt_mask=None,
        tgt_key_padding_mask=None,
        tgt_is_causal=True,
        memory_key_padding_mask=None,
        output_attentions=False,
        last_only: bool = False,
    ):
        """Full pass (memory given) or one incremental step (state given: x holds only the new positions). With
        last_only the final norm runs on (and the result holds) the last position alone: (B, 1, d)."""
        attentions = []
        for i, layer in enumerate(self.layers):
            if state is not None:
                x, w = layer(
                    x,
                    memory_kv=state.memory_kv[i],
                    cache=state.self_caches[i],
                    tgt_mask=tgt_mask,
                    tgt_key_padding_mask=tgt_key_padding_mask,
                    tgt_is_causal=tgt_is_causal,
                    memory_key_padding_mask=state.memory_key_padding_mask,
                    need_weights=output_attentions,
                )
            else:
                x, w = layer(
                    x,
                    memory,
                    tgt_mask=tgt_mask,
                    tgt_key_padding_mask=tgt_key_padding_mask,
                    tgt_is_causal=tgt_is_causal,
                    memory_key_padding_mask=memory_key_padding_mask,
                    need_weights=output_attentions,
                )
            attentions.append(w)
        if last_only:
            x = x[:, -1:]
        if self.norm is not None:
            x = self.norm(x)
        return (x, attentions) if output_attentions else x


class Transformer(Module):
    """pyattn's torch.nn.Transformer: encoder + decoder stacks (batch_first)."""

    def __init__(self, encoder: TransformerEncoder, decoder: TransformerDecoder):
        if (
            encoder.layers
            and decoder.layers
            and decoder.layers[0].cross_attn.kdim != encoder.layers[0].self_attn.d_model
        ):
            raise ValueError(
                f"transformer: the decoder's cross-attention reads {decoder.layers[0].cross_attn.kdim} "
                f"features, the encoder gives {encoder.layers[0].self_attn.d_model}"
            )
        self.encoder, self.decoder = encoder, decoder

    def __call__(
        self,
        src,
        tgt,
        *,
        src_mask=None,
        tgt_mask=None,
        memory_mask=None,
        src_key_padding_mask=None,
        tgt_key_padding_mask=None,
        memory_key_padding_mask=None,
        tgt_is_causal=False,
    ):
        if memory_mask is not None:
            raise ValueError("memory_mask is not supported; use memory_key_padding_mask")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask)
        return self.decoder(
            tgt,
            memory,
            tgt_mask=tgt_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            tgt_is_causal=tgt_is_causal,
            memory_key_padding_mask=memory_key_padding_mask,
        )
