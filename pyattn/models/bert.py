"""BERT (encoder-only, post-LN) on pretrained weights: Hugging Face `BertModel` names and semantics."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..nn import (
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    Module,
    MultiHeadAttention,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from ..nn.transformer import packed_lengths
from .pretrained import (
    Weights,
    load_folder,
    number,
    option,
    require,
    strip_prefix,
)

_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu"}


class BertModel(Module):
    """Embeddings (word + position + token type, LayerNorm) -> N post-LN encoder layers [-> pooler]."""

    def __init__(self, config: dict, tensors, source: str = "bert"):
        c = config
        self.config = dict(c)
        H = require(c, "num_attention_heads", source)
        d = require(c, "hidden_size", source)
        n_layers = require(c, "num_hidden_layers", source)
        eps = number(c, "layer_norm_eps", 1e-12, source)
        act = option(c, "hidden_act", "gelu", _ACT, source)
        option(c, "position_embedding_type", "absolute", ("absolute",), source)
        if d % H:
            raise ValueError(f"{source}: num_attention_heads ({H}) must divide hidden_size ({d})")
        w = Weights(strip_prefix(tensors, "bert."), source)
        p = "embeddings."
        self.word_embeddings = Embedding(w.get(p + "word_embeddings.weight"), "word_embeddings")
        self.position_embeddings = Embedding(w.get(p + "position_embeddings.weight"), "position_embeddings")
        tt = w.get(p + "token_type_embeddings.weight", optional=True)
        self.token_type_embeddings = None if tt is None else Embedding(tt, "token_type_embeddings")
        self.embeddings_norm = LayerNorm(
            w.get(p + "LayerNorm.weight"), w.get(p + "LayerNorm.bias"), eps, p + "LayerNorm"
        )
        w.get(p + "position_ids", optional=True, buffer=True)  # a buffer some checkpoints carry: arange, not a weight
        for emb, t in (
            (self.word_embeddings, "word"),
            (self.position_embeddings, "position"),
            (self.token_type_embeddings, "token_type"),
        ):
            if emb is not None and (emb.weight.shape[0] == 0 or emb.weight.shape[1] != d):
                raise ValueError(
                    f"{source}: {p}{t}_embeddings.weight has shape {emb.weight.shape}, expected "
                    f"(n >= 1, hidden_size = {d})"
                )
        if self.embeddings_norm.weight.shape != (d,):
            raise ValueError(
                f"{source}: {p}LayerNorm.weight has shape {self.embeddings_norm.weight.shape}, expected {(d,)}"
            )
        layers = []
        for i in range(n_layers):
            q = f"encoder.layer.{i}."
            a = q + "attention."
            attn = MultiHeadAttention(
                H,
                w.get(a + "self.query.weight"),
                w.get(a + "self.key.weight"),
                w.get(a + "self.value.weight"),
                w.get(a + "output.dense.weight"),
                w.get(a + "self.query.bias"),
                w.get(a + "self.key.bias"),
                w.get(a + "self.value.bias"),
                w.get(a + "output.dense.bias"),
                name=a.rstrip("."),
            )
            # Q/K/V read the LayerNorm'd hidden state, whose few outlier channels int8 blocks of 32 resolve too
            # coarsely (all-MiniLM-L6-v2 min cosine: 0.9989 with them in int8; 0.99944 in float16, 0.99946 in
            # float32; docs/precision.md): float16 unless int8 is asked of the whole model, which first measures
            # those channels and scales them down (set_weight_storage, _smooth_qkv).
            attn.int8_fallback = "float16"
            ffn = FeedForward(
                w.get(q + "intermediate.dense.weight"),
                w.get(q + "intermediate.dense.bias"),
                w.get(q + "output.dense.weight"),
                w.get(q + "output.dense.bias"),
                _ACT[act],
                q + "ffn",
            )
            layers.append(
                TransformerEncoderLayer(
                    attn,
                    ffn,
                    LayerNorm(
                        w.get(a + "output.LayerNorm.weight"),
                        w.get(a + "output.LayerNorm.bias"),
                        eps,
                        a + "output.LayerNorm",
                    ),
                    LayerNorm(
                        w.get(q + "output.LayerNorm.weight"),
                        w.get(q + "output.LayerNorm.bias"),
                        eps,
                        q + "output.LayerNorm",
                    ),
                )
            )
        self.encoder = TransformerEncoder(layers)
        pw = w.get("pooler.dense.weight", optional=True)
        self.pooler = None if pw is None else Linear(pw, w.get("pooler.dense.bias"), "pooler.dense")
        if self.pooler is not None and self.pooler.shape != (d, d):
            raise ValueError(f"{source}: pooler.dense.weight has shape {self.pooler.shape}, expected {(d, d)}")
        w.check_all_used()

    # Calibration of the Q/K/V inputs for int8 (_smooth_qkv): random token ids, a fixed draw, and SmoothQuant's
    # migration strength. Measured on all-MiniLM-L6-v2 (tests/test_precision_models.py's sentences, min cosine of
    # the embeddings against float32, every other projection int8): Q/K/V in float16 0.99961; in int8 unscaled
    # 0.99894; scaled with alpha 0.6 / 0.7 / 0.8 calibrated on random ids (8 x 32 with seeds 0 and 1, 16 x 64 with
    # seed 0) 0.99923-0.99940 / 0.99931-0.99941 / 0.99925-0.99935; with alpha 0.7 calibrated on 8 English sentences
    # 0.99939. Scales from the preceding LayerNorm's weights alone did not help (0.99872-0.99885).
    _CALIBRATION = (16, 64, 0)  # sequences, tokens, seed
    _ALPHA = 0.7

    def set_weight_storage(self, storage: str) -> BertModel:
        """As Module's; int8 first calibrates the Q/K/V projections' input scales (_smooth_qkv) so that they run in
        int8 too instead of their float16 fallback."""
        if storage == "int8":
            self._smooth_qkv()
        return super().set_weight_storage(storage)

    def _smooth_qkv(self) -> None:
        """Per layer, the largest |x| of each input feature of the Q/K/V projection over a forward pass of random ids
        (the layer's input: BERT is post-LN), and SmoothQuant's scales s = max|x|^alpha / max|W|^(1 - alpha) over
        the feature (normalized to median 1): the projection quantizes x / s and W s (Linear.input_scale = 1 / s).
        The outlier features are a property of the weights, not of the text: random ids find them."""
        n, L, seed = self._CALIBRATION
        vocab, max_pos = self.word_embeddings.weight.shape[0], self.position_embeddings.weight.shape[0]
        ids = np.random.default_rng(seed).integers(min(1000, vocab - 1), vocab, (n, min(L, max_pos)))
        x = self._embed(ids, None)
        for layer in self.encoder.layers:
            attn = layer.self_attn
            amax = np.abs(x).max(axis=(0, 1)).astype(np.float64)
            w = np.abs(attn._projection("qkv").weight).max(axis=0).astype(np.float64)
            # a feature never seen, or a zero weight column: no scale to derive, and the float16 fallback stays
            if np.all(amax > 0) and np.all(w > 0) and np.all(np.isfinite(amax)):
                s = amax**self._ALPHA / w ** (1 - self._ALPHA)
                attn.int8_input_scale = (np.median(s) / s).astype(np.float32)
                attn.int8_fallback = None
            x, _ = layer(x)

    @classmethod
    def from_pretrained(cls, path, dtype: Optional[str] = None) -> BertModel:
        """dtype: the weight type of the matrices (pyattn.precision; None: float32, the references' own)."""
        return load_folder(cls, path, dtype, "bert")

    def _embed(self, ids: np.ndarray, token_type_ids) -> np.ndarray:
        """(B, L, d): word + position + token type embeddings, then LayerNorm."""
        x = self.word_embeddings(ids) + self.position_embeddings.weight[: ids.shape[1]]
        if self.token_type_embeddings is not None:
            tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
            x = x + self.token_type_embeddings(tt)
        return self.embeddings_norm(x)

    def packed(self, input_ids, offsets, token_type_ids=None) -> np.ndarray:
        """The last hidden state (T, d) of sequences packed without padding: input_ids (T,) holds sequence b's
        tokens at [offsets[b], offsets[b + 1]) (offsets (B + 1,) from 0 to T, non-decreasing), token_type_ids
        likewise (default 0). Each sequence is computed as alone, positions counted from its start; a batch of
        mixed lengths costs its real tokens, not B times the longest."""
        ids = np.asarray(input_ids)
        offsets = np.asarray(offsets, np.int64)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"expected input_ids of shape (tokens,) of integers, got {ids.dtype} {ids.shape}")
        lengths = packed_lengths(offsets, ids.size, "tokens")
        max_pos = self.position_embeddings.weight.shape[0]
        if lengths.size and lengths.max() > max_pos:
            raise ValueError(
                f"a sequence of {lengths.max()} tokens is longer than the {max_pos} positions this model knows"
            )
        positions = np.arange(ids.size) - np.repeat(offsets[:-1], lengths)
        x = self.word_embeddings(ids) + self.position_embeddings.weight[positions]
        if self.token_type_embeddings is not None:
            tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
            if tt.shape != ids.shape:
                raise ValueError(f"expected token_type_ids of shape {ids.shape}, got {tt.shape}")
            x = x + self.token_type_embeddings(tt)
        return self.encoder.packed(self.embeddings_norm(x), offsets)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, output_attentions: bool = False):
        """input_ids (B, L) ints; attention_mask (B, L) 1 = token, 0 = padding. Returns a dict with
        last_hidden_state (B, L, d), pooler_output (B, d) if the checkpoint has a pooler, attentions."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"expected input_ids of shape (batch, seq), got {ids.shape}")
        B, L = ids.shape
        max_pos = self.position_embeddings.weight.shape[0]
        if L > max_pos:
            raise ValueError(f"sequence of {L} tokens is longer than the {max_pos} positions this model knows")
        x = self._embed(ids, token_type_ids)
        pad = None
        if attention_mask is not None:
            am = np.asarray(attention_mask)
            if am.shape != (B, L):
                raise ValueError(f"expected attention_mask of shape {(B, L)}, got {am.shape}")
            pad = am == 0  # True = padding, masked out
            if not pad.any():
                pad = None
        out = self.encoder(x, src_key_padding_mask=pad, output_attentions=output_attentions)
        hidden, attentions = out if output_attentions else (out, None)
        result = {"last_hidden_state": hidden}
        if self.pooler is not None:
            result["pooler_output"] = np.tanh(self.pooler(hidden[:, 0]))
        if output_attentions:
            result["attentions"] = attentions
        return result
