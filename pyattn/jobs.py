"""Corpus jobs: a file of sentences in, a file of vectors out, streamed and resumable.

``embed_file(input, output)`` (the CLI's ``pyattn embed --input FILE --output OUT``) embeds every row of a
text corpus with a ``SentenceEncoder`` while holding one window of sentences and vectors at a time, so that a
file larger than memory is fine:

- Input. ``.txt``: UTF-8, one sentence per line (``\\n`` or ``\\r\\n``). Every line is a row, an empty one too:
  it yields the embedding of the empty string (the model sees ``[CLS] [SEP]``), so that row i is line i.
  ``.jsonl``: one JSON object per line, the text under ``field``; blank lines are skipped (they are not rows).
  A first pass reads the whole file once: it counts the rows (the output's shape, the progress bar's total)
  and checks every record, so that a bad line fails before any model work, naming its line number.
- Work. A window of rows (default 64 x batch_size) is read, sorted by length inside the window so that each
  batch pads little, encoded, put back in input order and written (``SentenceEncoder.encode_iter``).
  A tqdm bar on stderr shows sentences/s.
- Output. ``.npy``: a float32 (rows, dim) array. ``.parquet`` (needs pyarrow, ``pip install ".[corpus]"``):
  a column ``index`` (int64, the row's position in the input) and a column ``embedding``
  (fixed_size_list<float32>[dim]), in input order. Until the job ends the vectors live beside the output, in
  ``OUT.part`` (an .npy written in place) or ``OUT.parts/`` (one parquet file per window, joined at the end);
  OUT itself appears only complete.
- Resume. After each window the vectors are flushed to disk, then ``OUT.state.json`` (written atomically:
  a temporary file, fsync, rename) records the rows done and the input's byte offset after them. An
  interrupted run (a crash, Ctrl-C, a killed machine) continues with ``resume=True`` (``--resume``) from the
  first unfinished window; at worst the window in flight is done again. The state names the input (size,
  modification time, SHA-256 of its first MiB), the jsonl field and the model (folder, weight type); a resume
  against anything else is refused with a ValueError, as is a fresh run while a state file exists.
  ``resume=True`` with no state file starts from the beginning.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np

INPUT_FORMATS = (".txt", ".jsonl")
OUTPUT_FORMATS = (".npy", ".parquet")
STATE_VERSION = 1
_HEAD_BYTES = 1 << 20  # the input's first MiB is hashed: a cheap check that a resume reads the same file

PathLike = Union[str, os.PathLike]


@dataclass
class EmbedFileResult:
    """What ``embed_file`` did: rows and dim of the output, rows done by an earlier run, time and rate of this one."""

    output: Path
    rows: int
    dim: int
    resumed_rows: int
    seconds: float

    @property
    def sentences_per_second(self) -> float:
        done = self.rows - self.resumed_rows
        return done / self.seconds if self.seconds > 0 else float("nan")


class _Records:
    """The rows of an input file from a byte offset on; ``offset`` and ``line`` follow the last row read."""

    def __init__(self, path: Path, fmt: str, field: Optional[str], offset: int = 0, line: int = 0):
        self.path, self.fmt, self.field = path, fmt, field
        self.offset, self.line = offset, line

    def __iter__(self) -> Iterator[str]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for raw in f:  # binary lines end at b"\n" only, as the byte offsets assume
                self.line += 1
                self.offset += len(raw)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{self.path}:{self.line}: not UTF-8 ({e.reason} at byte {e.start})") from None
                if text.endswith("\n"):
                    text = text[:-2] if text.endswith("\r\n") else text[:-1]
                if self.fmt == ".txt":
                    yield text
                elif text.strip():
                    yield self._field(text)

    def _field(self, text: str) -> str:
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}:{self.line}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{self.path}:{self.line}: expected a JSON object, got {type(rec).__name__}")
        if self.field not in rec:
            raise ValueError(f"{self.path}:{self.line}: no field {self.field!r} (fields: {sorted(rec)[:10]})")
        value = rec[self.field]
        if not isinstance(value, str):
            raise ValueError(f"{self.path}:{self.line}: field {self.field!r} holds {type(value).__name__}, not text")
        return value


def _input_identity(path: Path) -> dict:
    st = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(_HEAD_BYTES)).hexdigest()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_sha256": head}


def _model_identity(encoder) -> dict:
    return {
        "source": encoder.source,
        "dim": encoder.dim,
        "max_seq_length": encoder.max_seq_length,
        "normalize": encoder.normalize,
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _suffix(path: Path, allowed: tuple, what: str) -> str:
    ext = path.suffix.lower()
    if ext not in allowed:
        raise ValueError(f"{what} {path}: expected a file ending in {' or '.join(allowed)}, got {ext or 'no suffix'!r}")
    return ext


class _NpyWriter:
    """Rows written in place into an .npy of the final shape: memory holds one window, never the array."""

    def __init__(self, work: Path, rows: int, dim: int, create: bool):
        if create:
            mm = np.lib.format.open_memmap(work, mode="w+", dtype=np.float32, shape=(rows, dim))
            del mm  # the header is written and the file sized (sparse); rows go in with plain writes
        try:
            mm = np.load(work, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ValueError(f"{work}: the unfinished output cannot be read ({e}); delete it and its state") from None
        if mm.shape != (rows, dim) or mm.dtype != np.float32 or mm.ndim != 2 or not mm.flags.c_contiguous:
            raise ValueError(f"{work}: expected a float32 ({rows}, {dim}) array, found {mm.dtype} {mm.shape}")
        self.offset, self.dim = mm.offset, dim
        del mm
        self.f = open(work, "r+b")

    def write(self, row0: int, vectors: np.ndarray) -> None:
        self.f.seek(self.offset + row0 * self.dim * 4)
        self.f.write(np.ascontiguousarray(vectors, np.float32).tobytes())

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def finish(self, work: Path, output: Path) -> None:
        self.close()
        os.replace(work, output)

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


def _pyarrow():
    """pyarrow and pyarrow.parquet, imported only for a .parquet output."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError('a .parquet output needs pyarrow: pip install "pyattn[corpus]" (or pyarrow)') from None
    return pa, pq


class _ParquetWriter:
    """One parquet file per window in a folder, joined into the output at the end, one window in memory."""

    def __init__(self, work: Path, dim: int, rows_done: int):
        pa, pq = _pyarrow()
        self.pa, self.pq, self.work, self.dim = pa, pq, work, dim
        self.schema = pa.schema([("index", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])
        work.mkdir(exist_ok=True)
        for part in work.iterdir():  # windows written after the last saved state are done again
            if not part.name.endswith(".parquet") or int(part.name.split(".")[0]) >= rows_done:
                part.unlink()

    def write(self, row0: int, vectors: np.ndarray) -> None:
        pa = self.pa
        emb = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors, np.float32).ravel()), self.dim)
        index = pa.array(np.arange(row0, row0 + len(vectors), dtype=np.int64))
        part = self.work / f"{row0:015d}.parquet"
        tmp = part.with_name(part.name + ".tmp")
        self.pq.write_table(self.pa.Table.from_arrays([index, emb], schema=self.schema), tmp)
        os.replace(tmp, part)

    def commit(self) -> None:
        pass  # each part is complete once renamed

    def finish(self, work: Path, output: Path) -> None:
        tmp = output.with_name(output.name + ".tmp")
        with self.pq.ParquetWriter(tmp, self.schema) as w:
            w.write_table(self.schema.empty_table())
            for part in sorted(work.glob("*.parquet")):
                w.write_table(self.pq.ParquetFile(part).read())
        os.replace(tmp, output)
        shutil.rmtree(work)

    def close(self) -> None:
        pass


def embed_file(
    input: PathLike,
    output: PathLike,
    *,
    field: Optional[str] = None,
    encoder=None,
    model: Optional[PathLike] = None,
    dtype: Optional[str] = None,
    batch_size: int = 32,
    window: Optional[int] = None,
    resume: bool = False,
    progress: bool = True,
    on_window: Optional[Callable[[int, int], None]] = None,
) -> EmbedFileResult:
    """Embeds every row of ``input`` (.txt lines, or .jsonl with ``field``) into ``output`` (.npy or .parquet).

    encoder: a ``SentenceEncoder`` (default: ``SentenceEncoder.from_pretrained(model, dtype)``, loaded after the
    input is checked). window: rows read, sorted and written together (default 64 x batch_size); the state is
    saved after each. resume: continue the unfinished run of this output (see the module's docstring).
    on_window(windows_done, rows_done): called after each window is on disk (a hook for progress or tests).
    Returns an ``EmbedFileResult``. ValueError for a bad file, suffix, field or a state of another run.
    """
    src, out = Path(input), Path(output)
    fmt = _suffix(src, INPUT_FORMATS, "input")
    out_fmt = _suffix(out, OUTPUT_FORMATS, "output")
    if fmt == ".jsonl" and not field:
        raise ValueError(f"input {src}: a .jsonl input needs the name of its text field (--field NAME)")
    if fmt == ".txt" and field:
        raise ValueError(f"input {src}: --field applies to .jsonl inputs; a .txt input is one sentence per line")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not src.is_file():
        raise FileNotFoundError(f"input {src}: no such file")
    if out_fmt == ".parquet":
        _pyarrow()  # before the first pass, which may be long
    state_path = out.with_name(out.name + ".state.json")
    work = out.with_name(out.name + (".part" if out_fmt == ".npy" else ".parts"))

    state = None
    if state_path.exists():
        if not resume:
            raise ValueError(
                f"{state_path}: an unfinished run of this output exists; resume it (--resume, resume=True) "
                "or delete that file to start over"
            )
        state = json.loads(state_path.read_text(encoding="utf-8"))
        _check_state(state, state_path, src, fmt, field, out_fmt)

    if state is None:  # the first pass: count and check every row before any model work
        rows = sum(1 for _ in _Records(src, fmt, field))
        identity = _input_identity(src)
    else:
        rows, identity = state["rows"], state["input"]

    if encoder is None:
        from .models import SentenceEncoder

        encoder = SentenceEncoder.from_pretrained(model, dtype)
    model_id = _model_identity(encoder)
    if state is not None and state["model"] != model_id:
        raise ValueError(
            f"{state_path}: the unfinished run used another model ({state['model']}), not {model_id}; "
            "resume with the same model, or delete that file to start over"
        )
    dim = encoder.dim
    if state is None:
        state = {
            "version": STATE_VERSION,
            "input": identity,
            "format": fmt,
            "field": field,
            "output_format": out_fmt,
            "model": model_id,
            "rows": rows,
            "dim": dim,
            "rows_done": 0,
            "windows_done": 0,
            "offset": 0,
            "line": 0,
        }
        if out_fmt == ".npy" and work.exists():
            work.unlink()
        elif work.is_dir():
            shutil.rmtree(work)
    resumed = state["rows_done"]
    if out_fmt == ".npy":
        if resumed and not work.is_file():
            raise ValueError(f"{state_path}: the unfinished output {work} is missing; delete the state to start over")
        writer = _NpyWriter(work, rows, dim, create=not resumed)
    else:
        writer = _ParquetWriter(work, dim, resumed)
    _write_atomic(state_path, json.dumps(state, indent=1))

    from tqdm import tqdm

    records = _Records(src, fmt, field, state["offset"], state["line"])
    bar = tqdm(total=rows, initial=resumed, unit="sentence", desc=src.name, disable=not progress, smoothing=0.1)
    t0 = time.perf_counter()
    try:
        for start, vectors in encoder.encode_iter(records, batch_size=batch_size, window=window):
            row0 = resumed + start
            if row0 + len(vectors) > rows:
                raise ValueError(f"{src}: more rows than the first pass counted ({rows}); the file changed")
            writer.write(row0, vectors)
            writer.commit()  # the vectors are on disk before the state says so
            state.update(
                rows_done=row0 + len(vectors),
                windows_done=state["windows_done"] + 1,
                offset=records.offset,
                line=records.line,
            )
            _write_atomic(state_path, json.dumps(state, indent=1))
            bar.update(len(vectors))
            if on_window is not None:
                on_window(state["windows_done"], state["rows_done"])
        if state["rows_done"] != rows:
            raise ValueError(f"{src}: {state['rows_done']} rows read, the first pass counted {rows}; the file changed")
        writer.finish(work, out)
    finally:
        writer.close()
        bar.close()
    seconds = time.perf_counter() - t0
    state_path.unlink()
    return EmbedFileResult(output=out, rows=rows, dim=dim, resumed_rows=resumed, seconds=seconds)


def _check_state(state: dict, state_path: Path, src: Path, fmt: str, field: Optional[str], out_fmt: str) -> None:
    """A resume continues the same job: same input file, format, field and output format (the model is checked
    once it is loaded)."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{state_path}: not a pyattn job state of version {STATE_VERSION}; delete it to start over")
    now = _input_identity(src)
    was = state["input"]
    changed = [k for k in ("size", "mtime_ns", "head_sha256") if now[k] != was[k]]
    if changed:
        raise ValueError(
            f"{state_path}: the unfinished run read another input ({was['path']}, {was['size']} bytes); "
            f"{src} differs in {', '.join(changed)}. Resume with that file, or delete the state to start over"
        )
    for key, value in (("format", fmt), ("field", field), ("output_format", out_fmt)):
        if state.get(key) != value:
            raise ValueError(
                f"{state_path}: the unfinished run had {key} {state.get(key)!r}, this one {value!r}; "
                "resume with the same settings, or delete the state to start over"
            )
