"""Weight types by name: the `dtype=` of the loaders, faster-whisper's `compute_type` names, and "auto"."""

from __future__ import annotations

from typing import Optional

from . import _core

WEIGHT_TYPES = tuple(_core.weight_types())  # float32, float16, bfloat16, int8, q4_0, ..., q6_k

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


def attention_precision(storage: str) -> str:
    """The precision of an encoder's self-attention products (scaled_dot_product_attention's `precision`) for
    projections held as `storage`: "bfloat16" for bfloat16 weights and for those that round more coarsely (int8,
    4- and 5-bit), "float32" otherwise. The fused encoder layer applies the same rule (gemm::bf16_attention);
    decoders keep float32 attention for int8 and 4-bit weights (over 30 layers of SmolLM2 it cost logit accuracy)."""
    return "float32" if storage in ("float32", "float16") else "bfloat16"  # as gemm::bf16_attention: bits < 16 or bf16


def auto_dtype() -> str:
    """The weight type "auto" picks for the kernel set in use: the fastest that keeps the accuracy bars of
    docs/precision.md.

    AVX2 (and the scalar reference): int8. Its exact products (blocks of 32 weights and activations with their own
    scales) run at float32 speed where the GEMM is compute-bound and up to 3.6x faster where the weights' bytes are
    the limit (decoding, small batches). AVX512-VNNI: int8, whose vpdpbusd kernels run 2-4x float32's GEMM. AVX-512
    without VNNI: float16: the int8 GEMM runs the AVX2 kernels there, slower than AVX-512 float32 when
    compute-bound, while float16 keeps the AVX-512 float32 arithmetic and halves the bytes."""
    return "float16" if _core.get_isa() == "avx512" else "int8"


def int8_encoder_storage() -> str:
    """The weight type of the layers an int8 model keeps out of int8 for accuracy where they are compute-bound
    (Whisper's encoder, its convolutions included): bfloat16 where the kernel set multiplies bfloat16 pairs, else
    float32. Whisper tiny.en's encoder in bfloat16 keeps float32's transcripts on every test clip and ran 1.7-1.9x
    faster than in float32 on a Zen 4 (227 against 394-443 ms a window on 1 thread); without pair instructions
    bfloat16 is widened to float32 arithmetic and gains nothing there."""
    return "bfloat16" if _core.multiplies_bf16_pairs() else "float32"


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
