"""Ray Data against one process: sentences/s of all-MiniLM-L6-v2 embeddings through pyattn.ray (a pool of actors of
one CPU and one pyattn thread each) and through SentenceEncoder.encode in this process (as many threads as the
actors' CPUs together), on the same lines.

    python benchmarks/bench_ray.py               # 2 actors x 1 thread vs 1 process x 2 threads, 5,000 lines
    python benchmarks/bench_ray.py --quick       # CI-sized: 500 lines

Every Ray Data execution starts its actor pool and loads the model in each actor: the table gives the whole run
and the run less the time of a run over 8 lines (that start-up); the single-process time is encode alone, the
model loaded. Both embed the same lines and
the table gives their largest difference. Writes benchmarks/results/ray_<machine tag>.{json,txt}
(benchmarks/_machine.py; --quick: ray_<tag>_quick.*, gitignored).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import random
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
from _machine import describe as describe_machine  # noqa: E402  benchmarks/_machine.py (the script's folder)
from _machine import headline, package_versions, result_paths  # noqa: E402

WORDS = (
    "the a cat dog runs fast sky blue red model vector over under of in and is was attention batch worker "
    "cluster node thread core memory über naïve café 学生 東京 привет 42 3.14"
).split()


def corpus(n: int, seed: int = 0) -> list:
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS) for _ in range(r.randint(3, 24))) for _ in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lines", type=int, default=None, help="sentences (default 5000, --quick 500)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256, help="rows per Ray batch")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    n = args.lines or (500 if args.quick else 5000)
    texts = corpus(n)

    import ray

    import pyattn
    from pyattn.models import SentenceEncoder
    from pyattn.ray import embed_dataset

    machine = describe_machine()
    enc = SentenceEncoder.from_pretrained()
    pyattn.set_num_threads(args.actors)
    enc.encode(texts[:64])  # warm-up
    t0 = time.perf_counter()
    ref = enc.encode(texts)
    single_s = time.perf_counter() - t0

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="pyattn-ray-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # Ray puts the driver's directory on the workers' path: not a pyattn source tree
        ray.init(num_cpus=args.actors, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            items = [{"id": i, "text": t} for i, t in enumerate(texts)]

            def run(rows: list) -> tuple:
                ds = ray.data.from_items(rows)
                t0 = time.perf_counter()
                out = embed_dataset(ds, actors=args.actors, num_cpus=1, batch_size=args.batch_size).take_all()
                return out, time.perf_counter() - t0

            run(items[:8])  # the first run also starts Ray Data's own actors
            _, startup_s = run(items[:8])  # each run starts its actors and loads the model in each
            rows, total_s = run(items)
        finally:
            ray.shutdown()
            os.chdir(cwd)
    got = np.empty_like(ref)
    for row in rows:
        got[row["id"]] = row["embedding"]
    diff = float(np.abs(got - ref).max())

    result = {
        "lines": n,
        "actors": args.actors,
        "single_process_threads": args.actors,
        "single_process_s": single_s,
        "single_process_sentences_per_s": n / single_s,
        "ray_s": total_s,
        "ray_startup_s": startup_s,
        "ray_sentences_per_s": n / total_s,
        "ray_sentences_per_s_after_startup": n / (total_s - startup_s),
        "max_abs_difference": diff,
    }
    buf = io.StringIO()
    with redirect_stdout(buf):
        print(headline(machine))
        print(f"all-MiniLM-L6-v2, {n} sentences of 3-24 words, float32")
        print(f"{'run':<46} | {'seconds':>8} | {'sentences/s':>11}")
        print(f"{f'one process, {args.actors} pyattn threads':<46} | {single_s:8.2f} | {n / single_s:11.0f}")
        label = f"Ray Data, {args.actors} actors x 1 CPU x 1 thread"
        print(f"{label:<46} | {total_s:8.2f} | {n / total_s:11.0f}")
        steady = total_s - startup_s
        print(f"{f'  less start-up ({startup_s:.1f} s: 8 lines)':<46} | {steady:8.2f} | {n / steady:11.0f}")
        print(f"largest difference between the two: {diff:.2e}")
    text = buf.getvalue()
    if args.quick:
        text += "(--quick: a few hundred lines on a shared machine; the times mean nothing)\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = result_paths(out, "ray", machine, args.quick)
    paths["txt"].write_text(text)
    paths["json"].write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "quick": args.quick,
                "machine": machine,
                "versions": package_versions("ray", "numpy", "pyarrow"),
                "result": result,
            },
            indent=1,
        )
    )
    print(f"wrote {paths['json']} and {paths['txt']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
