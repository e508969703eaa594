"""Weight types by name: the `dtype=` of the loaders, faster-whisper's `compute_type` names, and "auto"."""

from __future__ import annotations

from typing import Optional

from . import _core

WEIGHT_TYPES = tuple(_core.weight_types())  # ("float32", "float16", "bfloat16", "int8")

# faster-whisper / CTranslate2 compute types -> pyattn weight types. pyattn always computes in float32 (int32 inside
# an int8 block), so the part after "int8_" names nothing pyattn does differently.
COMPUTE_TYPES = {
    "default": None,  # the type the model file holds
    "auto": "auto",
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "int8": "int8",
    "int8_float32": "int8",
    "int8_float16": "int8",
    "int8_bfloat16": "int8",
}


def auto_dtype() -> str:
    """The weight type "auto" picks on this CPU: the fastest that keeps the accuracy bars of docs/precision.md.

    int8 on every CPU pyattn has kernels for today: exact int8 products (blocks of 32 weights and activations
    with their own scales) run at float32 speed where the GEMM is compute-bound on AVX2 and up to 4x faster where
    the weights' bytes are the limit (decoding, small batches)."""
    return "int8"


def resolve_dtype(dtype: Optional[str], what: str = "dtype") -> Optional[str]:
    """A weight type name, "auto" (see auto_dtype) or None (keep the model's own) -> a weight type or None."""
    if dtype is None:
        return None
    if dtype == "auto":
        return auto_dtype()
    if dtype not in WEIGHT_TYPES:
        raise ValueError(f"{what} must be one of {', '.join(WEIGHT_TYPES)}, 'auto' or None, got {dtype!r}")
    return dtype


def resolve_compute_type(compute_type: str) -> Optional[str]:
    """faster-whisper's compute_type names -> a weight type, or None for the model file's own."""
    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}, got {compute_type!r}")
    return resolve_dtype(COMPUTE_TYPES[compute_type], "compute_type")
