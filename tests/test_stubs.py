"""pyattn/_core.pyi, the type stubs of the C++ extension: it names exactly what the module holds (so that it cannot
go stale silently), ships beside the module with py.typed, agrees with the runtime for mypy's stubtest, and lets
mypy check a caller."""

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyattn
from pyattn import _core

STUB = Path(pyattn.__file__).with_name("_core.pyi")


def stub_names(tree: ast.Module) -> dict:
    """Top-level names the stub defines (functions, classes, assignments; not imports or private aliases) and,
    for each class, the names it defines."""
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            members = set()
            if isinstance(node, ast.ClassDef):
                members = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            names[node.name] = members
    return names


def public(obj) -> set:
    return {n for n in dir(obj) if not (n.startswith("__") and n.endswith("__"))}


def test_stub_and_py_typed_ship_with_the_module():
    assert STUB.is_file(), f"no {STUB}: the wheel must ship pyattn/_core.pyi"
    assert STUB.with_name("py.typed").is_file(), "no pyattn/py.typed: type checkers would ignore the stub"


def test_stub_names_every_attribute_of_the_module_and_nothing_else():
    names = stub_names(ast.parse(STUB.read_text(encoding="utf-8")))
    runtime = public(_core)
    assert runtime - set(names) == set(), "in pyattn._core but not in _core.pyi: add them to the stub"
    assert set(names) - runtime == set(), "in _core.pyi but not in pyattn._core: remove them from the stub"
    for name, members in names.items():
        if members:  # a class: its methods and properties, __init__ and __call__ included
            obj = getattr(_core, name)
            want = {m for m in vars(obj) if not m.startswith("_") or m in ("__init__", "__call__")}
            assert members == want, f"{name}: stub {sorted(members ^ want)} differ from the runtime"


def test_stub_signatures_name_the_bindings_arguments():
    """pybind11 puts each overload's signature in the docstring's first line: the stub's parameters must have the
    same names (a renamed py::arg would otherwise break keyword callers silently)."""
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    checked = 0
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not any(
            isinstance(d, ast.Name) and d.id == "overload" for d in node.decorator_list
        ):
            first = (getattr(_core, node.name).__doc__ or "").lstrip().split("\n", 1)[0]
            params = [a.arg for a in node.args.args + node.args.kwonlyargs]
            runtime = [p.split(":")[0].strip() for p in first[first.index("(") + 1 : first.rindex(")")].split(",")]
            runtime = [p.lstrip("*") for p in runtime if p and p != "*"]
            assert params == runtime, f"{node.name}: stub {params}, binding {first}"
            checked += 1
    assert checked > 20


@pytest.fixture(scope="module")
def mypy_config(tmp_path_factory):
    """A mypy configuration with one cache for both runs below (numpy's stubs are read once)."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it is in the test extra)")
    folder = tmp_path_factory.mktemp("mypy")
    (folder / "mypy.ini").write_text(f"[mypy]\ncache_dir = {folder / 'cache'}\nfollow_imports = silent\n")
    return folder / "mypy.ini"


def test_stubtest_agrees_with_the_runtime(tmp_path, mypy_config):
    """mypy's stubtest imports the module and compares it with the stub; pybind11 classes have their own
    metaclass, which a stub does not spell, and are the only difference allowed."""
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "pyattn._core", "--mypy-config-file", str(mypy_config)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    assert errors, r.stdout + r.stderr  # the metaclass notes at least: stubtest ran
    assert all(line.endswith("is inconsistent, metaclass differs") for line in errors), r.stdout


def test_mypy_checks_a_caller(tmp_path, mypy_config):
    (tmp_path / "caller.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import numpy.typing as npt
            from pyattn import _core

            x: npt.NDArray[np.float32] = np.zeros((1, 1, 2, 4), np.float32)
            out, weights = _core.scaled_dot_product_attention(x, x, x, return_weights=True)
            alone: npt.NDArray[np.float32] = _core.scaled_dot_product_attention(x, x, x)
            lin = _core.PackedLinear(np.zeros((3, 4), np.float32))
            y: npt.NDArray[np.float32] = lin(x[0, 0], activation="gelu")
            n: int = lin.out_features + len(_core.available_isas())
            _core.softmax(x, axis=0)
            _core.set_num_threads("2")
            """
        ),
        encoding="utf-8",
    )
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(mypy_config), "caller.py"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, r.stdout + r.stderr
    assert 'Unexpected keyword argument "axis" for "softmax"' in errors[0]
    assert 'incompatible type "str"; expected "int"' in errors[1]
