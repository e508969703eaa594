"""pyattn.nn stacks against torch.nn.Transformer & co. with the same weights, and the KV cache."""

import warnings

import numpy as np
import pytest
import torch

import pyattn
from pyattn.io import export_torch, from_torch

warnings.filterwarnings("ignore", message=".*nested tensors.*")
warnings.filterwarnings("ignore", message=".*enable_nested_tensor.*")


def make_transformer(d_model=64, nhead=4, layers=2, ff=96, norm_first=False, activation="relu", seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Transformer(
        d_model=d_model,
        nhead=nhead,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        dim_feedforward=ff,
        batch_first=True,
        norm_first=norm_first,
        activation=activation,
    ).eval()
    with torch.no_grad():  # torch zero-initialises biases and sets norms to 1/0: make every tensor matter
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return m


def close(a, b, tol=1e-4):
    err = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    assert err <= tol, f"max abs error {err:.3g} > {tol}"
    return err


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("d_model,nhead", [(64, 4), (48, 3)])
def test_transformer_matches_torch(tmp_path, norm_first, activation, d_model, nhead):
    m = make_transformer(d_model, nhead, norm_first=norm_first, activation=activation)
    rng = np.random.default_rng(0)
    src = rng.standard_normal((3, 9, d_model)).astype(np.float32)
    tgt = rng.standard_normal((3, 6, d_model)).astype(np.float32)
    pad = np.zeros((3, 9), bool)
    pad[1, 6:] = True
    pad[2, 2:] = True
    tpad = np.zeros((3, 6), bool)
    tpad[2, 4:] = True
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():
        want = m(
            torch.from_numpy(src),
            torch.from_numpy(tgt),
            tgt_mask=causal,
            src_key_padding_mask=torch.from_numpy(pad),
            memory_key_padding_mask=torch.from_numpy(pad),
            tgt_key_padding_mask=torch.from_numpy(tpad),
            tgt_is_causal=True,
        ).numpy()
    pm = pyattn.load(export_torch(m, tmp_path / "m"))
    got = pm(
        src, tgt, src_key_padding_mask=pad, memory_key_padding_mask=pad, tgt_key_padding_mask=tpad, tgt_is_causal=True
    )
    close(got[tpad == False], want[tpad == False])  # noqa: E712 (torch leaves padded query rows unspecified)


def test_the_papers_model_round_trips(tmp_path):
    # d_model 512, 8 heads, 6 + 6 layers, FFN 2048, as in "Attention Is All You Need".
    m = make_transformer(512, 8, 6, 2048)
    rng = np.random.default_rng(1)
    src, tgt = (rng.standard_normal((2, n, 512)).astype(np.float32) for n in (11, 7))
    causal = torch.nn.Transformer.generate_square_subsequent_mask(7)
    with torch.no_grad():
        want = m(torch.from_numpy(src), torch.from_numpy(tgt), tgt_mask=causal, tgt_is_causal=True).numpy()
    got = pyattn.load(export_torch(m, tmp_path / "paper"))(src, tgt, tgt_is_causal=True)
    close(got, want, 2e-4)


@pytest.mark.parametrize("kind", ["encoder", "decoder", "encoder_layer", "mha"])
def test_other_module_kinds(kind):
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 32)).astype(np.float32)
    mem = rng.standard_normal((2, 8, 32)).astype(np.float32)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    with torch.no_grad():
        if kind == "encoder":
            m = torch.nn.TransformerEncoder(layer, 3, norm=torch.nn.LayerNorm(32), enable_nested_tensor=False).eval()
            want, got = m(torch.from_numpy(x)).numpy(), from_torch(m)(x)
        elif kind == "decoder":
            m = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(32, 4, 64, batch_first=True), 2).eval()
            want = m(
                torch.from_numpy(x),
                torch.from_numpy(mem),
                tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(5),
                tgt_is_causal=True,
            ).numpy()
            got = from_torch(m)(x, mem, tgt_is_causal=True)
        elif kind == "encoder_layer":
            want, (got, _) = layer(torch.from_numpy(x)).numpy(), from_torch(layer)(x)
        else:
            m = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
            want = m(torch.from_numpy(x), torch.from_numpy(mem), torch.from_numpy(mem))[0].numpy()
            got = from_torch(m)(x, mem)[0]
    close(got, want)


def test_kv_cache_decoding_equals_full_recomputation():
    m = make_transformer(64, 4, layers=3)
    pm = from_torch(m)
    rng = np.random.default_rng(5)
    src = rng.standard_normal((2, 10, 64)).astype(np.float32)
    tgt = rng.standard_normal((2, 8, 64)).astype(np.float32)
    pad = np.zeros((2, 10), bool)
    pad[0, 7:] = True
    memory = pm.encoder(src, src_key_padding_mask=pad)
    full = pm.decoder(tgt, memory, memory_key_padding_mask=pad, tgt_is_causal=True)
    state = pm.decoder.init_state(memory, pad)
    steps = [pm.decoder(tgt[:, :3], state=state)]  # a 3-token prefix at once, then one token at a time
    for t in range(3, 8):
        steps.append(pm.decoder(tgt[:, t : t + 1], state=state))
    close(np.concatenate(steps, 1), full, 1e-5)
    assert state.length == 8


def test_kv_cache_grows_and_reorders():
    cache = pyattn.nn.KVCache(batch=3, dim=8, capacity=2)
    rng = np.random.default_rng(0)
    ks = [rng.standard_normal((3, n, 8)).astype(np.float32) for n in (1, 2, 5)]
    for k in ks:
        cache.append(k, -k)
    allk = np.concatenate(ks, 1)
    k, v = cache.heads(2)
    np.testing.assert_array_equal(k.transpose(0, 2, 1, 3).reshape(3, 8, 8), allk)
    np.testing.assert_array_equal(v.transpose(0, 2, 1, 3).reshape(3, 8, 8), -allk)
    cache.reorder(np.array([2, 2, 0]))
    np.testing.assert_array_equal(cache.heads(2)[0].transpose(0, 2, 1, 3).reshape(3, 8, 8), allk[[2, 2, 0]])
    with pytest.raises(ValueError, match="KV cache"):
        cache.append(np.zeros((2, 1, 8), np.float32), np.zeros((2, 1, 8), np.float32))


@pytest.mark.parametrize("layout, dtype", [("rows", np.float32), ("heads", np.float32), ("heads", np.float16)])
def test_caches_merge_left_padded_and_trim_left(layout, dtype):
    """Continuous batching's state operations: merge appends the other cache's rows, the shorter side left-padded
    with zeros; trim_left drops leading positions of every row; appends go on after both."""
    from pyattn.nn.attention import HeadKVCache

    rng = np.random.default_rng(0)
    if layout == "rows":
        make, axis = (lambda b: pyattn.nn.KVCache(b, 8, capacity=4)), 1
    else:
        make, axis = (lambda b: HeadKVCache(b, 2, 4, dtype=dtype)), 2

    def filled(batch, n):
        c = make(batch)
        c.reserve(n)
        shape = list(c.k.shape)
        shape[axis] = n
        k = rng.standard_normal(shape).astype(dtype)
        index = [slice(None)] * k.ndim
        index[axis] = slice(0, n)
        c.k[tuple(index)], c.v[tuple(index)], c.length = k, -k, n
        return c, k

    def positions(a, start, stop):
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, stop)
        return a[tuple(index)]

    for la, lb, cut in [(5, 9, 4), (9, 5, 2), (6, 6, 0), (0, 3, 1)]:
        a, ka = filled(2, la)
        b, kb = filled(1, lb)
        a.merge(b)
        n = max(la, lb)
        assert a.length == n and a.k.shape[0] == 3 and a.k.shape[axis] >= n and a.k.dtype == dtype
        k = positions(a.k, 0, n)
        np.testing.assert_array_equal(positions(k[:2], n - la, n), ka)
        np.testing.assert_array_equal(positions(k[2:], n - lb, n), kb)
        assert not positions(k[:2], 0, n - la).any() and not positions(k[2:], 0, n - lb).any()  # zeros
        np.testing.assert_array_equal(positions(a.v, 0, n), -k)
        a.trim_left(cut)
        m = n - cut
        assert a.length == m
        np.testing.assert_array_equal(positions(a.k, 0, m), positions(k, n - m, n))
        a.reserve(m + 40)  # room grows, the positions stay
        np.testing.assert_array_equal(positions(a.k, 0, m), positions(k, n - m, n))
    with pytest.raises(ValueError, match="trim_left"):
        a.trim_left(a.length + 1)
    others = [HeadKVCache(1, 3, 4), HeadKVCache(1, 2, 4, dtype=np.float16 if dtype == np.float32 else np.float32)]
    for other in others if layout == "heads" else [pyattn.nn.KVCache(1, 4)]:  # other heads, dtype or dim
        with pytest.raises(ValueError, match="merge"):
            a.merge(other)


def test_attention_weights_are_returned(rng):
    m = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    x = rng.standard_normal((1, 6, 32)).astype(np.float32)
    with torch.no_grad():
        _, want = m.self_attn(torch.from_numpy(x), torch.from_numpy(x), torch.from_numpy(x), average_attn_weights=False)
    _, w = from_torch(m)(x, need_weights=True)
    close(w, want.numpy(), 1e-5)
    enc = pyattn.nn.TransformerEncoder([from_torch(m)] * 2)
    out, attns = enc(x, output_attentions=True)
    assert len(attns) == 2 and attns[0].shape == (1, 4, 6, 6)


def test_load_errors(tmp_path):
    m = make_transformer(32, 4, layers=1, ff=32)
    d = export_torch(m, tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="config.json"):
        pyattn.load(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        pyattn.load(bad)
    (bad / "config.json").write_text('{"format": "pyattn.torch.v1", "kind": "LSTM"}')
    (bad / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="unknown module kind 'LSTM'"):
        pyattn.load(bad)
    (bad / "config.json").write_text((d / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000])  # truncated
    with pytest.raises(ValueError, match="safetensors"):
        pyattn.load(bad)
    from safetensors.numpy import load_file, save_file

    t = load_file(str(d / "model.safetensors"))
    t.pop("decoder.layers.0.norm3.weight")
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(KeyError, match="decoder.layers.0.norm3.weight"):
        pyattn.load(bad)
    t = load_file(str(d / "model.safetensors"))
    t["encoder.layers.0.linear1.weight"] = t["encoder.layers.0.linear1.weight"][:, :5].copy()
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match="linear1"):
        pyattn.load(bad)


class PaperModel(torch.nn.Module):
    """The documents' model in plain torch: embeddings * sqrt(d) + sinusoidal positions, nn.Transformer,
    final linear + log-softmax."""

    def __init__(self, d=512, heads=8, layers=6, ff=2048, vocab=1000):
        super().__init__()
        import math

        self.d = d
        self.transformer = torch.nn.Transformer(d, heads, layers, layers, ff, batch_first=True, dropout=0.0)
        self.src, self.tgt, self.gen = (
            torch.nn.Embedding(vocab, d),
            torch.nn.Embedding(vocab, d),
            torch.nn.Linear(d, vocab),
        )
        pe = torch.zeros(256, d)
        pos = torch.arange(256)[:, None]
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def forward(self, src, tgt):
        s = self.d**0.5
        x = self.src(src) * s + self.pe[: src.shape[1]]
        y = self.tgt(tgt) * s + self.pe[: tgt.shape[1]]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return torch.log_softmax(self.gen(self.transformer(x, y, tgt_mask=mask, tgt_is_causal=True)), -1)


def test_papers_whole_model_with_embeddings_and_greedy_decoding(tmp_path):
    torch.manual_seed(0)
    m = PaperModel().eval()
    folder = export_torch(m.transformer, tmp_path / "paper", src_embedding=m.src, tgt_embedding=m.tgt, generator=m.gen)
    pm = pyattn.load(folder)
    assert isinstance(pm, pyattn.models.Seq2SeqTransformer)  # a model: pyattn.models (pyattn.io names it too)
    assert pyattn.io.Seq2SeqTransformer is pyattn.models.Seq2SeqTransformer
    with pytest.warns(DeprecationWarning, match="pyattn.models.Seq2SeqTransformer"):
        assert pyattn.nn.Seq2SeqTransformer is pyattn.models.Seq2SeqTransformer  # its old place, deprecated
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(0, 1000, (2, 11)), rng.integers(0, 1000, (2, 7))
    with torch.no_grad():
        want = m(torch.from_numpy(src), torch.from_numpy(tgt)).numpy()
    close(pm(src, tgt), want, 1e-4)
    ys = pm.greedy_decode(src, bos_id=1, max_len=8)
    with torch.no_grad():  # the plain torch loop: re-run the decoder on the whole prefix every step
        t = torch.full((2, 1), 1)
        for _ in range(8):
            t = torch.cat([t, m(torch.from_numpy(src), t)[:, -1].argmax(-1, keepdim=True)], 1)
    np.testing.assert_array_equal(ys, t.numpy())
    with pytest.raises(ValueError, match="go together"):
        export_torch(m.transformer, tmp_path / "x", src_embedding=m.src)


def test_projected_memory_kv_float32_and_float16():
    """project_kv holds the encoder output's K/V head-major, as float32 (the same outputs as attending to the memory
    itself) or float16 (the values rounded once to nearest: the same outputs as float32 K/V holding those values);
    K/V beyond float16's range stay float32 rather than becoming inf."""
    from pyattn.nn import MultiHeadAttention

    rng = np.random.default_rng(5)
    E, H, kdim = 48, 3, 40
    w = [rng.standard_normal((E, d)).astype(np.float32) * 0.2 for d in (E, kdim, kdim, E)]
    attn = MultiHeadAttention(H, *w)
    x, mem = rng.standard_normal((2, 5, E)).astype(np.float32), rng.standard_normal((2, 7, kdim)).astype(np.float32)
    kv32 = attn.project_kv(mem)
    assert kv32.k.dtype == np.float32 and kv32.k.shape == (2, H, 7, E // H) and kv32.k.flags.c_contiguous
    np.testing.assert_allclose(attn(x, memory_kv=kv32)[0], attn(x, mem)[0], rtol=1e-5, atol=1e-6)
    kv16 = attn.project_kv(mem, "float16")
    assert kv16.k.dtype == np.float16 and kv16.length == 7
    np.testing.assert_array_equal(kv16.k, kv32.k.astype(np.float16))
    rounded = attn.project_kv(mem)
    rounded.k, rounded.v = kv16.k.astype(np.float32), kv16.v.astype(np.float32)
    np.testing.assert_array_equal(attn(x, memory_kv=kv16)[0], attn(x, memory_kv=rounded)[0])
    assert not np.array_equal(attn(x, memory_kv=kv16)[0], attn(x, memory_kv=kv32)[0])
    big = attn.project_kv(mem * 1e5, "float16")
    assert big.k.dtype == np.float32 and np.isfinite(big.k).all()
    with pytest.raises(ValueError, match="float32 or float16"):
        attn.project_kv(mem, "int8")


def test_attention_with_given_projections():
    """Projections handed over as Linears (a file that stores them fused, or int8) compute exactly what the same
    weights given as w_q, w_k, w_v compute; the layer holds no float copy and uses only what it was given."""
    from pyattn.nn import Linear, MultiHeadAttention

    rng = np.random.default_rng(3)
    E, H, kdim = 48, 3, 40
    wq, wo = (rng.standard_normal((E, E)).astype(np.float32) * 0.2 for _ in range(2))
    wk, wv = (rng.standard_normal((E, kdim)).astype(np.float32) * 0.2 for _ in range(2))
    bq, bk, bv, bo = (rng.standard_normal(E).astype(np.float32) for _ in range(4))
    x, mem = rng.standard_normal((2, 5, E)).astype(np.float32), rng.standard_normal((2, 7, kdim)).astype(np.float32)
    cross = MultiHeadAttention(H, wq, wk, wv, wo, bq, bk, bv, bo)
    given = MultiHeadAttention(
        H,
        w_o=Linear(wo, bo),
        projections={"q": Linear(wq, bq), "kv": Linear(np.concatenate([wk, wv]), np.concatenate([bk, bv]))},
    )
    assert given.w_q is None and (given.d_model, given.kdim, given.vdim) == (E, kdim, kdim)
    np.testing.assert_array_equal(given(x, mem)[0], cross(x, mem)[0])
    np.testing.assert_array_equal(
        given(x, memory_kv=given.project_kv(mem))[0], cross(x, memory_kv=cross.project_kv(mem))[0]
    )
    names = dict(given.named_weights("a."))
    assert sorted(names) == [f"a.{p}_proj.{w}" for p in ("kv", "out", "q") for w in ("bias", "weight")]
    np.testing.assert_array_equal(names["a.q_proj.weight"], wq)
    with pytest.raises(ValueError, match="given the projections \\['kv', 'q'\\], and this call needs 'qkv'"):
        given(x)  # self-attention: no fused QKV was given

    wk, wv = (rng.standard_normal((E, E)).astype(np.float32) * 0.2 for _ in range(2))
    self_attn = MultiHeadAttention(H, wq, wk, wv, wo, bq, bk, bv, bo)
    qkv = Linear(np.concatenate([wq, wk, wv]), np.concatenate([bq, bk, bv]))
    given = MultiHeadAttention(H, w_o=Linear(wo, bo), projections={"qkv": qkv})
    np.testing.assert_array_equal(given(x, is_causal=True)[0], self_attn(x, is_causal=True)[0])
    layer = pyattn.nn.TransformerEncoderLayer(
        given, pyattn.nn.FeedForward(Linear(wq, bq), None, Linear(wo, bo), None), *(_norm(E) for _ in range(2))
    )
    assert layer(x)[0].shape == x.shape

    # storage: a given float projection is repacked like any other; one held as given in int8 cannot be
    given.set_storage("float16")
    assert qkv.storage == "float16"
    q8 = rng.integers(-127, 128, (3 * E, E)).astype(np.int8)
    int8 = MultiHeadAttention(
        H, w_o=Linear(wo, bo), projections={"qkv": Linear.from_int8(q8, np.full(3 * E, 0.01, np.float32))}
    )
    int8.set_storage("int8")
    with pytest.raises(ValueError, match="load the model again"):
        int8.set_storage("float32")
    int8.int8_fallback = "float32"  # a finer type asked for int8 cannot be made from int8 values either
    with pytest.raises(ValueError, match="load the model again"):
        int8.set_storage("int8")

    bad = [
        (dict(w_q=wq, projections={"qkv": qkv}), ValueError, "not both"),
        (dict(projections={"qkv": qkv, "k": qkv}), ValueError, "unknown projections \\['k'\\]"),
        (dict(projections={"qkv": wq}), TypeError, "must be a pyattn.nn.Linear"),
        (dict(projections={"q": Linear(wq, bq)}), ValueError, "'q' and 'kv'"),
        (dict(projections=[qkv]), TypeError, "must map"),
        (dict(projections={"qkv": Linear(wq, bq)}), ValueError, "projection 'qkv' has shape \\(48, 48\\)"),
        (dict(projections={"q": Linear(wq, bq), "kv": Linear(wq, bq)}), ValueError, "'kv' has shape \\(48, 48\\)"),
        (dict(projections={"qkv": qkv}, w_o=None), ValueError, "w_o"),
        (dict(projections={"qkv": qkv}, b_o=bo), ValueError, "bias inside the Linear"),
    ]
    for kwargs, error, fragment in bad:
        kwargs = {"w_o": Linear(wo, bo), **kwargs}
        with pytest.raises(error, match=fragment):
            MultiHeadAttention(H, **kwargs)


def _norm(E):
    return pyattn.nn.LayerNorm(np.ones(E, np.float32), np.zeros(E, np.float32))


def test_attention_holds_each_weight_once():
    """Given w_q, w_k, w_v, the layer keeps a float copy only until the projection that uses it is packed; then
    w_q / w_k / w_v read back from the packed projection, another use still packs what it needs, and the results
    equal a fresh layer's."""
    from pyattn.nn import MultiHeadAttention

    rng = np.random.default_rng(5)
    E, H = 32, 4
    wq, wk, wv, wo = (rng.standard_normal((E, E)).astype(np.float32) * 0.2 for _ in range(4))
    bq, bk, bv, bo = (rng.standard_normal(E).astype(np.float32) for _ in range(4))
    x, mem = rng.standard_normal((2, 5, E)).astype(np.float32), rng.standard_normal((2, 6, E)).astype(np.float32)
    attn = MultiHeadAttention(H, wq, wk, wv, wo, bq, bk, bv, bo)
    assert attn._raw.keys() == {"q", "k", "v"}
    want_self = MultiHeadAttention(H, wq, wk, wv, wo, bq, bk, bv, bo)(x)[0]
    np.testing.assert_array_equal(attn(x)[0], want_self)  # packs the fused Q/K/V ...
    assert attn._raw == {}  # ... and drops the float copies
    held = [v.nbytes for v in vars(attn).values() if isinstance(v, np.ndarray)]
    assert sum(held) == 3 * E * 4  # the biases only
    for got, want in ((attn.w_q, wq), (attn.w_k, wk), (attn.w_v, wv)):
        np.testing.assert_array_equal(got, want)
    names = dict(attn.named_weights())
    assert {"w_q", "w_k", "w_v", "b_q"} <= names.keys()
    np.testing.assert_array_equal(names["w_v"], wv)
    # cross-attention later: Q and K/V packed from the values read back, the same results as a fresh layer
    np.testing.assert_array_equal(attn(x, mem)[0], MultiHeadAttention(H, wq, wk, wv, wo, bq, bk, bv, bo)(x, mem)[0])
    np.testing.assert_array_equal(attn(x)[0], want_self)


@pytest.mark.parametrize("head_major", [False, True])
def test_cache_reorder_copies_the_written_positions(head_major):
    """reorder keeps rows `index` (repeated, dropped, permuted) of the positions written so far; the identity keeps
    the buffers as they are."""
    from pyattn.nn.attention import HeadKVCache, KVCache

    rng = np.random.default_rng(0)
    cache = HeadKVCache(3, 2, 4, capacity=16) if head_major else KVCache(3, 8, capacity=16)
    filled = (slice(None), slice(None), slice(0, 5)) if head_major else (slice(None), slice(0, 5))
    cache.k[filled] = rng.standard_normal(cache.k[filled].shape)
    cache.v[filled] = rng.standard_normal(cache.v[filled].shape)
    cache.length = 5
    k, v = cache.k[filled].copy(), cache.v[filled].copy()
    same = cache.k
    cache.reorder(np.arange(3))
    assert cache.k is same
    cache.reorder(np.array([2, 0, 2, 1]))
    assert cache.k.shape[0] == 4 and cache.length == 5
    np.testing.assert_array_equal(cache.k[filled], k[[2, 0, 2, 1]])
    np.testing.assert_array_equal(cache.v[filled], v[[2, 0, 2, 1]])
