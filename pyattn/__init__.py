"""pyattn: fast CPU inference of attention models.

A C++ core (SIMD/OpenMP GEMM, softmax, layer norm, activations, fused masked attention) under a thin
Python layer. See ``pyattn.functional`` for the numpy-in / numpy-out operations.
"""

from __future__ import annotations

import os as _os

from ._checks import is_int

# OpenMP workers of libgomp spin for a while after each parallel region before they sleep. With two
# runtimes in one process (PyTorch ships its own libgomp) or another busy process, spinning workers steal
# the cores the others need. Keep the spin short; libgomp reads this when it loads, i.e. with _core below.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

try:
    from . import _core
except ImportError as _e:  # pragma: no cover - depends on how pyattn was installed
    raise ImportError(
        f"pyattn's C++ extension could not be imported ({_e}). Install the package with `pip install .`; "
        f"if you did, you may be importing the source tree at {_os.path.dirname(__file__)} instead of the "
        "installed package (run pytest, not `python -m pytest`, from the repository root)."
    ) from _e
from ._core import PackedLinear

# The one place the version is written; the build reads it (pyproject.toml: [tool.scikit-build.metadata.version]).
__version__ = "0.1.0"

# PYATTN_ISA=scalar|avx2|avx_vnni|avx512|avx512_vnni|avx512_bf16|amx forces a kernel set; one the CPU lacks is an
# error at import, not a silent fallback, so that a test run asking for a path really runs it.
_isa = _os.environ.get("PYATTN_ISA", "").strip()
if _isa:
    try:
        _core.set_isa(_isa)
    except ValueError as e:
        raise ImportError(f"PYATTN_ISA={_isa!r}: {e}") from None


def set_num_threads(n: int) -> None:
    """Set the number of threads used by pyattn's parallel ops (default: OMP_NUM_THREADS or the cores)."""
    if not is_int(n):
        raise TypeError(f"num_threads must be an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def release_memory() -> int:
    """Returns memory pyattn holds for reuse to the system: the cache of large result blocks (up to 128 MiB,
    kept because reusing them saves page faults between calls) and the allocator's free heap pages. Call it
    after freeing a model. Returns the bytes of cached blocks released."""
    return _core.release_memory()


def get_num_threads() -> int:
    """Threads used by pyattn's parallel ops."""
    return _core.get_num_threads()


def set_isa(name: str) -> None:
    """Switch the kernel set ('scalar', 'avx2', 'avx_vnni', 'avx512', 'avx512_vnni', 'avx512_bf16', 'amx');
    ValueError if this CPU cannot run it. The test-only sets (``_core.test_isas()``): 'amx_emulated' (the amx set's
    tile loops on software tiles, slow) runs wherever 'avx512_bf16' does, 'avx_vnni_evex' (the avx_vnni set's kernels
    in EVEX encodings) wherever 'avx512_vnni' does.

    Weights packed before the switch (``PackedLinear``) keep the layout of the set they were packed for.
    """
    _core.set_isa(name)


def get_isa() -> str:
    """Name of the kernel set in use."""
    return _core.get_isa()


def cpu_info() -> dict:
    """Detected CPU features (bfloat16, VNNI and AMX support included), whether Linux granted the AMX tile state,
    the kernel sets this CPU can run and the one in use, its GEMM blocking, the weight types, the type
    dtype="auto" picks here, and the thread count."""
    from .precision import WEIGHT_TYPES, auto_dtype

    return {
        "features": _core.cpu_features(),
        "amx_granted": _core.amx_granted(),
        "available_isas": list(_core.available_isas()),
        "isa": _core.get_isa(),
        "weight_types": list(WEIGHT_TYPES),
        "auto_dtype": auto_dtype(),
        "gemm_blocking": _core.blocking(""),
        "num_threads": _core.get_num_threads(),
        "num_procs": _core.num_procs(),
    }


from . import (  # noqa: E402
    functional,  # noqa: E402
    io,
    models,
    nn,
)
from .generation import generate  # noqa: E402
from .io import load  # noqa: E402
from .models import from_pretrained  # noqa: E402

__all__ = [
    "PackedLinear",
    "cpu_info",
    "functional",
    "io",
    "from_pretrained",
    "generate",
    "load",
    "models",
    "nn",
    "release_memory",
    "get_isa",
    "get_num_threads",
    "set_isa",
    "set_num_threads",
]
