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
    Seq2SeqTransformer,
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
    "Seq2SeqTransformer",
    "SinusoidalPositionalEncoding",
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "sinusoidal_table",
    "split_heads",
]
