"""Whisper's audio front end: audio loading and the log-mel spectrogram, in numpy.

    load_audio(path or array)   -> (n_samples,) float32 mono at 16 kHz, in [-1, 1]
    log_mel_spectrogram(audio)  -> (n_mels, n_frames) float32, one frame per 10 ms
    pad_or_trim(features)       -> (..., 3000): one 30 s window of the encoder

The spectrogram follows openai-whisper's ``log_mel_spectrogram`` step by step. Its ``padding`` argument
selects the convention of each reference implementation:

    padding=0          openai-whisper's ``log_mel_spectrogram(audio)`` (its default)
    padding=160        faster-whisper's ``FeatureExtractor()(audio)`` (its default), what pyattn's Whisper uses
    padding=N_SAMPLES  openai-whisper's ``transcribe``, which then slices 3000-frame windows out of the result

The padding only adds frames at the end (and changes the last two or three, whose reflect padding then
sees zeros instead of audio). The clamp to ``max - 8`` takes the maximum over the whole audio, so the
features of a long file are not the concatenation of its 30 s chunks computed one by one.
"""

from __future__ import annotations

import functools
import os
import wave

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a 30 s window

# Files PyAV is asked to read (for the CLI's folders); load_audio itself tries any file.
AUDIO_EXTENSIONS = (
    ".wav", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".flac", ".webm", ".mp4", ".mkv", ".mka", ".mov",
    ".avi", ".wma", ".aiff", ".aif", ".amr", ".3gp",
)  # fmt: skip

# Full scale of signed PCM of each sample width, in bytes. 8-bit WAV is unsigned (offset 128); 24-bit
# samples are widened to 32 bits by shifting them into the top bytes, so they share the 32-bit scale.
_PCM_DTYPE = {1: np.uint8, 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<i4")}
_PCM_SCALE = {1: 128.0, 2: 32768.0, 3: 2.0**31, 4: 2.0**31}


def load_audio(source, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Return the audio of ``source`` as a 1-D float32 mono array in [-1, 1] at ``sample_rate`` Hz.

    ``source`` is either
      * a path (str or os.PathLike) to an audio file. A PCM WAV file (8, 16, 24 or 32-bit integer samples) is read
        with the standard library's ``wave``, channels averaged to mono, so the base install reads it without
        extra packages. Any other file -- mp3, m4a/aac, ogg/opus, flac, float or compressed WAV, the audio track of
        a video (mp4, mkv, webm, mov ...) -- and a WAV at another rate are decoded with PyAV (``pip install av``,
        in the ``whisper`` extra; the FFmpeg libraries faster-whisper uses) and resampled to ``sample_rate`` mono
        with its AudioResampler (16-bit, as faster-whisper's decode_audio). Without PyAV a WAV at another rate is
        resampled with ``soxr`` when that is installed; or
      * a 1-D numpy array already at ``sample_rate``: float32/float64 samples in [-1, 1] (a float32 array
        is returned as is, not copied), or int16 samples, scaled by 1/32768.

    Raises ValueError, naming the file, for a file that is empty, not audio, truncated (fewer samples than its
    header declares) or that FFmpeg cannot decode, for no samples, for NaN/inf, and for float samples outside
    [-1, 1]; FileNotFoundError for a missing file; TypeError for other types and dtypes.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise ValueError(f"{path}: is a folder, not an audio file")
        if os.path.getsize(path) == 0:  # FileNotFoundError for a missing file
            what = "PCM WAV" if path.lower().endswith(".wav") else "audio"
            raise ValueError(f"{path}: not a readable {what} file (the file is empty)")
        with open(path, "rb") as f:
            head = f.read(12)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE" or path.lower().endswith(".wav"):
            return _read_wav(path, sample_rate)
        return _decode(path, sample_rate)
    raise TypeError(f"expected a path to an audio file or a numpy array, got {type(source).__name__}")


def _av():
    try:
        import av
    except ImportError:
        return None
    return av


def _decode(path: str, sample_rate: int, wav_reason: str = "") -> np.ndarray:
    """Decodes the first audio stream of `path` with PyAV, resampled to `sample_rate` mono 16-bit."""
    av = _av()
    if av is None:
        raise ValueError(
            f"{path}: {wav_reason or 'not a PCM WAV file'}; reading other formats (mp3, m4a, ogg, flac, video ...) "
            "needs PyAV: `pip install av` (or pyattn[whisper]), or convert it with "
            f"`ffmpeg -i {path} -ar {sample_rate} -ac 1 out.wav`"
        )
    errors = tuple(e for e in (getattr(av, "FFmpegError", None), getattr(av, "AVError", None)) if e is not None)
    chunks = []
    try:
        with av.open(path, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                kinds = sorted({s.type for s in container.streams}) or ["no streams"]
                raise ValueError(f"{path}: no audio stream in the file ({container.format.name}: {', '.join(kinds)})")
            stream = container.streams.audio[0]
            declared = _declared_seconds(stream, container)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                frame.pts = None  # the resampler's own timing: a file's broken timestamps cannot stall it
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except errors as e:
        prefix = f"not a readable PCM WAV file ({wav_reason}), and " if wav_reason else ""
        raise ValueError(f"{path}: {prefix}FFmpeg cannot decode it as audio: {e}") from None
    except (EOFError, UnicodeDecodeError, RuntimeError) as e:
        raise ValueError(f"{path}: FFmpeg cannot decode it as audio: {e}") from None
    n = sum(c.size for c in chunks)
    if n == 0:
        raise ValueError(f"{path}: the file contains no audio samples")
    seconds = n / sample_rate
    # Encoders pad and trim a few frames (priming samples); a file cut short loses far more.
    if declared is not None and seconds < declared - max(0.25, 0.02 * declared):
        raise ValueError(
            f"{path}: the file is truncated: {seconds:.2f} s of audio decoded, its header declares {declared:.2f} s"
        )
    x = np.concatenate(chunks).astype(np.float32)
    x *= np.float32(1.0 / 32768.0)
    return x


def _declared_seconds(stream, container):
    """The duration a file's header declares for its audio stream, or None when it declares none."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1_000_000  # av.time_base: microseconds
    return None


def _from_array(x: np.ndarray) -> np.ndarray:
    if x.ndim != 1:
        raise ValueError(
            f"expected 1-D mono audio, got an array of shape {x.shape}; "
            "average the channels first, e.g. x.mean(axis=-1) for (samples, channels)"
        )
    if x.dtype == np.int16:
        x = x.astype(np.float32) / np.float32(32768.0)
    elif x.dtype in (np.float32, np.float64):
        x = x.astype(np.float32, copy=False)
    else:
        raise TypeError(f"expected audio samples as float32, float64 or int16, got {x.dtype}")
    if x.size == 0:
        raise ValueError("the audio array is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"the audio contains {np.count_nonzero(~np.isfinite(x))} NaN or infinite samples")
    peak = float(np.abs(x).max())
    if peak > 1.0:
        raise ValueError(
            f"expected float samples in [-1, 1], got a peak of {peak:g}; "
            "divide int16-valued samples by 32768, or np.clip the audio"
        )
    return x


def _read_wav(path: str, sample_rate: int) -> np.ndarray:
    try:
        with wave.open(path, "rb") as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            declared = f.getnframes()
            data = f.readframes(declared)
    except (wave.Error, EOFError, RuntimeError) as e:
        # wave only reads uncompressed integer PCM: float, mu-law, ADPCM, WAVE_FORMAT_EXTENSIBLE (before
        # Python 3.12) and non-WAV files all end up here, as does a header cut short (EOFError) and a chunk
        # whose size runs past the RIFF chunk holding it (wave's seek raises a bare RuntimeError). PyAV, when
        # installed, gets the file next: it reads float and compressed WAVs, and files named .wav that are not.
        if isinstance(e, RuntimeError):
            reason = "a chunk claims more bytes than the RIFF chunk holds"
        else:
            reason = str(e) or "the header is cut short"
        if _av() is not None and not isinstance(e, EOFError):
            return _decode(path, sample_rate, reason)
        raise ValueError(
            f"{path}: not a readable PCM WAV file ({reason}); convert it with "
            f"`sox {path} -r {sample_rate} -c 1 -b 16 out.wav`, or `pip install av` to read other encodings"
        ) from None
    if width not in _PCM_DTYPE:
        raise ValueError(f"{path}: unsupported sample width of {width} bytes; expected 1, 2, 3 or 4")
    n = len(data) // (width * channels)  # whole frames only: the data chunk of a cut file may end mid-frame
    if n == 0:
        raise ValueError(f"{path}: the WAV file contains no audio samples")
    # A cut file holds fewer frames than its data chunk declares. Streaming writers (ffmpeg to a pipe) declare
    # 0xFFFFFFFF bytes, which is no promise.
    if n < declared and declared * width * channels < 0xFFFFFF00:
        raise ValueError(
            f"{path}: the WAV file is truncated: {n} of the {declared} frames its header declares "
            f"({n / rate:.2f} of {declared / rate:.2f} s)"
        )
    raw = np.frombuffer(data, np.uint8, count=n * width * channels)
    if width == 3:
        wide = np.zeros((raw.size // 3, 4), np.uint8)  # little endian: the low byte stays zero
        wide[:, 1:] = raw.reshape(-1, 3)
        raw = wide.reshape(-1)
    ints = raw.view(_PCM_DTYPE[width]).reshape(n, channels)
    x = ints.astype(np.float32)
    if width == 1:
        x -= 128.0
    x = x.mean(axis=1) if channels > 1 else x[:, 0]
    x *= np.float32(1.0 / _PCM_SCALE[width])
    if rate != sample_rate:
        if _av() is not None and MIN_FILE_RATE <= rate <= MAX_FILE_RATE:
            return _decode(path, sample_rate)  # FFmpeg's resampler, as faster-whisper's decode_audio
        x = _resample(x, rate, sample_rate, path)
    return x


# Rates a file may declare to be resampled: a header claiming 1 Hz would otherwise turn each sample into
# 16000 (a 1 MB file into 64 GB of float32).
MIN_FILE_RATE, MAX_FILE_RATE = 1000, 768000


def _resample(x: np.ndarray, rate: int, sample_rate: int, path: str) -> np.ndarray:
    if not MIN_FILE_RATE <= rate <= MAX_FILE_RATE:
        raise ValueError(
            f"{path}: sample rate of {rate} Hz is outside the {MIN_FILE_RATE}-{MAX_FILE_RATE} Hz of "
            "audio files pyattn resamples (a corrupt header?)"
        )
    try:
        import soxr
    except ImportError:
        raise ValueError(
            f"{path}: sample rate is {rate} Hz, expected {sample_rate} Hz; convert the file with "
            f"`sox {path} -r {sample_rate} out.wav`, or `pip install av` (or `pip install soxr`) to resample "
            "on load"
        ) from None
    # soxr's band-limited result can overshoot full scale by a little; clip as a 16-bit file would.
    return np.clip(soxr.resample(x, rate, sample_rate), -1.0, 1.0).astype(np.float32, copy=False)


@functools.cache
def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 triangular mel filterbank, read-only and cached.

    The filters of librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, htk=False,
    norm="slaney") that Whisper ships in mel_filters.npz: n_mels triangles whose edges are evenly spaced
    on the Slaney mel scale from 0 Hz to sample_rate / 2, each scaled by 2 / (its width in Hz) so that
    every filter has about the same area.
    """
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2)
    edges = _mel_to_hz(mels)  # (n_mels + 2,) left edge, centre and right edge of each filter in turn
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # (1 + n_fft // 2,) centre frequency of each bin
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - left) / (centre - left)
    falling = (right - bins) / (right - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (right - left))
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


# The Slaney mel scale (Auditory Toolbox): linear below 1 kHz at 200/3 Hz per mel, logarithmic above
# with 27 mels per factor 6.4 in frequency.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(f):
    f = np.asarray(f, np.float64)
    return np.where(
        f < _MIN_LOG_HZ, f / _F_SP, _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    )


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    return np.where(m < _MIN_LOG_MEL, m * _F_SP, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)))


def log_mel_spectrogram(audio, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """(n_mels, (len(audio) + padding) // 160) float32 log-mel spectrogram of 16 kHz audio, as Whisper's.

    ``audio`` is a 1-D array of samples (any float or int dtype, used as is) or a path for load_audio.
    Steps: append ``padding`` zeros; STFT with a periodic Hann window of 400 samples, hop 160, reflect
    padding of 200 samples on both sides (center=True); power |X|^2 without the last frame; mel filters;
    log10 of max(mel, 1e-10); clamp to (global max - 8); (x + 4) / 4. See the module docstring for which
    ``padding`` matches which reference (padding=160 gives faster-whisper's FeatureExtractor).
    """
    if isinstance(audio, (str, os.PathLike)):
        audio = load_audio(audio)
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected 1-D mono audio, got an array of shape {audio.shape}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if audio.size + padding < HOP_LENGTH:
        raise ValueError(
            f"need at least {HOP_LENGTH} samples (audio + padding) for one frame, got {audio.size} + {padding}"
        )
    x = np.pad(audio, (0, padding))
    x = np.pad(x, N_FFT // 2, mode="reflect")
    frames = sliding_window_view(x, N_FFT)[::HOP_LENGTH][:-1]  # (n_frames, 400) views; last frame dropped
    spectrum = np.fft.rfft(frames * _hann(N_FFT), axis=-1)  # (n_frames, 201) complex64
    power = spectrum.real**2 + spectrum.imag**2
    mel = mel_filters(n_mels) @ power.T  # (n_mels, n_frames)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


@functools.cache
def _hann(n: int) -> np.ndarray:
    # Periodic Hann window (torch.hann_window(n)): the symmetric window of n + 1 points without its last.
    return np.hanning(n + 1)[:-1].astype(np.float32)


def pad_or_trim(features: np.ndarray, length: int = N_FRAMES) -> np.ndarray:
    """Zero-pad or cut ``features`` along its last axis to ``length`` (3000 frames = one 30 s window)."""
    n = features.shape[-1]
    if n > length:
        return features[..., :length]
    if n < length:
        return np.pad(features, [(0, 0)] * (features.ndim - 1) + [(0, length - n)])
    return features
