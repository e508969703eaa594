"""Beam search with the KV cache, following the algorithm of transformers' `generate(num_beams=...)`
(length penalty on the generated length, `early_stopping` True / False / "never", the same stopping
heuristic and the same float32 scores), so that the same weights give the same ids."""

from __future__ import annotations

import numpy as np

from . import functional as F

_NEG = np.float32(-1.0e9)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row, largest first (ties: lower index first)."""
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


def beam_search(
    model,
    ids: np.ndarray,
    mask: np.ndarray,
    *,
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float,
    early_stopping,
    eos_token_id,
    pad_token_id,
    forced_bos=None,
    forced_eos=None,
) -> np.ndarray:
    """`model` is a generation.DecoderView; ids (B, L) the (decoder) prompt; eos_token_id None, one id or a list."""
    from .generation import force_tokens
    from .models.gpt2 import positions_from_mask

    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    B, L = ids.shape
    nb = num_beams
    max_length = L + max_new_tokens
    if max_new_tokens == 0:
        return ids
    eos = None if eos_token_id is None else np.atleast_1d(np.asarray(eos_token_id, np.int64))
    keep = max(2, 1 + (0 if eos is None else len(eos))) * nb  # enough candidates that nb of them do not stop
    top_nb = np.arange(keep) < nb
    fill = (pad_token_id if pad_token_id else int(eos[0])) if eos is not None else -1

    running = np.full((B, nb, max_length), fill, np.int64)
    running[:, :, :L] = ids[:, None]
    sequences = running.copy()
    run_scores = np.zeros((B, nb), np.float32)
    run_scores[:, 1:] = _NEG  # all beams start identical: only the first may expand at the first step
    scores = np.full((B, nb), _NEG, np.float32)
    finished = np.zeros((B, nb), bool)
    improvable = np.ones((B, 1), bool)
    run_idx = np.full((B, nb, max_new_tokens), -1, np.int64)
    beam_idx = run_idx.copy()

    flat_mask = np.repeat(mask, nb, 0)
    state = model.init_state(B * nb)
    logits = model(np.repeat(ids, nb, 0), flat_mask, positions_from_mask(flat_mask), state=state)["logits"][:, -1]
    cur = L
    while True:
        V = logits.shape[-1]
        logp = force_tokens(F.log_softmax(logits), cur, max_length, forced_bos, forced_eos, 0.0)
        logp = logp.reshape(B, nb, V) + run_scores[:, :, None]
        logp = logp.reshape(B, nb * V)
        # the best `keep` continuations of all beams
        cand = _topk(logp, keep)
        cand_lp = np.take_along_axis(logp, cand, 1)
        src_beam, tok = cand // V, cand % V
        cand_seq = _gather(running, src_beam)
        cand_seq[:, :, cur] = tok
        cand_idx = _gather(run_idx, src_beam)
        cand_idx[:, :, cur - L] = src_beam + np.arange(B)[:, None] * nb
        hits = np.isin(tok, eos) if eos is not None else np.zeros_like(tok, bool)
        if cur + 1 >= max_length:
            hits[:] = True
        # running beams for the next step: the best candidates that did not stop
        live_lp = (cand_lp + hits.astype(np.float32) * _NEG).astype(np.float32)
        nxt = _topk(live_lp, nb)
        running, run_scores, run_idx = _gather(cand_seq, nxt), _gather(live_lp, nxt), _gather(cand_idx, nxt)
        # finished hypotheses: candidates among the top nb that stopped, scored with the length penalty
        just = hits & top_nb[None]
        fin = (cand_lp / np.float32((cur + 1 - L) ** length_penalty)).astype(np.float32)
        full = finished.all(-1, keepdims=True) & (early_stopping is True)
        fin = fin + full * _NEG + (~improvable) * _NEG + (~just) * _NEG
        m_scores = np.concatenate([scores, fin.astype(np.float32)], 1)
        best = _topk(m_scores, nb)
        sequences = _gather(np.concatenate([sequences, cand_seq], 1), best)
        beam_idx = _gather(np.concatenate([beam_idx, cand_idx], 1), best)
        finished = _gather(np.concatenate([finished, just], 1), best)
        scores = _gather(m_scores, best)
        state.reorder(run_idx[:, :, cur - L].reshape(-1))
        cur += 1
        # can a running beam still beat the worst finished one?
        if early_stopping == "never" and length_penalty > 0.0:
            best_len = max_length - L
        else:
            best_len = cur - L
        best_running = run_scores[:, :1] / np.float32(best_len**length_penalty)
        worst_done = np.where(finished, scores.min(1, keepdims=True), np.float32(-1.0e9))
        improvable = improvable & (best_running > worst_done).any(-1, keepdims=True)
        if not (improvable.any() and not (finished.all() and early_stopping is True) and not hits.all()):
            break
        flat_mask = np.concatenate([flat_mask, np.ones((B * nb, 1), flat_mask.dtype)], 1)
        logits = model(
            running[:, :, cur - 1].reshape(-1, 1), flat_mask, positions_from_mask(flat_mask)[:, -1:], state=state
        )["logits"][:, -1]
    out = sequences[:, 0]
    generated = int(((beam_idx[:, 0] + 1) != 0).sum(1).max())
    return out[:, : L + generated]
