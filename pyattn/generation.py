"""Text generation with the KV cache: greedy, sampling (temperature, top-k, top-p) and beam search, for
decoder-only models (GPT-2) and encoder-decoder models (BART, Marian: the source is encoded once, its K/V
projected once per layer). Semantics follow transformers' `generate`: finished rows are filled with the
pad token, generation stops when every row has finished or after max_new_tokens, forced BOS / EOS tokens
come from the model config unless given."""

from __future__ import annotations

from typing import Callable, List, Optional, Union

import numpy as np

from . import functional as F


def _sample_filter(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Temperature, then top-k, then top-p (nucleus) filtering: removed entries become -inf."""
    if temperature != 1.0:
        logits = logits / np.float32(temperature)
    V = logits.shape[-1]
    if top_k and 0 < top_k < V:
        kth = np.partition(logits, V - top_k, axis=-1)[:, V - top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    if top_p < 1.0:
        order = np.argsort(-logits, axis=-1, kind="stable")
        sorted_logits = np.take_along_axis(logits, order, -1)
        probs = F.softmax(sorted_logits)
        cum = np.cumsum(probs, axis=-1)
        remove = cum - probs > top_p  # keep the smallest prefix whose mass reaches top_p (at least one token)
        remove[:, 0] = False
        sorted_logits = np.where(remove, -np.inf, sorted_logits)
        logits = np.empty_like(sorted_logits)
        np.put_along_axis(logits, order, sorted_logits, -1)
    return logits


class DecoderView:
    """What greedy and beam search step through: `init_state(n)` and `view(ids, mask, positions, state=...)`
    returning {"logits"}. For an encoder-decoder model it holds the encoder output (rows repeated per beam)."""

    def __init__(self, model, memory=None, memory_mask=None):
        self.model, self.memory, self.memory_mask = model, memory, memory_mask

    def init_state(self, n: int):
        if self.memory is None:
            return self.model.init_state(n)
        k = n // self.memory.shape[0]
        mask = None if self.memory_mask is None else np.repeat(self.memory_mask, k, 0)
        return self.model.init_state(np.repeat(self.memory, k, 0), mask)

    def __call__(self, ids, mask, positions, *, state):
        if self.memory is None:
            return self.model(ids, mask, positions, state=state)
        return {"logits": self.model.decode(ids, state=state)}


def force_tokens(scores: np.ndarray, cur_len: int, max_length: int, forced_bos, forced_eos, fill: float) -> np.ndarray:
    """transformers' ForcedBOS / ForcedEOS processors: at the first generated position (sequence length 1)
    only `forced_bos` is allowed, at the last one (length max_length - 1) only `forced_eos`."""
    token = forced_bos if cur_len == 1 else forced_eos if cur_len == max_length - 1 else None
    if token is None:
        return scores
    out = np.full_like(scores, -np.inf)
    out[:, token] = fill
    return out


def _check(max_new_tokens, temperature, top_k, top_p, num_beams):
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")


def _vocab_size(model) -> Optional[int]:
    vocab = getattr(model, "vocab_size", None)
    if vocab is None and hasattr(model, "lm_head"):
        vocab = model.lm_head.out_features
    return vocab


def _token_id(value, name: str, from_config: bool, vocab: Optional[int]) -> Optional[int]:
    """None, or a token id in [0, vocab): the ids generation reads from the config are checked like arguments."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < 0
        or (vocab is not None and value >= vocab)
    ):
        where = " (from the model's config.json)" if from_config else ""
        raise ValueError(
            f"{name}{where} must be a token id in [0, {vocab if vocab is not None else 'vocab'}), got {value!r}"
        )
    return int(value)


def _eos_ids(value, from_config: bool, vocab: Optional[int]) -> Optional[List[int]]:
    """None, or the end-of-sequence ids: one id or a list of them (Llama 3's config lists several)."""
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not values:
        where = " (from the model's config.json)" if from_config else ""
        raise ValueError(f"eos_token_id{where} must be a token id or a non-empty list of them, got {value!r}")
    return [_token_id(v, "eos_token_id", from_config, vocab) for v in values]


def generate(
    model,
    input_ids,
    attention_mask=None,
    *,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: Optional[int] = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping=False,
    eos_token_id: Union[None, int, List[int]] = None,
    pad_token_id: Optional[int] = None,
    decoder_start_token_id: Optional[int] = None,
    forced_bos_token_id: Optional[int] = None,
    forced_eos_token_id: Optional[int] = None,
    callback: Optional[Callable[[int, np.ndarray], None]] = None,
) -> np.ndarray:
    """Continues `input_ids` (B, L) -- left-padded with `attention_mask` (B, L) when rows differ in length.

    Returns (B, L + n) token ids, n <= max_new_tokens -- for an encoder-decoder model, the decoder's ids
    (B, 1 + n) starting with decoder_start_token_id. `callback(step, tokens)` is called with each step's new
    tokens (B,) for streaming (greedy and sampling). Greedy and beam search give transformers' ids for the
    same weights and settings; sampling uses numpy's generator seeded with `seed`. Token ids left as None
    come from the model's config (eos_token_id, pad_token_id, decoder_start_token_id, forced_*).
    """
    cfg = getattr(model, "config", {}) or {}
    vocab = _vocab_size(model)

    def token(name, value):
        return _token_id(cfg.get(name) if value is None else value, name, value is None, vocab)

    eos = _eos_ids(cfg.get("eos_token_id") if eos_token_id is None else eos_token_id, eos_token_id is None, vocab)
    pad_token_id = token("pad_token_id", pad_token_id)
    forced_bos_token_id = token("forced_bos_token_id", forced_bos_token_id)
    forced_eos_token_id = token("forced_eos_token_id", forced_eos_token_id)
    _check(max_new_tokens, temperature, top_k, top_p, num_beams)
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.size == 0:
        raise ValueError(f"expected non-empty integer input_ids of shape (batch, seq), got {ids.shape} {ids.dtype}")
    ids = ids.astype(np.int64)
    B, L = ids.shape
    mask = np.ones((B, L), np.int64) if attention_mask is None else np.asarray(attention_mask).astype(np.int64)
    if mask.shape != (B, L):
        raise ValueError(f"expected attention_mask of shape {(B, L)}, got {mask.shape}")
    if (mask.sum(1) == 0).any():
        raise ValueError("a row of attention_mask has no real token")
    if eos is not None and pad_token_id is None:
        pad_token_id = eos[0]
    view = DecoderView(model)
    if getattr(model, "is_encoder_decoder", False):
        start = token("decoder_start_token_id", decoder_start_token_id)
        if start is None:
            raise ValueError("decoder_start_token_id is not set (neither given nor in the model config)")
        view = DecoderView(model, model.encode(ids, mask), mask)
        ids = np.full((B, 1), start, np.int64)
        mask = np.ones((B, 1), np.int64)
        B, L = ids.shape
    forced = dict(forced_bos=forced_bos_token_id, forced_eos=forced_eos_token_id)
    if num_beams > 1:
        if do_sample:
            raise ValueError("beam sampling is not supported: use num_beams=1 with do_sample, or do_sample=False")
        from .beam_search import beam_search

        return beam_search(
            view,
            ids,
            mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            eos_token_id=eos,
            pad_token_id=pad_token_id,
            **forced,
        )
    from .models.gpt2 import positions_from_mask

    rng = np.random.default_rng(seed) if do_sample else None
    state = view.init_state(B)
    out = [ids]
    if max_new_tokens == 0:
        return ids
    logits = view(ids, mask, positions_from_mask(mask), state=state)["logits"][:, -1]
    finished = np.zeros(B, bool)
    max_length = L + max_new_tokens
    for step in range(max_new_tokens):
        logits = force_tokens(logits, L + step, max_length, fill=0.0, **forced)
        if do_sample:
            probs = F.softmax(_sample_filter(logits, temperature, top_k, top_p)).astype(np.float64)
            probs /= probs.sum(-1, keepdims=True)
            u = rng.random((B, 1))
            nxt = np.minimum((np.cumsum(probs, -1) < u).sum(-1), probs.shape[-1] - 1)
        else:
            nxt = logits.argmax(-1)
        if eos is not None:
            nxt = np.where(finished, pad_token_id, nxt)
            finished |= np.isin(nxt, eos)
        out.append(nxt[:, None])
        if callback is not None:
            callback(step, nxt.copy())
        if finished.all() or step == max_new_tokens - 1:
            break
        mask = np.concatenate([mask, np.ones((B, 1), np.int64)], 1)
        pos = positions_from_mask(mask)[:, -1:]
        logits = view(nxt[:, None], mask, pos, state=state)["logits"][:, -1]
    return np.concatenate(out, 1)
