"""Kernel benchmark: pyattn vs numpy (OpenBLAS) vs PyTorch, in one run, on 1 and 2 threads, float32 and the
reduced-precision weight types.

    python benchmarks/bench_kernels.py            # full run: the numbers (several minutes)
    python benchmarks/bench_kernels.py --quick    # CI-sized subset, a few seconds

Five tables per thread count, each cell the median of repeats after a warm-up call:

* SGEMM y = x W^T with W (N, K) in PyTorch's layout: pyattn.functional.linear, pyattn.PackedLinear (weight
  packed once), numpy ``x @ w.T`` and torch.nn.functional.linear, in GFLOP/s and % of the FMA peak measured
  on the same threads; GEMV rows (M = 1) also give the GB/s at which the weight streams, beside the
  measured read bandwidth.
* GEMM by weight type, y = x W^T on the transformer shapes (and GEMVs, M = 1, to a 51865-word vocabulary):
  pyattn.PackedLinear(w, None, storage) with storage float32 / bfloat16 / int8 (blocks of 32 along K, weights
  and activations: GGUF Q8_0 x Q8_0) against torch.nn.functional.linear on float32 and on bfloat16 tensors and
  OpenVINO's CPU plugin (a MatMul by the constant weight, with the f32 hint and with its default, which is bf16
  on CPUs with AMX or AVX512_BF16; the precision it reports is recorded), in GFLOP/s (2 ops per multiply-add
  for every type, int8 included), each with its max relative error
  (max |y - y64| / max |y64|) against the float64 product of the same float32 x and W.
* Attention B=1, H=12, D=64, causal and not: pyattn's fused kernel vs torch's scaled_dot_product_attention
  vs an unfused numpy version, in ms and GFLOP/s (4 B H L^2 D flops, halved when causal).
* Single-query decode attention (Lq = 1, H = 6, D = 64), in microseconds.
* Additive (Bahdanau) attention, one decoder step of a batch (B = 32, source 64, hidden 512), in
  microseconds: pyattn's nn.Attention.bahdanau (keys projected once per source by ``prepare``, then the
  fused tanh-score kernel) and functional.attention(score="additive", keys_projected=...), against the
  PyTorch seq2seq tutorial's BahdanauAttention as written (it re-projects the keys at every step) and the
  same with the keys projected once, under torch.inference_mode.

``--sections precision`` (comma-separated: gemm, precision, attention, decode, additive) runs only some tables;
the results then go to kernels_<sections>_<tag>[_quick].* so that the full results are not overwritten.

Every row carries the max abs error of pyattn against torch (the weight-type table: against float64). The tables
name the CPU. Results go to benchmarks/results/kernels_<machine tag>.{json,png,txt} (benchmarks/_machine.py: e.g.
kernels_amd-epyc-avx2.json), so that one machine kind's run never overwrites another's; --quick writes
kernels_<tag>_quick.* (gitignored), whose times mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _machine import describe as describe_machine  # benchmarks/_machine.py (the script's folder is on sys.path)
from _machine import headline, result_paths

import pyattn
from pyattn import _core
from pyattn import functional as F

# (M, K, N): square GEMMs, then the projections and FFNs of small encoders (d_model 384 / 768) and decoding
# shapes: one token through a FFN and through a 51865-word vocabulary, a short sentence.
GEMM_SHAPES = [
    (256, 256, 256),
    (512, 512, 512),
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (128, 384, 1152),
    (128, 384, 1536),
    (128, 1536, 384),
    (2048, 384, 1152),
    (512, 768, 3072),
    (512, 3072, 768),
    (1, 384, 1536),
    (1, 384, 51865),
    (4, 512, 2048),
]
# (M, K, N) of the weight-type table: the transformer shapes above (and a square one), and GEMVs (M = 1) where
# the bytes of the weight are the limit.
PRECISION_SHAPES = [
    (1024, 1024, 1024),
    (128, 384, 1152),
    (128, 384, 1536),
    (128, 1536, 384),
    (2048, 384, 1152),
    (512, 768, 3072),
    (512, 3072, 768),
    (4, 512, 2048),
    (1, 384, 1536),
    (1, 768, 3072),
    (1, 384, 51865),
]
PRECISION_STORAGES = ("float32", "bfloat16", "int8")  # pyattn.PackedLinear(w, None, storage)
ATTN_LENGTHS = [128, 512, 1024, 2048]
DECODE_LENGTHS = [448, 1500]
# (B, source length, hidden size) of one additive-attention decoder step
ADDITIVE_SHAPES = [(32, 64, 512), (1, 64, 512)]
QUICK = {
    "gemm": [(256, 256, 256), (128, 384, 1152), (1, 384, 1536)],
    "precision": [(128, 384, 1152), (1, 384, 1536)],
    "attention": [128],
    "decode": [448],
    "additive": [(32, 64, 512)],
}
FULL = {
    "gemm": GEMM_SHAPES,
    "precision": PRECISION_SHAPES,
    "attention": ATTN_LENGTHS,
    "decode": DECODE_LENGTHS,
    "additive": ADDITIVE_SHAPES,
}
SECTIONS = ("gemm", "precision", "attention", "decode", "additive")

# Time per cell: (seconds of repeats, min repeats, max repeats).
QUICK_TIMING = (0.03, 2, 50)
FULL_TIMING = (0.3, 5, 10_000)

ATTN_B, ATTN_H, ATTN_D = 1, 12, 64
DECODE_H, DECODE_D = 6, 64

FMA_PEAK_SECONDS = 0.5
BANDWIDTH_MBYTES = 256  # well past the L3 of desktop and server parts, so that DRAM is what is measured
BANDWIDTH_REPEATS = 5

# OpenBLAS and OpenMP workers spin for a while after their last job (OpenBLAS about 0.1 s). Timing one
# library right after another would share the cores with the previous one's idle spinners.
SETTLE_S = 0.15


# ---------------------------------------------------------------------------------------------------
# timing and thread control
# ---------------------------------------------------------------------------------------------------
def measure(fn, timing) -> float:
    """Median seconds of `fn` over repeats filling about `timing[0]` seconds, after one warm-up call (which
    also sizes the repeats), started once the previous library's worker threads have gone to sleep."""
    budget, min_reps, max_reps = timing
    time.sleep(SETTLE_S)
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    reps = int(min(max_reps, max(min_reps, budget / max(first, 1e-7))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Peers:
    """The libraries compared with pyattn, and one way to set the thread count of all of them."""

    def __init__(self):
        try:
            import torch
        except ImportError:  # torch is in the bench extra; without it the rows have no torch column
            torch = None
        self.torch = torch
        try:
            import openvino
        except ImportError:  # in the bench extra; without it the weight-type table has no OpenVINO columns
            openvino = None
        self.openvino = openvino
        try:
            import threadpoolctl
        except ImportError:
            threadpoolctl = None
        self._threadpoolctl = threadpoolctl
        self._blas_limit = None

    @property
    def numpy_threads_controlled(self) -> bool:
        return self._threadpoolctl is not None

    def set_threads(self, n: int) -> None:
        pyattn.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)
        if self._threadpoolctl is not None:
            if self._blas_limit is not None:
                self._blas_limit.restore_original_limits()
            self._blas_limit = self._threadpoolctl.threadpool_limits(limits=n, user_api="blas")

    def thread_pools(self) -> list:
        """The BLAS and OpenMP runtimes loaded in this process (threadpoolctl's view), for the record."""
        if self._threadpoolctl is None:
            return []
        keys = ("user_api", "internal_api", "version", "num_threads", "filepath")
        return [{k: pool.get(k) for k in keys} for pool in self._threadpoolctl.threadpool_info()]


def machine_info(peers: Peers) -> dict:
    torch = peers.torch
    return {
        **describe_machine(),  # CPU model, vendor, kernel set, features, the tag that names the result files
        "processor": platform.processor(),
        "torch": None if torch is None else torch.__version__,
        "numpy_threads_controlled": peers.numpy_threads_controlled,
        "thread_pools": peers.thread_pools(),
    }


def max_abs_err(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# ---------------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------------
def gemm_impls(x: np.ndarray, w: np.ndarray, packed, torch) -> dict:
    """y = x @ w.T by each implementation, as argument-free callables."""
    impls = {
        "pyattn": lambda: F.linear(x, w),
        "pyattn_packed": lambda: packed(x),
        "numpy": lambda: x @ w.T,
    }
    if torch is not None:
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        impls["torch"] = lambda: torch.nn.functional.linear(tx, tw)
    return impls


def gemm_rows(peers: Peers, shapes, threads: int, timing, peak: float) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for M, K, N in shapes:
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = rng.standard_normal((N, K), dtype=np.float32) / np.float32(np.sqrt(K))
        packed = pyattn.PackedLinear(w)
        impls = gemm_impls(x, w, packed, peers.torch)
        flops = 2.0 * M * N * K
        row = {"M": M, "K": K, "N": N, "threads": threads}
        for name, fn in impls.items():
            t = measure(fn, timing)
            row[f"{name}_ms"] = t * 1e3
            row[f"{name}_gflops"] = flops / t / 1e9
            row[f"{name}_pct_peak"] = 100.0 * flops / t / 1e9 / peak
            if M == 1:  # a GEMV: its limit is the rate at which the weight streams from memory
                weight_bytes = packed.nbytes if name == "pyattn_packed" else w.nbytes
                row[f"{name}_weight_GBps"] = weight_bytes / t / 1e9
        if M == 1:
            row["weight_MB"] = w.nbytes / 1e6
        want = impls["torch"]() if "torch" in impls else x.astype(np.float64) @ w.T.astype(np.float64)
        row["reference"] = "torch" if "torch" in impls else "numpy float64"
        row["pyattn_max_err"] = max_abs_err(impls["pyattn"](), want)
        row["pyattn_packed_max_err"] = max_abs_err(impls["pyattn_packed"](), want)
        row["max_err_vs_torch"] = max(row["pyattn_max_err"], row["pyattn_packed_max_err"])
        rows.append(row)
    return rows


def openvino_linear(ov, x: np.ndarray, w: np.ndarray, threads: int, f32: bool):
    """y = x @ w.T as an OpenVINO model (a MatMul by a constant weight, as its ONNX frontend makes of a Linear)
    compiled for its CPU plugin on `threads` threads: with the f32 precision hint, or with the plugin's default
    (bf16 on CPUs with AMX or AVX512_BF16). Returns the callable, the precision the plugin says it runs (named as
    bench_models names it: 'float32', 'bfloat16') and the bytes of one weight in that precision."""
    from openvino import opset13 as ops

    param = ops.parameter(list(x.shape), ov.Type.f32)
    y = ops.matmul(param, ops.constant(w), transpose_a=False, transpose_b=True)
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(ov.Model([y], [param]), "CPU", config)
    request = compiled.create_infer_request()
    out = compiled.output(0)

    def run():
        request.infer({0: x}, share_inputs=True)
        return request.get_tensor(out).data

    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type
    return run, str(hint).replace("<Type: '", "").replace("'>", ""), hint.size


def precision_impls(x: np.ndarray, w: np.ndarray, torch, openvino=None, threads: int = 1) -> tuple:
    """y = x @ w.T with the weight held in each type, as argument-free callables returning float arrays, the bytes each
    holds its weight in, and (OpenVINO) the precision each says it runs. pyattn takes float32 activations
    (bfloat16 and int8 round or quantize them inside the call); torch's bf16 row multiplies tensors already in
    bf16, as a model.to(torch.bfloat16) does; OpenVINO takes float32 x (its CPU plugin converts inside the call
    where it runs bf16)."""
    impls, nbytes, precisions = {}, {}, {}
    for storage in PRECISION_STORAGES:
        packed = pyattn.PackedLinear(w, None, storage)
        impls[f"pyattn_{storage}"] = packed
        nbytes[f"pyattn_{storage}"] = packed.nbytes
    calls = {name: (lambda p=p: p(x)) for name, p in impls.items()}
    if torch is not None:
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        bx, bw = tx.to(torch.bfloat16), tw.to(torch.bfloat16)
        calls["torch_float32"] = lambda: torch.nn.functional.linear(tx, tw)
        calls["torch_bfloat16"] = lambda: torch.nn.functional.linear(bx, bw)
        nbytes["torch_float32"], nbytes["torch_bfloat16"] = w.nbytes, w.size * 2
    if openvino is not None:
        for name, f32 in (("openvino_f32", True), ("openvino_default", False)):
            calls[name], precisions[name], size = openvino_linear(openvino, x, w, threads, f32)
            nbytes[name] = w.size * size
    return calls, nbytes, precisions


def max_rel_err(y, want: np.ndarray) -> float:
    """max |y - want| / max |want|: the error relative to the output's scale (an elementwise ratio would blow up
    at the outputs that happen to be near zero)."""
    if hasattr(y, "float"):  # a torch tensor, possibly bf16
        y = y.float().numpy()
    return max_abs_err(y, want) / float(np.abs(want).max())


def precision_rows(peers: Peers, shapes, threads: int, timing) -> list[dict]:
    rng = np.random.default_rng(4)
    rows = []
    for M, K, N in shapes:
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = rng.standard_normal((N, K), dtype=np.float32) / np.float32(np.sqrt(K))
        want = x.astype(np.float64) @ w.T.astype(np.float64)
        calls, nbytes, precisions = precision_impls(x, w, peers.torch, peers.openvino, threads)
        flops = 2.0 * M * N * K  # int8 too: a multiply-add is 2 ops whatever the type
        row = {"M": M, "K": K, "N": N, "threads": threads}
        row.update({f"{name}_precision": p for name, p in precisions.items()})
        for name, fn in calls.items():
            t = measure(fn, timing)
            row[f"{name}_ms"] = t * 1e3
            row[f"{name}_gflops"] = flops / t / 1e9
            row[f"{name}_max_rel_err"] = max_rel_err(fn(), want)
            if M == 1:
                row[f"{name}_weight_GBps"] = nbytes[name] / t / 1e9
        rows.append(row)
    return rows


def numpy_attention(q, k, v, causal: bool) -> np.ndarray:
    """Unfused reference: scores = q k^T * scale, causal mask, softmax, @ v; q (B, H, Lq, D), k, v (B, H, Lk, D)."""
    scores = q @ np.swapaxes(k, -1, -2) * np.float32(1.0 / np.sqrt(q.shape[-1]))  # (B, H, Lq, Lk)
    if causal:
        Lq, Lk = scores.shape[-2:]
        scores = np.where(np.tril(np.ones((Lq, Lk), dtype=bool)), scores, np.float32(-np.inf))
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores @ v


def attention_impls(q, k, v, causal: bool, torch) -> dict:
    impls = {
        "pyattn": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "numpy": lambda: numpy_attention(q, k, v, causal),
    }
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(t) for t in (q, k, v))
        impls["torch"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    return impls


def attention_reference(impls: dict) -> np.ndarray:
    return impls["torch"]().numpy() if "torch" in impls else impls["numpy"]()


def attention_rows(peers: Peers, lengths, threads: int, timing) -> list[dict]:
    rng = np.random.default_rng(1)
    B, H, D = ATTN_B, ATTN_H, ATTN_D
    rows = []
    for L in lengths:
        q, k, v = (rng.standard_normal((B, H, L, D), dtype=np.float32) for _ in range(3))
        for causal in (False, True):
            impls = attention_impls(q, k, v, causal, peers.torch)
            flops = 4.0 * B * H * L * L * D / (2 if causal else 1)
            row = {"B": B, "H": H, "L": L, "D": D, "causal": causal, "threads": threads}
            for name, fn in impls.items():
                t = measure(fn, timing)
                row[f"{name}_ms"] = t * 1e3
                row[f"{name}_gflops"] = flops / t / 1e9
            row["max_err_vs_torch"] = max_abs_err(impls["pyattn"](), attention_reference(impls))
            rows.append(row)
    return rows


def decode_rows(peers: Peers, lengths, threads: int, timing) -> list[dict]:
    rng = np.random.default_rng(2)
    H, D = DECODE_H, DECODE_D
    rows = []
    for Lk in lengths:
        q = rng.standard_normal((1, H, 1, D), dtype=np.float32)
        k, v = (rng.standard_normal((1, H, Lk, D), dtype=np.float32) for _ in range(2))
        impls = attention_impls(q, k, v, False, peers.torch)
        row = {"H": H, "Lq": 1, "Lk": Lk, "D": D, "threads": threads}
        for name, fn in impls.items():
            row[f"{name}_us"] = measure(fn, timing) * 1e6
        row["max_err_vs_torch"] = max_abs_err(impls["pyattn"](), attention_reference(impls))
        rows.append(row)
    return rows


def torch_bahdanau(torch, hidden_size: int):
    """The PyTorch seq2seq tutorial's BahdanauAttention, as written there."""
    nn = torch.nn

    class BahdanauAttention(nn.Module):
        def __init__(self, hidden_size):
            super().__init__()
            self.Wa = nn.Linear(hidden_size, hidden_size)
            self.Ua = nn.Linear(hidden_size, hidden_size)
            self.Va = nn.Linear(hidden_size, 1)

        def forward(self, query, keys):
            scores = self.Va(torch.tanh(self.Wa(query) + self.Ua(keys)))
            scores = scores.squeeze(2).unsqueeze(1)
            weights = torch.nn.functional.softmax(scores, dim=-1)
            context = torch.bmm(weights, keys)
            return context, weights

    return BahdanauAttention(hidden_size).eval()


def additive_impls(query, keys, peers: Peers, seed: int) -> dict:
    """One decoder step of additive attention by each implementation -- argument-free callables returning
    (context, weights); the keys are projected once, outside the timed calls, where the method allows it --
    and pyattn's once-per-source preparation of the keys, also as a callable."""
    from pyattn.nn import Attention

    torch = peers.torch
    H = keys.shape[-1]
    if torch is not None:
        torch.manual_seed(seed)
        ref = torch_bahdanau(torch, H)
        weights = [
            p.detach().numpy().copy()
            for p in (ref.Wa.weight, ref.Wa.bias, ref.Ua.weight, ref.Ua.bias, ref.Va.weight, ref.Va.bias)
        ]
    else:
        rng = np.random.default_rng(seed)
        u = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32) / np.float32(np.sqrt(H))  # noqa: E731
        weights = [u(H, H), u(H), u(H, H), u(H), u(1, H), u(1)]
    attn = Attention.bahdanau(*weights)
    prepared = attn.prepare(keys)
    kp = prepared.projected
    impls = {
        "pyattn": lambda: attn(query, prepared),
        "pyattn_F": lambda: F.attention(
            query,
            None,
            keys,
            score="additive",
            keys_projected=kp,
            w_q=attn.w_q,
            b_q=attn.b_q,
            v=attn.v,
            v_bias=attn.v_bias,
            need_weights=True,
        ),
    }
    if torch is not None:
        tq, tk = torch.from_numpy(query), torch.from_numpy(keys)
        with torch.inference_mode():
            uk = ref.Ua(tk)  # the keys projected once per source

        def torch_tutorial():
            with torch.inference_mode():
                return ref(tq, tk)

        def torch_keys_once():
            with torch.inference_mode():
                scores = ref.Va(torch.tanh(ref.Wa(tq) + uk)).squeeze(2).unsqueeze(1)
                w = torch.nn.functional.softmax(scores, dim=-1)
                return torch.bmm(w, tk), w

        impls["torch"] = torch_tutorial
        impls["torch_keys_once"] = torch_keys_once
    return impls, (lambda: attn.prepare(keys))


def additive_rows(peers: Peers, shapes, threads: int, timing) -> list[dict]:
    rng = np.random.default_rng(3)
    rows = []
    for B, Lk, H in shapes:
        query = rng.standard_normal((B, 1, H), dtype=np.float32)
        keys = rng.standard_normal((B, Lk, H), dtype=np.float32)
        impls, prepare = additive_impls(query, keys, peers, seed=B * 1000 + Lk)
        row = {"B": B, "Lk": Lk, "H": H, "Lq": 1, "threads": threads}
        for name, fn in impls.items():
            row[f"{name}_us"] = measure(fn, timing) * 1e6
        row["pyattn_prepare_us"] = measure(prepare, timing) * 1e6  # once per source, not per step
        if "torch" in impls:
            want_ctx, want_w = (t.numpy() for t in impls["torch"]())
            ctx, w = impls["pyattn"]()
            row["max_err_vs_torch"] = max(max_abs_err(ctx, want_ctx), max_abs_err(w, want_w))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------
def _num(value, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{fmt}}"


def format_gemm(rows, peak: float, bandwidth: float) -> list[str]:
    lines = [
        f"SGEMM y = x W^T, GFLOP/s (median), {rows[0]['threads']} thread(s); "
        f"measured FMA peak {peak:.0f} GFLOP/s, read bandwidth {bandwidth:.1f} GB/s",
        f"{'M':>5} {'K':>5} {'N':>6} | {'pyattn':>7} {'%peak':>5} {'packed':>7} {'%peak':>5} | "
        f"{'numpy':>7} {'torch':>7} | {'max err':>8}",
    ]
    for r in rows:
        line = (
            f"{r['M']:>5} {r['K']:>5} {r['N']:>6} | {r['pyattn_gflops']:7.1f} {r['pyattn_pct_peak']:4.0f}% "
            f"{r['pyattn_packed_gflops']:7.1f} {r['pyattn_packed_pct_peak']:4.0f}% | {r['numpy_gflops']:7.1f} "
            f"{_num(r.get('torch_gflops'), '.1f', 7)} | {r['max_err_vs_torch']:8.1e}"
        )
        if "weight_MB" in r:  # a weight that fits in the caches streams faster than the read bandwidth
            line += (
                f"  weights {r['weight_MB']:.1f} MB at {r['pyattn_packed_weight_GBps']:.1f} GB/s packed, "
                f"{r['pyattn_weight_GBps']:.1f} plain"
            )
        lines.append(line)
    return lines


PRECISION_SERIES = [
    ("pyattn_float32", "pyattn f32"),
    ("pyattn_bfloat16", "pyattn bf16"),
    ("pyattn_int8", "pyattn int8"),
    ("torch_float32", "torch f32"),
    ("torch_bfloat16", "torch bf16"),
    ("openvino_f32", "OpenVINO f32"),
    ("openvino_default", "OpenVINO default"),
]


def format_precision(rows) -> list[str]:
    ov = rows[0].get("openvino_default_precision")
    lines = [
        f"GEMM y = x W^T by weight type, GFLOP/s (median; 2 ops per multiply-add, int8 included), "
        f"{rows[0]['threads']} thread(s); in brackets the max relative error max|y - y64| / max|y64|, y64 the "
        "float64 product of the float32 x and W. pyattn: PackedLinear(w, None, storage) on float32 x (bf16/int8 "
        "round/quantize x in the call); torch: F.linear, bf16 on tensors already in bf16; OpenVINO: a MatMul by "
        "a constant weight on its CPU plugin, with the f32 hint and with its default"
        + (f" (which runs {ov} here)" if ov else ""),
        f"{'M':>5} {'K':>5} {'N':>6} | " + " | ".join(f"{label:>16}" for _, label in PRECISION_SERIES),
    ]
    for r in rows:
        cells = [
            f"{r[f'{key}_gflops']:7.1f} ({r[f'{key}_max_rel_err']:6.0e})" if f"{key}_gflops" in r else f"{'-':>16}"
            for key, _ in PRECISION_SERIES
        ]
        lines.append(f"{r['M']:>5} {r['K']:>5} {r['N']:>6} | " + " | ".join(cells))
    return lines


def format_attention(rows) -> list[str]:
    lines = [
        f"Attention B={ATTN_B} H={ATTN_H} D={ATTN_D}, ms (GFLOP/s), median, {rows[0]['threads']} thread(s)",
        f"{'L':>5} {'causal':>6} | {'pyattn':>15} | {'torch SDPA':>15} | {'numpy':>15} | {'max err':>8}",
    ]
    for r in rows:
        cells = [
            f"{r[f'{n}_ms']:7.2f} ({r[f'{n}_gflops']:5.1f})" if f"{n}_ms" in r else f"{'-':>15}"
            for n in ("pyattn", "torch", "numpy")
        ]
        lines.append(f"{r['L']:>5} {str(r['causal']):>6} | " + " | ".join(cells) + f" | {r['max_err_vs_torch']:8.1e}")
    return lines


def format_decode(rows) -> list[str]:
    lines = [
        f"Decode attention Lq=1 H={DECODE_H} D={DECODE_D}, microseconds, median, {rows[0]['threads']} thread(s)",
        f"{'Lk':>5} | {'pyattn':>8} {'torch':>8} {'numpy':>8} | {'max err':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r['Lk']:>5} | {r['pyattn_us']:8.1f} {_num(r.get('torch_us'), '.1f', 8)} {r['numpy_us']:8.1f} | "
            f"{r['max_err_vs_torch']:8.1e}"
        )
    return lines


def format_additive(rows) -> list[str]:
    lines = [
        f"Additive (Bahdanau) attention, one decoder step (Lq=1), microseconds, median, {rows[0]['threads']} "
        f"thread(s); pyattn and 'torch keys once' project the keys once per source (pyattn: prepare)",
        f"{'B':>3} {'Lk':>4} {'H':>4} | {'pyattn':>8} {'F.attn':>8} | {'torch':>8} {'keys once':>9} | "
        f"{'vs torch':>8} {'vs once':>7} | {'prepare':>8} | {'max err':>8}",
    ]
    for r in rows:
        t, once = r.get("torch_us"), r.get("torch_keys_once_us")
        lines.append(
            f"{r['B']:>3} {r['Lk']:>4} {r['H']:>4} | {r['pyattn_us']:8.1f} {r['pyattn_F_us']:8.1f} | "
            f"{_num(t, '.1f', 8)} {_num(once, '.1f', 9)} | "
            f"{_num(t and t / r['pyattn_us'], '.1f', 7)}x {_num(once and once / r['pyattn_us'], '.1f', 6)}x | "
            f"{r['pyattn_prepare_us']:8.1f} | {_num(r.get('max_err_vs_torch'), '.1e', 8)}"
        )
    return lines


# ---------------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------------
GEMM_SERIES = [
    ("pyattn_packed", "pyattn (prepacked)"),
    ("pyattn", "pyattn"),
    ("numpy", "numpy / OpenBLAS"),
    ("torch", "torch"),
]
ATTN_SERIES = [("pyattn", "pyattn"), ("torch", "torch SDPA"), ("numpy", "numpy")]


ADDITIVE_SERIES = [
    ("pyattn", "pyattn (keys once)"),
    ("pyattn_F", "pyattn functional"),
    ("torch", "torch tutorial"),
    ("torch_keys_once", "torch (keys once)"),
]


def plot(results: dict, path: Path) -> bool:
    """At the largest thread count: GEMM GFLOP/s per shape (grouped bars), attention ms vs L, additive attention
    microseconds per step -- one panel per section that was run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return False
    threads = max(results["threads"])
    gemm = [r for r in results["gemm"] if r["threads"] == threads]
    attn = [r for r in results["attention"] if r["threads"] == threads]
    additive = [r for r in results.get("additive", []) if r["threads"] == threads]
    precision = [r for r in results.get("precision", []) if r["threads"] == threads]
    panels = [
        (name, rows, ratio)
        for name, rows, ratio in (
            ("gemm", gemm, 2),
            ("precision", precision, 2),
            ("attention", attn, 1),
            ("additive", additive, 1),
        )
        if rows
    ]
    if not panels:
        return False
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(5 * sum(p[2] for p in panels) + 1, 5.5),
        gridspec_kw={"width_ratios": [p[2] for p in panels]},
        squeeze=False,
    )
    for ax, (name, rows, _) in zip(axes[0], panels):
        plotters = {
            "gemm": _plot_gemm,
            "precision": _plot_precision,
            "attention": _plot_attention,
            "additive": _plot_additive,
        }
        plotters[name](ax, rows, results, threads)
    fig.suptitle(f"{results['machine']['cpu_model']} ({results['machine']['tag']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_gemm(ax_gemm, gemm, results, threads):
    x = np.arange(len(gemm))
    width = 0.8 / len(GEMM_SERIES)
    for i, (key, label) in enumerate(GEMM_SERIES):
        offset = (i - (len(GEMM_SERIES) - 1) / 2) * width
        ax_gemm.bar(x + offset, [r.get(f"{key}_gflops", 0.0) for r in gemm], width, label=label)
    peak = results["fma_peak_gflops"][str(threads)]
    ax_gemm.axhline(peak, color="k", ls="--", lw=1, label="measured FMA peak")
    ax_gemm.set_ylim(0, 1.25 * max([peak] + [r.get(f"{key}_gflops", 0.0) for r in gemm for key, _ in GEMM_SERIES]))
    ax_gemm.set_xticks(x, [f"{r['M']}x{r['K']}x{r['N']}" for r in gemm], rotation=45, ha="right", fontsize=8)
    ax_gemm.set_xlabel("M x K x N")
    ax_gemm.set_ylabel("GFLOP/s (median)")
    ax_gemm.set_title(f"SGEMM y = x W^T, {threads} thread(s)")
    ax_gemm.legend(fontsize=8, ncol=len(GEMM_SERIES) + 1, loc="upper center")  # above the bars


def _plot_precision(ax, rows, results, threads):
    x = np.arange(len(rows))
    series = [(key, label) for key, label in PRECISION_SERIES if any(f"{key}_gflops" in r for r in rows)]
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(x + offset, [r.get(f"{key}_gflops", 0.0) for r in rows], width, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{r['M']}x{r['K']}x{r['N']}" for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("M x K x N")
    ax.set_ylabel("GFLOP/s (median; 2 ops per multiply-add)")
    ax.set_title(f"y = x W^T by weight type, {threads} thread(s)")
    ax.legend(fontsize=8, ncol=len(series))


def _plot_attention(ax_attn, attn, results, threads):
    for causal, style in ((False, "-"), (True, "--")):
        for key, label in ATTN_SERIES:
            points = [(r["L"], r[f"{key}_ms"]) for r in attn if r["causal"] == causal and f"{key}_ms" in r]
            if points:
                ax_attn.plot(*zip(*points), style, marker="o", label=f"{label}{', causal' if causal else ''}")
    ax_attn.set_xscale("log", base=2)
    ax_attn.set_yscale("log")
    ax_attn.set_xlabel("sequence length L")
    ax_attn.set_ylabel("ms (median)")
    ax_attn.set_title(f"attention B={ATTN_B} H={ATTN_H} D={ATTN_D}, {threads} thread(s)")
    ax_attn.legend(fontsize=7)


def _plot_additive(ax, rows, results, threads):
    x = np.arange(len(rows))
    series = [(key, label) for key, label in ADDITIVE_SERIES if any(f"{key}_us" in r for r in rows)]
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(x + offset, [r.get(f"{key}_us", 0.0) for r in rows], width, label=label)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"B={r['B']} Lk={r['Lk']} H={r['H']}" for r in rows], fontsize=8)
    ax.set_ylabel("microseconds per decoder step (median)")
    ax.set_title(f"additive (Bahdanau) attention, {threads} thread(s)")
    ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------
def thread_list(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated thread counts >= 1, e.g. 1,2; got {text!r}")
    return threads


def section_list(text: str) -> list[str]:
    sections = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in sections if t not in SECTIONS]
    if not sections or unknown:
        raise argparse.ArgumentTypeError(f"expected comma-separated sections among {','.join(SECTIONS)}; got {text!r}")
    return [t for t in SECTIONS if t in sections]  # in the usual order, once each


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subset of shapes, few repeats (CI)")
    ap.add_argument("--threads", type=thread_list, default=[1, 2], help="comma-separated thread counts (default 1,2)")
    ap.add_argument(
        "--sections",
        type=section_list,
        default=list(SECTIONS),
        help=f"comma-separated tables to run (default all: {','.join(SECTIONS)})",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="output directory (default benchmarks/results)",
    )
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cases, timing = (QUICK, QUICK_TIMING) if args.quick else (FULL, FULL_TIMING)
    peers = Peers()
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine_info(peers),
        "timing": {"budget_s": timing[0], "min_reps": timing[1], "max_reps": timing[2], "statistic": "median"},
        "threads": args.threads,
        "fma_peak_gflops": {},
        "read_bandwidth_GBps": {},
        "sections": args.sections,
        "gemm": [],
        "precision": [],
        "attention": [],
        "decode": [],
        "additive": [],
    }
    lines = []

    def emit(*new_lines):
        for line in new_lines:
            print(line, flush=True)
        lines.extend(new_lines)

    m = results["machine"]
    emit(
        headline(m),
        f"pyattn {m['pyattn']} ({pyattn.get_isa()} kernels), {m['cpu_count']} CPUs, numpy {m['numpy']}, "
        f"torch {m['torch'] or 'not installed'}",
    )
    if not peers.numpy_threads_controlled:
        emit("note: threadpoolctl is not installed, so numpy's (OpenBLAS) thread count was NOT controlled")

    sections = args.sections
    for n in args.threads:
        peers.set_threads(n)
        if "gemm" in sections:  # the peak and the bandwidth are the yardsticks of the GEMM table
            peak = _core.measure_fma_peak(n, FMA_PEAK_SECONDS)
            bandwidth = _core.measure_read_bandwidth(n, BANDWIDTH_MBYTES, BANDWIDTH_REPEATS)
            results["fma_peak_gflops"][str(n)] = peak
            results["read_bandwidth_GBps"][str(n)] = bandwidth
            gemm = gemm_rows(peers, cases["gemm"], n, timing, peak)
            emit("", *format_gemm(gemm, peak, bandwidth))
            results["gemm"] += gemm
        if "precision" in sections:
            precision = precision_rows(peers, cases["precision"], n, timing)
            emit("", *format_precision(precision))
            results["precision"] += precision
        if "attention" in sections:
            attention = attention_rows(peers, cases["attention"], n, timing)
            emit("", *format_attention(attention))
            results["attention"] += attention
        if "decode" in sections:
            decode = decode_rows(peers, cases["decode"], n, timing)
            emit("", *format_decode(decode))
            results["decode"] += decode
        if "additive" in sections:
            additive = additive_rows(peers, cases["additive"], n, timing)
            emit("", *format_additive(additive))
            results["additive"] += additive

    if args.quick:
        emit("", "(--quick: a few repeats per cell on a shared machine; the times mean nothing)")
    args.out.mkdir(parents=True, exist_ok=True)
    # a partial run must not overwrite the full results: kernels[_<sections>][_quick].*
    partial = "" if sections == list(SECTIONS) else "_" + "_".join(sections)
    paths = result_paths(args.out, f"kernels{partial}", results["machine"], args.quick)
    json_path, text_path, png_path = paths["json"], paths["txt"], paths["png"]
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    text_path.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {json_path} and {text_path}")
    if plot(results, png_path):
        print(f"wrote {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
