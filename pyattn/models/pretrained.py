"""Reading Hugging Face model folders (config.json + model.safetensors) without pickle."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from ..io import torch_format
from ..io.torch_format import Weights, read_safetensors


def read_config(folder: Path) -> dict:
    return torch_format.read_config(folder, "a Hugging Face model folder")


def read_weights(folder: Path) -> Dict[str, np.ndarray]:
    st = folder / "model.safetensors"
    if st.is_file():
        return read_safetensors(st)
    if (folder / "pytorch_model.bin").is_file():
        raise ValueError(
            f"{folder} holds only pytorch_model.bin, a pickle file, which pyattn never loads. Convert it once with "
            "transformers: AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)")
    raise FileNotFoundError(f"{folder}: no model.safetensors")


def require(cfg: dict, key: str, source: str, kind=int):
    if key not in cfg:
        raise ValueError(f"{source}: config.json has no '{key}'")
    value = cfg[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{source}: config '{key}' must be a positive integer, got {value!r}")
    return value


def strip_prefix(tensors: Dict[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    """Checkpoints of task models keep the base model under a prefix ('bert.', 'model.', 'transformer.')."""
    if any(k.startswith(prefix) for k in tensors):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return tensors


__all__ = ["Weights", "read_config", "read_weights", "require", "strip_prefix"]
