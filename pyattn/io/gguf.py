"""Reading GGUF files (llama.cpp's format): metadata, the tensor table, and tensor data memory-mapped.

    header   "GGUF", u32 version (2 or 3), u64 tensor count, u64 metadata count
    metadata key (string), u32 value type, value  (strings: u64 length + UTF-8 bytes; arrays: u32 element type,
             u64 count, elements)
    tensors  name, u32 dims, dims x u64 (ne[0] first: the fastest-varying axis), u32 ggml type, u64 offset
    data     from the end of the table rounded up to `general.alignment` (default 32); each offset relative to it

Every count, length, size and offset read from the file is checked against the bytes that remain before it is
used: a hostile or truncated file ends in a ValueError naming the file and what was wrong (fuzzed in
tests/test_fuzz_loaders.py), never in a read past the end or an allocation out of proportion to the file.

Why not the `gguf` package (llama.cpp's own reader, on PyPI): its GGUFReader took 3.7 s to open SmolLM2-135M's
file here (it builds numpy views for each of the ~100,000 vocabulary and merge strings), it needs Python >= 3.10 and
pulls in requests; this reader parses the same file in a fraction of that and is compared field by field with
GGUFReader in the tests.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from .._checks import is_int

MAGIC = b"GGUF"

# metadata value types: code -> (name, struct format or None for string / array)
_VALUE_TYPES = {
    0: ("uint8", "<B"),
    1: ("int8", "<b"),
    2: ("uint16", "<H"),
    3: ("int16", "<h"),
    4: ("uint32", "<I"),
    5: ("int32", "<i"),
    6: ("float32", "<f"),
    7: ("bool", "<?"),
    8: ("string", None),
    9: ("array", None),
    10: ("uint64", "<Q"),
    11: ("int64", "<q"),
    12: ("float64", "<d"),
}
# numeric value types as numpy dtypes (arrays of them are read in one go; bool as uint8)
_NUMPY = {
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8",
}  # fmt: skip


@dataclass(frozen=True)
class GGMLType:
    name: str
    block: int  # elements per block
    nbytes: int  # bytes per block


# ggml tensor types pyattn reads (their codes in ggml.h); others are refused by name.
GGML_TYPES = {
    0: GGMLType("F32", 1, 4),
    1: GGMLType("F16", 1, 2),
    2: GGMLType("Q4_0", 32, 18),  # f16 d, 16 bytes of nibbles: x = (q - 8) d
    3: GGMLType("Q4_1", 32, 20),  # f16 d, f16 m, 16 bytes of nibbles: x = q d + m
    8: GGMLType("Q8_0", 32, 34),  # f16 d, 32 int8: x = q d
    30: GGMLType("BF16", 1, 2),
    # dequantized at load by llama.cpp's own `gguf` package (gguf.quants), imported only for such files
    6: GGMLType("Q5_0", 32, 22),
    7: GGMLType("Q5_1", 32, 24),
    10: GGMLType("Q2_K", 256, 84),
    11: GGMLType("Q3_K", 256, 110),
    12: GGMLType("Q4_K", 256, 144),
    13: GGMLType("Q5_K", 256, 176),
    14: GGMLType("Q6_K", 256, 210),
}
VIA_GGUF_PACKAGE = ("Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_KNOWN_UNSUPPORTED = {
    9: "Q8_1", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
    24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
}  # fmt: skip
MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: Tuple[int, ...]  # numpy order: the last axis is ggml's ne[0] (rows are contiguous)
    type: GGMLType
    offset: int  # from the start of the data section
    nbytes: int


@dataclass
class GGUFFile:
    path: str
    version: int
    metadata: Dict[str, Any]
    tensors: Dict[str, TensorInfo]
    data_offset: int  # where the data section starts in the file
    _map: Any = field(repr=False, default=None)

    def raw(self, name: str) -> np.ndarray:
        """The bytes of tensor `name` as stored: (rows, bytes per row) uint8, a read-only view of the mapped file."""
        t = self.tensor(name)
        rows = int(np.prod(t.shape[:-1], dtype=np.int64)) if len(t.shape) > 1 else 1
        start = self.data_offset + t.offset
        return np.frombuffer(self._map, np.uint8, t.nbytes, start).reshape(rows, t.nbytes // rows)

    def tensor(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        return self.tensors[name]

    def dequantize(self, name: str) -> np.ndarray:
        """Tensor `name` as float32, in its numpy shape (exact: every stored value is a float32)."""
        t = self.tensor(name)
        raw = self.raw(name)
        return dequantize_rows(t.type, raw, t.shape[-1]).reshape(t.shape)

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def release(self, name: str) -> None:
        """Tells the kernel this process is done with tensor `name`'s bytes (madvise DONTNEED on the whole pages
        inside it): a loader that copies each tensor into its own layout then holds the file's pages and its copy
        only one tensor at a time, not the whole file on top of the model (peak memory). Reading the tensor again
        still works: the pages come back from the file."""
        advise = getattr(self._map, "madvise", None)
        if advise is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        t = self.tensor(name)
        start = self.data_offset + t.offset
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
        last = (start + t.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            advise(mmap.MADV_DONTNEED, first, last - first)


def dequantize_rows(kind: GGMLType, raw: np.ndarray, n: int) -> np.ndarray:
    """(rows, bytes) of one ggml type -> (rows, n) float32."""
    rows = raw.shape[0]
    if kind.name == "F32":
        return raw.view("<f4").astype(np.float32).reshape(rows, n)
    if kind.name == "F16":
        return raw.view("<f2").astype(np.float32).reshape(rows, n)
    if kind.name == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(rows, n)
    if kind.name in VIA_GGUF_PACKAGE:
        # the K-quants' packing (6-bit sub-block scales, split high bits) is llama.cpp's to define: its own numpy
        # reference decodes them rather than a copy of it here
        try:
            from gguf import GGMLQuantizationType
            from gguf.quants import dequantize
        except ImportError:
            raise ValueError(
                f"{kind.name} tensors are dequantized by llama.cpp's gguf package, which is not installed: "
                "pip install gguf"
            ) from None
        out = dequantize(np.ascontiguousarray(raw), GGMLQuantizationType[kind.name])
        return np.ascontiguousarray(out, np.float32).reshape(rows, n)
    blocks = raw.reshape(rows, n // kind.block, kind.nbytes)
    d = blocks[..., 0:2].copy().view("<f2").astype(np.float32)  # (rows, nb, 1)
    if kind.name == "Q8_0":
        q = blocks[..., 2:].view(np.int8).astype(np.float32)
        return (q * d).reshape(rows, n)
    if kind.name in ("Q4_0", "Q4_1"):
        qs = blocks[..., 2:] if kind.name == "Q4_0" else blocks[..., 4:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)  # element j, then j + 16
        if kind.name == "Q4_0":
            return ((q - 8.0) * d).reshape(rows, n)
        m = blocks[..., 2:4].copy().view("<f2").astype(np.float32)
        return (q * d + m).reshape(rows, n)
    raise ValueError(f"cannot dequantize ggml type {kind.name}")


def int8_blocks(kind: GGMLType, raw: np.ndarray, n: int):
    """Q8_0, Q4_0 and Q5_0 rows as pyattn's int8 blocks of 32, exactly: (q (rows, n) int8, scales (rows, n / 32)
    float32) with x = q * scale (Q4_0's q - 8 and Q5_0's q - 16 fit int8). None for other types. (A fused
    projection whose parts differ in type, such as Q5_0 Q/K with a Q8_0 V, is held so, without rounding again.)"""
    if kind.name not in ("Q8_0", "Q4_0", "Q5_0"):
        return None
    rows = raw.shape[0]
    blocks = raw.reshape(rows, n // 32, kind.nbytes)
    d = blocks[..., 0:2].copy().view("<f2").astype(np.float32)[..., 0]
    if kind.name == "Q8_0":
        q = blocks[..., 2:].view(np.int8)
    else:
        qs = blocks[..., -16:]  # Q4_0: d, nibbles; Q5_0: d, 4 bytes of fifth bits (bit i: weight i), nibbles
        u = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16)
        if kind.name == "Q5_0":
            qh = blocks[..., 2:6].copy().view("<u4")  # (rows, nb, 1)
            u |= (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.int16)
        q = (u - (16 if kind.name == "Q5_0" else 8)).astype(np.int8)
    return np.ascontiguousarray(q.reshape(rows, n)), np.ascontiguousarray(d)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """The low 4 bits of blocks of 32 values (..., 32) as GGUF stores them: value k in the low nibble of byte k, k + 16
    in its high one (..., 16)."""
    return (q[..., :16] & 15) | ((q[..., 16:] & 15) << 4)


def _bit_mask(q: np.ndarray, bit: int) -> np.ndarray:
    """Bit `bit` of blocks of 32 values (..., 32) as a little-endian uint32 per block, bit k for value k (..., 4)."""
    return np.packbits((q >> bit) & 1, axis=-1, bitorder="little")


def q6_k_as_q6(raw: np.ndarray, n: int) -> np.ndarray:
    """Q6_K rows (rows, n / 256 * 210 bytes) as pyattn's q6_k rows (rows, n / 32 * 28 bytes) of the same values, so
    that the 6-bit GEMM reads them in place (0.875 bytes per weight, against 1.0625 as int8 blocks, which would also
    round them again).

    A Q6_K super-block of 256 weights holds 128 bytes ql of low 4 bits, 64 bytes qh of high 2 bits, 16 int8 scales
    (one per 16 weights, in order) and a float16 d; weight = d sc (q - 32). In each half h of 128 weights, value l <
    32 of its four runs of 32 takes the low nibble of ql[64 h + l] (run 0), of ql[64 h + 32 + l] (run 1), their high
    nibbles (runs 2, 3), and bits 0-1, 2-3, 4-5, 6-7 of qh[32 h + l] as its top two bits. Re-laid by _as_q6 --
    nothing rounded."""
    shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]

    def values(blk):  # (rows, nsb, 210) -> the 6-bit values (rows, nsb, 256), d's bytes, the int8 scales' bytes
        rows, nsb = blk.shape[:2]
        ql = blk[..., :128].reshape(rows, nsb, 2, 2, 32)
        qh = blk[..., 128:192].reshape(rows, nsb, 2, 1, 32)
        low = np.stack([ql & 15, ql >> 4], 3).reshape(rows, nsb, 2, 4, 32)  # runs: both low nibbles, then high
        return (low | (((qh >> shifts) & 3) << 4)).reshape(rows, nsb, 256), blk[..., 208:210], blk[..., 192:208]

    return _as_q6(raw, n, 210, values)


def _as_q6(raw: np.ndarray, n: int, block_bytes: int, values) -> np.ndarray:
    """GGUF super-blocks of 256 weights, `block_bytes` each, whose weight is d sc (u - 32) for a float16 d per
    super-block, an int8 sc per 16 weights and 6-bit u, as pyattn's q6_k rows: per block of 32, d, the scales of its
    two halves, its fifth and sixth bits (bit k of weight k), its low 4 bits (k in the low nibble of byte k, 16 + k in
    its high one). values(blocks (rows, nsb, block_bytes)) -> (u (rows, nsb, 256), d's bytes (rows, nsb, 2), the
    scales' bytes (rows, nsb, 16)). Rows are re-laid a slice at a time, so that a large table (Llama 3.2's 128256 x
    2048 embeddings) needs little memory beyond its result."""
    rows, nsb = raw.shape[0], n // 256
    out = np.empty((rows, n // 32, 28), np.uint8)
    step = max(1, (1 << 22) // max(n, 1))  # rows per slice: about 4M weights
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        u, d, sc = values(raw[r0:r1].reshape(r1 - r0, nsb, block_bytes))
        q = u.reshape(r1 - r0, n // 32, 32)
        o = out[r0:r1]
        o[..., 0:2] = np.repeat(d, 8, axis=1)  # the super-block's d in each of its blocks
        o[..., 2:4] = sc.reshape(r1 - r0, n // 32, 2)
        o[..., 4:8] = _bit_mask(q, 4)
        o[..., 8:12] = _bit_mask(q, 5)
        o[..., 12:] = _nibbles(q)
    return out.reshape(rows, -1)


# The pre-tokenizer regexes of Llama 3 and Qwen2 (as their tokenizer.json files and llama.cpp's llama-vocab.cpp
# have them): contractions in either case, letters with one leading non-letter, digits in runs of up to 3 (Llama 3)
# or one by one (Qwen2), punctuation runs with their line breaks, whitespace.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# GPT-4o's (o200k; Phi-4-mini, Llama 4): a word is an upper-case run then a lower-case run, or the reverse, with a
# contraction as its suffix; punctuation runs take a following '/' with the line breaks.
_UPPER, _LOWER, _S = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_GPT4O_SPLIT = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_S}|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_S}|\p{{N}}{{1,3}}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class _PreTokenizer:
    splits: Tuple[str, ...] = ()  # regexes splitting the text first, each match its own piece
    gpt2_regex: bool = True  # then GPT-2's own regex (byte-level's use_regex); False where a split replaces it
    ignore_merges: bool = False  # a piece that is a whole token is that token, without merges (llama.cpp's llama3)
    add_bos: bool = False  # a prompt starts with BOS unless tokenizer.ggml.add_bos_token says otherwise


# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) and what each does before the byte-level BPE. The names that
# llama.cpp maps to one behaviour map here to the same one; tests/test_gguf_pre.py holds each to llama.cpp's ids.
_LLAMA3 = _PreTokenizer((_LLAMA3_SPLIT,), gpt2_regex=False, ignore_merges=True, add_bos=True)
_QWEN2 = _PreTokenizer((_QWEN2_SPLIT,), gpt2_regex=False)
_PRE_TOKENIZERS = {
    "default": _PreTokenizer(),
    "gpt2": _PreTokenizer(),
    "smollm": _PreTokenizer((r"\p{N}",)),  # every digit on its own (the original SmolLM's individual_digits)
    "llama-bpe": _LLAMA3,  # Llama 3.x
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "qwen2": _QWEN2,  # Qwen2, Qwen2.5
    "deepseek-r1-qwen": _QWEN2,  # DeepSeek-R1's distillations into Qwen2.5
    "gpt-4o": _PreTokenizer((_GPT4O_SPLIT,), gpt2_regex=False),  # Phi-4-mini
    "llama4": _PreTokenizer((_GPT4O_SPLIT,), gpt2_regex=False),
}


# Control tokens that end generation by their text, beside the file's eos / eot / eom ids: the end-of-turn and
# end-of-text markers llama.cpp 0.3.36 counted as end of generation in a test vocabulary (tests/test_gguf_pre.py).
# Left out: the fill-in-the-middle separators it also counts (<|file_sep|>, <reponame>, ...), and <|end|>, which it
# took as end of turn but not as end of generation.
_END_TEXTS = frozenset(
    ["<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<end_of_turn>", "<EOT>", "<|end_of_text|>", "<|endoftext|>"]
    + ["<|return|>", "<|call|>"]
)


def end_ids(f: GGUFFile) -> list:
    """The ids that end generation: tokenizer.ggml.eos_token_id first, then eot_token_id, eom_token_id and the
    control tokens named in _END_TEXTS (in id order)."""
    ids = [f.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    tokens, types = f.get("tokenizer.ggml.tokens"), f.get("tokenizer.ggml.token_type")
    if isinstance(tokens, list) and types is not None and len(types) == len(tokens):
        ids += [i for i, (t, kind) in enumerate(zip(tokens, types)) if kind == 3 and t in _END_TEXTS]
    out = []
    for i in ids:
        if is_int(i) and 0 <= i and i not in out:
            out.append(int(i))
    return out


def adds_bos(f: GGUFFile) -> bool:
    """Whether a prompt starts with BOS, as llama.cpp decides: tokenizer.ggml.add_bos_token where the file has it,
    else true for a SentencePiece vocabulary (tokenizer model "llama") and, for byte-level BPE, the pre-tokenizer's
    default (true for Llama 3's names, false for the others)."""
    v = f.get("tokenizer.ggml.add_bos_token")
    if v is not None:
        return bool(v)
    if f.get("tokenizer.ggml.model") == "llama":
        return True
    how = _PRE_TOKENIZERS.get(f.get("tokenizer.ggml.pre", "default"))
    return how is not None and how.add_bos


def tokenizer(f: GGUFFile):
    """A `tokenizers.Tokenizer` from the file's metadata (tokenizer.ggml.*): byte-level BPE ("gpt2") with its
    vocabulary, merges, the pre-tokenizer `tokenizer.ggml.pre` names, and the control tokens as special tokens; or a
    SentencePiece vocabulary ("llama": Llama 2, Mistral, TinyLlama, Phi-3; _spm_tokenizer). It gives llama.cpp's ids
    on the same file (tests/test_llama.py and tests/test_gguf_pre.py compare them on a varied text set). Other
    tokenizer models and pre-tokenizers: ValueError naming them."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = f.get("tokenizer.ggml.model")
    if kind == "llama":
        return _spm_tokenizer(f)
    if kind != "gpt2":
        raise ValueError(
            f"{f.path}: tokenizer model {kind!r} is not supported (byte-level BPE, 'gpt2', and SentencePiece, "
            "'llama', are)"
        )
    pre = f.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(f"{f.path}: pre-tokenizer {pre!r} is not supported ({sorted(_PRE_TOKENIZERS)} are)")
    tokens, merges = f.get("tokenizer.ggml.tokens"), f.get("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not tokens or not isinstance(merges, list):
        raise ValueError(f"{f.path}: tokenizer.ggml.tokens / merges missing or not lists of strings")
    if any(m.count(" ") < 1 for m in merges):
        raise ValueError(f"{f.path}: a merge in tokenizer.ggml.merges is not two tokens separated by a space")
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{f.path}: tokenizer.ggml.tokens holds a token twice")
    how = _PRE_TOKENIZERS[pre]
    bpe = models.BPE(
        vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False, ignore_merges=how.ignore_merges
    )
    tok = Tokenizer(bpe)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in how.splits]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=how.gpt2_regex)
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits + [byte_level])
    tok.decoder = decoders.ByteLevel()
    types = f.get("tokenizer.ggml.token_type")
    if types is not None and len(types) == len(tokens):
        control = [AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types) if kind == 3]
        tok.add_special_tokens(control)
    return tok


def _spm_tokenizer(f: GGUFFile):
    """A SentencePiece vocabulary (tokenizer.ggml.model "llama": tokens, scores, token types) as llama.cpp
    tokenizes with it: spaces written as U+2581 and one put before the text, and before the text after each special
    token (tokenizer.ggml.add_space_prefix, default true); starting from the characters, the adjacent pair whose
    concatenation is the highest-scored token is joined first, the leftmost of equal ones; a character left outside
    the vocabulary becomes its UTF-8 bytes' tokens <0xXX>. As `tokenizers` BPE: a merge for every split of a token
    into two tokens, ranked by the token's score."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    tokens, scores, types = (f.get(f"tokenizer.ggml.{k}") for k in ("tokens", "scores", "token_type"))
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{f.path}: tokenizer.ggml.tokens missing or not a list of strings")
    n = len(tokens)
    if scores is None or len(scores) != n or types is None or len(types) != n:
        raise ValueError(f"{f.path}: tokenizer.ggml.scores and token_type must hold one entry per token ({n})")
    scores = np.asarray(scores, np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{f.path}: tokenizer.ggml.scores holds a value that is not finite")
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a text held twice is the first id's, as llama.cpp's lookup gives
    ranked = []
    for t, i in vocab.items():
        if types[i] != 1:  # joins make normal tokens only (not control, byte or user-defined ones)
            continue
        for k in range(1, len(t)):
            if t[:k] in vocab and t[k:] in vocab:
                ranked.append((-scores[i], i, k))
    ranked.sort()
    merges = [(tokens[i][:k], tokens[i][k:]) for _, i, k in ranked]
    unk = f.get("tokenizer.ggml.unknown_token_id", 0)
    unk_text = tokens[unk] if is_int(unk) and 0 <= unk < n else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk_text, byte_fallback=True, fuse_unk=True))
    prefix = bool(f.get("tokenizer.ggml.add_space_prefix", True))
    space = [normalizers.Replace(" ", "\u2581")]
    tok.normalizer = normalizers.Sequence(([normalizers.Prepend("\u2581")] if prefix else []) + space)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if prefix else [])
    )
    # llama.cpp takes control and unknown tokens' texts as those tokens (special=True) and user-defined ones always
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k in (2, 3)]
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])
    return tok


class _Cursor:
    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(
                f"{self.path}: truncated or corrupt: {what} needs {n} bytes at offset {self.pos}, the file has "
                f"{len(self.buf)}"
            )

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        self.need(size, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v if len(v) > 1 else v[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", f"the length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: {what} at offset {self.pos - n} is not UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype not in _VALUE_TYPES:
            raise ValueError(f"{self.path}: {what} has unknown value type {vtype} (expected 0-12)")
        name, fmt = _VALUE_TYPES[vtype]
        if fmt is not None:
            return self.unpack(fmt, what)
        if name == "string":
            return self.string(what)
        if depth > 0:
            raise ValueError(f"{self.path}: {what} is an array of arrays, which GGUF metadata does not use")
        etype, count = self.unpack("<IQ", f"the element type and count of {what}")
        if etype in _NUMPY:  # numbers: one read, checked against the bytes left
            size = np.dtype(_NUMPY[etype]).itemsize
            self.need(count * size, f"the {count} elements of {what}")
            a = np.frombuffer(self.buf, _NUMPY[etype], count, self.pos).copy()
            self.pos += count * size
            return a.astype(bool) if etype == 7 else a
        if etype != 8:
            return [self.value(etype, f"{what}[]", depth + 1) for _ in range(self._bounded(count, 12, what))]
        out = []
        for i in range(self._bounded(count, 8, what)):  # each string is at least its 8-byte length
            out.append(self.string(f"{what}[{i}]"))
        return out

    def _bounded(self, count: int, min_size: int, what: str) -> int:
        self.need(count * min_size, f"the {count} elements of {what}")
        return count


def read_gguf(path) -> GGUFFile:
    """Opens a GGUF file: metadata and tensor table parsed and checked, data memory-mapped (not read)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise ValueError(f"{path}: empty file, not GGUF") from None
    src = str(path)
    cur = _Cursor(buf, src)
    cur.need(4, "the magic")
    if bytes(buf[:4]) != MAGIC:
        raise ValueError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r}, expected {MAGIC!r})")
    cur.pos = 4
    version = cur.unpack("<I", "the version")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.unpack("<QQ", "the tensor and metadata counts")
    cur.need(n_kv * 13, f"{n_kv} metadata entries")  # key length 8 + type 4 + a value >= 1
    metadata: Dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        vtype = cur.unpack("<I", f"the type of metadata {key!r}")
        if key in metadata:
            raise ValueError(f"{path}: metadata key {key!r} appears twice")
        metadata[key] = cur.value(vtype, f"metadata {key!r}")
    cur.need(n_tensors * 28, f"{n_tensors} tensor entries")  # name length 8 + dims 4 + type 4 + offset 8 + a dim 4
    infos = []
    for i in range(n_tensors):
        name = cur.string(f"the name of tensor {i}")
        n_dims = cur.unpack("<I", f"the rank of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ValueError(f"{path}: tensor {name!r} has {n_dims} dimensions (1-{MAX_DIMS} expected)")
        ne = cur.unpack(f"<{n_dims}Q", f"the dimensions of tensor {name!r}")
        ne = (ne,) if n_dims == 1 else tuple(ne)
        code, offset = cur.unpack("<IQ", f"the type and offset of tensor {name!r}")
        infos.append((name, ne, code, offset))
    alignment = metadata.get("general.alignment", 32)
    if not is_int(alignment) or not 1 <= alignment <= 1 << 20:
        raise ValueError(f"{path}: general.alignment {alignment!r} is not a positive integer up to 2^20")
    data_offset = -(-cur.pos // alignment) * alignment
    data_size = len(buf) - data_offset
    tensors: Dict[str, TensorInfo] = {}
    for name, ne, code, offset in infos:
        if code not in GGML_TYPES:
            kind = _KNOWN_UNSUPPORTED.get(code, f"code {code}")
            raise ValueError(f"{path}: tensor {name!r} has ggml type {kind}, which pyattn does not read")
        kind = GGML_TYPES[code]
        if any(d < 1 or d > 1 << 40 for d in ne):
            raise ValueError(f"{path}: tensor {name!r} has dimensions {list(ne)} (each must be 1 to 2^40)")
        if ne[0] % kind.block:
            raise ValueError(
                f"{path}: tensor {name!r} rows of {ne[0]} are not whole {kind.name} blocks of {kind.block}"
            )
        count = 1
        for d in ne:
            count *= d
        nbytes = count // kind.block * kind.nbytes
        if offset % alignment or offset > data_size or nbytes > data_size - offset:
            raise ValueError(
                f"{path}: tensor {name!r} ({nbytes} bytes at data offset {offset}) lies outside the data section "
                f"({data_size} bytes) or is not aligned to {alignment}"
            )
        if name in tensors:
            raise ValueError(f"{path}: tensor {name!r} appears twice")
        tensors[name] = TensorInfo(name, tuple(reversed(ne)), kind, offset, nbytes)
    return GGUFFile(src, version, metadata, tensors, data_offset, buf)


__all__ = [
    "GGML_TYPES",
    "GGUFFile",
    "GGMLType",
    "TensorInfo",
    "dequantize_rows",
    "int8_blocks",
    "read_gguf",
    "tokenizer",
]
