"""Text generation with the KV cache: greedy, sampling (temperature, top-k, top-p) and beam search, for
decoder-only models (GPT-2). Semantics follow transformers' `generate`: finished rows are filled with the
pad token, generation stops when every row has finished or after max_new_tokens."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from . import functional as F


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    return F.log_softmax(logits)


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


def generate(model, input_ids, attention_mask=None, *, max_new_tokens: int = 20, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: Optional[int] = None,
             num_beams: int = 1, length_penalty: float = 1.0, early_stopping=False,
             eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
             callback: Optional[Callable[[int, np.ndarray], None]] = None) -> np.ndarray:
    """Continues `input_ids` (B, L) -- left-padded with `attention_mask` (B, L) when rows differ in length.

    Returns (B, L + n) token ids, n <= max_new_tokens. `callback(step, tokens)` is called with each step's new
    tokens (B,) for streaming (greedy and sampling). Greedy and beam search give transformers' ids for the
    same weights and settings; sampling uses numpy's generator seeded with `seed`.
    """
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
    if eos_token_id is not None and pad_token_id is None:
        pad_token_id = eos_token_id
    if num_beams > 1:
        if do_sample:
            raise ValueError("beam sampling is not supported: use num_beams=1 with do_sample, or do_sample=False")
        from .beam_search import beam_search

        return beam_search(model, ids, mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                           length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=eos_token_id,
                           pad_token_id=pad_token_id)
    from .models.gpt2 import positions_from_mask

    rng = np.random.default_rng(seed) if do_sample else None
    state = model.init_state(B)
    out = [ids]
    if max_new_tokens == 0:
        return ids
    logits = model(ids, mask, positions_from_mask(mask), state=state)["logits"][:, -1]
    finished = np.zeros(B, bool)
    for step in range(max_new_tokens):
        if do_sample:
            probs = F.softmax(_sample_filter(logits, temperature, top_k, top_p)).astype(np.float64)
            probs /= probs.sum(-1, keepdims=True)
            u = rng.random((B, 1))
            nxt = np.minimum((np.cumsum(probs, -1) < u).sum(-1), probs.shape[-1] - 1)
        else:
            nxt = logits.argmax(-1)
        if eos_token_id is not None:
            nxt = np.where(finished, pad_token_id, nxt)
            finished |= nxt == eos_token_id
        out.append(nxt[:, None])
        if callback is not None:
            callback(step, nxt.copy())
        if finished.all() or step == max_new_tokens - 1:
            break
        mask = np.concatenate([mask, np.ones((B, 1), np.int64)], 1)
        pos = positions_from_mask(mask)[:, -1:]
        logits = model(nxt[:, None], mask, pos, state=state)["logits"][:, -1]
    return np.concatenate(out, 1)
