"""Whisper tiny.en benchmark: pyattn (the file's float16 weights; float32, bfloat16, int8) vs CTranslate2 (fp32,
int8) vs faster-whisper (fp32, int8) vs torch (transformers, fp32 and bf16), one run.

    python benchmarks/bench_whisper.py            # full run: 1 and 2 threads, 5 repeats
    python benchmarks/bench_whisper.py --quick    # CI-sized: 2 threads, 1 repeat (its times mean nothing)
    python benchmarks/bench_whisper.py --impls pyattn-int8,ct2-int8,ct2-fp32,pyattn-float32   # some rows

Clips: espeak-ng speech from tests/data joined with 0.3 s pauses: a short clip (stella + attention, 6.6 s)
and a long one (long + stella, 24.8 s). For each (implementation, thread count) a worker process loads the model
and, on both clips, greedy and beam 5, measures medians of: the whole transcription (audio array in, text out,
features included), the encoder on one 30 s window, and decoding from a precomputed encoder output (ms per
generated token, the end token included). Peak RSS is the worker's.

Rows: pyattn = Whisper.from_pretrained() with the model file's own weights (float16 for tiny.en), float32 math;
pyattn-float32 / -bfloat16 / -int8 = Whisper.from_pretrained(compute_type=...) (int8 keeps the encoder float32, or
bfloat16 on a CPU with bfloat16 pair instructions: pyattn.models.whisper); ct2-fp32 / ct2-int8 =
ctranslate2.models.Whisper(compute_type=...); faster-whisper-fp32 / -int8 =
faster_whisper.WhisperModel(compute_type=...); torch-fp32 / torch-bf16 = transformers'
WhisperForConditionalGeneration built from the same file (tests/hf_whisper.py) and its `generate`, on CTranslate2's
row's features, in float32 or bfloat16. OpenVINO has no row: its Whisper with a KV cache comes from optimum-intel's
exporter, whose release (2.2.0) requires transformers < 5.6 and torchvision, which pulls a torch of its own over the
pinned one (docs/precision.md). The precision column is what each says it holds (pyattn's weight storage in encoder
and decoder, CTranslate2's compute type). pyattn and CTranslate2 run the same prompt (<|startoftranscript|>
<|notimestamps|>) and suppression options; faster-whisper runs its own `transcribe` (no timestamps, temperature 0,
no VAD, no conditioning on previous text) for reference. Accuracy beside the times: whether the transcripts (greedy
and beam 5) are identical to CTranslate2 fp32's and to pyattn float32's, and the text of every transcript that
differs. A row that fails to load or run says so in the table, with its error.
The table names the CPU. Writes benchmarks/results/whisper_<machine tag>.{json,txt,png}
(benchmarks/_machine.py; --quick: whisper_<tag>_quick.*, gitignored).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import wave
from contextlib import redirect_stdout
from pathlib import Path
from typing import Optional

import numpy as np
from _machine import describe as describe_machine  # benchmarks/_machine.py (the script's folder is on sys.path)
from _machine import headline, package_versions, result_paths
from _rss import peak_rss_mb

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data"
SR = 16000
PROMPT = [50257, 50362]  # <|startoftranscript|> <|notimestamps|> (tiny.en)
# pyattn: the model file's own weights (float16 for tiny.en), float32 math; pyattn-<compute_type>: the weights held
# as faster-whisper's compute_type names them (float32: the file's float16 values widened).
IMPLS = (
    "pyattn",
    "pyattn-float32",
    "pyattn-bfloat16",
    "pyattn-int8",
    "ct2-fp32",
    "ct2-int8",
    "faster-whisper-fp32",
    "faster-whisper-int8",
    "torch-fp32",
    "torch-bf16",
)
REFERENCE = "ct2-fp32"  # every transcript is compared with this one's ...
PYATTN_REFERENCE = "pyattn-float32"  # ... and with this one's
MODES = (("greedy", 1), ("beam5", 5))


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0


def make_clips(out: Path) -> dict:
    """The short (~6.6 s) and long (~24.8 s) clips from the test fixtures, saved as .npy."""
    pause = np.zeros(int(0.3 * SR), np.float32)
    clips = {}
    for name, files in (("short", ("stella.wav", "attention.wav")), ("long", ("long.wav", "stella.wav"))):
        audio = np.concatenate([part for f in files for part in (read_wav(DATA / f), pause)])
        path = out / f"clip_{name}.npy"
        np.save(path, audio)
        clips[name] = {"path": str(path), "seconds": round(len(audio) / SR, 2), "files": list(files)}
    return clips


def median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


# ---------------------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------------------
def linear_storage(module) -> str:
    """How the Linear weights under a module are held: 'float16', 'int8', ..."""
    from pyattn.nn import Linear

    return "/".join(sorted({m.storage for m in module.modules() if isinstance(m, Linear)})) or "-"


class PyattnRunner:
    def __init__(self, threads: int, compute_type: str = "default"):
        import pyattn
        from pyattn.models import Whisper

        pyattn.set_num_threads(threads)
        self.model = Whisper.from_pretrained(compute_type=compute_type)
        self.precision = f"enc {linear_storage(self.model.encoder)}, dec {linear_storage(self.model.decoder)}"

    def transcribe(self, audio, beam):
        return self.model.transcribe_text(audio, beam_size=beam)

    def features(self, audio):
        return self.model.features(audio)

    def encode(self, feats):
        return self.model.encode(feats)

    def generate(self, memory, beam):
        return self.model.generate(memory=memory, beam_size=beam)[0]


def windowed_features(fe, audio) -> np.ndarray:
    """faster-whisper's log-mel features of the whole clip (`fe`: its FeatureExtractor) cut into 30 s windows of 3000
    frames, the last one padded with zeros: what CTranslate2's Whisper takes."""
    mel = fe(audio)
    n_frames = len(audio) // 160
    n_win = max(1, -(-n_frames // 3000))
    out = np.zeros((n_win, 80, 3000), np.float32)
    for i in range(n_win):
        chunk = mel[:, i * 3000 : min((i + 1) * 3000, n_frames)]
        out[i, :, : chunk.shape[1]] = chunk
    return out


class WindowedRunner:
    """A runner that decodes CTranslate2's row's 30 s windows one by one (`window_ids`) and joins their texts."""

    def features(self, audio):
        return windowed_features(self.fe, audio)

    def transcribe(self, audio, beam):
        texts = [
            self.tok.decode(self.window_ids(w, beam), skip_special_tokens=True).strip() for w in self.features(audio)
        ]
        return " ".join(t for t in texts if t)


class CT2Runner(WindowedRunner):
    def __init__(self, threads: int, compute_type: str):
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor
        from tokenizers import Tokenizer

        from pyattn.models.whisper import default_model_path

        path = default_model_path()
        self.ct2 = ctranslate2
        self.model = ctranslate2.models.Whisper(
            str(path), device="cpu", compute_type=compute_type, intra_threads=threads
        )
        self.precision = str(getattr(self.model, "compute_type", compute_type))
        self.fe = FeatureExtractor()
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))

    def encode(self, feats):
        return self.model.encode(self.ct2.StorageView.from_array(np.ascontiguousarray(feats)))

    def generate(self, memory, beam):
        return self.model.generate(memory, [PROMPT], beam_size=beam)[0].sequences_ids[0]

    def window_ids(self, window, beam):
        return self.generate(self.ct2.StorageView.from_array(window[None]), beam)


class FasterWhisperRunner:
    def __init__(self, threads: int, compute_type: str):
        from faster_whisper import WhisperModel

        from pyattn.models.whisper import default_model_path

        self.model = WhisperModel(
            str(default_model_path()), device="cpu", compute_type=compute_type, cpu_threads=threads
        )
        self.precision = str(getattr(self.model.model, "compute_type", compute_type))

    def transcribe(self, audio, beam):
        segments, _ = self.model.transcribe(
            audio,
            beam_size=beam,
            language="en",
            without_timestamps=True,
            temperature=0.0,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments)


class TorchRunner(WindowedRunner):
    """transformers' WhisperForConditionalGeneration with the model file's weights (tests/hf_whisper.py) and
    its `generate`, under torch.inference_mode, in float32 or bfloat16 (the model and the features cast: torch's
    bfloat16 kernels, oneDNN's on CPUs with AVX512_BF16 or AMX). The features are CTranslate2's row's
    (faster-whisper's extractor): transformers' own pads the audio to 30 s before the transform, where these pad the
    log-mel frames, and on the short clip that alone changed the greedy transcript (one word)."""

    def __init__(self, threads: int, dtype: str):
        import torch
        import transformers
        from faster_whisper.feature_extractor import FeatureExtractor
        from tokenizers import Tokenizer
        from transformers.modeling_outputs import BaseModelOutput

        from pyattn.models.whisper import default_model_path

        sys.path.insert(0, str(HERE.parent / "tests"))  # the builder the tests compare pyattn's Whisper with
        from hf_whisper import hf_whisper

        transformers.logging.set_verbosity_error()  # its Whisper generate warns of the config it was handed
        torch.set_num_threads(threads)
        self.torch, self.output = torch, BaseModelOutput
        self.dtype, self.precision = {
            "fp32": (torch.float32, "torch float32"),
            "bf16": (torch.bfloat16, "torch bfloat16"),
        }[dtype]
        self.model = hf_whisper().to(self.dtype)
        self.fe = FeatureExtractor()
        self.tok = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))

    def encode(self, feats):
        with self.torch.inference_mode():
            return self.model.model.encoder(self.torch.from_numpy(feats).to(self.dtype)).last_hidden_state

    def generate(self, memory, beam):
        with self.torch.inference_mode():
            out = self.model.generate(encoder_outputs=self.output(last_hidden_state=memory), num_beams=beam)
        return out[0].tolist()

    def window_ids(self, window, beam):
        return self.generate(self.encode(window[None]), beam)


def worker(impl: str, threads: int, clips: dict, reps: int) -> dict:
    if impl == "pyattn" or impl.startswith("pyattn-"):
        r = PyattnRunner(threads, impl.partition("-")[2] or "default")
    elif impl.startswith("ct2-"):
        r = CT2Runner(threads, impl.split("-")[1].replace("fp", "float"))
    elif impl.startswith("faster-whisper-"):
        r = FasterWhisperRunner(threads, impl.split("-")[2].replace("fp", "float"))
    elif impl.startswith("torch-"):
        r = TorchRunner(threads, impl.split("-")[1])
    else:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {', '.join(IMPLS)}")
    res = {"impl": impl, "threads": threads, "precision": r.precision, "clips": {}}
    for name, clip in clips.items():
        audio = np.load(clip["path"])
        row = {}
        for mode, beam in MODES:
            text = r.transcribe(audio, beam)  # warm-up, and the transcript
            row[f"{mode}_text"] = text
            row[f"{mode}_total_ms"] = median_ms(lambda: r.transcribe(audio, beam), reps)
            if hasattr(r, "encode"):
                feats = r.features(audio)
                memory = r.encode(feats[:1])
                ids = r.generate(memory, beam)
                t = median_ms(lambda: r.generate(memory, beam), reps)
                row[f"{mode}_tokens"] = len(ids) + 1
                row[f"{mode}_decode_ms_per_token"] = t / (len(ids) + 1)
        if hasattr(r, "encode"):
            feats = r.features(audio)[:1]
            row["encoder_ms"] = median_ms(lambda: r.encode(feats), reps)
            row["features_ms"] = median_ms(lambda: r.features(audio), reps)
        res["clips"][name] = row
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def run_worker(impl, threads, clips, reps) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--threads",
        str(threads),
        "--clips",
        json.dumps(clips),
        "--reps",
        str(reps),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "threads": threads, "error": "timed out after 3600 s"}
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        print(f"  {impl}/{threads}t failed:\n{r.stderr[-2000:]}")
        failed = [ln for ln in r.stdout.splitlines() if ln.startswith("FAILED ")]
        last = [ln for ln in r.stderr.splitlines() if ln.strip()]
        error = (
            json.loads(failed[0][len("FAILED ") :])
            if failed
            else f"exit code {r.returncode}" + (f": {last[-1].strip()}" if last else "")
        )
        return {"impl": impl, "threads": threads, "error": error}
    return json.loads(line[0][len("RESULT ") :])


# ---------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------
def same_text(row: dict, ref: Optional[dict], name: str) -> str:
    """'yes' when every mode's transcript of this clip equals ref's, else the modes that differ; '-' without ref."""
    if ref is None or "error" in ref:
        return "-"
    differ = [m for m, _ in MODES if row["clips"][name][f"{m}_text"] != ref["clips"][name][f"{m}_text"]]
    return "yes" if not differ else "no: " + "+".join(differ)


def table(results: dict, clips: dict) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        print(headline(results["machine"]))
        for n in sorted({r["threads"] for r in results["runs"]}):
            runs = [r for r in results["runs"] if r["threads"] == n]
            rows = [r for r in runs if "error" not in r]
            ref = next((r for r in rows if r["impl"] == REFERENCE), None)
            pref = next((r for r in rows if r["impl"] == PYATTN_REFERENCE), None)
            for name, clip in clips.items():
                print(
                    f"\nWhisper tiny.en, {clip['seconds']} s clip, {n} thread(s): median ms; decode ms/token; "
                    f"transcripts (greedy and beam 5) == CTranslate2 fp32's, == pyattn float32's"
                )
                print(
                    f"{'impl':<20} | {'precision':<28} | {'greedy':>7} | {'beam 5':>7} | {'encoder':>7} | "
                    f"{'dec/tok':>7} | {'dec/tok b5':>10} | {'= ct2 fp32':>12} | {'= pyattn fp32':>13} | {'RSS MB':>6}"
                )
                for r in runs:
                    if "error" in r:
                        print(f"{r['impl']:<20} | failed: {' '.join(str(r['error']).split())[:150]}")
                        continue
                    c = r["clips"][name]
                    f = lambda k, w, p: f"{c[k]:{w}.{p}f}" if k in c else f"{'-':>{w}}"  # noqa: E731
                    print(
                        f"{r['impl']:<20} | {r.get('precision', '-')[:28]:<28} | {f('greedy_total_ms', 7, 0)} | "
                        f"{f('beam5_total_ms', 7, 0)} | {f('encoder_ms', 7, 0)} | "
                        f"{f('greedy_decode_ms_per_token', 7, 2)} | {f('beam5_decode_ms_per_token', 10, 2)} | "
                        f"{same_text(r, ref, name):>12} | {same_text(r, pref, name):>13} | {r['peak_rss_mb']:6.0f}"
                    )
            if ref is not None:
                for name in clips:
                    print(f"  [{name}] CTranslate2 fp32 greedy: {ref['clips'][name]['greedy_text']!r}")
            # every other transcript that differs from the references', so that a 'no' can be read
            base = ref or pref
            for r in rows:
                for name in clips:
                    for m, _ in MODES:
                        text = r["clips"][name][f"{m}_text"]
                        if base is not None and text != base["clips"][name][f"{m}_text"]:
                            print(f"  [{name} {m}] {r['impl']}: {text!r}")
    return out.getvalue()


def plot(results: dict, clips: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return
    runs = [r for r in results["runs"] if "error" not in r]
    threads = sorted({r["threads"] for r in runs})
    impls = list(dict.fromkeys(r["impl"] for r in runs))
    keys = [(c, m) for c in clips for m, _ in MODES]
    fig, axes = plt.subplots(1, len(threads), figsize=(7 * len(threads), 4.5), squeeze=False)
    for ax, n in zip(axes[0], threads):
        width = 0.8 / max(len(impls), 1)
        for i, impl in enumerate(impls):
            r = next((r for r in runs if r["impl"] == impl and r["threads"] == n), None)
            vals = [r["clips"][c].get(f"{m}_total_ms", 0) if r else 0 for c, m in keys]
            ax.bar(np.arange(len(keys)) + i * width, vals, width, label=impl)
        ax.set_xticks(
            np.arange(len(keys)) + width * (len(impls) - 1) / 2, [f"{clips[c]['seconds']} s {m}" for c, m in keys]
        )
        ax.set_ylabel("ms (median)")
        ax.set_title(f"Whisper tiny.en transcription, {n} thread(s)\n{results['machine']['cpu_model']}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default 1,2; quick: 2)")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--worker")
    ap.add_argument("--clips")
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.quick else 5)
    if args.worker:
        try:
            res = worker(args.worker, int(args.threads), json.loads(args.clips), reps)
        except Exception as e:  # noqa: BLE001 - the driver reports it in the table
            traceback.print_exc()
            print("FAILED " + json.dumps(f"{type(e).__name__}: {e}"))
            return 1
        print("RESULT " + json.dumps(res))
        return 0

    machine = describe_machine()
    threads = [int(t) for t in (args.threads or ("2" if args.quick else "1,2")).split(",")]
    impls = [i for i in args.impls.split(",") if i]
    cache = Path(tempfile.gettempdir()) / "pyattn-bench-whisper"
    cache.mkdir(exist_ok=True)
    clips = make_clips(cache)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "reps": reps,
        "clips": clips,
        "machine": machine,
        "versions": package_versions("ctranslate2", "faster-whisper", "numpy"),
        "runs": [],
    }
    for n in threads:
        for impl in impls:
            print(f"running {impl} with {n} thread(s)...", flush=True)
            results["runs"].append(run_worker(impl, n, clips, reps))
    text = table(results, clips)
    if args.quick:
        text += "\n(--quick: one repeat per cell on a shared machine; the times mean nothing)\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = result_paths(out, "whisper", machine, args.quick)
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["txt"].write_text(text)
    print(f"wrote {paths['json']} and {paths['txt']}")
    plot(results, clips, paths["png"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
