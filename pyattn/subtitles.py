"""Transcript files from Whisper segments: plain text, SubRip (.srt), WebVTT (.vtt), JSON and TSV.

    render(transcription, "srt")          -> the file's text
    write(transcription, "srt", path)     -> writes it (UTF-8)

A segment is anything with `start`, `end` (seconds) and `text` (pyattn.models.whisper.Segment, faster-whisper's
Segment). Subtitle times are rounded to the millisecond and kept inside [0, duration] when the duration of the audio
is known (a window's last timestamp may point a little past the end of the audio).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["FORMATS", "format_timestamp", "render", "write"]

FORMATS = ("txt", "srt", "vtt", "json", "tsv")


def format_timestamp(seconds: float, decimal_marker: str = ",") -> str:
    """HH:MM:SS,mmm (SubRip; WebVTT uses "."): hours always shown, at least two digits."""
    if seconds < 0:
        raise ValueError(f"a timestamp must be >= 0 seconds, got {seconds}")
    ms = int(round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _unpack(transcription):
    """(segments, info or None) of a Transcription, a (segments, info) pair or a list of segments."""
    if isinstance(transcription, tuple) and len(transcription) == 2 and not hasattr(transcription[0], "start"):
        segments, info = transcription
        return list(segments), info
    return list(transcription), None


def _cues(segments: Sequence, duration: Optional[float]):
    """(start, end, text) per non-empty segment, times clamped to [0, duration]."""
    out = []
    for s in segments:
        text = " ".join(s.text.split())  # one line; no blank line can end a cue early
        if not text:
            continue
        start, end = max(0.0, float(s.start)), max(0.0, float(s.end))
        if duration is not None:
            start, end = min(start, duration), min(end, duration)
        out.append((start, max(start, end), text))
    return out


def _srt(segments, duration) -> str:
    blocks = [
        f"{i}\n{format_timestamp(a)} --> {format_timestamp(b)}\n{text}\n"
        for i, (a, b, text) in enumerate(_cues(segments, duration), 1)
    ]
    return "\n".join(blocks)


def _vtt(segments, duration) -> str:
    blocks = [
        f"{format_timestamp(a, '.')} --> {format_timestamp(b, '.')}\n{text}\n"
        for a, b, text in _cues(segments, duration)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def _tsv(segments, duration) -> str:
    # openai-whisper's TSV: integer milliseconds, so that a spreadsheet reads the columns as numbers
    rows = ["start\tend\ttext"]
    rows += [f"{round(a * 1000)}\t{round(b * 1000)}\t{text}" for a, b, text in _cues(segments, duration)]
    return "\n".join(rows) + "\n"


def _json(segments, info) -> str:
    def plain(x):
        return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else dict(x._asdict())

    doc = {
        "text": " ".join(t for t in (s.text.strip() for s in segments) if t),
        "segments": [plain(s) for s in segments],
    }
    if info is not None:
        doc.update({k: v for k, v in plain(info).items() if k in ("language", "language_probability", "duration")})
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def render(transcription, fmt: str = "txt") -> str:
    """The text of a transcript file in format `fmt` (one of FORMATS) for a Transcription / (segments, info) pair /
    list of segments. txt: one line per segment."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown transcript format {fmt!r}; expected one of {', '.join(FORMATS)}")
    segments, info = _unpack(transcription)
    duration = None if info is None else getattr(info, "duration", None)
    if fmt == "txt":
        return "".join(f"{t}\n" for t in (s.text.strip() for s in segments) if t)
    if fmt == "json":
        return _json(segments, info)
    return {"srt": _srt, "vtt": _vtt, "tsv": _tsv}[fmt](segments, duration)


def write(transcription, fmt: str, path) -> Path:
    """Writes render(transcription, fmt) to `path` (UTF-8); returns the path."""
    path = Path(path)
    path.write_text(render(transcription, fmt), encoding="utf-8")
    return path
