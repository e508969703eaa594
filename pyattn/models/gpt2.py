"""GPT-2 (decoder-only, pre-LN, causal) on pretrained weights: Hugging Face `GPT2LMHeadModel` names."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import functional as F
from ..functional import positions_from_mask
from ..generation import generate as _generate
from ..generation.protocol import state_arguments
from ..nn import CacheState, Embedding, FeedForward, KVCache, LayerNorm, Linear, Module, MultiHeadAttention
from ..nn.transformer import check_widths
from .pretrained import (
    Weights,
    flag,
    load_folder,
    number,
    option,
    require,
    strip_prefix,
)

_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu", "silu": "silu"}


class GPT2Block(Module):
    """x + Attn(LN1(x)) -> x + MLP(LN2(x)): pre-LN with causal self-attention."""

    def __init__(self, attn: MultiHeadAttention, mlp: FeedForward, ln_1: LayerNorm, ln_2: LayerNorm):
        self.attn, self.mlp, self.ln_1, self.ln_2 = attn, mlp, ln_1, ln_2

    def __call__(self, x, *, cache: Optional[KVCache], key_padding_mask=None, need_weights=False):
        a, w = self.attn(
            self.ln_1(x), cache=cache, key_padding_mask=key_padding_mask, is_causal=True, need_weights=need_weights
        )
        x = x + a
        return x + self.mlp(self.ln_2(x)), w


GPT2State = CacheState  # the per-layer KV caches (pyattn.nn.CacheState)
__all__ = ["GPT2Block", "GPT2Model", "GPT2State", "positions_from_mask"]  # positions_from_mask: pyattn.functional's


class GPT2Model(Module):
    is_encoder_decoder = False

    def __init__(self, config: dict, tensors, source: str = "gpt2"):
        c = config
        self.config = dict(c)
        H, d, n_layers = (require(c, k, source) for k in ("n_head", "n_embd", "n_layer"))
        eps = number(c, "layer_norm_epsilon", 1e-5, source)
        act = option(c, "activation_function", "gelu_new", _ACT, source)
        if d % H:
            raise ValueError(f"{source}: n_head ({H}) must divide n_embd ({d})")
        if flag(c, "scale_attn_by_inverse_layer_idx", False, source) or flag(
            c, "reorder_and_upcast_attn", False, source
        ):
            raise ValueError(f"{source}: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
        w = Weights(strip_prefix(tensors, "transformer."), source)
        self.wte = Embedding(w.get("wte.weight"), "wte")
        self.wpe = Embedding(w.get("wpe.weight"), "wpe")
        for name, emb in (("wte", self.wte), ("wpe", self.wpe)):
            if emb.weight.shape[0] == 0 or emb.weight.shape[1] != d:
                raise ValueError(
                    f"{source}: {name}.weight has shape {emb.weight.shape}, expected (n >= 1, n_embd = {d})"
                )
        self.blocks = []
        for i in range(n_layers):
            p = f"h.{i}."
            # Conv1D weights are stored (in, out): transpose to torch.nn.Linear's (out, in).
            ca = w.get(p + "attn.c_attn.weight").T
            cb = w.get(p + "attn.c_attn.bias")
            if ca.shape != (3 * d, d):
                raise ValueError(f"{source}: {p}attn.c_attn.weight has shape {ca.shape[::-1]}, expected {(d, 3 * d)}")
            attn = MultiHeadAttention(
                H,
                ca[:d],
                ca[d : 2 * d],
                ca[2 * d :],
                w.get(p + "attn.c_proj.weight").T,
                cb[:d],
                cb[d : 2 * d],
                cb[2 * d :],
                w.get(p + "attn.c_proj.bias"),
                name=p + "attn",
            )
            mlp = FeedForward(
                w.get(p + "mlp.c_fc.weight").T,
                w.get(p + "mlp.c_fc.bias"),
                w.get(p + "mlp.c_proj.weight").T,
                w.get(p + "mlp.c_proj.bias"),
                _ACT[act],
                p + "mlp",
            )
            for buf in ("attn.bias", "attn.masked_bias"):  # causal-mask buffers of old checkpoints
                w.get(p + buf, optional=True, buffer=True)
            norms = (
                LayerNorm(w.get(p + "ln_1.weight"), w.get(p + "ln_1.bias"), eps, p + "ln_1"),
                LayerNorm(w.get(p + "ln_2.weight"), w.get(p + "ln_2.bias"), eps, p + "ln_2"),
            )
            check_widths(d, mlp, norms, f"{source}: h.{i}")
            self.blocks.append(GPT2Block(attn, mlp, *norms))
        self.ln_f = LayerNorm(w.get("ln_f.weight"), w.get("ln_f.bias"), eps, "ln_f")
        # usually tied to wte; GPT2LMHeadModel keeps it beside the "transformer." prefix
        head = (
            w.get("lm_head.weight", optional=True)
            if "lm_head.weight" in w
            else Weights(tensors, source).get("lm_head.weight", optional=True)
        )
        self.lm_head = Linear(self.wte.weight if head is None else head, None, "lm_head")
        if self.ln_f.weight.shape != (d,) or self.lm_head.shape != self.wte.weight.shape:
            raise ValueError(
                f"{source}: ln_f.weight {self.ln_f.weight.shape} and lm_head.weight {self.lm_head.shape} "
                f"must take n_embd = {d} features, lm_head predicting the {self.wte.weight.shape[0]} "
                "tokens of wte (generated tokens are embedded next)"
            )
        w.check_all_used()

    @classmethod
    def from_pretrained(cls, path, dtype: Optional[str] = None) -> GPT2Model:
        """dtype: the weight type of the matrices (pyattn.precision; None: float32, the references' own)."""
        return load_folder(cls, path, dtype)

    @property
    def vocab_size(self) -> int:
        return self.lm_head.out_features

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """See `pyattn.generate`: greedy, beam search or sampling with the KV cache."""
        return _generate(self, input_ids, attention_mask, **kwargs)

    def init_state(self, batch: int, memory=None, memory_mask=None) -> GPT2State:
        """Empty KV caches for `batch` rows (the decoder protocol; a decoder-only model takes no memory)."""
        batch, _, _ = state_arguments(batch, memory, memory_mask)
        return GPT2State([KVCache(batch, self.wte.weight.shape[1]) for _ in self.blocks])

    def step(self, ids, positions, state: GPT2State, attention_mask=None) -> np.ndarray:
        """The decoder protocol (pyattn.generation.protocol): logits (B, vocab) of the last of `ids` (B, L)."""
        return self(ids, attention_mask, positions, state=state, last_only=True)["logits"][:, -1]

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        *,
        state: Optional[GPT2State] = None,
        output_attentions: bool = False,
        output_hidden: bool = False,
        last_only: bool = False,
    ):
        """input_ids (B, L) -- only the new tokens when `state` (the KV cache) is given. attention_mask
        (B, past + L), 1 = token, 0 = padding (left padding for batches of different lengths). position_ids
        (B, L) default to past .. past + L - 1, as transformers' forward; generation counts real tokens only
        (see `positions_from_mask`). Returns a dict: logits (B, L, vocab), last_hidden_state / attentions on
        request; with last_only, the final norm and lm_head run on the last position alone (logits (B, 1, vocab))."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"expected input_ids of shape (batch, seq), got {ids.shape}")
        B, L = ids.shape
        past = state.length if state is not None else 0
        pad, positions = F.decoder_inputs((B, L), past, attention_mask, position_ids)
        if positions.max() >= self.wpe.weight.shape[0]:
            raise ValueError(f"position {positions.max()} is beyond the {self.wpe.weight.shape[0]} this model knows")
        x = self.wte(ids) + self.wpe(positions)  # (B, L, d)
        attentions = []
        for i, block in enumerate(self.blocks):
            x, w = block(
                x,
                cache=None if state is None else state.caches[i],
                key_padding_mask=pad,
                need_weights=output_attentions,
            )
            attentions.append(w)
        if last_only:
            x = x[:, -1:]
        h = self.ln_f(x)
        out = {"logits": self.lm_head(h)}
        if output_hidden:
            out["last_hidden_state"] = h
        if output_attentions:
            out["attentions"] = attentions
        return out
