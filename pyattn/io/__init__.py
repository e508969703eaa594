"""File formats: exported torch modules (safetensors + JSON)."""
from .torch_format import Seq2SeqTransformer, Transformer, build, export_torch, from_torch, load, read_safetensors, torch_config

__all__ = ["Seq2SeqTransformer", "Transformer", "build", "export_torch", "from_torch", "load", "read_safetensors", "torch_config"]
