"""A generate call's options turned into what decoding runs (`Plan`): the prompt and its mask, the encoder output,
the logits processors, the stopping rules and the token ids, checked once. `generate`, `generate_stream` and the
continuous batcher (`continuous`) build their work from it."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from .._checks import is_int
from . import search
from .beam import TransformersRule, beam_search
from .processors import StopStrings, build_processors

__all__ = ["Plan"]

TokenIds = Union[int, Sequence[int], None]


def _vocab_size(model) -> Optional[int]:
    vocab = getattr(model, "vocab_size", None)
    if vocab is None and hasattr(model, "lm_head"):
        vocab = model.lm_head.out_features
    return vocab


def _token_id(value, name: str, from_config: bool, vocab: Optional[int]) -> Optional[int]:
    """None, or a token id in [0, vocab): the ids generation reads from the config are checked like arguments."""
    if value is None:
        return None
    if not is_int(value) or value < 0 or (vocab is not None and value >= vocab):
        where = " (from the model's config.json)" if from_config else ""
        raise ValueError(
            f"{name}{where} must be a token id in [0, {vocab if vocab is not None else 'vocab'}), got {value!r}"
        )
    return int(value)


def _check(max_new_tokens, temperature, top_k, top_p, min_p, num_beams, repetition_penalty):
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not 0 <= min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")


class Plan:
    """What one generate call runs: the decoder prompt, the encoder output, the processors and stopping rules,
    from `generate`'s keyword arguments (checked here: a bad option raises ValueError before any decoding)."""

    def __init__(
        self,
        model,
        input_ids,
        attention_mask=None,
        *,
        max_new_tokens: Optional[int] = None,
        max_length: Optional[int] = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        min_length: int = 0,
        min_new_tokens: int = 0,
        suppress_tokens: Optional[Iterable[int]] = None,
        begin_suppress_tokens: Optional[Iterable[int]] = None,
        forced_tokens: Optional[Dict[int, int]] = None,
        seed: Optional[int] = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping=False,
        eos_token_id: TokenIds = None,
        pad_token_id: Optional[int] = None,
        decoder_start_token_id: Optional[int] = None,
        forced_bos_token_id: Optional[int] = None,
        forced_eos_token_id: Optional[int] = None,
        stop_strings: Optional[Sequence[str]] = None,
        detokenize: Optional[Callable[[Sequence[int]], str]] = None,
        logits_processors: Iterable[Callable] = (),
        callback: Optional[Callable[[int, np.ndarray], None]] = None,
    ):
        cfg = getattr(model, "config", {}) or {}
        vocab = _vocab_size(model)

        def token(name, value):
            return _token_id(cfg.get(name) if value is None else value, name, value is None, vocab)

        eos = cfg.get("eos_token_id") if eos_token_id is None else eos_token_id
        eos_list = list(eos) if isinstance(eos, (list, tuple, np.ndarray)) else [eos]
        eos_ids = [_token_id(e, "eos_token_id", eos_token_id is None, vocab) for e in eos_list if e is not None]
        pad_token_id = token("pad_token_id", pad_token_id)
        forced_bos_token_id = token("forced_bos_token_id", forced_bos_token_id)
        forced_eos_token_id = token("forced_eos_token_id", forced_eos_token_id)
        if eos_ids and pad_token_id is None:
            pad_token_id = eos_ids[0]
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
        self.memory = self.memory_mask = None
        if getattr(model, "is_encoder_decoder", False):
            start = token("decoder_start_token_id", decoder_start_token_id)
            if start is None:
                raise ValueError("decoder_start_token_id is not set (neither given nor in the model config)")
            self.memory, self.memory_mask = model.encode(ids, mask), mask
            ids, mask = np.full((B, 1), start, np.int64), None
            L = 1
        if max_new_tokens is None:
            max_new_tokens = 20 if max_length is None else max_length - L
        _check(max_new_tokens, temperature, top_k, top_p, min_p, num_beams, repetition_penalty)
        if num_beams > 1 and do_sample:
            raise ValueError("beam sampling is not supported: use num_beams=1 with do_sample, or do_sample=False")
        self.model, self.ids, self.mask = model, ids, mask
        self.max_new_tokens, self.num_beams = int(max_new_tokens), int(num_beams)
        self.eos_ids, self.pad_token_id = eos_ids, pad_token_id
        self.do_sample, self.seed, self.callback = do_sample, seed, callback
        self.length_penalty, self.early_stopping = length_penalty, early_stopping
        self.processors = build_processors(
            prompt_length=L,
            max_length=L + self.max_new_tokens,
            eos_token_ids=eos_ids,
            repetition_penalty=repetition_penalty,
            padding=None if mask is None else np.argmax(mask != 0, axis=1),
            no_repeat_ngram_size=no_repeat_ngram_size,
            min_length=min_length,
            min_new_tokens=min_new_tokens,
            forced_bos_token_id=forced_bos_token_id,
            forced_eos_token_id=forced_eos_token_id,
            forced_tokens=forced_tokens,
            suppress_tokens=suppress_tokens,
            begin_suppress_tokens=begin_suppress_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            extra=logits_processors,
        )
        self.stopping = []
        if stop_strings:
            if num_beams > 1:
                raise ValueError("stop_strings are supported with greedy decoding and sampling, not beam search")
            self.stopping.append(StopStrings(stop_strings, detokenize, L))
            if self.pad_token_id is None:
                raise ValueError("stop_strings need a pad_token_id (or eos_token_id) to fill the rows that stop")

    def stream(self) -> Iterator[np.ndarray]:
        if self.num_beams > 1:
            raise ValueError("streaming is supported with greedy decoding and sampling, not beam search")
        return search.stream(
            self.model,
            self.ids,
            self.mask,
            max_new_tokens=self.max_new_tokens,
            memory=self.memory,
            memory_mask=self.memory_mask,
            processors=self.processors,
            stopping=self.stopping,
            eos_token_ids=self.eos_ids,
            pad_token_id=self.pad_token_id,
            do_sample=self.do_sample,
            seed=self.seed,
            callback=self.callback,
        )

    def run(self) -> np.ndarray:
        if self.num_beams == 1:
            steps = [t[:, None] for t in self.stream()]
            return np.concatenate([self.ids] + steps, 1)
        eos = self.eos_ids
        fill = (self.pad_token_id if self.pad_token_id else eos[0]) if eos else -1
        rule = TransformersRule(eos, self.length_penalty, self.early_stopping, fill)
        return beam_search(
            self.model,
            self.ids,
            self.mask,
            num_beams=self.num_beams,
            max_new_tokens=self.max_new_tokens,
            rule=rule,
            memory=self.memory,
            memory_mask=self.memory_mask,
            processors=self.processors,
        )
