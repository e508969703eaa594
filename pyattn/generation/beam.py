"""Beam search over the decoder protocol, with the finishing rules of the two references pyattn matches.

The search itself is written once (`beam_search`): the prompt runs once per input row, the state is then expanded
to `num_beams` rows per input row; each step turns the last logits into log-probabilities, applies the logits
processors (on the log-probabilities, as transformers does, or on the logits before the log-softmax with
`renormalize`, as CTranslate2 does), adds each beam's running score (float32), and takes the 2 x num_beams best
continuations over all beams of a row (ties: the lower beam, then the lower token). What becomes of those
candidates -- which end a hypothesis, which run on, when a row is done, which hypothesis wins -- is a finishing
rule, the one place where the references differ:

* `TransformersRule`: transformers' `generate(num_beams=...)`. A candidate ending in an end token among the best
  num_beams is finished, scored sum / generated_length ** length_penalty (the end token counted); the num_beams
  best finished hypotheses are kept; `early_stopping` True / False / "never" decides when a row is done. Same ids
  as transformers on the same weights.
* `CTranslate2Rule`: CTranslate2's decoding (its BeamSearch, which Whisper uses). A finished candidate among the
  best num_beams is replaced in its slot by the next live candidate; a row is done when it holds
  round(num_beams x patience) finished hypotheses (with length_penalty 0: as soon as the best candidate finished);
  the winner is the best sum / length ** length_penalty, the end token not counted. Same ids as CTranslate2.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

from .. import _core
from .. import functional as F
from .processors import apply
from .search import prompt_positions

_NEG = np.float32(-1.0e9)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row, largest first (ties: lower index first; NaN last)."""
    if x.dtype == np.float32:  # one pass in the core: argpartition took 1.2 ms a step over Whisper's 5 x 51864
        return _core.topk(np.ascontiguousarray(x), k)[1]
    if k < x.shape[1]:
        part = np.argpartition(-x, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(x.shape[1]), x.shape)
    vals = np.take_along_axis(x, part, 1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, 1)


def _gather(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x (B, n, ...) rows idx (B, k) -> (B, k, ...)."""
    return np.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), 1)


class TransformersRule:
    """transformers' beam hypotheses (see the module's docstring). `fill` pads finished sequences (transformers:
    the pad token, or the end token when the pad token is 0 or unset)."""

    def __init__(self, eos_token_ids: Iterable[int] = (), length_penalty: float = 1.0, early_stopping=False, fill=-1):
        if early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
        self.eos = np.asarray(sorted(set(int(t) for t in eos_token_ids)), np.int64)
        self.length_penalty, self.early_stopping, self.fill = length_penalty, early_stopping, fill

    def candidates(self, num_beams: int) -> int:
        return max(2, 1 + self.eos.size) * num_beams  # transformers: one more per end token

    def start(self, ids: np.ndarray, num_beams: int, max_new_tokens: int) -> None:
        B, L = ids.shape
        self.ids, self.nb, self.L, self.max_length = ids, num_beams, L, L + max_new_tokens
        self.sequences = np.full((B, num_beams, self.max_length), self.fill, np.int64)
        self.sequences[:, :, :L] = ids[:, None]
        self.scores = np.full((B, num_beams), _NEG, np.float32)
        self.finished = np.zeros((B, num_beams), bool)
        self.lengths = np.zeros((B, num_beams), np.int64)  # generated tokens of each kept hypothesis
        self.improvable = np.ones((B, 1), bool)

    def update(self, running, beam, token, cand_scores, last):
        """running (B, nb, cur) the live sequences; beam, token, cand_scores (B, k) the candidates best first.
        Returns (which candidates run on (B, nb), their scores (B, nb), whether the search is done)."""
        B, nb, cur = running.shape
        lp = self.length_penalty
        hits = np.isin(token, self.eos) if self.eos.size else np.zeros(token.shape, bool)
        if last:
            hits[:] = True
        live = (cand_scores + hits.astype(np.float32) * _NEG).astype(np.float32)
        keep = _topk(live, nb)
        run_scores = np.take_along_axis(live, keep, 1)
        # finished hypotheses: candidates among the best nb that stopped, scored with the length penalty
        just = hits & (np.arange(token.shape[1]) < nb)[None]
        cand_seq = np.full((B, token.shape[1], self.max_length), self.fill, np.int64)
        cand_seq[:, :, :cur] = _gather(running, beam)
        cand_seq[:, :, cur] = token
        fin = (cand_scores / np.float32((cur + 1 - self.L) ** lp)).astype(np.float32)
        full = self.finished.all(-1, keepdims=True) & (self.early_stopping is True)
        fin = fin + full * _NEG + (~self.improvable) * _NEG + (~just) * _NEG
        merged = np.concatenate([self.scores, fin.astype(np.float32)], 1)
        best = _topk(merged, nb)
        self.sequences = _gather(np.concatenate([self.sequences, cand_seq], 1), best)
        lengths = np.full(token.shape, cur + 1 - self.L, np.int64)
        self.lengths = _gather(np.concatenate([self.lengths, lengths], 1), best)
        self.finished = _gather(np.concatenate([self.finished, just], 1), best)
        self.scores = _gather(merged, best)
        # can a running beam still beat the worst finished one?
        if self.early_stopping == "never" and lp > 0.0:
            best_len = self.max_length - self.L
        else:
            best_len = cur + 1 - self.L
        best_running = run_scores[:, :1] / np.float32(best_len**lp)
        worst_done = np.where(self.finished, self.scores.min(1, keepdims=True), _NEG)
        self.improvable &= (best_running > worst_done).any(-1, keepdims=True)
        go_on = self.improvable.any() and not (self.finished.all() and self.early_stopping is True) and not hits.all()
        return keep, run_scores, not go_on

    def result(self) -> np.ndarray:
        """(B, L + n) ids: each row's best hypothesis, padded with `fill` to the longest."""
        return self.sequences[:, 0, : self.L + int(self.lengths[:, 0].max())]


class CTranslate2Rule:
    """CTranslate2's beam hypotheses (see the module's docstring); the result is, per row, the generated ids of the
    best hypothesis without the end token (a list of lists)."""

    def __init__(self, eos_token_ids: Iterable[int] = (), length_penalty: float = 1.0, patience: float = 1.0):
        if not patience > 0:
            raise ValueError(f"patience must be > 0, got {patience}")
        self.eos = set(int(t) for t in eos_token_ids)
        self.length_penalty, self.patience = length_penalty, patience

    def candidates(self, num_beams: int) -> int:
        return 2 * num_beams

    def start(self, ids: np.ndarray, num_beams: int, max_new_tokens: int) -> None:
        B, self.L = ids.shape
        self.nb = num_beams
        self.max_hyps = int(round(num_beams * self.patience))
        self.hyps: List[List[tuple]] = [[] for _ in range(B)]
        self.top_finished = np.zeros(B, bool)
        self.done = np.zeros(B, bool)

    def update(self, running, beam, token, cand_scores, last):
        B, nb = running.shape[:2]
        k = token.shape[1]
        keep = np.tile(np.arange(nb), (B, 1))
        early_exit = self.length_penalty == 0
        for b in np.flatnonzero(~self.done):
            secondary = nb
            for j in range(nb):
                tok = int(token[b, j])
                if tok in self.eos or last:
                    if j == 0:
                        self.top_finished[b] = True
                    hyp = running[b, beam[b, j], self.L :].tolist() + ([] if tok in self.eos else [tok])
                    self.hyps[b].append((float(cand_scores[b, j]), hyp))
                    for c in range(secondary, k):  # the slot goes to the next live candidate
                        if int(token[b, c]) not in self.eos:
                            keep[b, j], secondary = c, c + 1
                            break
            n = len(self.hyps[b])
            if last or (self.top_finished[b] and n >= 1 if early_exit else n >= self.max_hyps):
                self.done[b] = True
        return keep, np.take_along_axis(cand_scores, keep, 1), bool(self.done.all())

    def best(self) -> List[tuple]:
        """Per row, the winning hypothesis as (sum of its tokens' log-probabilities, the end token's included; its
        generated ids): CTranslate2's result with return_scores, before the division by length ** penalty."""
        lp = np.float32(self.length_penalty)

        def final(entry):  # score / length ** penalty; an empty hypothesis scores -inf unless the penalty is 0
            score, hyp = entry
            with np.errstate(divide="ignore", invalid="ignore"):
                return float(np.float32(score) / np.float32(len(hyp)) ** lp)

        return [max(h, key=final) if h else (float("-inf"), []) for h in self.hyps]

    def result(self) -> List[List[int]]:
        return [hyp for _, hyp in self.best()]


def beam_search(
    decoder,
    input_ids: np.ndarray,
    attention_mask: Optional[np.ndarray] = None,
    *,
    num_beams: int,
    max_new_tokens: int,
    rule,
    memory=None,
    memory_mask: Optional[np.ndarray] = None,
    processors: Sequence[Callable] = (),
    renormalize: bool = False,
):
    """Beam search from input_ids (B, L) (left-padded with attention_mask; for an encoder-decoder model the
    decoder's prompt, with the encoder output as memory / memory_mask). `rule` (TransformersRule,
    CTranslate2Rule) keeps the hypotheses and gives the result. The prompt runs once per row: the state is then
    expanded to B x num_beams rows (protocol: state.reorder)."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    ids = np.asarray(input_ids, np.int64)
    B, L = ids.shape
    nb = num_beams
    rule.start(ids, nb, max_new_tokens)
    if max_new_tokens <= 0:
        return ids if isinstance(rule, TransformersRule) else rule.result()
    mask = None if attention_mask is None else np.asarray(attention_mask, np.int64)
    positions = prompt_positions(ids, mask)
    if mask is not None and mask.all():
        mask = None
    state = decoder.init_state(B, memory, memory_mask)
    logits = decoder.step(ids, positions, state, attention_mask=mask)  # once per input row
    expand = np.repeat(np.arange(B), nb)
    state.reorder(expand)
    logits = logits[expand]
    if mask is not None:
        mask = mask[expand]  # the beams of a row share its prompt, so their masks never need reordering
    next_pos = positions[expand, -1].astype(np.int64) + 1
    running = np.repeat(ids, nb, 0).reshape(B, nb, L)
    run_scores = np.zeros((B, nb), np.float32)
    run_scores[:, 1:] = _NEG  # all beams start identical: only the first may expand at the first step
    offsets = np.arange(B)[:, None] * nb
    for step in range(max_new_tokens):
        flat = running.reshape(B * nb, -1)
        if renormalize:
            logp = F.log_softmax(apply(processors, flat, logits))
        else:
            logp = apply(processors, flat, F.log_softmax(logits))
        V = logp.shape[-1]
        total = (logp.reshape(B, nb, V) + run_scores[:, :, None]).reshape(B, nb * V)
        cand = _topk(total, min(rule.candidates(nb), nb * V))
        cand_scores = np.take_along_axis(total, cand, 1)
        beam, token = cand // V, cand % V
        keep, run_scores, stop = rule.update(running, beam, token, cand_scores, step == max_new_tokens - 1)
        src = np.take_along_axis(beam, keep, 1)
        running = np.concatenate([_gather(running, src), np.take_along_axis(token, keep, 1)[..., None]], 2)
        if stop:
            break
        state.reorder((src + offsets).reshape(-1))
        if mask is not None:
            mask = np.concatenate([mask, np.ones((B * nb, 1), np.int64)], 1)
        logits = decoder.step(running[:, :, -1].reshape(-1, 1), next_pos[:, None], state, attention_mask=mask)
        next_pos += 1
    return rule.result()
