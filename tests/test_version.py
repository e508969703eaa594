"""One version: __version__ in pyattn/__init__.py, which the build reads (scikit-build-core's regex provider), so
the installed metadata, the module and `pyattn --version` agree."""

import importlib.metadata
import re
import subprocess
import sys

import pyattn
from pyattn.cli import main


def test_metadata_version_is_the_modules():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", pyattn.__version__), pyattn.__version__
    assert importlib.metadata.version("pyattn") == pyattn.__version__


def test_cli_version(capsys, tmp_path):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"pyattn {pyattn.__version__}"
    r = subprocess.run([sys.executable, "-m", "pyattn", "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"pyattn {pyattn.__version__}", r.stderr
