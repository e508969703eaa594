"""The documents' recurrent models: pyattn vs PyTorch (eager, inference_mode), one run, 1 and 2 threads, medians.

    python benchmarks/bench_seq2seq.py            # full run
    python benchmarks/bench_seq2seq.py --quick    # CI-sized

* GRU steps: a torch.nn.GRU(hidden, hidden, batch_first) layer over a sequence (encoder-like: batch 32, 64
  steps) and one step at a time (decoder-like: batch 1 and 32), pyattn.nn.GRU with the same weights.
* Seq2seq greedy decoding (EncoderRNN + Bahdanau AttnDecoderRNN of the PyTorch tutorial, hidden 512, target
  vocabulary 10000, source 16 tokens, 32 decoded tokens): ms per decoded token at batch 1 and 32 -- pyattn
  (keys projected once per source) vs the tutorial's decoder loop in torch. The ids are checked identical.
The table names the CPU. Writes benchmarks/results/seq2seq_<machine tag>.{json,txt} (benchmarks/_machine.py;
--quick: seq2seq_<tag>_quick.*, gitignored).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import statistics
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
from _machine import describe as describe_machine  # benchmarks/_machine.py (the script's folder is on sys.path)
from _machine import headline, result_paths

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the tutorial's torch modules live with the tests


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench(threads: int, quick: bool) -> dict:
    import torch
    import torch_seq2seq as ref

    import pyattn
    from pyattn.models import Seq2Seq
    from pyattn.nn import GRU

    torch.set_num_threads(threads)
    pyattn.set_num_threads(threads)
    reps = 3 if quick else 15
    H = 512
    rng = np.random.default_rng(0)
    res = {"threads": threads}
    torch.manual_seed(0)
    tg = torch.nn.GRU(H, H, batch_first=True).eval()
    pg = GRU.from_torch(tg)
    for name, (B, T) in {"gru_seq_b32_t64": (32, 64), "gru_step_b1": (1, 1), "gru_step_b32": (32, 1)}.items():
        x = rng.standard_normal((B, T, H)).astype(np.float32)
        h = rng.standard_normal((1, B, H)).astype(np.float32)
        xt, ht = torch.from_numpy(x), torch.from_numpy(h)
        with torch.inference_mode():
            res[f"{name}_torch_ms"] = median_ms(lambda: tg(xt, ht), reps * 3)
        res[f"{name}_pyattn_ms"] = median_ms(lambda: pg(x, h), reps * 3)
    V, S, steps = 10000, 16, 32
    enc, dec = ref.build(src_vocab=V, tgt_vocab=V, hidden=H, seed=0, sos_id=0, max_length=steps)
    model = Seq2Seq.from_torch(enc, dec, sos_id=0, eos_id=1, max_length=steps)
    for B in (1, 32):
        src = rng.integers(2, V, (B, S))
        st = torch.from_numpy(src)

        def run_torch():
            with torch.inference_mode():
                memory, hidden = enc(st)
                return dec(memory, hidden)[0].argmax(-1)

        # Decode exactly `steps` tokens in both (the tutorial's loop has no early stop): pyattn with EOS unreachable.
        model.eos_id = -1
        res[f"seq2seq_b{B}_torch_ms_per_token"] = median_ms(run_torch, reps) / steps
        res[f"seq2seq_b{B}_pyattn_ms_per_token"] = median_ms(lambda: model.greedy(src), reps) / steps
        res[f"seq2seq_b{B}_identical_ids"] = bool(
            np.array_equal(np.asarray(model.greedy(src).ids), run_torch().numpy())
        )
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    machine = describe_machine()
    runs = [bench(int(t), args.quick) for t in args.threads.split(",")]
    buf = io.StringIO()
    with redirect_stdout(buf):
        print(headline(machine))
        print("GRU (hidden 512) and the tutorial's seq2seq (hidden 512, vocab 10000, source 16): median ms")
        print(f"{'case':<34} | {'thr':>3} | {'pyattn':>9} | {'torch':>9} | {'speed-up':>8}")
        for r in runs:
            for key in [k for k in r if k.endswith("_pyattn_ms") or k.endswith("_pyattn_ms_per_token")]:
                tk = key.replace("_pyattn_", "_torch_")
                print(
                    f"{key.replace('_pyattn', ''):<34} | {r['threads']:>3} | {r[key]:9.3f} | {r[tk]:9.3f} | "
                    f"{r[tk] / r[key]:7.2f}x"
                )
            print(
                f"identical greedy ids: batch 1 {r['seq2seq_b1_identical_ids']}, batch 32 "
                f"{r['seq2seq_b32_identical_ids']} ({r['threads']} thread(s))"
            )
    text = buf.getvalue()
    if args.quick:
        text += "(--quick: a few repeats on a shared machine; the times mean nothing)\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = result_paths(out, "seq2seq", machine, args.quick)
    paths["txt"].write_text(text)
    paths["json"].write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "quick": args.quick,
                "machine": machine,
                "runs": runs,
            },
            indent=1,
        )
    )
    print(f"wrote {paths['json']} and {paths['txt']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
