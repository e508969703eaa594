"""File formats: exported torch modules (safetensors + JSON)."""
from .torch_format import Transformer, build, export_torch, from_torch, load, read_safetensors, torch_config

__all__ = ["Transformer", "build", "export_torch", "from_torch", "load", "read_safetensors", "torch_config"]
