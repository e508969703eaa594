"""Logits processors and stopping criteria, written once for greedy decoding, sampling and beam search.

A logits processor is any callable ``processor(ids, scores) -> scores``:

* ``ids`` (N, T) int64: every row's sequence so far -- the prompt (left padding included) and the tokens
  generated, for an encoder-decoder model the decoder's ids -- so ``T`` is the length the next token extends;
* ``scores`` (N, V) float32: the next token's logits (greedy, sampling), or its log-probabilities (beam search,
  as transformers applies them); the processor returns new scores and leaves its input unchanged.

A list of processors is applied in order (`apply`). `build_processors` assembles the list `generate` uses from
its keyword arguments, in transformers' order: penalties and n-gram bans, minimum lengths, forced and suppressed
tokens, then (sampling only) temperature, top-k, top-p, min-p. Each class follows the definition of the
transformers processor of the same purpose (named in its docstring), so the same settings pick the same tokens.

A stopping criterion is any callable ``criterion(ids) -> done`` (N,) bool, asked after each step with the
sequences including the new token: `StopStrings` stops a row once its decoded continuation contains a string.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from .. import functional as F
from .._checks import is_int

__all__ = [
    "ForcedTokens",
    "InitialTimestamp",
    "MinLength",
    "MinNewTokens",
    "MinP",
    "NoRepeatNGram",
    "RepetitionPenalty",
    "StopStrings",
    "SuppressTokens",
    "SuppressTokensAtBegin",
    "Temperature",
    "TimestampMass",
    "TimestampPairs",
    "TimestampsIncrease",
    "TopK",
    "TopP",
    "apply",
    "build_processors",
    "timestamp_rules",
]

_NEG_INF = np.float32(-np.inf)


def apply(processors: Iterable[Callable], ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The processors applied to `scores` in order."""
    for p in processors:
        scores = p(ids, scores)
    return scores


def _ids(tokens, name: str) -> np.ndarray:
    a = np.unique(np.asarray(list(tokens), np.int64).reshape(-1))
    if a.size and a.min() < 0:
        raise ValueError(f"{name}: token ids must be >= 0, got {a.min()}")
    return a


def _ban(scores: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    tokens = tokens[tokens < scores.shape[-1]]
    if not tokens.size:
        return scores
    out = scores.copy()
    out[:, tokens] = _NEG_INF
    return out


class Temperature:
    """scores / temperature (transformers' TemperatureLogitsWarper)."""

    def __init__(self, temperature: float):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, ids, scores):
        return scores if self.temperature == 1.0 else scores / np.float32(self.temperature)


class TopK:
    """Keeps the k highest scores (ties with the k-th kept), the rest -inf (TopKLogitsWarper)."""

    def __init__(self, k: int):
        if not is_int(k) or k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {k!r}")
        self.k = int(k)

    def __call__(self, ids, scores):
        V = scores.shape[-1]
        if not 0 < self.k < V:
            return scores
        kth = np.partition(scores, V - self.k, axis=-1)[:, V - self.k][:, None]
        return np.where(scores < kth, _NEG_INF, scores)


class TopP:
    """Nucleus filtering (TopPLogitsWarper): with the probabilities sorted ascending, a token is removed when the
    cumulative probability up to it is <= 1 - top_p; the most likely token always stays."""

    def __init__(self, top_p: float):
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.top_p = float(top_p)

    def __call__(self, ids, scores):
        if self.top_p >= 1.0:
            return scores
        order = np.argsort(scores, axis=-1, kind="stable")  # ascending
        probs = F.softmax(np.take_along_axis(scores, order, -1))
        cum = np.cumsum(probs.astype(np.float64), axis=-1).astype(np.float32)  # float32 results, exact running sum
        remove_sorted = cum <= np.float32(1.0 - self.top_p)
        remove_sorted[:, -1] = False
        remove = np.empty_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, -1)
        return np.where(remove, _NEG_INF, scores)


class MinP:
    """Removes tokens whose probability is below min_p x the top token's (MinPLogitsWarper)."""

    def __init__(self, min_p: float):
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        self.min_p = float(min_p)

    def __call__(self, ids, scores):
        if self.min_p == 0:
            return scores
        probs = F.softmax(scores)
        remove = probs < np.float32(self.min_p) * probs.max(-1, keepdims=True)
        remove[np.arange(scores.shape[0]), scores.argmax(-1)] = False
        return np.where(remove, _NEG_INF, scores)


class RepetitionPenalty:
    """CTRL's penalty on every token already in the sequence (RepetitionPenaltyLogitsProcessor): a positive
    score is divided by `penalty`, a negative one multiplied by it. `ignore_prefix` (B,): per input row, the
    leading positions not counted (a left-padded prompt's padding, as transformers' generate passes it); with
    rows = k x B (beams, grouped per input row) each entry covers k rows."""

    def __init__(self, penalty: float, ignore_prefix=None):
        if not penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)
        self.ignore_prefix = None if ignore_prefix is None else np.asarray(ignore_prefix, np.int64).reshape(-1)

    def __call__(self, ids, scores):
        if self.penalty == 1.0 or ids.shape[1] == 0:
            return scores
        N, V = scores.shape
        counted = ids
        if self.ignore_prefix is not None:
            k, rest = divmod(N, self.ignore_prefix.size)
            if rest or not k:
                raise ValueError(f"ignore_prefix holds {self.ignore_prefix.size} rows, the scores {N}")
            skip = np.repeat(self.ignore_prefix, k)
            counted = np.where(np.arange(ids.shape[1])[None] < skip[:, None], V, ids)  # V: a column dropped below
        seen = np.zeros((N, V + 1), bool)
        np.put_along_axis(seen, counted, True, 1)
        penalized = np.where(scores < 0, scores * np.float32(self.penalty), scores / np.float32(self.penalty))
        return np.where(seen[:, :V], penalized, scores).astype(scores.dtype)


class NoRepeatNGram:
    """Bans every token that would repeat an n-gram of the sequence (NoRepeatNGramLogitsProcessor)."""

    def __init__(self, n: int):
        if not is_int(n) or n < 1:
            raise ValueError(f"no_repeat_ngram_size must be a positive integer, got {n!r}")
        self.n = int(n)

    def __call__(self, ids, scores):
        n, T = self.n, ids.shape[1]
        if T + 1 < n:
            return scores
        out = None
        for r, row in enumerate(ids):
            if n == 1:
                banned = row
            else:
                grams = np.lib.stride_tricks.sliding_window_view(row, n)  # (T - n + 1, n)
                banned = grams[(grams[:, :-1] == row[T - n + 1 :]).all(1), -1]
            if banned.size:
                out = scores.copy() if out is None else out
                out[r, banned] = _NEG_INF
        return scores if out is None else out


class MinLength:
    """The end tokens are banned while the sequence (prompt included) is shorter than `min_length`
    (MinLengthLogitsProcessor)."""

    def __init__(self, min_length: int, eos_token_ids: Sequence[int]):
        self.min_length, self.eos = int(min_length), _ids(eos_token_ids, "eos_token_id")

    def __call__(self, ids, scores):
        return _ban(scores, self.eos) if ids.shape[1] < self.min_length else scores


class MinNewTokens:
    """The end tokens are banned until `min_new_tokens` tokens follow the prompt of `prompt_length`
    (MinNewTokensLengthLogitsProcessor)."""

    def __init__(self, prompt_length: int, min_new_tokens: int, eos_token_ids: Sequence[int]):
        self.prompt_length, self.min_new_tokens = int(prompt_length), int(min_new_tokens)
        self.eos = _ids(eos_token_ids, "eos_token_id")

    def __call__(self, ids, scores):
        return _ban(scores, self.eos) if ids.shape[1] - self.prompt_length < self.min_new_tokens else scores


class SuppressTokens:
    """The tokens are never generated (SuppressTokensLogitsProcessor)."""

    def __init__(self, tokens: Iterable[int]):
        self.tokens = _ids(tokens, "suppress_tokens")

    def __call__(self, ids, scores):
        return _ban(scores, self.tokens)


class SuppressTokensAtBegin:
    """The tokens are not generated at the position `begin_index` -- the first generated one when it is the
    prompt's length (SuppressTokensAtBeginLogitsProcessor; Whisper's blank suppression)."""

    def __init__(self, tokens: Iterable[int], begin_index: int):
        self.tokens, self.begin_index = _ids(tokens, "begin_suppress_tokens"), int(begin_index)

    def __call__(self, ids, scores):
        return _ban(scores, self.tokens) if ids.shape[1] == self.begin_index else scores


class ForcedTokens:
    """At the positions given, only the given token may come: `{position: token}`, a position being the index the
    new token takes in the sequence (the prompt's length for the first generated token). The forced token scores
    0 and every other -inf, as transformers' ForcedBOS / ForcedEOS processors do (forced BOS: {1: bos}; forced
    EOS: {max_length - 1: eos})."""

    def __init__(self, forced: Dict[int, int]):
        self.forced = {int(k): int(v) for k, v in forced.items()}
        bad = [v for v in self.forced.values() if v < 0]
        if bad:
            raise ValueError(f"forced tokens must be ids >= 0, got {bad}")

    def __call__(self, ids, scores):
        token = self.forced.get(ids.shape[1])
        if token is None:
            return scores
        out = np.full_like(scores, _NEG_INF)
        out[:, token] = 0.0
        return out


# ---- Whisper's timestamp tokens ------------------------------------------------------------------------------
#
# Whisper marks time with tokens <|0.00|>, <|0.02|>, ... <|30.00|>: ids timestamp_begin + k for k = 0..1500, the end
# of the vocabulary. A transcript with timestamps reads <|t0|> text <|t1|><|t1'|> text <|t2|> ... <|endoftext|>: each
# segment opens and closes with a timestamp, so timestamps come in pairs (the close of one segment, the open of the
# next), except a lone one before the end token. The rules below keep decoding on that grammar, as openai-whisper's
# ApplyTimestampRules and CTranslate2's (which faster-whisper runs) do; `begin_index` is the prompt's length, the
# position of the first generated token. Where the two references differ, CTranslate2's choice is taken (noted).


def _generated(ids: np.ndarray, begin_index: int) -> np.ndarray:
    return ids[:, begin_index:]


class InitialTimestamp:
    """The first generated token is a timestamp no later than <|timestamp_begin + max_index|> (Whisper's
    max_initial_timestamp, 1.0 s = 50 steps of 0.02 s by default in faster-whisper): text and later timestamps are
    banned at `begin_index`. max_index None: any timestamp."""

    def __init__(self, timestamp_begin: int, begin_index: int, max_index: Optional[int] = 50):
        self.timestamp_begin, self.begin_index = int(timestamp_begin), int(begin_index)
        if max_index is not None and max_index < 0:
            raise ValueError(f"max_initial_timestamp index must be >= 0, got {max_index}")
        self.max_index = None if max_index is None else int(max_index)

    def __call__(self, ids, scores):
        if ids.shape[1] != self.begin_index:
            return scores
        out = scores.copy()
        out[:, : self.timestamp_begin] = _NEG_INF
        if self.max_index is not None:
            out[:, self.timestamp_begin + self.max_index + 1 :] = _NEG_INF
        return out


class TimestampPairs:
    """After a timestamp that closes a pair (the one before it is a timestamp too, or it is the first generated
    token, which opens the first segment alone) text must follow: timestamps are banned. After a timestamp that
    follows text (a segment's end) comes the next segment's start or the end token: text is banned."""

    def __init__(self, timestamp_begin: int, eot: int, begin_index: int):
        self.timestamp_begin, self.eot, self.begin_index = int(timestamp_begin), int(eot), int(begin_index)

    def __call__(self, ids, scores):
        gen = _generated(ids, self.begin_index)
        if gen.shape[1] == 0:
            return scores
        last = gen[:, -1] >= self.timestamp_begin
        before = gen[:, -2] >= self.timestamp_begin if gen.shape[1] > 1 else last
        closing, ending = last & before, last & ~before
        if not last.any():
            return scores
        out = scores.copy()
        out[np.ix_(closing, np.arange(self.timestamp_begin, scores.shape[1]))] = _NEG_INF
        out[np.ix_(ending, np.arange(self.eot))] = _NEG_INF
        return out


class TimestampsIncrease:
    """Timestamps never go back: right after a segment's end (a timestamp after text) the next segment may start at
    that same time, otherwise a timestamp must be later than the last one (which also keeps every segment longer
    than zero). openai-whisper's rule, and what CTranslate2 4.8 (faster-whisper's engine) generates."""

    def __init__(self, timestamp_begin: int, begin_index: int):
        self.timestamp_begin, self.begin_index = int(timestamp_begin), int(begin_index)

    def __call__(self, ids, scores):
        gen = _generated(ids, self.begin_index)
        tb = self.timestamp_begin
        out = None
        for r, row in enumerate(gen):
            stamps = row[row >= tb]
            if not stamps.size:
                continue
            segment_end = row[-1] >= tb and row.size >= 2 and row[-2] < tb
            out = scores.copy() if out is None else out
            out[r, tb : int(stamps[-1]) + (0 if segment_end else 1)] = _NEG_INF
        return scores if out is None else out


class TimestampMass:
    """After a text token (not at the first position), when the timestamps together are more probable than the
    most probable text token -- logsumexp(timestamp scores) > max(text scores), computed on the scores so far --
    a timestamp must come: text is banned. Softmax shifts every score of a row equally, so logits or
    log-probabilities give the same decision."""

    def __init__(self, timestamp_begin: int, begin_index: int):
        self.timestamp_begin, self.begin_index = int(timestamp_begin), int(begin_index)

    def __call__(self, ids, scores):
        gen = _generated(ids, self.begin_index)
        if gen.shape[1] == 0:
            return scores
        tb = self.timestamp_begin
        rows = gen[:, -1] < tb
        if not rows.any():
            return scores
        stamps = scores[:, tb:].astype(np.float64)
        top = stamps.max(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mass = top + np.log(np.exp(stamps - np.where(np.isfinite(top), top, 0)[:, None]).sum(-1))
        force = rows & np.isfinite(top) & (mass > scores[:, :tb].max(-1))
        if not force.any():
            return scores
        out = scores.copy()
        out[np.ix_(force, np.arange(tb))] = _NEG_INF
        return out


def timestamp_rules(
    timestamp_begin: int, eot: int, no_timestamps: int, begin_index: int, max_initial_index: Optional[int] = 50
) -> List[Callable]:
    """Whisper's timestamp grammar as processors, in the references' order: <|notimestamps|> never generated, the
    first token a timestamp (InitialTimestamp), pairs (TimestampPairs), increasing (TimestampsIncrease), then the
    probability-mass rule on the scores those left (TimestampMass)."""
    return [
        SuppressTokens([no_timestamps]),
        InitialTimestamp(timestamp_begin, begin_index, max_initial_index),
        TimestampPairs(timestamp_begin, eot, begin_index),
        TimestampsIncrease(timestamp_begin, begin_index),
        TimestampMass(timestamp_begin, begin_index),
    ]


class StopStrings:
    """Stops a row once the text of its generated tokens contains one of `strings`. `detokenize(ids) -> str`
    turns a list of token ids into text (a tokenizer's decode); `prompt_length` tokens of each row are the prompt
    and not searched. The row's last token (the one that completed the string) is kept: callers showing text
    cut it at `find(text)`."""

    def __init__(self, strings: Sequence[str], detokenize: Callable[[List[int]], str], prompt_length: int):
        if isinstance(strings, str):
            strings = [strings]
        self.strings = [str(s) for s in strings]
        if not self.strings or not all(self.strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {strings!r}")
        if detokenize is None:
            raise ValueError("stop_strings need a detokenize callable (token ids -> text)")
        self.detokenize, self.prompt_length = detokenize, int(prompt_length)

    def find(self, text: str) -> int:
        """Index of the earliest stop string in `text`, or -1."""
        hits = [i for i in (text.find(s) for s in self.strings) if i >= 0]
        return min(hits) if hits else -1

    def __call__(self, ids):
        return np.array(
            [self.find(self.detokenize([int(t) for t in row[self.prompt_length :]])) >= 0 for row in ids], bool
        )


def build_processors(
    *,
    prompt_length: int,
    max_length: int,
    eos_token_ids: Sequence[int] = (),
    repetition_penalty: float = 1.0,
    padding: Optional[np.ndarray] = None,
    no_repeat_ngram_size: int = 0,
    min_length: int = 0,
    min_new_tokens: int = 0,
    forced_bos_token_id: Optional[int] = None,
    forced_eos_token_id: Optional[int] = None,
    forced_tokens: Optional[Dict[int, int]] = None,
    suppress_tokens: Optional[Iterable[int]] = None,
    begin_suppress_tokens: Optional[Iterable[int]] = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    extra: Iterable[Callable] = (),
) -> List[Callable]:
    """The processors `generate`'s options ask for, in transformers' order; `extra` (the caller's own) last.
    forced_tokens maps the number of tokens generated before (0 = the first new token) to the token forced;
    padding (B,) the left padding of each prompt row, which the repetition penalty does not count."""
    out: List[Callable] = []
    if repetition_penalty != 1.0:
        out.append(RepetitionPenalty(repetition_penalty, padding))
    if no_repeat_ngram_size:
        out.append(NoRepeatNGram(no_repeat_ngram_size))
    if min_length and eos_token_ids:
        out.append(MinLength(min_length, eos_token_ids))
    if min_new_tokens and eos_token_ids:
        out.append(MinNewTokens(prompt_length, min_new_tokens, eos_token_ids))
    forced = {}
    if forced_bos_token_id is not None:
        forced[1] = forced_bos_token_id
    if forced_eos_token_id is not None:
        forced[max_length - 1] = forced_eos_token_id
    if forced:
        out.append(ForcedTokens(forced))
    if suppress_tokens is not None:
        out.append(SuppressTokens(suppress_tokens))
    if begin_suppress_tokens is not None:
        # transformers: one position later when a forced BOS takes the first one after a one-token prompt
        begin = prompt_length + (prompt_length == 1 and forced_bos_token_id is not None)
        out.append(SuppressTokensAtBegin(begin_suppress_tokens, begin))
    if forced_tokens:
        out.append(ForcedTokens({prompt_length + int(k): v for k, v in forced_tokens.items()}))
    if do_sample:
        if temperature != 1.0:
            out.append(Temperature(temperature))
        if top_k:
            out.append(TopK(top_k))
        if top_p < 1.0:
            out.append(TopP(top_p))
        if min_p:
            out.append(MinP(min_p))
    out.extend(extra)
    return out
