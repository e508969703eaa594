"""Kernel benchmark: pyattn vs numpy (OpenBLAS) vs PyTorch, in one run, on 1 and 2 threads.

    python benchmarks/bench_kernels.py            # full run: the numbers
    python benchmarks/bench_kernels.py --quick    # CI-sized subset, about a minute

Prints tables (median of repeats, GFLOP/s, % of the measured FMA peak, max error against torch) and
writes benchmarks/results/kernels[_quick].json and .png.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import pyattn
from pyattn import _core
from pyattn import functional as F

GEMM_SHAPES = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (128, 384, 1152),
               (128, 384, 1536), (128, 1536, 384), (2048, 384, 1152), (512, 768, 3072), (512, 3072, 768),
               (1, 384, 1536), (1, 384, 51865), (4, 512, 2048)]
QUICK_GEMM = [(256, 256, 256), (128, 384, 1152), (1, 384, 1536)]
ATTN_LENGTHS = [128, 512, 1024, 2048]
QUICK_ATTN = [128]
DECODE_LK = [448, 1500]
QUICK_DECODE = [448]


# ---------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------
# OpenBLAS and OpenMP workers keep spinning for a while after their last job (OpenBLAS ~0.1 s). Timing
# one library right after another would then share the cores with the previous one's idle spinners.
SETTLE_S = 0.15


def measure(fn, budget: float, min_reps: int, max_reps: int = 200) -> float:
    """Median seconds of `fn` over repeats filling about `budget` seconds (after one warm-up call), started
    once the previous library's worker threads have gone to sleep."""
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
    """Thread control and availability of the peers."""

    def __init__(self):
        try:
            import torch

            self.torch = torch
        except ImportError:  # pragma: no cover - torch is in the bench extra
            self.torch = None
        try:
            from threadpoolctl import threadpool_limits

            self._limits = threadpool_limits
        except ImportError:
            self._limits = None
        self._blas = None

    def set_threads(self, n: int) -> None:
        pyattn.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)
        if self._limits is not None:
            if self._blas is not None:
                self._blas.restore_original_limits()
            self._blas = self._limits(limits=n, user_api="blas")

    @property
    def numpy_threads_controlled(self) -> bool:
        return self._limits is not None


# ---------------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------------
def gemm_rows(peers: Peers, shapes, threads: int, budget: float, min_reps: int, peak: float) -> list[dict]:
    rng = np.random.default_rng(0)
    torch = peers.torch
    rows = []
    for M, K, N in shapes:
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = (rng.standard_normal((N, K), dtype=np.float32) / np.sqrt(K)).astype(np.float32)
        packed = pyattn.PackedLinear(w)
        flops = 2.0 * M * N * K
        impls = {
            "pyattn": lambda: F.linear(x, w),
            "pyattn_packed": lambda: packed(x),
            "numpy": lambda: x @ w.T,
        }
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            impls["torch"] = lambda: torch.nn.functional.linear(tx, tw)
        row = {"M": M, "K": K, "N": N, "threads": threads}
        for name, fn in impls.items():
            t = measure(fn, budget, min_reps)
            row[f"{name}_ms"] = t * 1e3
            row[f"{name}_gflops"] = flops / t / 1e9
        row["pyattn_packed_pct_peak"] = 100.0 * row["pyattn_packed_gflops"] / peak
        if M == 1:  # a GEMV: its limit is the rate at which the weight streams from memory
            row["pyattn_packed_weight_GBps"] = 4.0 * N * K / (row["pyattn_packed_ms"] / 1e3) / 1e9
        ref = (torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w)).numpy() if torch is not None
               else x.astype(np.float64) @ w.T.astype(np.float64))
        row["max_err_vs_torch"] = float(max(np.abs(packed(x) - ref).max(), np.abs(F.linear(x, w) - ref).max()))
        rows.append(row)
    return rows


def numpy_attention(q, k, v, causal):
    s = q @ np.swapaxes(k, -1, -2) * np.float32(1.0 / np.sqrt(q.shape[-1]))
    if causal:
        L = s.shape[-1]
        s = np.where(np.tril(np.ones((s.shape[-2], L), bool)), s, np.float32(-np.inf))
    s = s - s.max(-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(-1, keepdims=True)
    return s @ v


def attention_rows(peers: Peers, lengths, threads: int, budget: float, min_reps: int) -> list[dict]:
    rng = np.random.default_rng(1)
    torch = peers.torch
    B, H, D = 1, 12, 64
    rows = []
    for L in lengths:
        q, k, v = (rng.standard_normal((B, H, L, D), dtype=np.float32) for _ in range(3))
        for causal in (False, True):
            flops = 4.0 * B * H * L * L * D / (2 if causal else 1)
            impls = {"pyattn": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)}
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(t) for t in (q, k, v))
                impls["torch"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
            if L <= 1024 or budget > 0.1:  # the unfused numpy version writes H x L x L scores
                impls["numpy"] = lambda: numpy_attention(q, k, v, causal)
            row = {"B": B, "H": H, "L": L, "D": D, "causal": causal, "threads": threads}
            for name, fn in impls.items():
                t = measure(fn, budget, min_reps)
                row[f"{name}_ms"] = t * 1e3
                row[f"{name}_gflops"] = flops / t / 1e9
            if torch is not None:
                want = impls["torch"]().numpy()
                row["max_err_vs_torch"] = float(np.abs(impls["pyattn"]() - want).max())
            rows.append(row)
    return rows


def decode_rows(peers: Peers, lengths, threads: int, budget: float, min_reps: int) -> list[dict]:
    rng = np.random.default_rng(2)
    torch = peers.torch
    H, D = 6, 64
    rows = []
    for Lk in lengths:
        q = rng.standard_normal((1, H, 1, D), dtype=np.float32)
        k, v = (rng.standard_normal((1, H, Lk, D), dtype=np.float32) for _ in range(2))
        impls = {"pyattn": lambda: F.scaled_dot_product_attention(q, k, v),
                 "numpy": lambda: numpy_attention(q, k, v, False)}
        if torch is not None:
            tq, tk, tv = (torch.from_numpy(t) for t in (q, k, v))
            impls["torch"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
        row = {"H": H, "Lq": 1, "Lk": Lk, "D": D, "threads": threads}
        for name, fn in impls.items():
            row[f"{name}_us"] = measure(fn, budget, min_reps) * 1e6
        if torch is not None:
            row["max_err_vs_torch"] = float(np.abs(impls["pyattn"]() - impls["torch"]().numpy()).max())
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------
def print_gemm(rows, peak, bw):
    print(f"\nSGEMM y = x W^T, GFLOP/s (median), {rows[0]['threads']} thread(s); measured FMA peak {peak:.0f} GFLOP/s, "
          f"read bandwidth {bw:.1f} GB/s")
    print(f"{'M':>5} {'K':>5} {'N':>6} | {'pyattn':>7} {'packed':>7} {'%peak':>6} | {'numpy':>7} {'torch':>7} | "
          f"{'max err':>8}")
    for r in rows:
        extra = f"  ({r['pyattn_packed_weight_GBps']:.1f} GB/s of weights)" if "pyattn_packed_weight_GBps" in r else ""
        print(f"{r['M']:>5} {r['K']:>5} {r['N']:>6} | {r['pyattn_gflops']:7.1f} {r['pyattn_packed_gflops']:7.1f} "
              f"{r['pyattn_packed_pct_peak']:5.0f}% | {r['numpy_gflops']:7.1f} {r.get('torch_gflops', float('nan')):7.1f} | "
              f"{r['max_err_vs_torch']:8.1e}{extra}")


def print_attention(rows):
    print(f"\nAttention B=1 H=12 D=64, ms (GFLOP/s), {rows[0]['threads']} thread(s)")
    print(f"{'L':>5} {'causal':>6} | {'pyattn':>16} | {'torch SDPA':>16} | {'numpy':>16} | {'max err':>8}")
    for r in rows:
        cells = []
        for name in ("pyattn", "torch", "numpy"):
            cells.append(f"{r[name + '_ms']:7.2f} ({r[name + '_gflops']:5.1f})" if name + "_ms" in r else f"{'-':>16}")
        print(f"{r['L']:>5} {str(r['causal']):>6} | " + " | ".join(cells) + f" | {r.get('max_err_vs_torch', float('nan')):8.1e}")


def print_decode(rows):
    print(f"\nDecode attention Lq=1, H=6, D=64, microseconds, {rows[0]['threads']} thread(s)")
    print(f"{'Lk':>5} | {'pyattn':>8} {'torch':>8} {'numpy':>8} | {'max err':>8}")
    for r in rows:
        print(f"{r['Lk']:>5} | {r['pyattn_us']:8.1f} {r.get('torch_us', float('nan')):8.1f} {r['numpy_us']:8.1f} | "
              f"{r.get('max_err_vs_torch', float('nan')):8.1e}")


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return False
    tmax = max(results["threads"])
    gemm = [r for r in results["gemm"] if r["threads"] == tmax]
    attn = [r for r in results["attention"] if r["threads"] == tmax]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [2, 1]})
    names = [("pyattn_packed", "pyattn (prepacked)"), ("pyattn", "pyattn"), ("numpy", "numpy/OpenBLAS"),
             ("torch", "torch")]
    x = np.arange(len(gemm))
    width = 0.2
    for i, (key, label) in enumerate(names):
        ax1.bar(x + (i - 1.5) * width, [r.get(f"{key}_gflops", 0) for r in gemm], width, label=label)
    ax1.axhline(results["fma_peak_gflops"][str(tmax)], color="k", ls="--", lw=1, label="measured FMA peak")
    ax1.set_xticks(x, [f"{r['M']}x{r['K']}x{r['N']}" for r in gemm], rotation=45, ha="right", fontsize=8)
    ax1.set_ylabel("GFLOP/s")
    ax1.set_title(f"SGEMM, {tmax} threads")
    ax1.legend(fontsize=8)
    for causal, style in ((False, "-"), (True, "--")):
        rs = [r for r in attn if r["causal"] == causal]
        for key, label in (("pyattn", "pyattn"), ("torch", "torch SDPA"), ("numpy", "numpy")):
            pts = [(r["L"], r[f"{key}_ms"]) for r in rs if f"{key}_ms" in r]
            if pts:
                ax2.plot(*zip(*pts), style, marker="o", label=f"{label}{' causal' if causal else ''}")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("sequence length L")
    ax2.set_ylabel("ms (median)")
    ax2.set_title(f"attention B=1 H=12 D=64, {tmax} threads")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subset, few repeats (CI)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output directory")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    budget, min_reps = (0.05, 2) if args.quick else (0.4, 5)
    peers = Peers()
    if not peers.numpy_threads_controlled:
        print("note: threadpoolctl is not installed; numpy's (OpenBLAS) thread count is not controlled")

    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version.split()[0],
                    "cpu_info": pyattn.cpu_info(), "numpy": np.__version__,
                    "torch": getattr(peers.torch, "__version__", None)},
        "threads": threads, "fma_peak_gflops": {}, "read_bandwidth_GBps": {},
        "gemm": [], "attention": [], "decode": [],
    }
    print(f"pyattn {pyattn.__version__}, kernels {pyattn.get_isa()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"torch {results['machine']['torch']}")
    for n in threads:
        peers.set_threads(n)
        peak = _core.measure_fma_peak(n, 0.2 if args.quick else 0.5)
        bw = _core.measure_read_bandwidth(n, 64 if args.quick else 256, 3)
        results["fma_peak_gflops"][str(n)] = peak
        results["read_bandwidth_GBps"][str(n)] = bw
        g = gemm_rows(peers, QUICK_GEMM if args.quick else GEMM_SHAPES, n, budget, min_reps, peak)
        print_gemm(g, peak, bw)
        a = attention_rows(peers, QUICK_ATTN if args.quick else ATTN_LENGTHS, n, budget, min_reps)
        print_attention(a)
        d = decode_rows(peers, QUICK_DECODE if args.quick else DECODE_LK, n, budget, min_reps)
        print_decode(d)
        results["gemm"] += g
        results["attention"] += a
        results["decode"] += d

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "kernels_quick" if args.quick else "kernels"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out / f'{stem}.json'}")
    if plot(results, out / f"{stem}.png"):
        print(f"wrote {out / f'{stem}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
