"""Modules holding weights, assembled from the C++ core: the thin layer of the design."""

from .attention import CacheState, KVCache, MultiHeadAttention, split_heads
from .layers import (
    Embedding,
    LayerNorm,
    LearnedPositionalEmbedding,
    Linear,
    Module,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)
from .rnn import GRU
from .scoring import Attention, PreparedKeys
from .transformer import (
    DecoderState,
    FeedForward,
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = [
    "CacheState",
    "Attention",
    "DecoderState",
    "Embedding",
    "FeedForward",
    "GRU",
    "KVCache",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "Linear",
    "Module",
    "MultiHeadAttention",
    "PreparedKeys",
    "SinusoidalPositionalEncoding",
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "sinusoidal_table",
    "split_heads",
]


def __getattr__(name):
    # The paper's whole model (embeddings, generator, greedy decoding) is a model, not a module: pyattn.models.
    if name == "Seq2SeqTransformer":
        import warnings

        warnings.warn(
            "pyattn.nn.Seq2SeqTransformer is deprecated: the paper's model is pyattn.models.Seq2SeqTransformer",
            DeprecationWarning,
            2,
        )
        from ..models.transformer import Seq2SeqTransformer

        return Seq2SeqTransformer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
