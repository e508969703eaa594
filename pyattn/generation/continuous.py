"""Continuous batching: generation requests join a running batch between decoding steps and leave it when they end.

    batcher = ContinuousBatcher(model, max_batch_size=8)
    a = batcher.submit(prompt_ids, max_new_tokens=32)                                   # greedy
    b = batcher.submit(other_ids, max_new_tokens=8, do_sample=True, top_p=0.9, seed=1)  # sampled
    while batcher.busy:
        for request, token in batcher.step():   # token None: the request ended without one (an error)
            ...
    a.tokens, a.finish_reason                   # what generate_stream gives for that request alone

    c = batcher.submit(prompt_ids, logprobs=5)  # c.logprobs[i]: token i's log-probability and the 5 likeliest

One `step`:
1. rows whose request was cancelled leave the batch;
2. every row of the running batch decodes one token in ONE `model.step` call (ids (B, 1), each row at its own
   position, an attention mask marking the left padding of each row);
3. requests waiting join, up to `max_batch_size` rows in all: each prompt runs alone (its prefill), then its state
   is merged into the batch's (`state.merge`, protocol.MergeableState): the shorter side is left-padded and its mask
   columns are 0, while positions stay per row, so a row computes what it would alone. While rows are decoding,
   a step prefills at most `prefill_chunk` prompt tokens: a longer prompt is prefilled over several steps (chunked
   prefill), so that the running rows get a token every step instead of waiting for the whole prompt;
4. each row picks its token from its own row of the logits with its own logits processors, sampling generator
   (seeded per request) and stopping rules: the ids of `generate_stream` for that request alone;
5. rows that ended (an end token, a stop string, max_new_tokens) leave (`state.reorder`), and columns that are
   padding in every row left are dropped (`state.trim_left`), so a long request that has gone leaves no cost
   behind; a batch that empties starts afresh.

Requests take `generate`'s options (greedy or sampling; beam search is refused), checked by `submit`. A model whose
state cannot merge gets one request at a time (the others wait); encoder-decoder models are refused. `submit` and
`cancel` may be called from any thread while `step` runs on another; `step` runs on one thread at a time (the
model's). The caller drives the loop: `pyattn serve` runs it on the model's thread (pyattn.serve.workers).
"""

from __future__ import annotations

import collections
import threading
from typing import Deque, List, Optional, Tuple

import numpy as np

from .._checks import is_int
from .plan import Plan
from .processors import apply
from .protocol import MergeableState
from .search import sample

__all__ = ["ContinuousBatcher", "Request"]


class Request:
    """One generation in a `ContinuousBatcher`: its prompt and options, the tokens generated so far (the one that
    ended it included, as `generate` returns it) and how it ended: `finish_reason` "stop" (an end token or a stop
    string), "length" (max_new_tokens), "cancelled", or "error" (then `error` holds the exception); None while it
    runs or waits.

    With `top_logprobs` k (not None), `logprobs[i]` is (log p(tokens[i]), ids (k,), log-probabilities (k,)) under the
    model's distribution at that step -- the log-softmax of its logits, before temperature, penalties and filters
    (vLLM's default) -- the k likeliest tokens in decreasing order (ties: lower id first)."""

    def __init__(self, plan: Plan, top_logprobs: Optional[int] = None):
        self.plan = plan
        self.prompt = plan.ids[0]  # (L,) int64
        L = self.prompt.size
        self.max_new_tokens = plan.max_new_tokens
        self.ids = np.empty(L + self.max_new_tokens, np.int64)  # prompt + generated, what the processors see
        self.ids[:L] = self.prompt
        self.tokens: List[int] = []
        self.finish_reason: Optional[str] = None
        self.error: Optional[BaseException] = None
        self.cancelled = False
        self.rng = np.random.default_rng(plan.seed) if plan.do_sample else None
        self._eos = frozenset(plan.eos_ids)
        self.top_logprobs = top_logprobs
        self.logprobs: List[Tuple[float, np.ndarray, np.ndarray]] = []

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _finish(self, reason: str, error: Optional[BaseException] = None) -> None:
        self.finish_reason, self.error = reason, error

    def _choose(self, logits: np.ndarray) -> int:
        """The next token from this row's logits (1, V): the processors on the sequence so far, then argmax or a
        draw; records it and whether it ends the request."""
        n = self.prompt.size + len(self.tokens)
        plan = self.plan
        scores = apply(plan.processors, self.ids[None, :n], logits) if plan.processors else logits
        token = int(sample(scores, self.rng)[0] if plan.do_sample else scores[0].argmax())
        if self.top_logprobs is not None:
            self.logprobs.append(_logprobs(logits[0], token, self.top_logprobs))
        self.ids[n] = token
        self.tokens.append(token)
        if token in self._eos or any(bool(np.asarray(c(self.ids[None, : n + 1]))[0]) for c in plan.stopping):
            self._finish("stop")
        elif len(self.tokens) >= self.max_new_tokens:
            self._finish("length")
        return token


def _count(value, least: int) -> bool:
    """Whether `value` is an integer (a bool is not) of at least `least`."""
    return is_int(value) and value >= least


def _logprobs(logits: np.ndarray, token: int, k: int) -> Tuple[float, np.ndarray, np.ndarray]:
    """(log p(token), the k likeliest ids, their log-probabilities) of the log-softmax of one row of logits (V,),
    computed in float64."""
    x = logits.astype(np.float64)
    lp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
    k = min(k, lp.size)
    part = np.argpartition(-lp, k - 1)[:k] if k else np.zeros(0, np.int64)
    top = part[np.lexsort((part, -lp[part]))]
    return float(lp[token]), top.astype(np.int64), lp[top]


Event = Tuple[Request, Optional[int]]


class ContinuousBatcher:
    """Decodes many requests together, one token each per `step`, admitting new ones as rows free up (see the
    module's docstring). `max_batch_size`: rows decoded together at most; 1 serves one request at a time.
    `prefill_chunk`: prompt tokens prefilled per step while rows decode (None: whole prompts)."""

    def __init__(self, model, max_batch_size: int = 8, prefill_chunk: Optional[int] = 128):
        if getattr(model, "is_encoder_decoder", False):
            raise ValueError("continuous batching runs decoder-only models; this one is an encoder-decoder")
        if not _count(max_batch_size, 1):
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        if prefill_chunk is not None and not _count(prefill_chunk, 1):
            raise ValueError(f"prefill_chunk must be None or a positive integer, got {prefill_chunk!r}")
        self.model, self.max_batch_size = model, int(max_batch_size)
        self.prefill_chunk = None if prefill_chunk is None else int(prefill_chunk)
        # a prompt being prefilled over several steps: (request, its state, tokens done)
        self._partial: Optional[Tuple[Request, object, int]] = None
        self._lock = threading.Lock()
        self._waiting: Deque[Request] = collections.deque()
        self._mergeable: Optional[bool] = None  # known after the first prefill
        self._reset()
        self.last_rows = 0  # rows that produced a token in the last step

    def _reset(self) -> None:
        """An empty batch: no state, no rows."""
        self._rows: List[Request] = []  # the batch's requests, in the state's row order
        self._state = None
        self._mask: Optional[np.ndarray] = None  # (B, T) int64 over the state's T positions, 1 = token, 0 = padding
        self._feed = np.zeros(0, np.int64)  # (B,) each row's last token, fed at the next step
        self._positions = np.zeros(0, np.int64)  # (B,) each row's position for that token

    # ---- from any thread -------------------------------------------------------------------------------------
    def submit(self, input_ids, logprobs: Optional[int] = None, **options) -> Request:
        """Queues a request: `input_ids` a prompt (L,) of token ids, `options` as `generate` takes them (greedy or
        sampling; max_new_tokens, temperature, top_p, seed, repetition_penalty, stop_strings with detokenize...).
        `logprobs` k >= 0: record each token's log-probability and the k likeliest alternatives (Request.logprobs).
        ValueError for a bad prompt or option, before anything runs."""
        if logprobs is not None and not _count(logprobs, 0):
            raise ValueError(f"logprobs must be None or an integer >= 0, got {logprobs!r}")
        ids = np.asarray(input_ids)
        if ids.ndim != 1:
            raise ValueError(f"expected a prompt of shape (L,), got {ids.shape}")
        if options.get("num_beams", 1) != 1:
            raise ValueError("continuous batching decodes greedily or by sampling, not by beam search (num_beams=1)")
        if options.get("callback") is not None:
            raise ValueError("callback: the tokens of each step are what `step` returns")
        request = Request(Plan(self.model, ids[None], **options), None if logprobs is None else int(logprobs))
        with self._lock:
            self._waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """The request stops: a waiting one leaves the queue now, a running one leaves the batch at the next step."""
        request.cancelled = True
        with self._lock:
            if request in self._waiting:
                self._waiting.remove(request)
                request._finish("cancelled")

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def prefilling(self) -> Optional[Request]:
        """The request whose prompt is being prefilled over several steps, if any."""
        return self._partial[0] if self._partial is not None else None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def backlog(self) -> int:
        """Waiting requests beyond those the next step admits: the ones waiting for a row to free."""
        return max(0, len(self._waiting) - self._room())

    @property
    def room(self) -> int:
        """Rows free for waiting requests at the next step."""
        return self._room()

    @property
    def columns(self) -> int:
        """Positions the batch's state holds per row, left padding included (0 when the batch is empty)."""
        return 0 if self._mask is None else self._mask.shape[1]

    @property
    def busy(self) -> bool:
        """Requests run or wait: `step` has work."""
        return bool(self._rows or self._waiting or self._partial)

    # ---- on the model's thread -------------------------------------------------------------------------------
    def step(self) -> List[Event]:
        """One decoding step for the batch, with the waiting requests that fit joining it. Returns (request, token)
        for each row that produced a token, in the batch's order; a request that ended has its finish_reason
        (and a request that failed, or had max_new_tokens 0, comes with token None). A prompt or a processor that
        fails ends its own request; a failure of the batch's step (the state may be half-written) ends every
        request in the batch, and the next step starts afresh."""
        events: List[Event] = []
        self.last_rows = 0
        try:
            self._step(events)
        except Exception as e:
            for r in self._rows:
                if not r.done:
                    r._finish("error", e)
                    events.append((r, None))
            self._reset()
        return events

    def _step(self, events: List[Event]) -> None:
        self._leave()  # the cancelled
        logits = [self._decode()] if self._rows else []
        logits += self._admit(events)
        rows = self._rows
        self.last_rows = len(rows)
        if rows:
            scores = np.concatenate(logits) if len(logits) > 1 else logits[0]  # (B, V)
            for i, r in enumerate(rows):
                try:
                    token = r._choose(scores[i : i + 1])
                except Exception as e:  # a processor of this request failed: the request fails, the batch goes on
                    r._finish("error", e)
                    events.append((r, None))
                    continue
                self._feed[i] = token
                events.append((r, token))
        self._leave()

    def _decode(self) -> np.ndarray:
        """Every row's next token through the model in one call: logits (B, V)."""
        B = len(self._rows)
        mask = np.concatenate([self._mask, np.ones((B, 1), np.int64)], 1)
        logits = self.model.step(
            self._feed[:, None], self._positions[:, None], self._state, attention_mask=None if mask.all() else mask
        )
        self._mask = mask
        self._positions += 1
        return logits

    def _take(self) -> Optional[Request]:
        with self._lock:
            return self._waiting.popleft() if self._waiting else None

    def _room(self) -> int:
        """Rows free for requests not yet started (the one being prefilled holds one)."""
        taken = len(self._rows) + (self._partial is not None)
        if self._mergeable is False:
            return 0 if taken else 1
        return self.max_batch_size - taken

    def _admit(self, events: List[Event]) -> List[np.ndarray]:
        """Prefills waiting requests while rows are free and merges them into the batch; their logits (1, V)
        each, in the order they joined. With rows decoding, at most `prefill_chunk` prompt tokens per step: a
        prompt cut there goes on at the next step (`_partial`), and the requests after it wait behind it."""
        logits = []
        budget = self.prefill_chunk if self._rows and self.prefill_chunk is not None else None
        while budget is None or budget > 0:
            if self._partial is not None:
                r, state, done = self._partial
                self._partial = None
            else:
                if self._room() <= 0:
                    break
                r, state, done = self._take(), None, 0
                if r is None:
                    break
            if r.cancelled:
                r._finish("cancelled")
                continue
            if r.max_new_tokens <= 0:
                r._finish("length")
                events.append((r, None))
                continue
            L = r.prompt.size
            n = L - done if budget is None else min(L - done, budget)
            try:
                if state is None:
                    state = self.model.init_state(1)
                first = self.model.step(
                    r.prompt[None, done : done + n], np.arange(done, done + n, dtype=np.int64)[None], state
                )
            except Exception as e:  # this prompt failed (beyond the context, say): the batch goes on without it
                r._finish("error", e)
                events.append((r, None))
                continue
            if budget is not None:
                budget -= n
            if done + n < L:
                self._partial = (r, state, done + n)
                break
            if self._mergeable is None:
                self._mergeable = isinstance(state, MergeableState)
            self._join(r, state)
            logits.append(first)
        return logits

    def _join(self, r: Request, state) -> None:
        """Adds a prefilled request's state as the batch's last row."""
        L = r.prompt.size
        if self._state is None:
            self._state, self._mask = state, np.ones((1, L), np.int64)
        else:
            T = self._mask.shape[1]
            n = max(T, L)
            self._state.merge(state)
            self._mask = np.concatenate(
                [
                    np.pad(self._mask, ((0, 0), (n - T, 0))),
                    np.pad(np.ones((1, L), np.int64), ((0, 0), (n - L, 0))),
                ]
            )
        self._rows.append(r)
        self._feed = np.append(self._feed, 0)
        self._positions = np.append(self._positions, L)

    def _leave(self) -> None:
        """Rows whose request ended or was cancelled leave the state; columns now padding in every row go."""
        for r in self._rows:
            if r.cancelled and not r.done:
                r._finish("cancelled")
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._reset()
            return
        index = np.asarray(keep, np.int64)
        self._state.reorder(index)
        self._rows = [self._rows[i] for i in keep]
        self._feed, self._positions, self._mask = self._feed[index], self._positions[index], self._mask[index]
        unused = int(np.argmax(self._mask.any(0)))  # leading columns that no row uses
        if unused:
            self._state.trim_left(unused)
            self._mask = self._mask[:, unused:]
