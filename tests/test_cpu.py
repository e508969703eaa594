"""Kernel-set selection, thread count, cpu_info, and that calls release the GIL."""

import threading

import numpy as np
import pytest

import pyattn
from pyattn import _core
from pyattn import functional as F


def test_cpu_info():
    info = pyattn.cpu_info()
    assert set(info) >= {"features", "available_isas", "isa", "gemm_blocking", "num_threads"}
    assert info["available_isas"][0] == "scalar"
    assert info["isa"] in info["available_isas"]
    b = info["gemm_blocking"]
    assert b["nr"] % 4 == 0 and b["mc"] % b["mr"] == 0 and b["nc"] % b["nr"] == 0
    feats = info["features"]
    if "avx512" in info["available_isas"]:
        assert feats["avx512f"] and feats["avx2"] and feats["fma"]
    if "avx2" in info["available_isas"]:
        assert feats["avx2"] and feats["fma"]
    # the VNNI and BF16 sets extend AVX-512: offered exactly where the CPU has their instructions
    avx512 = "avx512" in info["available_isas"]
    assert ("avx512_vnni" in info["available_isas"]) == (avx512 and feats["avx512_vnni"])
    assert ("avx512_bf16" in info["available_isas"]) == (avx512 and feats["avx512_vnni"] and feats["avx512_bf16"])
    # AMX: only where Linux granted the tile state (the instructions fault otherwise)
    if "amx" in info["available_isas"]:
        assert info["amx_granted"] and feats["amx_bf16"] and "avx512_bf16" in info["available_isas"]
    else:
        with pytest.raises(ValueError, match="cannot run the 'amx' kernels"):
            pyattn.set_isa("amx")
    # AVX-VNNI without AVX-512 kernels: offered exactly where the CPU has the VEX instructions
    assert ("avx_vnni" in info["available_isas"]) == ("avx2" in info["available_isas"] and feats["avx_vnni"])
    if not feats["avx_vnni"]:
        with pytest.raises(ValueError, match="cannot run the 'avx_vnni' kernels"):
            pyattn.set_isa("avx_vnni")
    # the test-only sets: never listed; amx_emulated selectable where avx512_bf16 is, avx_vnni_evex where avx512_vnni is
    assert not {"amx_emulated", "avx_vnni_evex"} & set(info["available_isas"])
    for name, base in (("amx_emulated", "avx512_bf16"), ("avx_vnni_evex", "avx512_vnni")):
        assert (name in _core.test_isas()) == (base in info["available_isas"])
        if base not in info["available_isas"]:
            with pytest.raises(ValueError, match=f"cannot run the '{name}' kernels"):
                pyattn.set_isa(name)


def test_default_isa_is_the_best_available():
    import os

    if not os.environ.get("PYATTN_ISA"):
        assert pyattn.get_isa() == _core.available_isas()[-1]


def test_every_isa_selectable():
    before = pyattn.get_isa()
    try:
        for isa in _core.available_isas():
            pyattn.set_isa(isa)
            assert pyattn.get_isa() == isa
            assert pyattn.cpu_info()["isa"] == isa
    finally:
        pyattn.set_isa(before)


def test_threads_round_trip(restore_threads):
    for n in (1, 3, 2):
        pyattn.set_num_threads(n)
        assert pyattn.get_num_threads() == n
        assert pyattn.cpu_info()["num_threads"] == n


def test_more_threads_than_cores_still_correct(restore_threads, rng):
    a, b = rng.standard_normal((300, 200)).astype(np.float32), rng.standard_normal((200, 100)).astype(np.float32)
    pyattn.set_num_threads(1)
    one = F.matmul(a, b)
    pyattn.set_num_threads(5)
    np.testing.assert_allclose(F.matmul(a, b), one, rtol=1e-5, atol=1e-4)


def test_calls_release_the_gil(rng, restore_threads):
    """While a long matmul runs in a worker thread, the main thread keeps executing Python bytecode.
    With the GIL held for the whole call the main thread could not take a single step until it returned."""
    pyattn.set_num_threads(1)
    a = rng.standard_normal((1500, 1500)).astype(np.float32)
    started, done = threading.Event(), threading.Event()
    steps_during_call = 0

    def worker():
        started.set()
        for _ in range(3):
            F.matmul(a, a)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    while not done.is_set():
        steps_during_call += 1
        done.wait(0.001)
    t.join()
    assert steps_during_call > 5


def test_thread_limit_caps_the_calling_thread_only(restore_threads):
    """set_thread_limit caps the threads of the ops the calling thread starts (the server's embedding lanes);
    other threads keep pyattn's count; 0 lifts the cap; a negative limit is refused."""
    pyattn.set_num_threads(2)
    seen = {}

    def lane():
        _core.set_thread_limit(1)
        seen["limited"] = pyattn.get_num_threads(), _core.get_thread_limit()
        _core.set_thread_limit(0)
        seen["lifted"] = pyattn.get_num_threads()

    t = threading.Thread(target=lane)
    t.start()
    t.join()
    assert seen == {"limited": (1, 1), "lifted": 2}
    assert pyattn.get_num_threads() == 2 and _core.get_thread_limit() == 0
    with pytest.raises(ValueError, match="thread limit must be >= 0"):
        _core.set_thread_limit(-1)
