"""File formats: exported torch modules (safetensors + JSON); CTranslate2 model.bin files."""

from .ctranslate2 import CT2File, ModelFileError, read_model_bin
from .torch_format import (
    Transformer,
    build,
    export_torch,
    from_torch,
    load,
    read_safetensors,
    torch_config,
)

__all__ = [
    "CT2File",
    "ModelFileError",
    "Seq2SeqTransformer",
    "Transformer",
    "build",
    "export_torch",
    "from_torch",
    "load",
    "read_model_bin",
    "read_safetensors",
    "torch_config",
]


def __getattr__(name):
    if name == "Seq2SeqTransformer":  # what `load` returns for an exported paper model; it lives in pyattn.models
        from ..models.transformer import Seq2SeqTransformer

        return Seq2SeqTransformer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
