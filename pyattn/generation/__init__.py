"""Text generation for every pyattn model that decodes: greedy decoding, sampling and beam search written once
against one decoder protocol (`pyattn.generation.protocol`), with composable logits processors
(`pyattn.generation.processors`) and a streaming iterator.

    ids = pyattn.generate(model, input_ids, attention_mask, max_new_tokens=32)          # greedy
    for tokens in pyattn.generation.generate_stream(model, input_ids, do_sample=True, top_p=0.9, seed=0):
        ...                                                                                 # (B,) per step

Semantics follow transformers' `generate`: finished rows are filled with the pad token, generation stops when
every row has finished or after max_new_tokens, token ids left unset come from the model's config. Greedy and beam
search give transformers' ids on the same weights and settings (repetition penalty, n-gram bans, minimum lengths,
forced and suppressed tokens included); sampling draws from numpy's generator seeded with `seed`.

Modules: `protocol` (the Decoder / DecoderState protocols, positions_from_mask), `processors` (logits processors,
stop strings), `plan` (generate's options checked and turned into processors and stopping rules), `search` (greedy /
sampling as a stream of steps), `beam` (beam search and its finishing rules), `continuous` (continuous batching:
requests joining and leaving a running batch between steps, each with its own options). Generation imports no
model; models import it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from . import beam, continuous, plan, processors, protocol, search
from .beam import CTranslate2Rule, TransformersRule, beam_search
from .continuous import ContinuousBatcher
from .plan import Plan
from .processors import (
    ForcedTokens,
    MinLength,
    MinNewTokens,
    MinP,
    NoRepeatNGram,
    RepetitionPenalty,
    StopStrings,
    SuppressTokens,
    SuppressTokensAtBegin,
    Temperature,
    TopK,
    TopP,
    apply,
    build_processors,
)
from .protocol import Decoder, DecoderState, positions_from_mask

__all__ = [
    "CTranslate2Rule",
    "ContinuousBatcher",
    "Decoder",
    "DecoderState",
    "ForcedTokens",
    "MinLength",
    "MinNewTokens",
    "MinP",
    "NoRepeatNGram",
    "Plan",
    "RepetitionPenalty",
    "StopStrings",
    "SuppressTokens",
    "SuppressTokensAtBegin",
    "Temperature",
    "TopK",
    "TopP",
    "TransformersRule",
    "apply",
    "beam",
    "beam_search",
    "build_processors",
    "continuous",
    "generate",
    "generate_stream",
    "plan",
    "positions_from_mask",
    "processors",
    "protocol",
    "search",
]


def generate(model, input_ids, attention_mask=None, **options) -> np.ndarray:
    """Continues `input_ids` (B, L) -- left-padded with `attention_mask` (B, L) when rows differ in length -- with
    any model implementing the decoder protocol.

    Returns (B, L + n) token ids, n <= max_new_tokens -- for an encoder-decoder model (`is_encoder_decoder`: its
    `encode(input_ids, attention_mask)` runs once) the decoder's ids (B, 1 + n) starting with
    decoder_start_token_id. Options, as transformers names them:

    * length: max_new_tokens (default 20), or max_length (prompt included); min_length, min_new_tokens (the end
      tokens are banned until then);
    * search: num_beams (beam search, with length_penalty and early_stopping True / False / "never"), do_sample
      (with temperature, top_k, top_p, min_p, seed); greedy otherwise;
    * penalties: repetition_penalty, no_repeat_ngram_size;
    * tokens: eos_token_id (an id or a list: a row ends at any of them), pad_token_id (fills rows that ended;
      default: the first end token), decoder_start_token_id, forced_bos_token_id, forced_eos_token_id,
      forced_tokens {i: token} (the i-th new token is forced), suppress_tokens (never generated),
      begin_suppress_tokens (not as the first new token); ids left None come from the model's config;
    * stop_strings with detokenize(ids) -> str: a row ends once its decoded continuation contains a string;
    * logits_processors: more callables processor(ids, scores) -> scores, applied after the built-in ones;
    * callback(step, tokens): called with each step's new tokens (B,) (greedy and sampling).
    """
    return Plan(model, input_ids, attention_mask, **options).run()


def generate_stream(model, input_ids, attention_mask=None, **options) -> Iterator[np.ndarray]:
    """As `generate` (greedy or sampling), but an iterator over the steps: each yields the new tokens (B,) of that
    step (the pad token for rows already finished). The arguments are checked and the encoder runs when called;
    the decoder runs as the iterator is consumed."""
    return Plan(model, input_ids, attention_mask, **options).stream()
