"""pyattn.audio against faster-whisper's FeatureExtractor and against WAV files decoded by hand."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import wave

import numpy as np
import pytest

from pyattn import audio

DATA = pathlib.Path(__file__).parent / "data"
TRANSCRIPTS = json.loads((DATA / "transcripts.json").read_text())
FIXTURES = sorted(name for name in TRANSCRIPTS if name != "student_8k.wav")
TOL = 1e-4  # max abs error of the normalised log-mel, whose values span about 2


def write_wav(path, frames: bytes, width: int, channels: int = 1, rate: int = 16000):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(frames)
    return path


@pytest.fixture(scope="module")
def extractor():
    fw = pytest.importorskip("faster_whisper.feature_extractor")
    return fw.FeatureExtractor()


# ---- log-mel spectrogram vs faster-whisper ------------------------------------------------------------


def test_constants():
    assert (audio.SAMPLE_RATE, audio.N_FFT, audio.HOP_LENGTH) == (16000, 400, 160)
    assert (audio.CHUNK_LENGTH, audio.N_SAMPLES, audio.N_FRAMES) == (30, 480000, 3000)


def test_mel_filters_match_faster_whisper(extractor):
    ours = audio.mel_filters()
    assert ours.shape == (80, 201) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, extractor.mel_filters, rtol=0, atol=1e-6)
    assert audio.mel_filters() is ours  # cached
    with pytest.raises(ValueError):
        ours[0, 0] = 1.0  # read-only, so the cache cannot be corrupted


def test_mel_filters_128_match_faster_whisper(extractor):
    # large-v3 uses 128 bands; same construction.
    np.testing.assert_allclose(audio.mel_filters(128), extractor.get_mel_filters(16000, 400, 128), atol=1e-6)


@pytest.mark.parametrize("name", FIXTURES)
def test_log_mel_matches_faster_whisper_on_speech(extractor, name):
    x = audio.load_audio(DATA / name)
    ours = audio.log_mel_spectrogram(x, padding=160)
    ref = extractor(x)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (80, (x.size + 160) // 160)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)


# (1 sample, padding 0) gives no frame: see test_too_short_for_a_frame.
@pytest.mark.parametrize(
    "n, padding",
    [
        (1, 160),
        (399, 160),
        (400, 160),
        (401, 160),
        (16000 * 31, 160),
        (399, 0),
        (400, 0),
        (401, 0),
        (16000 * 31 + 1, 0),
    ],
)
@pytest.mark.parametrize("signal", ["noise", "sine"])
def test_log_mel_matches_faster_whisper_on_odd_lengths(extractor, n, signal, padding):
    rng = np.random.default_rng(n)
    if signal == "noise":
        x = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    else:
        x = (0.8 * np.sin(2 * np.pi * 997.0 * np.arange(n) / 16000 + 0.3)).astype(np.float32)
    ours = audio.log_mel_spectrogram(x, padding=padding)
    ref = extractor(x, padding=padding)
    assert ours.shape == ref.shape == (80, (n + padding) // 160)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)


def test_log_mel_of_a_path_and_of_int16(extractor):
    path = DATA / "student.wav"
    with wave.open(str(path)) as f:
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
    ref = extractor(pcm.astype(np.float32) / 32768)
    np.testing.assert_allclose(audio.log_mel_spectrogram(path, padding=160), ref, atol=TOL)
    np.testing.assert_allclose(audio.log_mel_spectrogram(audio.load_audio(pcm), padding=160), ref, atol=TOL)


def test_log_mel_of_silence_is_constant():
    # log10(1e-10) = -10 everywhere, the clamp leaves it, (-10 + 4) / 4 = -1.5. Equal everywhere, and -1.5 within
    # numpy's float32 log10: its AVX-512 path gives -10.000001 (1 ulp) on a Zen 4, its AVX2 path -10 on a Zen 3.
    out = audio.log_mel_spectrogram(np.zeros(1600, np.float32))
    assert out.shape == (80, 10) and np.all(out == out[0, 0])
    np.testing.assert_allclose(out, -1.5, rtol=0, atol=4 * np.finfo(np.float32).eps)


def test_too_short_for_a_frame():
    with pytest.raises(ValueError, match="at least 160 samples"):
        audio.log_mel_spectrogram(np.zeros(159, np.float32))
    assert audio.log_mel_spectrogram(np.zeros(1, np.float32), padding=160).shape == (80, 1)


def test_log_mel_refuses_2d():
    with pytest.raises(ValueError, match=r"1-D mono audio, got an array of shape \(2, 800\)"):
        audio.log_mel_spectrogram(np.zeros((2, 800), np.float32))


def test_pad_or_trim():
    f = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    np.testing.assert_array_equal(audio.pad_or_trim(f, 3), f[:, :3])
    np.testing.assert_array_equal(audio.pad_or_trim(f, 7), np.concatenate([f, np.zeros((2, 2))], axis=1))
    assert audio.pad_or_trim(f, 5) is f
    assert audio.pad_or_trim(np.zeros((80, 10), np.float32)).shape == (80, 3000)


# ---- load_audio ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_load_fixture(name):
    path = DATA / name
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 16000)
        n = f.getnframes()
        pcm = np.frombuffer(f.readframes(n), "<i2")
    for source in (path, str(path)):
        x = audio.load_audio(source)
        assert x.dtype == np.float32 and x.shape == (n,)
        assert -1.0 <= x.min() and x.max() <= 1.0 and np.abs(x).max() > 0.1  # speech, not silence
        np.testing.assert_array_equal(x, pcm / 32768.0)


def test_fixtures_are_small_and_described():
    assert len(FIXTURES) >= 4
    assert 20.0 <= audio.load_audio(DATA / "long.wav").size / 16000 <= 28.0
    assert sum(p.stat().st_size for p in DATA.glob("*.wav")) < 1_000_000  # the audio clips
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 1_100_000  # and the reference data beside them
    readme = (DATA / "README.md").read_text()
    for name, text in TRANSCRIPTS.items():
        assert name in readme and text.split(".")[0] in readme


def test_stereo_is_averaged(tmp_path):
    left = np.array([0, 16384, -32768, 32767], "<i2")
    right = np.array([0, -16384, -32768, 1], "<i2")
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1).tobytes(), width=2, channels=2)
    np.testing.assert_array_equal(audio.load_audio(path), [0.0, 0.0, -1.0, 32768 / 2 / 32768])


def test_8_bit_is_unsigned(tmp_path):
    path = write_wav(tmp_path / "u8.wav", bytes([0, 64, 128, 192, 255]), width=1)
    np.testing.assert_array_equal(audio.load_audio(path), [-1.0, -0.5, 0.0, 0.5, 127 / 128])


@pytest.mark.parametrize("width", [3, 4])
def test_24_and_32_bit(tmp_path, width):
    bits = 8 * width
    values = [-(2 ** (bits - 1)), -1, 0, 1, 2 ** (bits - 2), 2 ** (bits - 1) - 1]
    frames = b"".join(v.to_bytes(width, "little", signed=True) for v in values)
    got = audio.load_audio(write_wav(tmp_path / f"{bits}.wav", frames, width=width))
    np.testing.assert_allclose(got, np.array(values) / 2.0 ** (bits - 1), rtol=1e-7, atol=0)
    assert got[0] == -1.0 and got[2] == 0.0 and got[4] == 0.5


def test_24_bit_three_channels(tmp_path):
    values = np.array([[-(2**23), 0, 2**22], [3, 3, 3]])  # two frames of three channels
    frames = b"".join(int(v).to_bytes(3, "little", signed=True) for v in values.reshape(-1))
    got = audio.load_audio(write_wav(tmp_path / "24x3.wav", frames, width=3, channels=3))
    np.testing.assert_allclose(got, values.mean(axis=1) / 2.0**23, rtol=1e-7)


def test_other_sample_rate(monkeypatch):
    path = DATA / "student_8k.wav"
    if importlib.util.find_spec("av") is None and importlib.util.find_spec("soxr") is None:
        with pytest.raises(
            ValueError,
            match=r"student_8k\.wav: sample rate is 8000 Hz, expected 16000 Hz.*"
            r"sox .*-r 16000.*pip install soxr",
        ):
            audio.load_audio(path)
    else:
        x = audio.load_audio(path)
        ref = audio.load_audio(DATA / "student.wav")
        assert x.dtype == np.float32 and abs(x.size - ref.size) <= 2
        assert np.abs(x).max() <= 1.0


def test_other_sample_rate_goes_through_soxr(tmp_path, monkeypatch):
    # A stand-in soxr checks the call and overshoots full scale, as a band-limited resampler may.
    calls = []

    class FakeSoxr:
        @staticmethod
        def resample(x, in_rate, out_rate):
            calls.append((x.dtype, in_rate, out_rate))
            return np.repeat(x, out_rate // in_rate) * np.float32(1.5)

    monkeypatch.setitem(__import__("sys").modules, "soxr", FakeSoxr)
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # without PyAV, which resamples first when present
    path = write_wav(tmp_path / "8k.wav", np.array([16384, -32768], "<i2").tobytes(), width=2, rate=8000)
    x = audio.load_audio(path)
    assert calls == [(np.float32, 8000, 16000)]
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, [0.75, 0.75, -1.0, -1.0])


def test_arrays():
    f64 = np.array([0.5, -0.25, 1.0])
    x = audio.load_audio(f64)
    assert x.dtype == np.float32 and x.tolist() == [0.5, -0.25, 1.0]
    f32 = np.array([0.5, -1.0], np.float32)
    assert audio.load_audio(f32) is f32
    np.testing.assert_array_equal(audio.load_audio(np.array([-32768, 0, 16384], np.int16)), [-1.0, 0.0, 0.5])


# ---- bad inputs: each refused with a message that says what is wrong ------------------------------------


def test_not_a_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not samples\n" * 10)
    with pytest.raises(ValueError, match=r"notes\.wav: not a readable PCM WAV file \(file does not start with RIFF"):
        audio.load_audio(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "cut.wav"
    path.write_bytes((DATA / "student.wav").read_bytes()[:20])
    with pytest.raises(ValueError, match=r"cut\.wav: not a readable PCM WAV file \(the header is cut short"):
        audio.load_audio(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.wav: not a readable PCM WAV file \(the file is empty\)"):
        audio.load_audio(path)


def test_compressed_wav(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # the standard library's refusal, without PyAV
    good = (DATA / "student.wav").read_bytes()
    path = tmp_path / "float.wav"
    path.write_bytes(good[:20] + (3).to_bytes(2, "little") + good[22:])  # format tag 3: IEEE float
    with pytest.raises(
        ValueError,
        match=r"float\.wav: not a readable PCM WAV file \(unknown format: 3\); "
        r"convert it with `sox .*-b 16",
    ):
        audio.load_audio(path)


def test_wav_without_samples(tmp_path):
    path = write_wav(tmp_path / "silent.wav", b"", width=2)
    with pytest.raises(ValueError, match=r"silent\.wav: the WAV file contains no audio samples"):
        audio.load_audio(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        audio.load_audio(tmp_path / "nowhere.wav")


@pytest.mark.parametrize(
    "source, error, message",
    [
        (np.zeros((2, 100), np.float32), ValueError, r"1-D mono audio, got an array of shape \(2, 100\)"),
        (np.zeros(100, np.int32), TypeError, "float32, float64 or int16, got int32"),
        (np.array([0.0, np.nan, np.inf]), ValueError, "2 NaN or infinite samples"),
        (np.zeros(0, np.float32), ValueError, "empty"),
        (np.array([0.5, 32767.0]), ValueError, "in \\[-1, 1\\], got a peak of 32767.*32768"),
        ([0.0, 0.1], TypeError, "path to an audio file or a numpy array, got list"),
    ],
)
def test_bad_arrays(source, error, message):
    with pytest.raises(error, match=message):
        audio.load_audio(source)
