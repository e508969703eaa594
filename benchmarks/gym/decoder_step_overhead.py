"""Kernel gym: the per-token cost of driving a 30-layer decoder from Python, before and after the C++ decoder step.

    python benchmarks/gym/decoder_step_overhead.py [--threads 1] [--d 64]

A SmolLM2-shaped stack (30 layers, 9 query / 3 KV heads, SwiGLU) made tiny (d_model 64 by default) so that the
arithmetic is negligible and what remains is the glue: "python" drives each layer with the ~10 functional calls
LlamaModel made per layer until the C++ step (RMSNorm with the residual, the Q/K/V GEMM, two RoPE calls, the cache
append, the fused attention, W_o, RMSNorm, the gate/up GEMM, SwiGLU, W_down); "fused" is _core.decoder_stack, one
call for all layers. Prints the median microseconds per decoding step of each and their difference.
"""

import argparse
import statistics
import time

import numpy as np

import pyattn
from pyattn import _core
from pyattn import functional as F
from pyattn.nn import KVCache, Linear

LAYERS, H, HKV = 30, 9, 3


def build(d: int, rng):
    D = d // H if d % H == 0 else 8
    ff = 4 * d
    layers = []
    for _ in range(LAYERS):
        w = {
            "qkv": Linear(rng.standard_normal(((H + 2 * HKV) * D, d)).astype(np.float32) / 8, None, "qkv"),
            "o": Linear(rng.standard_normal((d, H * D)).astype(np.float32) / 8, None, "o"),
            "gate_up": Linear(rng.standard_normal((2 * ff, d)).astype(np.float32) / 8, None, "gu"),
            "down": Linear(rng.standard_normal((d, ff)).astype(np.float32) / 8, None, "down"),
            "n1": np.ones(d, np.float32),
            "n2": np.ones(d, np.float32),
        }
        w["fused"] = _core.DecoderLayer(
            w["qkv"]._packed, w["o"]._packed, w["gate_up"]._packed, w["down"]._packed, w["n1"], w["n2"], 1e-5, H, HKV,
            D, True,
        )  # fmt: skip
        layers.append(w)
    return layers, D


def python_step(layers, stream, positions, cos, sin, caches, D):
    """One step as LlamaModel ran it before the C++ step: ~10 calls into the core per layer."""
    B, L, _ = stream.shape
    pending = None
    for w, cache in zip(layers, caches):
        n = F.rms_norm(pending if pending is not None else stream, w["n1"], 1e-5,
                       residual=stream if pending is not None else None)  # fmt: skip
        qkv = w["qkv"](n)
        q = qkv[..., : H * D].reshape(B, L, H, D)
        k = qkv[..., H * D : (H + HKV) * D].reshape(B, L, HKV, D)
        F.rotary_embedding(q, positions, cos, sin, interleaved=True)
        F.rotary_embedding(k, positions, cos, sin, interleaved=True)
        cache.append(qkv[..., H * D : (H + HKV) * D], qkv[..., (H + HKV) * D :])
        kh, vh = cache.heads(HKV)
        ctx = np.empty((B, L, H, D), np.float32)
        _core.scaled_dot_product_attention(q.transpose(0, 2, 1, 3), kh, vh, is_causal=True,
                                           causal_offset=cache.length - L, out=ctx.transpose(0, 2, 1, 3))  # fmt: skip
        a = w["o"](ctx.reshape(B, L, H * D))
        m = F.rms_norm(a, w["n2"], 1e-5, residual=stream)
        pending = w["down"](F.swiglu(w["gate_up"](m)))
    return pending


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d", type=int, default=72)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    pyattn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    layers, D = build(args.d, rng)
    cos, sin = F.rope_tables(4096, D, 10000.0)
    results = {}
    for mode in ("python", "fused", "python", "fused"):
        caches = [KVCache(1, HKV * D, 64) for _ in layers]
        times = []
        for t in range(args.steps):
            stream = rng.standard_normal((1, 1, args.d)).astype(np.float32)
            positions = np.array([[t]], np.int64)
            t0 = time.perf_counter()
            if mode == "python":
                python_step(layers, stream, positions, cos, sin, caches, D)
            else:
                for c in caches:
                    c.reserve(t + 1)
                _core.decoder_stack([w["fused"] for w in layers], stream, positions, cos, sin,
                                    [c.k for c in caches], [c.v for c in caches], t)  # fmt: skip
                for c in caches:
                    c.length = t + 1
            times.append(time.perf_counter() - t0)
        results.setdefault(mode, []).extend(times[20:])
    py, fu = statistics.median(results["python"]) * 1e6, statistics.median(results["fused"]) * 1e6
    print(
        f"{LAYERS} layers, d_model {args.d}, {args.threads} thread(s): python {py:.0f} us/step, fused {fu:.0f} "
        f"us/step, glue saved {py - fu:.0f} us per token ({(py - fu) / LAYERS:.1f} us per layer)"
    )


if __name__ == "__main__":
    main()
