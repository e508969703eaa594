"""Encoder-decoder translation / summarisation models on pretrained weights: BART and Marian
(Hugging Face `BartForConditionalGeneration` / `MarianMTModel` names). Both are post-LN; BART adds a
LayerNorm on the embeddings and learned positions offset by 2, Marian uses fixed sinusoidal positions."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .. import functional as F
from ..generation import generate as _generate
from ..generation.protocol import state_arguments
from ..nn import (
    DecoderState,
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    Module,
    MultiHeadAttention,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from .pretrained import (
    Weights,
    flag,
    load_folder,
    option,
    require,
    strip_prefix,
)

_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu", "swish": "silu", "silu": "silu"}
# Marian's positions are computed from the config when the checkpoint does not store them: a bound on the
# table (max_position_embeddings x d_model values, 64 MB of float32) so that a config cannot ask for terabytes.
MAX_COMPUTED_POSITIONS = 1 << 24


def marian_sinusoids(num_positions: int, dim: int) -> np.ndarray:
    """Marian's fixed positions: sin features in the first half, cos in the second (not interleaved)."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim, dtype=np.float64)[None, :]
    enc = pos / np.power(10000.0, 2 * (j // 2) / dim)
    half = dim // 2 + dim % 2
    out = np.zeros((num_positions, dim))
    out[:, :half] = np.sin(enc[:, 0::2])
    out[:, half:] = np.cos(enc[:, 1::2])
    return out.astype(np.float32)


class BartModel(Module):
    """BART or Marian (config model_type "bart" / "marian"): the two share this post-LN encoder-decoder and differ in
    their embeddings' norm, positions and scale. `Seq2SeqModel` is this class's earlier name."""

    is_encoder_decoder = True

    def __init__(self, config: dict, tensors, source: str):
        c = config
        self.config = dict(c)
        kind = c.get("model_type")
        if not isinstance(kind, str) or kind not in ("bart", "marian"):
            raise ValueError(f"{source}: model_type {kind!r} is not bart or marian")
        d = require(c, "d_model", source)
        H_enc, H_dec = require(c, "encoder_attention_heads", source), require(c, "decoder_attention_heads", source)
        n_enc, n_dec = require(c, "encoder_layers", source), require(c, "decoder_layers", source)
        act = option(c, "activation_function", "gelu", _ACT, source)
        if flag(c, "normalize_before", False, source):
            raise ValueError(f"{source}: pre-LN (normalize_before) checkpoints are not supported")
        self.kind = kind
        self.embed_scale = math.sqrt(d) if flag(c, "scale_embedding", False, source) else 1.0
        self.pos_offset = 2 if kind == "bart" else 0
        w = Weights(strip_prefix(tensors, "model."), source)
        self.shared = Embedding(w.get("shared.weight"), "shared")
        if self.shared.weight.shape[0] == 0 or self.shared.weight.shape[1] != d:
            raise ValueError(
                f"{source}: shared.weight has shape {self.shared.weight.shape}, expected (n >= 1, d_model = {d})"
            )
        for part in ("encoder", "decoder"):
            t = w.get(f"{part}.embed_tokens.weight", optional=True)  # tied to shared when present
            if t is not None and not np.array_equal(t, self.shared.weight):
                raise ValueError(f"{source}: untied {part}.embed_tokens is not supported")
        max_pos = require(c, "max_position_embeddings", source)
        self.enc_pos = self._positions(w, "encoder", max_pos, d)
        self.dec_pos = self._positions(w, "decoder", max_pos, d)
        self.enc_ln_emb = self._optional_norm(w, "encoder.layernorm_embedding.")
        self.dec_ln_emb = self._optional_norm(w, "decoder.layernorm_embedding.")
        for part in ("encoder", "decoder"):
            if f"{part}.layer_norm.weight" in w:  # mBART-style final norms
                raise ValueError(f"{source}: {part}.layer_norm (pre-LN variants) is not supported")

        def attn(p, H):
            return MultiHeadAttention(
                H,
                w.get(p + "q_proj.weight"),
                w.get(p + "k_proj.weight"),
                w.get(p + "v_proj.weight"),
                w.get(p + "out_proj.weight"),
                w.get(p + "q_proj.bias"),
                w.get(p + "k_proj.bias"),
                w.get(p + "v_proj.bias"),
                w.get(p + "out_proj.bias"),
                name=p.rstrip("."),
            )

        def ffn(p):
            return FeedForward(
                w.get(p + "fc1.weight"),
                w.get(p + "fc1.bias"),
                w.get(p + "fc2.weight"),
                w.get(p + "fc2.bias"),
                _ACT[act],
                p + "ffn",
            )

        def norm(p):
            return LayerNorm(w.get(p + "weight"), w.get(p + "bias"), 1e-5, p.rstrip("."))

        enc_layers = [
            TransformerEncoderLayer(
                attn(f"encoder.layers.{i}.self_attn.", H_enc),
                ffn(f"encoder.layers.{i}."),
                norm(f"encoder.layers.{i}.self_attn_layer_norm."),
                norm(f"encoder.layers.{i}.final_layer_norm."),
            )
            for i in range(n_enc)
        ]
        dec_layers = [
            TransformerDecoderLayer(
                attn(f"decoder.layers.{i}.self_attn.", H_dec),
                attn(f"decoder.layers.{i}.encoder_attn.", H_dec),
                ffn(f"decoder.layers.{i}."),
                norm(f"decoder.layers.{i}.self_attn_layer_norm."),
                norm(f"decoder.layers.{i}.encoder_attn_layer_norm."),
                norm(f"decoder.layers.{i}.final_layer_norm."),
            )
            for i in range(n_dec)
        ]
        self.encoder = TransformerEncoder(enc_layers)
        self.decoder = TransformerDecoder(dec_layers)
        top = Weights(tensors, source)  # the task model's own tensors, beside the prefixed base model

        def task(name):
            return w.get(name, optional=True) if name in w else top.get(name, optional=True)

        head, bias = task("lm_head.weight"), task("final_logits_bias")
        self.lm_head = Linear(
            self.shared.weight if head is None else head,
            None if bias is None else np.asarray(bias).reshape(-1),
            "lm_head",
        )
        if self.lm_head.shape != self.shared.weight.shape:  # generated tokens are embedded next
            raise ValueError(
                f"{source}: lm_head.weight has shape {self.lm_head.shape}, expected the shape of "
                f"shared.weight {self.shared.weight.shape}"
            )
        w.check_all_used()

    def _positions(self, w: Weights, part: str, max_pos: int, d: int) -> np.ndarray:
        name = f"{part}.embed_positions.weight"
        t = w.get(name, optional=True)
        if t is not None:
            if t.ndim != 2 or t.shape[0] <= self.pos_offset or t.shape[1] != d:
                raise ValueError(
                    f"{w.source}: tensor '{w.name(name)}' has shape {t.shape}, expected "
                    f"(n > {self.pos_offset}, d_model = {d})"
                )
            return F._c_aligned(t, np.float32)
        if self.kind == "marian":
            if max_pos * d > MAX_COMPUTED_POSITIONS:
                raise ValueError(
                    f"{w.source}: max_position_embeddings {max_pos} x d_model {d} is too large a "
                    f"sinusoid table to compute (at most {MAX_COMPUTED_POSITIONS} values)"
                )
            return marian_sinusoids(max_pos, d)
        raise KeyError(f"{w.source}: missing tensor '{w.name(name)}'")

    @staticmethod
    def _optional_norm(w: Weights, p: str) -> Optional[LayerNorm]:
        if p + "weight" not in w:
            return None
        return LayerNorm(w.get(p + "weight"), w.get(p + "bias"), 1e-5, p.rstrip("."))

    @classmethod
    def from_pretrained(cls, path, dtype: Optional[str] = None) -> BartModel:
        """dtype: the weight type of the matrices (pyattn.precision; None: float32, the references' own)."""
        return load_folder(cls, path, dtype)

    def _embed(self, ids: np.ndarray, start: int, table: np.ndarray, ln: Optional[LayerNorm]) -> np.ndarray:
        L = ids.shape[1]
        if start + L + self.pos_offset > table.shape[0]:
            raise ValueError(
                f"position {start + L - 1} is beyond the {table.shape[0] - self.pos_offset} this model knows"
            )
        x = (
            self.shared(ids) * np.float32(self.embed_scale)
            + table[start + self.pos_offset : start + L + self.pos_offset]
        )
        return x if ln is None else ln(x)

    def encode(self, input_ids, attention_mask=None, *, output_attentions=False):
        """Encoder output (B, S, d) for source ids (B, S); attention_mask 1 = token, 0 = padding."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"expected input_ids of shape (batch, seq), got {ids.shape}")
        pad = None if attention_mask is None else np.asarray(attention_mask) == 0
        if pad is not None and pad.shape != ids.shape:
            raise ValueError(f"expected attention_mask of shape {ids.shape}, got {pad.shape}")
        x = self._embed(ids, 0, self.enc_pos, self.enc_ln_emb)
        return self.encoder(
            x, src_key_padding_mask=pad if pad is not None and pad.any() else None, output_attentions=output_attentions
        )

    def decode(self, decoder_input_ids, memory=None, memory_mask=None, *, state: Optional[DecoderState] = None):
        """Logits (B, T, vocab) for decoder ids: a full pass against `memory`, or the next positions with
        `state` (from `init_state`: projected encoder K/V and the self-attention KV cache)."""
        ids = np.asarray(decoder_input_ids)
        start = state.length if state is not None else 0
        x = self._embed(ids, start, self.dec_pos, self.dec_ln_emb)
        if state is not None:
            h = self.decoder(x, state=state)
        else:
            pad = None if memory_mask is None else np.asarray(memory_mask) == 0
            h = self.decoder(x, memory, memory_key_padding_mask=pad if pad is not None and pad.any() else None)
        return self.lm_head(h)

    def init_state(self, batch=None, memory=None, memory_mask=None) -> DecoderState:
        """The decoder's state for the encoder output `memory` (B, S, d): each layer's cross K/V projected once,
        empty self-attention caches (the decoder protocol; `init_state(memory, memory_mask)` works too).
        memory_mask (B, S): 1 = token, 0 = padding."""
        batch, memory, memory_mask = state_arguments(batch, memory, memory_mask)
        if memory is None:
            raise ValueError("init_state: an encoder-decoder model needs the encoder output (memory)")
        pad = None if memory_mask is None else np.asarray(memory_mask) == 0
        return self.decoder.init_state(memory, pad if pad is not None and pad.any() else None)

    def step(self, ids, positions, state: DecoderState, attention_mask=None) -> np.ndarray:
        """The decoder protocol: logits (B, vocab) of the last of the decoder ids (B, L) (positions follow the
        state; the decoder's prompt has no padding)."""
        x = self._embed(np.asarray(ids), state.length, self.dec_pos, self.dec_ln_emb)
        return self.lm_head(self.decoder(x, state=state, last_only=True))[:, -1]

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None):
        """Teacher-forced pass: logits (B, T, vocab) of decoder_input_ids given the source."""
        if decoder_input_ids is None:
            raise ValueError(
                "decoder_input_ids is required (the target shifted right, starting with decoder_start_token_id)"
            )
        return {"logits": self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)}

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """See `pyattn.generate`: the encoder runs once, then greedy, beam search or sampling on the decoder."""
        return _generate(self, input_ids, attention_mask, **kwargs)


Seq2SeqModel = BartModel  # the earlier name, kept
