"""The one interface every decoding model offers to generation.

A model that generates text implements `Decoder`; greedy decoding, sampling and beam search
(`pyattn.generation`) are written once against it and know nothing else about the model:

    state = model.init_state(batch, memory=None, memory_mask=None)
        A fresh decoding state for `batch` rows: the per-layer KV caches (empty), and for an encoder-decoder
        model whatever it derives from the encoder output once (the cross-attention K/V of every layer).
        `memory` is what the model's own `encode` returned, passed through untouched (an array (B, S, d) for a
        Transformer, (outputs, hidden) for a recurrent model); `memory_mask` (B, S), 1 = token, 0 = padding.
        Encoder-decoder models may also be called `init_state(memory)` (batch = memory's rows).

    logits = model.step(ids, positions, state, attention_mask=None)
        Feeds `ids` (B, L) int64 at `positions` (B, L) -- the whole prompt at the first call (the prefill), one
        token per row after that -- appends them to `state`, and returns the float32 logits (B, vocab) of the
        LAST position only: a model computes its final norm and output projection for that position alone.
        `attention_mask` (B, past + L), 1 = token, 0 = padding, covers every position the state holds; None
        means no padding. A model without positions of its own (a recurrent one) ignores `positions`.

    state.reorder(index)
        Row i of the state becomes row index[i] of the old one. `index` is an int array of any length with
        rows repeated or dropped: beam search expands a state of B rows to B * beams rows with
        np.repeat(np.arange(B), beams) after the prefill (so the prompt runs once per input row, not once per
        beam), then keeps the surviving beams each step; greedy decoding may drop finished rows.

Optional, for continuous batching (`pyattn.generation.continuous`: requests join and leave a running batch), a
decoder-only model's state may also offer (`MergeableState`):

    state.merge(other)
        Appends the rows of `other` -- a state of the same model, with its own prefill done -- after this state's
        rows. Their lengths may differ: the shorter state is left-padded to the longer one's length, and the caller
        prepends as many 0 columns to those rows of its attention mask. Positions are the caller's, per row, so a
        row's positions (and rotary or learned position embeddings) do not change.

    state.trim_left(n)
        Drops the first `n` positions of every row: columns that the attention mask marks as padding in every row
        (after the longest row has left), so that the state does not grow without bound.

Without them, continuous batching runs one request at a time.

Generation never imports a model: it sees these three methods, the model's `config` (token ids), `vocab_size`,
`is_encoder_decoder` and, for an encoder-decoder model in `pyattn.generate`, `encode(input_ids, attention_mask)`.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from .._checks import is_int
from ..functional import positions_from_mask

__all__ = ["Decoder", "DecoderState", "MergeableState", "positions_from_mask", "state_arguments"]


@runtime_checkable
class DecoderState(Protocol):
    """What a decoder carries between steps (KV caches, recurrent state). Generation only reorders it."""

    def reorder(self, index: np.ndarray) -> None: ...


@runtime_checkable
class MergeableState(Protocol):
    """A state whose rows can join (`merge`) and whose all-padding columns can go (`trim_left`): continuous batching
    (see the module's docstring)."""

    def reorder(self, index: np.ndarray) -> None: ...

    def merge(self, other: Any) -> None: ...

    def trim_left(self, n: int) -> None: ...


@runtime_checkable
class Decoder(Protocol):
    """A model generation can step through (see the module's docstring for the contract)."""

    def init_state(self, batch: int, memory: Any = None, memory_mask: Optional[np.ndarray] = None) -> DecoderState: ...

    def step(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        state: DecoderState,
        attention_mask: Optional[np.ndarray] = None,
    ) -> np.ndarray: ...


def state_arguments(batch, memory, memory_mask) -> Tuple[Optional[int], Any, Optional[np.ndarray]]:
    """For a model's `init_state(batch=None, memory=None, memory_mask=None)`: accepts the older encoder-decoder
    form `init_state(memory[, memory_mask])` (an array where the batch size goes) and checks the batch against
    the memory's rows. Returns (batch, memory, memory_mask)."""
    if batch is not None and not isinstance(batch, (int, np.integer)):
        if memory is not None and memory_mask is None:  # init_state(memory, memory_mask)
            memory_mask = memory
        batch, memory = None, batch
    if memory is not None and isinstance(memory, np.ndarray):
        rows = memory.shape[0]
        if batch is not None and int(batch) != rows:
            raise ValueError(f"init_state: batch {batch} does not match the memory's {rows} rows {memory.shape}")
        batch = rows
    if batch is not None and (not is_int(batch) or batch < 1):
        raise ValueError(f"init_state: batch must be a positive integer, got {batch!r}")
    return (None if batch is None else int(batch)), memory, memory_mask
