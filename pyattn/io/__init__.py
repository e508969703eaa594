"""File formats: exported torch modules (safetensors + JSON); CTranslate2 model.bin files."""

from .ctranslate2 import CT2File, ModelFileError, read_model_bin
from .torch_format import (
    Seq2SeqTransformer,
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
