"""Greedy decoding and sampling over the decoder protocol, as a stream of steps.

`stream` runs the prompt once (the prefill: logits of its last position only), then one token per row per step
through the model's state, applying the logits processors and the stopping rules, and yields each step's tokens.
Finished rows (an end token, a stop criterion) are filled with `pad_token_id` from the next step on, as
transformers' generate does; with `drop_finished` they also leave the state, so later steps compute only the rows
still running (Whisper's decoding does so).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from .. import functional as F
from .processors import apply
from .protocol import positions_from_mask


def sample(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row drawn from softmax(scores) by inverting the cumulative distribution (float64)."""
    probs = F.softmax(scores).astype(np.float64)
    probs /= probs.sum(-1, keepdims=True)
    u = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, -1) < u).sum(-1), probs.shape[-1] - 1)


def prompt_positions(ids: np.ndarray, attention_mask: Optional[np.ndarray]) -> np.ndarray:
    """Positions of a prompt: 0 .. L - 1, or counting real tokens only when the rows are left-padded."""
    if attention_mask is None:
        return np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)
    return positions_from_mask(attention_mask)


def stream(
    decoder,
    input_ids: np.ndarray,
    attention_mask: Optional[np.ndarray] = None,
    *,
    max_new_tokens: int,
    memory=None,
    memory_mask: Optional[np.ndarray] = None,
    processors: Sequence[Callable] = (),
    stopping: Sequence[Callable] = (),
    eos_token_ids: Iterable[int] = (),
    pad_token_id: Optional[int] = None,
    do_sample: bool = False,
    seed: Optional[int] = None,
    drop_finished: bool = False,
    callback: Optional[Callable[[int, np.ndarray], None]] = None,
) -> Iterator[np.ndarray]:
    """Yields the tokens (B,) of each step, up to max_new_tokens steps or until every row has finished.

    decoder: a `pyattn.generation.Decoder`; input_ids (B, L) int64, attention_mask (B, L) 1 = token, 0 = padding
    (None: no padding); memory / memory_mask: the encoder output for an encoder-decoder model. Each step's scores
    are the processors' output; the token is their argmax, or a draw from their softmax with do_sample (numpy's
    generator seeded with `seed`). A row ends when it produces one of eos_token_ids or a stopping criterion says so
    (`criterion(ids (n, T)) -> (n,) bool`, asked with the rows' sequences including the new token); its later
    tokens are pad_token_id. `callback(step, tokens)` sees each step's tokens before they are yielded."""
    ids = np.asarray(input_ids, np.int64)
    B, L = ids.shape
    eos = np.asarray(sorted(set(int(t) for t in eos_token_ids)), np.int64)
    if (eos.size or stopping) and pad_token_id is None:
        raise ValueError("a pad_token_id is needed to fill the rows that finish before the others")
    mask = None if attention_mask is None else np.asarray(attention_mask, np.int64)
    positions = prompt_positions(ids, mask)
    if mask is not None and mask.all():
        mask = None  # no padding: the model needs no mask
    if max_new_tokens <= 0:
        return
    rng = np.random.default_rng(seed) if do_sample else None
    state = decoder.init_state(B, memory, memory_mask)
    logits = decoder.step(ids, positions, state, attention_mask=mask)  # (B, V): the prompt's last position
    seqs = np.empty((B, L + max_new_tokens), np.int64)
    seqs[:, :L] = ids
    rows = np.arange(B)  # the rows the state holds, in its order
    next_pos = positions[:, -1].astype(np.int64) + 1
    finished = np.zeros(B, bool)
    for step in range(max_new_tokens):
        cur = L + step
        if processors:
            view = seqs[:, :cur] if rows.size == B else seqs[rows, :cur]
            scores = apply(processors, view, logits)
        else:
            scores = logits
        nxt = sample(scores, rng) if do_sample else scores.argmax(-1)
        nxt = nxt.astype(np.int64)
        tokens = np.full(B, -1 if pad_token_id is None else pad_token_id, np.int64)
        tokens[rows] = np.where(finished[rows], tokens[rows], nxt)
        seqs[:, cur] = tokens
        open_rows = rows[~finished[rows]]
        done = np.isin(tokens[open_rows], eos) if eos.size else np.zeros(open_rows.size, bool)
        for criterion in stopping:
            done |= np.asarray(criterion(seqs[open_rows, : cur + 1]), bool)
        finished[open_rows] = done
        if callback is not None:
            callback(step, tokens.copy())
        yield tokens
        if finished.all() or step == max_new_tokens - 1:
            return
        feed = tokens[rows]
        if drop_finished and finished[rows].any():
            keep = np.flatnonzero(~finished[rows])
            state.reorder(keep)
            rows, feed = rows[keep], feed[keep]
            if mask is not None:
                mask = mask[keep]
        if mask is not None:
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], 1)
        logits = decoder.step(feed[:, None], next_pos[rows, None], state, attention_mask=mask)
        next_pos += 1
