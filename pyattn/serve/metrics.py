"""Prometheus metrics of one server (GET /metrics): requests, batch sizes, queue time, throughput.

Each app has its own registry, so that two apps in one process (tests) do not share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_QUEUE = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "pyattn_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "pyattn_request_seconds", "Time from arrival to the answer's start", ["route"], buckets=_LATENCY, registry=r
        )
        self.in_flight = Gauge("pyattn_requests_in_flight", "Requests being answered", registry=r)
        self.queue_depth = Gauge("pyattn_queue_depth", "Work waiting for a model (sentences or requests)", ["model"],
                                 registry=r)  # fmt: skip
        self.queue_seconds = Histogram(
            "pyattn_queue_seconds", "Time a request waited before its model started on it", ["model"],
            buckets=_QUEUE, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "pyattn_batch_size", "Sentences per gathered embedding batch", ["model"], buckets=_BATCH, registry=r
        )
        self.batch_requests = Histogram(
            "pyattn_batch_requests", "Requests per gathered embedding batch", ["model"], buckets=_BATCH, registry=r
        )
        self.batch_seconds = Histogram(
            "pyattn_batch_seconds", "Compute time per embedding batch", ["model"], buckets=_LATENCY, registry=r
        )
        self.lanes = Gauge(
            "pyattn_embedding_lanes", "Embedding batches computed at once (lanes)", ["model"], registry=r
        )
        self.sentences = Counter("pyattn_embedded_sentences", "Sentences embedded", ["model"], registry=r)
        self.prompt_tokens = Counter("pyattn_prompt_tokens", "Input tokens processed", ["model"], registry=r)
        self.generated_tokens = Counter("pyattn_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.generation_batch_size = Histogram(
            "pyattn_generation_batch_size", "Generations decoded together per step (continuous batching)", ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=r,
        )  # fmt: skip
        self.tokens_per_second = Histogram(
            "pyattn_generation_tokens_per_second", "Decoding speed per request, after its first token", ["model"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500), registry=r,
        )  # fmt: skip
        self.audio_seconds = Counter("pyattn_audio_seconds", "Seconds of audio transcribed", ["model"], registry=r)
        self.rejected = Counter(
            "pyattn_rejected", "Requests refused before reaching a model, by reason", ["reason"], registry=r
        )
