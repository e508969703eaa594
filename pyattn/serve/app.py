"""The FastAPI app: OpenAI-shaped routes over the loaded models.

POST /v1/embeddings             dynamic batching (workers.EmbeddingBatcher)
POST /v1/audio/transcriptions   multipart upload; json, text, srt, vtt, verbose_json
POST /v1/chat/completions       the chat template, then generation (continuous batching); SSE streaming
POST /v1/completions            plain-text prompt; SSE streaming
GET  /v1/models, /v1/models/{id}, /health, /metrics
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Dict, List, Optional, Tuple

import numpy as np
import orjson
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .. import get_num_threads
from . import errors
from .config import ServeConfig
from .errors import ApiError
from .limits import BodyLimit
from .metrics import Metrics
from .models import Registry, Served
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .workers import EmbeddingBatcher, Gate, GenerationBatcher, ModelThread

ROUTES = (
    "/v1/embeddings", "/v1/audio/transcriptions", "/v1/chat/completions", "/v1/completions", "/v1/models",
    "/health", "/metrics",
)  # fmt: skip
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


class _MetricsMiddleware:
    """Counts every answer by route and status (unknown paths as one label) and times it to its first byte."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"
        t0, status = time.perf_counter(), [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(status[0])).inc()


class Server:
    """What the routes share: the configuration, the models, their threads, batcher and queues, the metrics."""

    def __init__(self, cfg: ServeConfig, registry: Registry):
        self.cfg, self.registry, self.metrics = cfg, registry, Metrics()
        self.threads = {s.kind: ModelThread(s.kind) for s in registry}
        self.lane_threads: List[ModelThread] = []  # the embedding lanes after the first (start)
        self.batcher: Optional[EmbeddingBatcher] = None
        self.generation: Optional[GenerationBatcher] = None
        self.gates: Dict[str, Gate] = {}
        self.counter = None
        embed = registry.get("embedding")
        if embed is not None:
            # a copy of the encoder's tokenizer that does not truncate: the length of a too long input, for its error
            from tokenizers import Tokenizer

            self.counter = Tokenizer.from_str(embed.model.tokenizer.to_str())
            self.counter.no_truncation()
            self.counter.no_padding()

    async def start(self) -> None:
        embed = self.registry.get("embedding")
        if embed is not None:
            cfg = self.cfg
            threads = get_num_threads()
            n = cfg.lanes(threads)
            lanes = [self.threads["embedding"]]
            if n > 1:  # lanes of batches, each on its share of the threads under load (EmbeddingBatcher)
                self.lane_threads = [ModelThread(f"embedding-{i}") for i in range(1, n)]
                lanes += self.lane_threads
            self.batcher = EmbeddingBatcher(
                embed.model, lanes, embed.id, self.metrics,
                max_batch_size=cfg.max_batch_size, batch_wait_ms=cfg.batch_wait_ms,
                encode_batch_size=cfg.encode_batch_size, max_queue=max(cfg.max_queue, cfg.max_inputs), threads=threads,
            )  # fmt: skip
            self.batcher.start()
        speech = self.registry.get("transcription")
        if speech is not None:
            self.gates["transcription"] = Gate(speech.id, self.cfg.max_queue_requests, self.metrics)
        llm = self.registry.get("generation")
        if llm is not None:
            self.generation = GenerationBatcher(
                llm.model, self.threads["generation"], llm.id, self.metrics,
                max_batch_size=self.cfg.max_concurrent_generations, max_queue=self.cfg.max_queue_requests,
                prefill_chunk=self.cfg.prefill_chunk or None,
            )  # fmt: skip
            self.generation.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.generation is not None:
            await self.generation.stop()
        for t in list(self.threads.values()) + self.lane_threads:
            await asyncio.to_thread(t.close)

    def token_count(self, text: str) -> int:
        return len(self.counter.encode(text).ids)


async def _disconnected(request: Request, every: float = 0.25) -> None:
    """Returns once the client has gone."""
    while not await request.is_disconnected():
        await asyncio.sleep(every)


def _unsupported(param: str, what: str) -> ApiError:
    return ApiError(400, f"{param}: {what} is not supported by this server", param=param, code="unsupported_value")


# ---------------------------------------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------------------------------------
async def embeddings(server: Server, body: EmbeddingRequest) -> JSONResponse:
    cfg = server.cfg
    served = server.registry.resolve("embedding", body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise ApiError(400, "input must not be empty", param="input", code="invalid_value")
    if not all(isinstance(t, str) for t in texts):
        raise _unsupported("input", "token ids as input (send the text)")
    if len(texts) > cfg.max_inputs:
        raise ApiError(
            400, f"input holds {len(texts)} items; at most {cfg.max_inputs} per request", param="input",
            code="too_many_inputs",
        )  # fmt: skip
    for i, t in enumerate(texts):
        if not t:
            where = "input" if isinstance(body.input, str) else f"input[{i}]"
            raise ApiError(400, f"{where} is an empty string", param=where, code="invalid_value")
    encoder = served.model
    if body.dimensions is not None and body.dimensions != encoder.dim:
        raise _unsupported("dimensions", f"{body.dimensions} (the model's vectors have {encoder.dim})")
    truncate = cfg.auto_truncate if body.truncate is None else body.truncate
    with server.batcher.handling():  # a free model short of a batch waits while this request is not queued
        return await _embed(server, served, encoder, texts, truncate, body.encoding_format)


async def _embed(server: Server, served, encoder, texts: list, truncate: bool, encoding_format: str) -> Response:
    cfg, limit = server.cfg, encoder.max_seq_length
    # Tokenized once, here (off the event loop): the counts for the limits and usage, and the ids the batch embeds
    encodings = await asyncio.to_thread(encoder.tokenize, texts)
    if not truncate:
        long = next((i for i, e in enumerate(encodings) if e.overflowing), None)
        if long is not None:
            n = await asyncio.to_thread(server.token_count, texts[long])
            raise ApiError(
                400, f"input[{long}] is {n} tokens; the model reads at most {limit} (send \"truncate\": "
                "true to embed its beginning)", param="input", code="context_length_exceeded",
            )  # fmt: skip
    tokens = sum(len(e.ids) for e in encodings)
    try:
        rows = await asyncio.wait_for(server.batcher.submit(encodings), cfg.request_timeout)
    except asyncio.TimeoutError:
        raise ApiError(504, f"no answer within {cfg.request_timeout:g} s", code="timeout") from None
    server.metrics.prompt_tokens.labels(served.id).inc(tokens)
    if encoding_format == "base64":
        data = [base64.b64encode(r.astype("<f4").tobytes()).decode("ascii") for r in rows]
    else:
        data = list(np.ascontiguousarray(rows, np.float32))
    content = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
        "model": served.id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    # orjson writes each float32 as the shortest decimal that reads back as the same float32 (~9 digits, not the
    # 17 of its float64 repr): with json.dumps over .tolist(), formatting and parsing the floats cost 16% of the
    # served throughput at 32 clients (benchmarks/bench_serve.py, float against base64, 167 / 198 sentences/s).
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


# ---------------------------------------------------------------------------------------------------------
# transcriptions
# ---------------------------------------------------------------------------------------------------------
class _Cancelled(Exception):
    pass


async def _read_upload(upload: UploadFile, max_seconds: float) -> np.ndarray:
    """The uploaded file's audio as 16 kHz mono float32; 400 for what is not audio or is too long."""
    from ..audio import SAMPLE_RATE, load_audio

    name = os.path.basename(upload.filename or "upload")
    suffix = os.path.splitext(name)[1][:16]
    fd, path = tempfile.mkstemp(prefix="pyattn-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            await asyncio.to_thread(shutil.copyfileobj, upload.file, out)
        try:
            wav = await asyncio.to_thread(load_audio, path)
        except (ValueError, TypeError, EOFError) as e:
            message = str(e).replace(path, name)
            raise ApiError(400, f"the file is not audio this server reads: {message}", param="file",
                           code="invalid_audio") from None  # fmt: skip
    finally:
        os.unlink(path)
    seconds = wav.shape[0] / SAMPLE_RATE
    if seconds > max_seconds:
        raise ApiError(
            400, f"the audio is {seconds:.1f} s long; at most {max_seconds:g} s per request", param="file",
            code="audio_too_long",
        )  # fmt: skip
    return wav


def _verbose(result) -> Dict[str, Any]:
    import dataclasses

    return {
        "task": "transcribe",
        "language": "english" if result.info.language == "en" else result.info.language,
        "duration": result.info.duration,
        "text": result.text,
        "segments": [dataclasses.asdict(s) for s in result.segments],
    }


async def transcriptions(
    server: Server,
    request: Request,
    file: UploadFile,
    model: str,
    response_format: str,
    language: Optional[str],
    prompt: Optional[str],
    temperature: Optional[float],
    granularities: Optional[List[str]],
) -> Response:
    from .. import subtitles

    cfg = server.cfg
    served = server.registry.resolve("transcription", model)
    if response_format not in TRANSCRIPTION_FORMATS:
        raise ApiError(
            400, f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}, got {response_format!r}",
            param="response_format", code="invalid_value",
        )  # fmt: skip
    if language and language.lower() not in ("en", "english"):
        raise _unsupported("language", f"{language!r} (the model transcribes English)")
    if prompt:
        raise _unsupported("prompt", "a prompt")
    if temperature:
        raise _unsupported("temperature", "sampling (the server decodes greedily: temperature 0)")
    if granularities and any(g != "segment" for g in granularities):
        raise _unsupported("timestamp_granularities[]", "word timestamps")
    t0 = time.perf_counter()
    wav = await _read_upload(file, cfg.max_audio_seconds)
    cancel = threading.Event()

    def progress(_seconds: float) -> None:  # called between 30 s windows, on the model's thread
        if cancel.is_set():
            raise _Cancelled()

    async with server.gates["transcription"].turn():
        left = cfg.request_timeout - (time.perf_counter() - t0)
        job = asyncio.ensure_future(server.threads["transcription"].run(served.model.transcribe, wav,
                                                                         progress=progress))  # fmt: skip
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({job, gone}, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if job not in done:
            cancel.set()  # the model's thread stops at the next window
            try:
                await job
            except _Cancelled:
                pass
            if gone in done:
                return Response(status_code=499)  # nobody reads it
            raise ApiError(504, f"no answer within {cfg.request_timeout:g} s", code="timeout")
        result = job.result()
    server.metrics.audio_seconds.labels(served.id).inc(result.info.duration)
    if response_format == "json":
        return JSONResponse({"text": result.text})
    if response_format == "verbose_json":
        return JSONResponse(_verbose(result))
    if response_format == "text":
        return PlainTextResponse(result.text + "\n")
    media = "text/vtt" if response_format == "vtt" else "text/plain"  # SubRip has no registered type
    return PlainTextResponse(subtitles.render(result, response_format), media_type=media)


# ---------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------
def _message_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _top_logprobs(body, chat: bool) -> Optional[int]:
    """How many alternatives each token's log-probability comes with, or None for no log-probabilities: chat's
    logprobs (bool) and top_logprobs (0-20), completions' logprobs (0-5)."""
    if not chat:
        return body.logprobs
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    return (body.top_logprobs or 0) if body.logprobs else None


def _check_sampling(body, served: Served, n_prompt: int, cfg: ServeConfig) -> Tuple[int, Dict[str, Any]]:
    """max_new_tokens and generate's options of a request; 400 for what cannot be served."""
    if body.presence_penalty or body.frequency_penalty:
        raise _unsupported("presence_penalty", "presence and frequency penalties (use repetition_penalty)")
    model = served.model
    max_new = getattr(body, "max_completion_tokens", None) or body.max_tokens
    max_new = cfg.max_tokens if max_new is None else max_new
    if max_new > cfg.max_tokens:
        raise ApiError(400, f"max_tokens is {max_new}; at most {cfg.max_tokens} here", param="max_tokens",
                       code="invalid_value")  # fmt: skip
    if n_prompt + max_new > model.context_length:
        raise ApiError(
            400, f"the prompt is {n_prompt} tokens and max_tokens {max_new}; the model's context is "
            f"{model.context_length} tokens", param="messages" if hasattr(body, "messages") else "prompt",
            code="context_length_exceeded",
        )  # fmt: skip
    options: Dict[str, Any] = {"max_new_tokens": max_new, "repetition_penalty": float(body.repetition_penalty)}
    if body.temperature > 0:
        options.update(
            do_sample=True, temperature=float(body.temperature), top_p=float(body.top_p), top_k=body.top_k,
            min_p=float(body.min_p), seed=body.seed,
        )  # fmt: skip
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "stop: up to 4 non-empty strings", param="stop", code="invalid_value")
    if stops:
        options.update(stop_strings=stops, detokenize=model.decode)
    return max_new, options


class _Generation:
    """One request's decoding, a row of the continuous batch (workers.GenerationBatcher): after `gen.submit()`,
    `async for delta, upto in gen.run()` yields the new text of each step as the batch decodes it (held back while it
    may still become a stop string or is half a character). The request joins the batch's queue at `submit` and
    leaves the batch when `run` ends, whichever way (its last token, an error, a timeout, the client gone). With
    `top_logprobs` (not None) each token's log-probability and its likeliest alternatives are recorded
    (`chat_logprobs`, `completion_logprobs`)."""

    def __init__(
        self,
        server: Server,
        served: Served,
        ids: List[int],
        max_new: int,
        options: Dict[str, Any],
        top_logprobs: Optional[int] = None,
    ):
        from ..generation import Plan

        self.server, self.served, self.ids, self.max_new = server, served, ids, max_new
        self.top_logprobs = top_logprobs
        model = served.model
        self.stops: List[str] = options.get("stop_strings", [])
        try:
            Plan(model, np.array([ids], np.int64), **options)  # the options checked now: 400 before any answer
        except ValueError as e:
            raise ApiError(400, str(e), code="invalid_value") from None
        self.options = options
        eos = model.config.get("eos_token_id")
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        self.tokens: List[int] = []
        self.offsets: List[int] = []  # where each token's text starts in the completion's text
        self.finish_reason = "length"
        self.deadline = time.perf_counter() + server.cfg.request_timeout
        self.request = None  # the batcher's, once submitted
        self._steps: Optional[asyncio.Queue] = None

    def submit(self) -> None:
        """Joins the batcher's queue (400 for options it refuses, 503 when the queue is full), before `run`: a
        request of n choices submits them all before any of them runs (_answer)."""
        options = self.options if self.top_logprobs is None else {**self.options, "logprobs": self.top_logprobs}
        try:
            self.request, self._steps = self.server.generation.submit(self.ids, options)
        except ValueError as e:
            raise ApiError(400, str(e), code="invalid_value") from None

    def cancel(self) -> None:
        """Leaves the batch (or its queue) unless it has ended."""
        if self.request is not None and not self.request.done:
            self.server.generation.cancel(self.request)

    async def _tokens(self) -> AsyncIterator[int]:
        """The request's tokens as the batch produces them, up to and with the one that ended it."""
        cfg, steps = self.server.cfg, self._steps
        while True:
            left = self.deadline - time.perf_counter()
            try:
                token, ended, error = await asyncio.wait_for(steps.get(), max(left, 0.0))
            except asyncio.TimeoutError:
                raise ApiError(504, f"no answer within {cfg.request_timeout:g} s", code="timeout") from None
            if error is not None:
                if isinstance(error, ApiError):  # the server is shutting down
                    raise error
                if isinstance(error, ValueError):  # what the model refused (a position beyond its context, say)
                    raise ApiError(400, str(error), code="invalid_value") from None
                errors.log.error("generation failed: %s: %s", type(error).__name__, error)
                raise ApiError(500, f"internal error: {type(error).__name__}: {error}", code="internal_error")
            if token is not None:
                yield token
            if ended:
                return

    async def run(self) -> AsyncIterator[Tuple[str, int]]:
        """(new text, tokens covered so far): the text shown after each step, and how many of `tokens` it has
        shown (their log-probabilities go with it). With log-probabilities the last piece may be empty text."""
        server, model = self.server, self.served.model
        hold = max((len(s) for s in self.stops), default=1) - 1
        shown, text = "", ""
        first: Optional[float] = None
        try:
            async for token in self._tokens():
                first = first or time.perf_counter()
                if token in self.eos:
                    self.finish_reason = "stop"
                    break
                self.tokens.append(token)
                self.offsets.append(len(text))
                server.metrics.generated_tokens.labels(self.served.id).inc()
                text = model.decode(self.tokens)
                cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
                if cut >= 0:
                    shown_before = shown
                    shown = text[:cut]
                    self.finish_reason = "stop"
                    if len(shown) > len(shown_before) or self.top_logprobs is not None:
                        yield shown[len(shown_before) :], len(self.tokens)
                    return
                end = len(text) - hold
                while end > len(shown) and text[end - 1] == "\ufffd":  # half a character: wait for the rest
                    end -= 1
                if end > len(shown) and text.startswith(shown):
                    yield text[len(shown) : end], len(self.tokens)
                    shown = text[:end]
        finally:
            self.cancel()
        text = model.decode(self.tokens)
        rest = text[len(shown) :] if len(text) > len(shown) and text.startswith(shown) else ""
        if rest or self.top_logprobs is not None:
            yield rest, len(self.tokens)
        if first is not None and len(self.tokens) > 1:
            rate = (len(self.tokens) - 1) / max(time.perf_counter() - first, 1e-9)
            server.metrics.tokens_per_second.labels(self.served.id).observe(rate)

    def _token_text(self, token: int) -> str:
        return self.served.model.decode([int(token)])

    def _entries(self, a: int, b: int) -> List[Tuple[str, float, List[Tuple[str, float]]]]:
        """tokens[a:b] as (text, log-probability, [(text, log-probability) of the likeliest])."""
        out = []
        for i in range(a, min(b, len(self.tokens))):
            lp, ids, lps = self.request.logprobs[i]
            out.append(
                (self._token_text(self.tokens[i]), lp, [(self._token_text(t), float(v)) for t, v in zip(ids, lps)])
            )
        return out

    def chat_logprobs(self, a: int, b: int) -> Optional[Dict[str, Any]]:
        """The chat `logprobs` object of tokens[a:b] (None without log-probabilities). A token's text is its own
        decoding, so a token holding part of a character shows U+FFFD; `bytes` are that text's UTF-8."""
        if self.top_logprobs is None:
            return None

        def item(text: str, lp: float) -> Dict[str, Any]:
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

        content = [{**item(t, lp), "top_logprobs": [item(u, v) for u, v in top]} for t, lp, top in self._entries(a, b)]
        return {"content": content, "refusal": None}

    def completion_logprobs(self, a: int, b: int) -> Optional[Dict[str, Any]]:
        """The legacy completions `logprobs` object of tokens[a:b] (None without log-probabilities)."""
        if self.top_logprobs is None:
            return None
        entries = self._entries(a, b)
        return {
            "tokens": [t for t, _, _ in entries],
            "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [dict(top) for _, _, top in entries],
            "text_offset": self.offsets[a : a + len(entries)],
        }

    def usage(self) -> Dict[str, int]:
        n = len(self.tokens)
        return {"prompt_tokens": len(self.ids), "completion_tokens": n, "total_tokens": len(self.ids) + n}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _answer(request: Request, gens: List[_Generation], body, chat: bool) -> Response:
    """The response of a generation of len(gens) choices (n): one JSON body, or a stream of server-sent events
    whose chunks name their choice's index. The choices decode together, rows of the same continuous batch."""
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    server, model_id = gens[0].server, gens[0].served.id
    server.metrics.prompt_tokens.labels(model_id).inc(len(gens[0].ids) * len(gens))

    def logprobs(gen: _Generation, a: int, b: int) -> Optional[Dict[str, Any]]:
        return gen.chat_logprobs(a, b) if chat else gen.completion_logprobs(a, b)

    def chunk(choices: List[Dict[str, Any]]) -> Dict[str, Any]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        return {"id": rid, "object": kind, "created": created, "model": model_id, "choices": choices}

    def piece(index: int, delta: Optional[str], finish: Optional[str], lp=None, first: bool = False):
        if chat:
            d: Dict[str, Any] = {} if delta is None else {"content": delta}
            if first:
                d["role"] = "assistant"
            return {"index": index, "delta": d, "logprobs": lp, "finish_reason": finish}
        return {"index": index, "text": delta or "", "logprobs": lp, "finish_reason": finish}

    def usage() -> Dict[str, int]:
        done = sum(len(g.tokens) for g in gens)
        prompt = len(gens[0].ids)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def submit_all() -> None:
        try:
            for g in gens:
                g.submit()
        except BaseException:
            for g in gens:
                g.cancel()
            raise

    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage

        async def events() -> AsyncIterator[str]:
            # a cancelled client connection cancels this generator at its next await: decoding stops there
            out: asyncio.Queue = asyncio.Queue()

            async def pump(i: int, g: _Generation) -> None:
                try:
                    async for delta, upto in g.run():
                        out.put_nowait((i, delta, upto, None))
                    out.put_nowait((i, None, 0, None))
                except Exception as e:
                    out.put_nowait((i, None, 0, e))

            tasks: List[asyncio.Task] = []
            try:
                submit_all()
                tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
                if chat:
                    yield _sse(chunk([piece(i, "", None, first=True) for i in range(len(gens))]))
                covered, running = [0] * len(gens), len(gens)
                while running:
                    i, delta, upto, error = await out.get()
                    if error is not None:
                        raise error
                    if delta is None:
                        running -= 1
                        yield _sse(chunk([piece(i, None, gens[i].finish_reason)]))
                        continue
                    lp = logprobs(gens[i], covered[i], upto)
                    covered[i] = upto
                    yield _sse(chunk([piece(i, delta, None, lp)]))
                if include_usage:
                    yield _sse({**chunk([]), "usage": usage()})
            except ApiError as e:  # the status line has gone: the error travels as an event
                yield _sse(errors.error_body(e.status, e.message, e.param, e.code))
            except Exception as e:
                errors.log.exception("generation failed")
                yield _sse(errors.error_body(500, f"internal error: {type(e).__name__}: {e}", code="internal_error"))
            finally:
                for t in tasks:
                    t.cancel()
                for g in gens:
                    g.cancel()
            yield "data: [DONE]\n\n"

        server.generation.check(len(gens))  # a full queue is a 503, not an event after a 200
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    parts: List[List[str]] = [[] for _ in gens]

    async def collect(i: int, g: _Generation) -> None:
        async for delta, _ in g.run():
            parts[i].append(delta)

    server.generation.check(len(gens))
    submit_all()
    jobs = [asyncio.ensure_future(collect(i, g)) for i, g in enumerate(gens)]
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        pending = set(jobs)
        while pending:
            done, pending = await asyncio.wait(pending | {gone}, return_when=asyncio.FIRST_COMPLETED)
            failed = [j for j in done if j is not gone and j.exception() is not None]
            if gone in done or failed:
                break
            pending.discard(gone)
    finally:
        gone.cancel()
    unfinished = [j for j in jobs if not j.done()]
    failed = [j for j in jobs if j.done() and j.exception() is not None]
    if unfinished or failed:  # the client left, or a choice failed: every row leaves the batch before the next step
        for g in gens:
            g.cancel()
        for j in unfinished:
            j.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if failed:
            raise failed[0].exception()
        return Response(status_code=499)
    choices = []
    for i, g in enumerate(gens):
        text = "".join(parts[i])
        lp = logprobs(g, 0, len(g.tokens))
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                            "finish_reason": g.finish_reason})  # fmt: skip
        else:
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": g.finish_reason})
    kind = "chat.completion" if chat else "text_completion"
    return JSONResponse(
        {"id": rid, "object": kind, "created": created, "model": model_id, "choices": choices, "usage": usage()}
    )


def _choices(server: Server, served: Served, ids: List[int], body, chat: bool) -> List[_Generation]:
    """The request's n generations: the same prompt and options; sampled ones seeded seed, seed + 1, ... when a
    seed is given (n draws, not n copies of one)."""
    max_new, options = _check_sampling(body, served, len(ids), server.cfg)
    top = _top_logprobs(body, chat)
    gens = []
    for i in range(body.n):
        opts = dict(options)
        if i and opts.get("seed") is not None:
            opts["seed"] = opts["seed"] + i
        gens.append(_Generation(server, served, ids, max_new, opts, top))
    return gens


async def chat_completions(server: Server, request: Request, body: ChatCompletionRequest) -> Response:
    served = server.registry.resolve("generation", body.model)
    if body.tools:
        raise _unsupported("tools", "tool calling")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise _unsupported("response_format", f"{body.response_format.get('type')!r} (text only)")
    model = served.model
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _message_text(m.content)}
                for m in body.messages]  # fmt: skip
    try:
        prompt = model.apply_chat_template(messages)
    except Exception as e:  # jinja2's TemplateError and the template's own raise_exception
        raise ApiError(400, f"the chat template refused the messages: {e}", param="messages",
                       code="invalid_value") from None  # fmt: skip
    ids = model.encode_prompt(prompt)
    return await _answer(request, _choices(server, served, ids, body, chat=True), body, chat=True)


async def completions(server: Server, request: Request, body: CompletionRequest) -> Response:
    served = server.registry.resolve("generation", body.model)
    if body.echo:
        raise _unsupported("echo", "echo")
    if body.suffix:
        raise _unsupported("suffix", "a suffix")
    if body.best_of not in (None, 1):
        raise _unsupported("best_of", f"{body.best_of}")
    model = served.model
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        ids = list(prompt)
        if any(not 0 <= i < model.vocab_size for i in ids):
            raise ApiError(400, f"prompt: token ids must be in [0, {model.vocab_size})", param="prompt",
                           code="invalid_value")  # fmt: skip
    else:
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise _unsupported("prompt", f"a list of {len(prompt)} prompts (send one)")
            prompt = prompt[0]
        ids = model.encode_prompt(prompt)
    if not ids:
        raise ApiError(400, "prompt must not be empty", param="prompt", code="invalid_value")
    return await _answer(request, _choices(server, served, ids, body, chat=False), body, chat=False)


# ---------------------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------------------
def create_app(cfg: ServeConfig, registry: Registry) -> FastAPI:
    """The ASGI app serving `registry`'s models under `cfg`'s limits (uvicorn runs it: pyattn.serve.run)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    server = Server(cfg, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="pyattn", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    errors.install(app)
    app.add_middleware(
        BodyLimit, max_body_bytes=cfg.max_body_bytes, max_upload_bytes=cfg.max_upload_bytes,
        upload_paths={"/v1/audio/transcriptions"}, body_timeout=cfg.body_timeout,
    )  # fmt: skip
    app.add_middleware(_MetricsMiddleware, metrics=server.metrics)

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "models": [s.card() for s in registry]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> Dict[str, Any]:
        return {"object": "list", "data": [s.card() for s in registry]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Dict[str, Any]:
        for s in registry:
            if model_id in (s.id, *s.aliases):
                return s.card()
        raise ApiError(404, f"the model {model_id!r} does not exist here", param="model", code="model_not_found")

    @app.post("/v1/embeddings")
    async def _embeddings(body: EmbeddingRequest) -> Response:
        return await embeddings(server, body)

    @app.post("/v1/audio/transcriptions")
    async def _transcriptions(
        request: Request,
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        response_format: Annotated[str, Form()] = "json",
        language: Annotated[Optional[str], Form()] = None,
        prompt: Annotated[Optional[str], Form()] = None,
        temperature: Annotated[Optional[float], Form()] = None,
        timestamp_granularities: Annotated[Optional[List[str]], Form(alias="timestamp_granularities[]")] = None,
    ) -> Response:
        return await transcriptions(
            server, request, file, model, response_format, language, prompt, temperature, timestamp_granularities
        )

    @app.post("/v1/chat/completions")
    async def _chat(request: Request, body: ChatCompletionRequest) -> Response:
        return await chat_completions(server, request, body)

    @app.post("/v1/completions")
    async def _completions(request: Request, body: CompletionRequest) -> Response:
        return await completions(server, request, body)

    return app
