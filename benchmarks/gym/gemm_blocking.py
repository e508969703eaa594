"""Kernel gym: sweep the GEMM cache blocking (MC, KC, NC) of one kernel set and print GFLOP/s.

    python benchmarks/gym/gemm_blocking.py --isa avx512 --threads 2

Only the winner moves into cpp/kernels/<isa>/ (make_kernel_set's arguments).
"""

import argparse
import itertools
import time

import numpy as np

from pyattn import _core

SHAPES = [
    (2048, 2048, 2048),
    (1024, 1024, 1024),
    (128, 384, 1152),
    (512, 768, 3072),
    (512, 3072, 768),
    (2048, 384, 1152),
]


def median_time(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(min(ts))  # best of: the least noisy estimate for comparing variants


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--isa", default=_core.get_isa())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mc", default="96,192,384")
    ap.add_argument("--kc", default="128,256,384")
    ap.add_argument("--nc", default="4096")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    _core.set_isa(args.isa)
    _core.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    data = {
        s: (rng.standard_normal(s[:2]).astype(np.float32), rng.standard_normal(s[1:][::-1]).astype(np.float32))
        for s in SHAPES
    }
    print("MC   KC   NC   " + "  ".join(f"{m}x{k}x{n}".rjust(14) for m, k, n in SHAPES))
    for mc, kc, nc in itertools.product(*(map(int, v.split(",")) for v in (args.mc, args.kc, args.nc))):
        _core._tune_blocking(args.isa, mc, kc, nc)
        row = []
        for s in SHAPES:
            a, w = data[s]
            pl = _core.PackedLinear(w)
            fl = 2.0 * s[0] * s[1] * s[2] / 1e9
            row.append(
                f"{fl / median_time(lambda: pl(a), args.reps):6.1f}/{fl / median_time(lambda: _core.linear(a, w), args.reps):6.1f}"  # noqa: E501
            )
        print(f"{mc:<4d} {kc:<4d} {nc:<4d} " + "  ".join(r.rjust(14) for r in row), flush=True)


if __name__ == "__main__":
    main()
