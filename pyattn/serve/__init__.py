"""`pyattn serve`: an OpenAI-compatible HTTP server for pyattn's models (FastAPI on uvicorn; the `serve` extra).

    from pyattn.serve import ServeConfig, run
    run(ServeConfig(port=8000))                      # what `pyattn serve` does

    app = create_app(cfg, load_models(cfg))          # the ASGI app alone, for another ASGI server

Modules: `config` (ServeConfig: models, batching, limits), `models` (loading and naming), `app` (the routes),
`workers` (a thread per model, bounded queues, the embedding batcher), `limits` (body size and pace), `errors`
(the OpenAI error shape), `metrics` (Prometheus), `schemas` (request bodies). See docs/serve.md.
"""

from __future__ import annotations

import logging

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "load_models", "run"]


def create_app(cfg: ServeConfig, registry=None):
    """The FastAPI app for `cfg`; `registry`: models already loaded (default: load_models(cfg))."""
    from .app import create_app as _create
    from .models import load_models as _load

    return _create(cfg, _load(cfg) if registry is None else registry)


def load_models(cfg: ServeConfig):
    from .models import load_models as _load

    return _load(cfg)


def run(cfg: ServeConfig, log_level: str = "info") -> None:
    """Loads the models, then serves until SIGINT / SIGTERM (requests in flight finish, up to
    cfg.graceful_timeout seconds; new connections are refused)."""
    import uvicorn

    import pyattn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.threads:
        pyattn.set_num_threads(cfg.threads)
    app = create_app(cfg)
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=log_level,
        timeout_graceful_shutdown=cfg.graceful_timeout,
        timeout_keep_alive=5,
        access_log=log_level == "debug",
    )
