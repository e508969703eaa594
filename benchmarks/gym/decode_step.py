"""Kernel gym: one decoding step of SmolLM2-135M (Q4_1 GGUF), split into what it costs.

    python benchmarks/gym/decode_step.py [--threads 2] [--rounds 9]

Prints, as medians over interleaved rounds in one process:
  step        a whole greedy step (model call + argmax) at 128 tokens of context,
  stack       the 30 layers alone (_core.decoder_stack), one parallel region per step (team) or layer by layer,
  head        the final norm and the tied output projection (49152 x 576 int8),
  context     the stack at 16 and 512 tokens of context (the difference is the attention's share).
"""

import argparse
import statistics
import time

import numpy as np

import pyattn
from pyattn import _core
from pyattn.models.llama import LlamaModel


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    pyattn.set_num_threads(args.threads)
    m = LlamaModel.from_gguf()
    rng = np.random.default_rng(0)
    stack = m._fused_stack()

    def stack_at(ctx: int):
        state = m.init_state(1)
        m(rng.integers(0, 1000, (1, ctx)), state=state, last_only=True)
        caches, pos = state.caches, np.array([[ctx]], np.int64)
        for c in caches:
            c.reserve(ctx + 1)
        emb = np.ascontiguousarray(m.embed(np.array([[5]])), np.float32)

        def run():
            stream = emb.copy()
            _core.decoder_stack(stack, stream, pos, *m._ropes, [c.k for c in caches], [c.v for c in caches],
                                ctx, None)  # fmt: skip

        return state, run

    state, stack128 = stack_at(128)
    _, stack16 = stack_at(16)
    _, stack512 = stack_at(512)
    h = rng.standard_normal((1, 1, 576)).astype(np.float32)

    def step():
        m(np.array([[5]]), state=state)["logits"][:, -1].argmax(-1)
        for c in state.caches:
            c.length -= 1  # keep the context at 128

    cases = {
        "step (team)": (8, step),
        "step (layer by layer)": (0, step),
        "stack 128 (team)": (8, stack128),
        "stack 128 (layer by layer)": (0, stack128),
        "stack 16 (team)": (8, stack16),
        "stack 512 (team)": (8, stack512),
        "head": (8, lambda: m.lm_head(h)),
    }
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, (team, fn) in cases.items():
            _core._tune_team_rows(team)
            fn()
            times[name].append(timed(fn, args.steps))
    _core._tune_team_rows(8)
    print(f"SmolLM2-135M Q4_1, {args.threads} thread(s), medians of {args.rounds} rounds x {args.steps} calls")
    for name, ts in times.items():
        print(f"  {name:28s} {statistics.median(ts):7.2f} ms  (min {min(ts):.2f})")


if __name__ == "__main__":
    main()
