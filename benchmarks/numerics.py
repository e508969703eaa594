"""Worst error of each kernel against float64 numpy, on every kernel set this CPU runs, on the shapes the tests use.

    python benchmarks/numerics.py        # prints a Markdown table, writes benchmarks/results/numerics_<tag>.{md,json}

(<tag> names the machine kind, benchmarks/_machine.py: the kernel sets it runs differ from one CPU to another.)

The error of a result is max |got - ref| / max |ref| (relative to its largest entry: element-wise relative
error is meaningless where the exact value is 0), the worst over the shapes listed; float32 epsilon is 1.2e-7.
"""

from __future__ import annotations

import json
import sys
from math import erf, sqrt
from pathlib import Path

import numpy as np
from _machine import describe as describe_machine  # benchmarks/_machine.py (the script's folder is on sys.path)
from _machine import headline, result_paths

import pyattn
from pyattn import _core
from pyattn import functional as F

HERE = Path(__file__).resolve().parent
MATMUL_SHAPES = [
    (1, 1, 1),
    (7, 65, 33),
    (17, 513, 63),
    (63, 129, 1000),
    (1000, 513, 65),
    (2, 384, 1536),
    (129, 1000, 127),
]
ROW_SHAPES = [(1, 1), (3, 7), (17, 63), (64, 1000), (8, 4097)]
ATTN_SHAPES = [(1, 1, 1, 1, 8), (2, 3, 5, 17, 16), (1, 2, 64, 300, 64), (2, 4, 129, 129, 32), (1, 1, 7, 2048, 64)]


def rel(got, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def softmax64(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention64(q, k, v, mask=None, causal=False):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    if mask is not None:
        s = np.where(mask[:, None, None, :], -np.inf, s)
    return softmax64(s) @ v


def cases(rng):
    f64 = np.float64
    gelu64 = np.vectorize(lambda t: 0.5 * t * (1 + erf(t / sqrt(2))))
    for M, K, N in MATMUL_SHAPES:
        a, b = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
        yield "matmul", F.matmul(a, b), a.astype(f64) @ b
        w = np.ascontiguousarray(b.T)
        yield "PackedLinear", pyattn.PackedLinear(w)(a), a.astype(f64) @ b
        w16 = w.astype(np.float16)
        yield "PackedLinear (float16 weights)", pyattn.PackedLinear(w16)(a), a.astype(f64) @ w16.astype(f64).T
        if M * N <= 70000:
            yield "linear + GELU", F.linear(a, w, activation="gelu"), gelu64(a.astype(f64) @ b)
    for shape in ROW_SHAPES:
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        x64 = x.astype(f64)
        yield "softmax", F.softmax(x), softmax64(x64)
        yield "log_softmax", F.log_softmax(x), np.log(softmax64(x64))
        m, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
        yield "layer_norm", F.layer_norm(x), (x64 - m) / np.sqrt(var + 1e-5)
        yield "gelu (erf)", F.gelu(x), gelu64(x64)
        yield (
            "gelu (tanh)",
            F.gelu(x, approximate="tanh"),
            0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3))),
        )
        yield "silu", F.silu(x), x64 / (1 + np.exp(-x64))
    for B, H, Lq, Lk, D in ATTN_SHAPES:
        q = rng.standard_normal((B, H, Lq, D)).astype(np.float32)
        k = rng.standard_normal((B, H, Lk, D)).astype(np.float32)
        v = rng.standard_normal((B, H, Lk, D)).astype(np.float32)
        yield (
            "attention (fused)",
            F.scaled_dot_product_attention(q, k, v),
            attention64(*(t.astype(f64) for t in (q, k, v))),
        )
        mask = rng.random((B, Lk)) < 0.3
        mask[:, 0] = False
        yield (
            "attention (key padding)",
            F.scaled_dot_product_attention(q, k, v, key_padding_mask=mask),
            attention64(q.astype(f64), k.astype(f64), v.astype(f64), mask),
        )
        if Lq == Lk:
            yield (
                "attention (causal)",
                F.scaled_dot_product_attention(q, k, v, is_causal=True),
                attention64(q.astype(f64), k.astype(f64), v.astype(f64), causal=True),
            )
    for B, Lk, Hd in [(1, 1, 1), (3, 17, 33), (32, 64, 512)]:
        qp = rng.standard_normal((B, 1, Hd)).astype(np.float32)
        kp = rng.standard_normal((B, Lk, Hd)).astype(np.float32)
        vv = rng.standard_normal(Hd).astype(np.float32)
        yield "additive scores", _core.additive_scores(qp, kp, vv), (np.tanh(qp.astype(f64) + kp) @ vv)[:, None, :]
    for I, Hd, T in [(7, 5, 4), (64, 128, 17), (256, 256, 10)]:
        wih = (rng.standard_normal((3 * Hd, I)) / np.sqrt(I)).astype(np.float32)
        whh = (rng.standard_normal((3 * Hd, Hd)) / np.sqrt(Hd)).astype(np.float32)
        x = rng.standard_normal((2, T, I)).astype(np.float32)
        out, _ = _core.GRULayer(wih, whh)(x)
        h = np.zeros((2, Hd))
        ref = []
        for t in range(T):
            gi, gh = x[:, t].astype(f64) @ wih.T, h @ whh.T.astype(f64)
            r = 1 / (1 + np.exp(-(gi[:, :Hd] + gh[:, :Hd])))
            z = 1 / (1 + np.exp(-(gi[:, Hd : 2 * Hd] + gh[:, Hd : 2 * Hd])))
            c = np.tanh(gi[:, 2 * Hd :] + r * gh[:, 2 * Hd :])
            h = (1 - z) * c + z * h
            ref.append(h)
        yield "GRU layer", out, np.stack(ref, 1)


def main() -> int:
    table = {}
    before = pyattn.get_isa()
    isas = list(_core.available_isas())
    for isa in isas:
        pyattn.set_isa(isa)
        for name, got, ref in cases(np.random.default_rng(0)):
            table.setdefault(name, {})
            table[name][isa] = max(table[name].get(isa, 0.0), rel(got, ref))
    pyattn.set_isa(before)
    lines = ["| kernel | " + " | ".join(isas) + " |", "|---|" + "---|" * len(isas)]
    lines += [f"| {name} | " + " | ".join(f"{row[i]:.1e}" for i in isas) + " |" for name, row in table.items()]
    text = "\n".join(lines)
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    machine = describe_machine()
    paths = result_paths(out, "numerics", machine, quick=False)
    paths["txt"].with_suffix(".md").write_text(
        "Worst max|got - ref| / max|ref| against float64 numpy (`python benchmarks/numerics.py`)\n"
        f"{headline(machine)}\n\n{text}\n"
    )
    paths["json"].write_text(json.dumps({"machine": machine, "isas": isas, "errors": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
