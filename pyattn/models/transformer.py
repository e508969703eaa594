"""The model of "Attention Is All You Need" as a whole: embeddings and sinusoidal positions, the encoder-decoder
Transformer of `pyattn.nn`, the output projection, and greedy decoding through `pyattn.generation` (it implements the
decoder protocol). Loaded from a folder written by `pyattn.io.export_torch` (`pyattn.io.load`)."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..generation import search
from ..generation.protocol import state_arguments
from ..nn.layers import Embedding, Linear, Module, SinusoidalPositionalEncoding
from ..nn.transformer import DecoderState, Transformer

__all__ = ["Seq2SeqTransformer"]


class Seq2SeqTransformer(Module):
    """The model of "Attention Is All You Need": source and target embeddings (scaled by sqrt(d_model)) plus
    sinusoidal positions, the encoder-decoder Transformer, and a final linear layer + softmax over the target
    vocabulary; greedy decoding with the decoder's KV cache.

    Exported from torch with `export_torch(transformer, path, src_embedding=..., tgt_embedding=...,
    generator=...)` (nn.Transformer, nn.Embedding, nn.Embedding, nn.Linear)."""

    def __init__(self, transformer: Transformer, src_embedding, tgt_embedding, generator, scale_embeddings=True):
        self.transformer = transformer
        self.src_embedding = Embedding(src_embedding, "src_embedding")
        self.tgt_embedding = Embedding(tgt_embedding, "tgt_embedding")
        d = self.src_embedding.weight.shape[1]
        self.positions = SinusoidalPositionalEncoding(d)
        self.generator = Linear(*generator, name="generator")
        self.scale = np.float32(np.sqrt(d)) if scale_embeddings else np.float32(1.0)
        widths = {layer.self_attn.d_model for layer in transformer.encoder.layers + transformer.decoder.layers}
        if self.generator.in_features != d or self.tgt_embedding.weight.shape[1] != d or widths - {d}:
            raise ValueError(
                f"embeddings {self.src_embedding.weight.shape} / {self.tgt_embedding.weight.shape} and "
                f"generator {self.generator.shape} must share d_model with the transformer {sorted(widths)}"
            )

    def embed_src(self, ids, start=0):
        ids = np.asarray(ids)
        return self.src_embedding(ids) * self.scale + self.positions(np.arange(start, start + ids.shape[1]))

    def embed_tgt(self, ids, start=0):
        ids = np.asarray(ids)
        return self.tgt_embedding(ids) * self.scale + self.positions(np.arange(start, start + ids.shape[1]))

    def encode(self, src_ids, src_key_padding_mask=None):
        return self.transformer.encoder(self.embed_src(src_ids), src_key_padding_mask=src_key_padding_mask)

    def __call__(self, src_ids, tgt_ids, *, src_key_padding_mask=None, tgt_key_padding_mask=None):
        """Log-probabilities (B, T, vocab) of the next target token at every position (teacher forcing)."""
        memory = self.encode(src_ids, src_key_padding_mask)
        h = self.transformer.decoder(
            self.embed_tgt(tgt_ids),
            memory,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=src_key_padding_mask,
            tgt_is_causal=True,
        )
        return F.log_softmax(self.generator(h))

    def init_state(self, batch=None, memory=None, memory_mask=None) -> DecoderState:
        """The decoder protocol (pyattn.generation.protocol): cross K/V of the encoder output `memory` (B, S, d)
        projected once per layer, empty self-attention caches. memory_mask (B, S): 1 = token, 0 = padding."""
        batch, memory, memory_mask = state_arguments(batch, memory, memory_mask)
        if memory is None:
            raise ValueError("init_state: the decoder needs the encoder output (memory)")
        pad = None if memory_mask is None else np.asarray(memory_mask) == 0
        return self.transformer.decoder.init_state(memory, pad if pad is not None and pad.any() else None)

    def step(self, ids, positions, state: DecoderState, attention_mask=None) -> np.ndarray:
        """The decoder protocol: logits (B, vocab) of the last of the target ids (B, L) (positions follow the
        state). The generator's softmax is left out: it does not change the argmax."""
        h = self.transformer.decoder(self.embed_tgt(ids, state.length), state=state, last_only=True)
        return self.generator(h[:, -1])

    def greedy_decode(self, src_ids, bos_id: int, max_len: int, eos_id=None, src_key_padding_mask=None):
        """Greedy decoding, shifted right: starts from `bos_id`, feeds each argmax back, one token per step
        through the KV cache (pyattn.generation). Returns (B, 1 + n) ids; rows that produced `eos_id` are padded
        with it."""
        src_ids = np.asarray(src_ids)
        B = src_ids.shape[0]
        memory = self.encode(src_ids, src_key_padding_mask)
        keep = None if src_key_padding_mask is None else (np.asarray(src_key_padding_mask) == 0).astype(np.int64)
        ys = np.full((B, 1), bos_id, np.int64)
        eos = [] if eos_id is None else [int(eos_id)]
        steps = search.stream(
            self, ys, max_new_tokens=max_len, memory=memory, memory_mask=keep, eos_token_ids=eos, pad_token_id=eos_id
        )
        return np.concatenate([ys] + [t[:, None] for t in steps], 1)
