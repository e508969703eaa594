"""Deprecated module path: BART and Marian live in `pyattn.models.bart` (BartModel; Seq2SeqModel is kept as an
alias of it)."""

import warnings

from .bart import MAX_COMPUTED_POSITIONS, BartModel, Seq2SeqModel, marian_sinusoids

warnings.warn(
    "pyattn.models.seq2seq is deprecated: BART and Marian are pyattn.models.bart.BartModel", DeprecationWarning, 2
)

__all__ = ["BartModel", "MAX_COMPUTED_POSITIONS", "Seq2SeqModel", "marian_sinusoids"]
