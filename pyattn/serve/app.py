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
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

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
        self.batcher: Optional[EmbeddingBatcher] = None
        self.generation: Optional[GenerationBatcher] = None
        self.gates: Dict[str, Gate] = {}
        self.counter = None
        embed = registry.get("embedding")
        if embed is not None:
            # a copy of the encoder's tokenizer that neither truncates nor pads: token counts for usage and limits
            from tokenizers import Tokenizer

            self.counter = Tokenizer.from_str(embed.model.tokenizer.to_str())
            self.counter.no_truncation()
            self.counter.no_padding()

    async def start(self) -> None:
        embed = self.registry.get("embedding")
        if embed is not None:
            cfg = self.cfg
            self.batcher = EmbeddingBatcher(
                embed.model, self.threads["embedding"], embed.id, self.metrics,
                max_batch_size=cfg.max_batch_size, batch_wait_ms=cfg.batch_wait_ms,
                encode_batch_size=cfg.encode_batch_size, max_queue=max(cfg.max_queue, cfg.max_inputs),
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
            )  # fmt: skip
            self.generation.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.generation is not None:
            await self.generation.stop()
        for t in self.threads.values():
            await asyncio.to_thread(t.close)

    def token_counts(self, texts: List[str]) -> List[int]:
        return [len(e.ids) for e in self.counter.encode_batch(texts)]


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
    limit = encoder.max_seq_length
    counts = await asyncio.to_thread(server.token_counts, texts)
    if not truncate:
        long = next((i for i, n in enumerate(counts) if n > limit), None)
        if long is not None:
            raise ApiError(
                400, f"input[{long}] is {counts[long]} tokens; the model reads at most {limit} (send \"truncate\": "
                "true to embed its beginning)", param="input", code="context_length_exceeded",
            )  # fmt: skip
    tokens = sum(min(n, limit) for n in counts)
    try:
        rows = await asyncio.wait_for(server.batcher.embed(texts), cfg.request_timeout)
    except asyncio.TimeoutError:
        raise ApiError(504, f"no answer within {cfg.request_timeout:g} s", code="timeout") from None
    server.metrics.prompt_tokens.labels(served.id).inc(tokens)
    if body.encoding_format == "base64":
        data = [base64.b64encode(r.astype("<f4").tobytes()).decode("ascii") for r in rows]
    else:
        data = rows.tolist()
    return JSONResponse(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": served.id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


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


def _check_sampling(body, served: Served, n_prompt: int, cfg: ServeConfig) -> Tuple[int, Dict[str, Any]]:
    """max_new_tokens and generate's options of a request; 400 for what cannot be served."""
    if body.n != 1:
        raise _unsupported("n", f"{body.n} choices (n = 1 only)")
    if body.logprobs:
        raise _unsupported("logprobs", "log-probabilities")
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
    """One request's decoding, a row of the continuous batch (workers.GenerationBatcher): `async for delta in
    gen.run()` yields the new text of each step as the batch decodes it (held back while it may still become a stop
    string or is half a character). The request joins the batch when `run` starts and leaves it when `run` ends,
    whichever way (its last token, an error, a timeout, the client gone)."""

    def __init__(self, server: Server, served: Served, ids: List[int], max_new: int, options: Dict[str, Any]):
        from ..generation import Plan

        self.server, self.served, self.ids, self.max_new = server, served, ids, max_new
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
        self.finish_reason = "length"
        self.deadline = time.perf_counter() + server.cfg.request_timeout
        self.request = None  # the batcher's, once submitted

    def cancel(self) -> None:
        """Leaves the batch (or its queue) unless it has ended."""
        if self.request is not None and not self.request.done:
            self.server.generation.cancel(self.request)

    async def _tokens(self) -> AsyncIterator[int]:
        """The request's tokens as the batch produces them, up to and with the one that ended it."""
        batcher, cfg = self.server.generation, self.server.cfg
        try:
            self.request, steps = batcher.submit(self.ids, self.options)
        except ValueError as e:
            raise ApiError(400, str(e), code="invalid_value") from None
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

    async def run(self) -> AsyncIterator[str]:
        server, model = self.server, self.served.model
        hold = max((len(s) for s in self.stops), default=1) - 1
        shown = ""
        first: Optional[float] = None
        try:
            async for token in self._tokens():
                first = first or time.perf_counter()
                if token in self.eos:
                    self.finish_reason = "stop"
                    break
                self.tokens.append(token)
                server.metrics.generated_tokens.labels(self.served.id).inc()
                text = model.decode(self.tokens)
                cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
                if cut >= 0:
                    shown_before = shown
                    shown = text[:cut]
                    self.finish_reason = "stop"
                    if len(shown) > len(shown_before):
                        yield shown[len(shown_before) :]
                    return
                end = len(text) - hold
                while end > len(shown) and text[end - 1] == "\ufffd":  # half a character: wait for the rest
                    end -= 1
                if end > len(shown) and text.startswith(shown):
                    yield text[len(shown) : end]
                    shown = text[:end]
        finally:
            self.cancel()
        text = model.decode(self.tokens)
        if len(text) > len(shown) and text.startswith(shown):
            yield text[len(shown) :]
        if first is not None and len(self.tokens) > 1:
            rate = (len(self.tokens) - 1) / max(time.perf_counter() - first, 1e-9)
            server.metrics.tokens_per_second.labels(self.served.id).observe(rate)

    def usage(self) -> Dict[str, int]:
        n = len(self.tokens)
        return {"prompt_tokens": len(self.ids), "completion_tokens": n, "total_tokens": len(self.ids) + n}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _answer(request: Request, gen: _Generation, body, chat: bool) -> Response:
    """The response of a generation: one JSON body, or a stream of server-sent events."""
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    model_id = gen.served.id
    gen.server.metrics.prompt_tokens.labels(model_id).inc(len(gen.ids))

    def chunk(delta: Optional[str], finish: Optional[str], first: bool = False) -> Dict[str, Any]:
        if chat:
            d: Dict[str, Any] = {} if delta is None else {"content": delta}
            if first:
                d["role"] = "assistant"
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        return {"id": rid, "object": kind, "created": created, "model": model_id, "choices": [choice]}

    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage

        async def events() -> AsyncIterator[str]:
            # a cancelled client connection cancels this generator at its next await: decoding stops there
            try:
                if chat:
                    yield _sse(chunk("", None, first=True))
                async for delta in gen.run():
                    yield _sse(chunk(delta, None))
                yield _sse(chunk(None, gen.finish_reason))
                if include_usage:
                    yield _sse({**chunk(None, None), "choices": [], "usage": gen.usage()})
            except ApiError as e:  # the status line has gone: the error travels as an event
                yield _sse(errors.error_body(e.status, e.message, e.param, e.code))
            except Exception as e:
                errors.log.exception("generation failed")
                yield _sse(errors.error_body(500, f"internal error: {type(e).__name__}: {e}", code="internal_error"))
            finally:
                gen.cancel()
            yield "data: [DONE]\n\n"

        gen.server.generation.check()  # a full queue is a 503, not an event after a 200
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    parts: List[str] = []

    async def collect() -> None:
        async for delta in gen.run():
            parts.append(delta)

    job = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if job not in done:  # the client left: its row leaves the batch before the next step
        gen.cancel()
        job.cancel()
        try:
            await job
        except (asyncio.CancelledError, ApiError):
            pass
        return Response(status_code=499)
    job.result()
    text = "".join(parts)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": gen.finish_reason}  # fmt: skip
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": gen.finish_reason}
        kind = "text_completion"
    return JSONResponse(
        {"id": rid, "object": kind, "created": created, "model": model_id, "choices": [choice], "usage": gen.usage()}
    )


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
    ids = model.encode(prompt)
    max_new, options = _check_sampling(body, served, len(ids), server.cfg)
    return await _answer(request, _Generation(server, served, ids, max_new, options), body, chat=True)


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
        ids = model.encode(prompt)
    if not ids:
        raise ApiError(400, "prompt must not be empty", param="prompt", code="invalid_value")
    max_new, options = _check_sampling(body, served, len(ids), server.cfg)
    return await _answer(request, _Generation(server, served, ids, max_new, options), body, chat=False)


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
