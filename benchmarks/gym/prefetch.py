"""Kernel gym: software prefetch distance of the block kernels (int8, 4-bit) on decoding-shaped GEMVs.

    python benchmarks/gym/prefetch.py [--threads 1]

Streams SmolLM2-135M's weights as a decoding step does (30 layers of Q/K/V, W_o, gate/up, down in q4_1, and the
49152 x 576 int8 output head), alternating the prefetch distances within one process, and prints the median time
and read rate of each. The winner becomes the default of kernels::stream_prefetch_bytes.
"""

import argparse
import statistics
import time

import numpy as np

import pyattn
from pyattn import _core

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--distances", default="0,256,512,1024,2048,4096")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    pyattn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    layers = [
        {k: _core.PackedLinear(rng.standard_normal(s).astype(np.float32), None, "q4_1") for k, s in SHAPES.items()}
        for _ in range(30)
    ]
    head = _core.PackedLinear(rng.standard_normal((49152, 576)).astype(np.float32), None, "int8")
    x = {k: rng.standard_normal((1, s[1])).astype(np.float32) for k, s in SHAPES.items()}
    xh = rng.standard_normal((1, 576)).astype(np.float32)
    layer_bytes = sum(lin.nbytes for lr in layers for lin in lr.values())
    dists = [int(d) for d in args.distances.split(",")]
    times = {d: {"layers": [], "head": []} for d in dists}
    for _ in range(args.rounds):
        for d in dists:
            _core._tune_prefetch(d)
            t0 = time.perf_counter()
            for lr in layers:
                for k, lin in lr.items():
                    lin(x[k])
            t1 = time.perf_counter()
            head(xh)
            t2 = time.perf_counter()
            times[d]["layers"].append(t1 - t0)
            times[d]["head"].append(t2 - t1)
    _core._tune_prefetch(4096)
    print(f"{args.threads} thread(s); q4_1 layers {layer_bytes / 1e6:.1f} MB, int8 head {head.nbytes / 1e6:.1f} MB")
    for d in dists:
        tl, th = statistics.median(times[d]["layers"]), statistics.median(times[d]["head"])
        print(f"prefetch {d:5d}: layers {tl * 1e3:6.2f} ms ({layer_bytes / tl / 1e9:5.1f} GB/s)  "
              f"head {th * 1e3:6.2f} ms ({head.nbytes / th / 1e9:5.1f} GB/s)")  # fmt: skip


if __name__ == "__main__":
    main()
