"""Deprecated: beam search lives in `pyattn.generation.beam` (one implementation over the decoder protocol, with
transformers' and CTranslate2's finishing rules). This module re-exports it and will be removed."""

import warnings

from .generation.beam import CTranslate2Rule, TransformersRule, beam_search

warnings.warn(
    "pyattn.beam_search is deprecated: use pyattn.generation.beam_search (or pyattn.generate(..., num_beams=n))",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["CTranslate2Rule", "TransformersRule", "beam_search"]
