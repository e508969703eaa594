"""Deprecated module path: the GRU encoder-decoder lives in `pyattn.models.gru_seq2seq` (GRUSeq2Seq; Seq2Seq is kept
as an alias of it)."""

import warnings

from .gru_seq2seq import GRUSeq2Seq, GRUState, Seq2Seq, Translation

warnings.warn(
    "pyattn.models.rnn_seq2seq is deprecated: the GRU seq2seq is pyattn.models.gru_seq2seq.GRUSeq2Seq",
    DeprecationWarning,
    2,
)

__all__ = ["GRUSeq2Seq", "GRUState", "Seq2Seq", "Translation"]
