"""Server benchmark: `pyattn serve` under N concurrent clients. Two loads:

* embeddings (default): with and without dynamic batching, against offline `SentenceEncoder.encode` and against
  sentence-transformers behind a minimal FastAPI endpoint;
* generation (--task generation): chat completions with continuous batching (concurrent requests share decoding
  steps) against the same server serving one generation at a time.

    python benchmarks/bench_serve.py                    # full run: 1, 8, 32, 128 clients, 20 s each
    python benchmarks/bench_serve.py --quick            # CI-sized: proves it runs, its numbers mean nothing
    python benchmarks/bench_serve.py --peer-python other-venv/bin/python   # the peer in another environment
    python benchmarks/bench_serve.py --task generation  # 1, 4, 8 chat clients, 30 s each
    python benchmarks/bench_serve.py --task generation --quick

Embeddings: each client sends requests of 1-32 sentences (5-40 words from a fixed vocabulary, seeded) one after
another, on localhost, until the level's time or request budget is spent, asking for the vectors in base64 and
decoding them with numpy, as the official openai client does unless told otherwise (--encoding-format float: JSON
numbers, which cost the load generator about twice the CPU). Rows:

* offline    -- SentenceEncoder.encode over the same sentence mix in a fresh process, batch_size 32: the ceiling;
                measured at the start and again just before each batched level (the server idle meanwhile), each
                level's ratio taken against the run before it, the median of all runs in the table and plot;
* batched    -- `pyattn serve` with its defaults (requests gathered up to --max-batch-size sentences, one lane of
                batches per thread);
* batched-1lane -- the same with `--embed-lanes 1`: one batch at a time on all the threads (not in the default set);
* unbatched  -- `pyattn serve --max-batch-size 0`: one request per encode call, text-embeddings-inference's
                batching absent;
* peer       -- benchmarks/_st_server.py (sentence-transformers, torch, one encode per request in FastAPI's thread
                pool), when this interpreter or --peer-python's has them (skipped, with the reason, otherwise).

Columns: throughput (sentences/s answered 200), p50 / p99 request latency, errors (non-200 or transport; must be 0
below the queue limit), the server's RSS before the level, after it (2 s idle), and its peak so far (VmHWM); the
cores the server process and the load generator kept busy, and the share of the level's time pyattn's model lanes
spent computing batches (its /metrics: near 100%, the gap to offline is compute slowed by what shares its cores, not
the batcher waiting).

Generation: each client sends chat completions one after another -- a question drawn (seeded) from a fixed list
that asks for a long answer, greedy, --max-tokens-per-request (32) new tokens -- to the default LLM. Rows:

* continuous -- `pyattn serve` with its defaults (up to --max-concurrent-generations 8 requests decoded together,
                one token each per step, joining and leaving between steps);
* queued     -- `pyattn serve --max-concurrent-generations 1`: one generation at a time, the others wait (what the
                server did before continuous batching).

Columns: aggregate generated tokens/s (usage.completion_tokens of the answers, over the level's wall time), p50 /
p99 request latency, errors, requests.

The server runs in its own process; the load generator (httpx, asyncio) shares the machine with it, as a client on
the same host would. Writes benchmarks/results/serve_<machine tag>.{json,txt,png} (generation:
serve_generation_<tag>.*; --quick: *_quick.*, gitignored).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from _machine import describe as describe_machine  # benchmarks/_machine.py (the script's folder is on sys.path)
from _machine import headline, package_versions, result_paths

HERE = Path(__file__).resolve().parent
MODEL = "all-MiniLM-L6-v2"
LLM = "SmolLM2-135M-Instruct"
IDLE_SECONDS = 2.0  # between a level's load and its "after" RSS
WORDS = (
    "the a of server batch model vector token attention sentence query key value layer network request client "
    "latency throughput memory thread queue answer question language speech text search index document page "
    "quick brown fox jumps over lazy dog river mountain city night morning student teacher paper result"
).split()


QUESTIONS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle works, part by part.",
    "Describe a walk through a forest in autumn.",
    "Why do cities grow near rivers? Give several reasons.",
    "Tell me about the life of a honey bee, from egg to adult.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain what a computer does when you press a key.",
    "Describe the history of the printing press.",
    "List ten things to pack for a week of camping, and say why.",
    "Write a poem about the sea at night.",
    "How does rain form? Explain step by step.",
    "Describe your favourite meal and how to cook it.",
]


def sentences(rng: np.random.Generator, n: int) -> List[str]:
    return [" ".join(rng.choice(WORDS, int(rng.integers(5, 41)))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def model_seconds(url: str) -> Optional[float]:
    """pyattn serve's compute time on embedding batches so far (the sum of its pyattn_batch_seconds histogram) per
    lane (pyattn_embedding_lanes: batches computed at once), or None from a server without it (the peer)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        r = httpx.get(f"{url}/metrics", timeout=5)
    except httpx.TransportError:
        return None
    if r.status_code != 200:
        return None
    samples = [s for fam in text_string_to_metric_families(r.text) for s in fam.samples]
    sums = [s.value for s in samples if s.name == "pyattn_batch_seconds_sum"]
    lanes = sum(s.value for s in samples if s.name == "pyattn_embedding_lanes") or 1
    return sum(sums) / lanes if sums else None


def start(cmd: List[str], port: int, timeout: float = 180.0) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{' '.join(cmd)} did not answer /health within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def run_clients(client, clients: int, timeout: float) -> float:
    """Runs `client(c, i)` for i < clients concurrently over one connection pool; returns the seconds they took."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, i) for i in range(clients)))
        return time.perf_counter() - t0


def summary(clients: int, latencies: List[float], errors: List[str], elapsed: float, unit: str, count: int) -> dict:
    """One level's row: requests, `count` of `unit` answered (and per second), p50 / p99 latency, errors."""
    lat = sorted(latencies) or [float("nan")]
    return {
        "clients": clients,
        "requests": len(latencies),
        unit: count,
        "seconds": elapsed,
        f"{unit}_per_s": count / elapsed,
        "p50_ms": statistics.median(lat) * 1e3,
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3,
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
    }


def vectors(data: list, fmt: str) -> List[np.ndarray]:
    """The response's vectors as the client would use them (base64: decoded, as the openai client does)."""
    if fmt == "base64":
        return [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data]
    return [np.asarray(d["embedding"], np.float32) for d in data]


async def load(url: str, clients: int, seconds: float, max_requests: int, seed: int, fmt: str) -> dict:
    """`clients` loops sending 1-32 sentences per request until `seconds` or `max_requests` in all."""
    import httpx

    rng = np.random.default_rng(seed)
    pool = sentences(rng, 2048)
    latencies: List[float] = []
    errors: List[str] = []
    done = [0, 0]  # requests sent, sentences answered
    deadline = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient, i: int) -> None:
        r = np.random.default_rng(seed * 1000 + i)
        while time.perf_counter() < deadline and done[0] < max_requests:
            done[0] += 1
            k = int(r.integers(1, 33))
            start = int(r.integers(0, len(pool) - k))
            body = {"model": MODEL, "input": pool[start : start + k], "encoding_format": fmt}
            t0 = time.perf_counter()
            try:
                resp = await c.post(f"{url}/v1/embeddings", json=body)
                ok = resp.status_code == 200 and len(vectors(resp.json()["data"], fmt)) == k
                if not ok:
                    errors.append(f"{resp.status_code}")
            except httpx.HTTPError as e:
                ok = False
                errors.append(type(e).__name__)
            latencies.append(time.perf_counter() - t0)
            if ok:
                done[1] += k

    elapsed = await run_clients(client, clients, 120)
    return summary(clients, latencies, errors, elapsed, "sentences", done[1])


async def load_generation(
    url: str, clients: int, seconds: float, max_requests: int, seed: int, max_tokens: int
) -> dict:
    """`clients` loops sending one chat completion at a time until `seconds` or `max_requests` in all."""
    import httpx

    latencies: List[float] = []
    errors: List[str] = []
    done = [0, 0]  # requests sent, tokens generated
    deadline = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient, i: int) -> None:
        r = np.random.default_rng(seed * 1000 + i)
        while time.perf_counter() < deadline and done[0] < max_requests:
            done[0] += 1
            question = QUESTIONS[int(r.integers(0, len(QUESTIONS)))]
            body = {"model": LLM, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                    "temperature": 0}  # fmt: skip
            t0 = time.perf_counter()
            try:
                resp = await c.post(f"{url}/v1/chat/completions", json=body)
                if resp.status_code == 200:
                    done[1] += resp.json()["usage"]["completion_tokens"]
                else:
                    errors.append(f"{resp.status_code}")
            except httpx.HTTPError as e:
                errors.append(type(e).__name__)
            latencies.append(time.perf_counter() - t0)

    elapsed = await run_clients(client, clients, 300)
    return summary(clients, latencies, errors, elapsed, "tokens", done[1])


def offline(n: int, seed: int, threads: int, dtype: Optional[str]) -> dict:
    """SentenceEncoder.encode over the same sentence mix, in a fresh process (no server beside it)."""
    cmd = [sys.executable, __file__, "--offline-worker", str(n), "--seed", str(seed), "--threads", str(threads)]
    cmd += ["--dtype", dtype] if dtype else []
    out = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def offline_worker(n: int, seed: int, threads: int, dtype: Optional[str]) -> None:
    import pyattn
    from pyattn.models import SentenceEncoder

    if threads:
        pyattn.set_num_threads(threads)
    enc = SentenceEncoder.from_pretrained(dtype=dtype)
    s = sentences(np.random.default_rng(seed), n)
    enc.encode(s[:64])  # warm-up
    t0 = time.perf_counter()
    enc.encode(s, batch_size=32)
    dt = time.perf_counter() - t0
    print(json.dumps({"sentences": n, "seconds": dt, "sentences_per_s": n / dt}))


def run_server(name: str, cmd: List[str], port: int, levels: List[int], emit, warm_up, measure, show) -> List[dict]:
    """Starts a server, warms it up (warm_up(url)), then loads it at each level (measure(url, clients) -> row) and
    emits show(row) with its RSS before, after (2 s idle) and at its peak."""
    rows = []
    try:
        proc = start(cmd, port)
    except Exception as e:  # a row that cannot start says so in the table
        emit(f"{name:10s} FAILED to start: {e}")
        return [{"server": name, "error": str(e)}]
    try:
        url = f"http://127.0.0.1:{port}"
        warm_up(url)
        for clients in levels:
            before = rss_mb(proc.pid)
            cpu0, own0, busy0 = cpu_seconds(proc.pid), sum(os.times()[:2]), model_seconds(url)
            r = measure(url, clients)
            # where the cores went: the server's CPU time and the load generator's (this process), per second; and
            # the share of the time pyattn's model thread was computing batches (near 1: no gaps between batches,
            # and a rate below offline is the compute itself slowed by what shares its cores)
            busy1 = model_seconds(url)
            r.update(
                server_cores=(cpu_seconds(proc.pid) - cpu0) / r["seconds"],
                client_cores=(sum(os.times()[:2]) - own0) / r["seconds"],
                model_busy=(busy1 - busy0) / r["seconds"] if busy0 is not None and busy1 else None,
            )
            time.sleep(IDLE_SECONDS)  # pyattn serve trims its heap after 1 s idle
            r.update(
                server=name, rss_before_mb=before, rss_after_mb=rss_mb(proc.pid), rss_peak_mb=rss_mb(proc.pid, "VmHWM")
            )
            rows.append(r)
            emit(
                f"{name:10s} {clients:4d} clients  {show(r)}  p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
                f"errors {r['errors']:4d}  RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB, peak "
                f"{r['rss_peak_mb']:.0f}  ({r['requests']} requests; cores busy: server {r['server_cores']:.2f}, "
                f"clients {r['client_cores']:.2f}"
                + (f"; model lanes computing {r['model_busy']:.0%} of the time" if r["model_busy"] else "")
                + ")"
            )
    finally:
        stop(proc)
    return rows


def embedding_servers(args, levels: List[int], results: dict, emit) -> None:
    """The embedding rows: offline, batched, unbatched, peer; then each level's ratios."""

    def warm_up(url):
        asyncio.run(load(url, 2, min(1.0, args.seconds), 20, args.seed, args.encoding_format))

    def measure(url, clients):
        return asyncio.run(load(url, clients, args.seconds, args.max_requests, args.seed, args.encoding_format))

    n_offline = 512 if args.quick else 4096
    samples = []  # every offline rate measured in the run

    def measure_beside_offline(url, clients):
        # The machine's speed drifts by 20% and more within minutes, so each batched level is compared with an
        # offline run made just before it (the server idle meanwhile), not with one made minutes earlier
        r = offline(n_offline, args.seed, args.threads, args.dtype)
        samples.append(r["sentences_per_s"])
        return dict(measure(url, clients), offline_sentences_per_s=r["sentences_per_s"])

    def show(r):
        return f"{r['sentences_per_s']:8.1f} sent/s" + (
            f" (offline before it {r['offline_sentences_per_s']:.1f})" if "offline_sentences_per_s" in r else ""
        )

    samples.append(offline(n_offline, args.seed, args.threads, args.dtype)["sentences_per_s"])
    emit(f"{'offline':10s}              {samples[0]:8.1f} sent/s  (encode, batch_size 32)")
    threads = ["--threads", str(args.threads)] if args.threads else []
    base = [sys.executable, "-m", "pyattn", "serve", "--no-whisper", "--no-llm", "--log-level", "warning", *threads]
    base += ["--dtype", args.dtype] if args.dtype else []
    wanted = args.servers.split(",")
    for name, extra in (
        ("batched", []),
        ("batched-1lane", ["--embed-lanes", "1"]),
        ("unbatched", ["--max-batch-size", "0"]),
    ):
        if name in wanted:
            port = free_port()
            cmd = base + ["--port", str(port), *extra]
            how = measure_beside_offline if name == "batched" else measure
            results["rows"] += run_server(name, cmd, port, levels, emit, warm_up, how, show)
    results["offline"] = {
        "sentences": n_offline,
        "sentences_per_s": statistics.median(samples),
        "samples": samples,
        "min": min(samples),
        "max": max(samples),
    }
    if len(samples) > 1:
        emit(f"{'offline':10s}              {statistics.median(samples):8.1f} sent/s  median of {len(samples)} runs "
             f"({min(samples):.1f}-{max(samples):.1f}): at the start and before each batched level")  # fmt: skip
    if "peer" in wanted:
        why = peer_ready(args.peer_python)
        if why:
            emit(f"{'peer':10s} skipped: {why}")
            results["peer_skipped"] = why
        else:
            port = free_port()
            cmd = [args.peer_python, str(HERE / "_st_server.py"), "--port", str(port), *threads]
            results["rows"] += run_server("peer", cmd, port, levels, emit, warm_up, measure, show)
    by = level_rows(results["rows"], levels)
    for i, clients in enumerate(levels):
        b, u, p = (by[name][i] for name in ("batched", "unbatched", "peer"))
        if b:
            share = b["sentences_per_s"] / b["offline_sentences_per_s"]  # every batched level has its offline run
            parts = [f"{clients} clients: batched = {share:.0%} of the offline run before it"]
            if u:
                parts.append(f"{b['sentences_per_s'] / u['sentences_per_s']:.2f}x unbatched")
            if p:
                parts.append(f"{b['sentences_per_s'] / p['sentences_per_s']:.2f}x the peer")
            emit(", ".join(parts))


def generation_servers(args, levels: List[int], results: dict, emit) -> None:
    """The generation rows: continuous batching and one generation at a time; then each level's ratios."""
    n = args.max_tokens_per_request

    def warm_up(url):
        asyncio.run(load_generation(url, 2, 60.0, 2, args.seed, n))

    def measure(url, clients):
        return asyncio.run(load_generation(url, clients, args.seconds, args.max_requests, args.seed, n))

    def show(r):
        return f"{r['tokens_per_s']:8.1f} tok/s"

    threads = ["--threads", str(args.threads)] if args.threads else []
    base = [sys.executable, "-m", "pyattn", "serve", "--no-embed", "--no-whisper", "--log-level", "warning",
            "--max-tokens", str(n), *threads]  # fmt: skip
    for name, extra in (("continuous", []), ("queued", ["--max-concurrent-generations", "1"])):
        if name in args.servers.split(","):
            port = free_port()
            cmd = base + ["--port", str(port), *extra]
            results["rows"] += run_server(name, cmd, port, levels, emit, warm_up, measure, show)
    by = level_rows(results["rows"], levels)
    for i, clients in enumerate(levels):
        c, q = by["continuous"][i], by["queued"][i]
        if c and q:
            emit(
                f"{clients} clients: continuous = {c['tokens_per_s'] / q['tokens_per_s']:.2f}x the tokens/s of queued, "
                f"p50 latency {c['p50_ms'] / q['p50_ms']:.2f}x"
            )


def level_rows(rows: List[dict], levels: List[int]) -> Dict[str, List[Optional[dict]]]:
    """Each server's row for each level, in the order of `levels` (a level given twice in --clients keeps both
    rows); None where the server failed or did not run."""
    by: Dict[str, List[Optional[dict]]] = defaultdict(lambda: [None] * len(levels))
    ran: Dict[str, List[dict]] = defaultdict(list)
    for r in rows:
        ran[r["server"]].append(r)
    for name, rs in ran.items():
        if len(rs) == len(levels):  # run_server's rows: one per level, in order (or one error row)
            by[name] = [None if "error" in r else r for r in rs]
    return by


def peer_ready(python: Optional[str]) -> Optional[str]:
    if not python:
        return "no --peer-python given"
    probe = "import fastapi, uvicorn, sentence_transformers, torch"
    r = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    return None if r.returncode == 0 else f"{python} lacks the peer's packages: {r.stderr.strip().splitlines()[-1]}"


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    generation = results["settings"]["task"] == "generation"
    names = ("continuous", "queued") if generation else ("batched", "unbatched", "peer")
    rate, unit = ("tokens_per_s", "generated tokens / s") if generation else ("sentences_per_s", "sentences / s")
    latency = "p50_ms" if generation else "p99_ms"
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        rows = [r for r in results["rows"] if r.get("server") == name and "error" not in r]
        if rows:
            a.plot([r["clients"] for r in rows], [r[rate] for r in rows], "o-", label=name)
            b.plot([r["clients"] for r in rows], [r[latency] for r in rows], "o-", label=name)
    if "offline" in results:
        a.axhline(results["offline"]["sentences_per_s"], ls="--", c="gray", label="offline encode")
    for ax, label in ((a, unit), (b, f"{latency[:3]} latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(results["machine"]["cpu_model"] + f" ({results['machine']['tag']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="embeddings", choices=["embeddings", "generation"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clients", default=None, help="comma-separated concurrency levels (1,8,32,128; generation 1,4,8)")
    ap.add_argument("--seconds", type=float, default=None, help="per level (20; generation 30)")
    ap.add_argument("--max-requests", type=int, default=20000, help="per level")
    ap.add_argument("--threads", type=int, default=0, help="server threads (default: all processors)")
    ap.add_argument(
        "--encoding-format",
        default="base64",
        choices=["float", "base64"],
        help="how the clients ask for the vectors (base64, as the official openai client does when not told: it "
        "then decodes them with numpy)",
    )
    ap.add_argument("--max-tokens-per-request", type=int, default=32, help="generation: max_tokens of each request")
    ap.add_argument(
        "--peer-python",
        default=sys.executable,
        help="an interpreter with sentence-transformers, torch, fastapi, uvicorn (default: this one; without them "
        "the peer is skipped)",
    )
    ap.add_argument(
        "--servers",
        default=None,
        help="batched,unbatched,peer (and batched-1lane: one embedding lane); generation: continuous,queued",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--dtype",
        default=None,
        help="embeddings: pyattn's weight type (offline and served; the peer stays float32); results named serve_DTYPE",
    )
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--offline-worker", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.offline_worker:
        offline_worker(args.offline_worker, args.seed, args.threads, args.dtype)
        return 0
    generation = args.task == "generation"
    args.clients = args.clients or ("1,4,8" if generation else "1,8,32,128")
    args.seconds = args.seconds or (30.0 if generation else 20.0)
    args.servers = args.servers or ("continuous,queued" if generation else "batched,unbatched,peer")
    levels = [int(x) for x in args.clients.split(",")]
    if args.quick:
        levels, args.seconds, args.max_requests = ([1, 4], 5.0, 8) if generation else ([1, 8], 2.0, 200)
    machine = describe_machine()
    lines: List[str] = []

    def emit(*text: str) -> None:
        for t in text:
            print(t, flush=True)
            lines.append(t)

    versions = package_versions("pyattn", "fastapi", "uvicorn", "httpx", "numpy")
    emit(headline(machine), "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    per_request = (
        f"chat completions of {args.max_tokens_per_request} tokens (greedy)"
        if generation
        else f"1-32 sentences, vectors as {args.encoding_format}"
    )
    emit(f"levels {levels}, {args.seconds:g} s or {args.max_requests} requests each, {per_request} per request")
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions,
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"levels": levels},
        "rows": [],
    }
    (generation_servers if generation else embedding_servers)(args, levels, results, emit)
    name = "serve_generation" if generation else "serve" + (f"_{args.dtype}" if args.dtype else "")
    paths = result_paths(Path(args.out), name, machine, args.quick)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["txt"].write_text("\n".join(lines) + "\n")
    plot(results, paths["png"])
    print(f"wrote {paths['json']}, {paths['txt']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
