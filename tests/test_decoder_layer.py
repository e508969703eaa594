"""The fused Llama-family decoder stack (_core.decoder_stack, cpp/layers/decoder_layer.h) against a float64 reference
composed in numpy from the paper-level steps, on every kernel set: prefill then cached steps, grouped-query heads,
both rotary layouts, left padding, Gemma 3's layers (sandwich norms, GeGLU, a sliding window with rotary tables of
its own, the scores' own scale); and its argument checks."""

import numpy as np
import pytest
from reference import sdpa
from test_llama_ops import rope_reference

import pyattn
from pyattn import _core
from pyattn import functional as F

ISAS = pyattn.cpu_info()["available_isas"]
E, H, HKV, FF, ROT, BASE, EPS = 48, 6, 2, 80, 6, 10000.0, 1e-5
D = E // H
# Gemma-style layers: the windowed ones' rotary base, the window, the scale, the global ones' soft cap (Gemma 2's)
LOCAL_BASE, WINDOW, SCALE, SOFTCAP = 100.0, 3, 0.3, 1.5


@pytest.fixture(params=ISAS)
def isa(request):
    old = pyattn.get_isa()
    pyattn.set_isa(request.param)
    yield request.param
    pyattn.set_isa(old)


def make_layers(rng, n=2, head_norms=False, gemma=False):
    """n layers' float32 weights; head_norms: with Qwen3's q_norm / k_norm (D,) too; gemma: as Gemma 3's, with
    q_norm / k_norm and post-norms (E,), GeGLU, the scores scaled by SCALE, and every other layer (the first) windowed
    with rotary tables of base LOCAL_BASE, the others' scores soft-capped at SOFTCAP (as Gemma 2's)."""
    layers = []
    for _ in range(n):
        layers.append(
            dict(
                qkv=rng.standard_normal(((H + 2 * HKV) * D, E)) / np.sqrt(E),
                o=rng.standard_normal((E, E)) / np.sqrt(E),
                gate_up=rng.standard_normal((2 * FF, E)) / np.sqrt(E),
                down=rng.standard_normal((E, FF)) / np.sqrt(FF),
                attn_norm=1 + 0.1 * rng.standard_normal(E),
                ffn_norm=1 + 0.1 * rng.standard_normal(E),
            )
        )
        if head_norms or gemma:
            layers[-1].update(q_norm=1 + 0.3 * rng.standard_normal(D), k_norm=1 + 0.3 * rng.standard_normal(D))
        if gemma:
            layers[-1].update(post_attn_norm=1 + 0.3 * rng.standard_normal(E), post_ffn_norm=0.5 + rng.random(E))
    layers = [{k: v.astype(np.float32) for k, v in lr.items()} for lr in layers]
    if gemma:
        for i, lr in enumerate(layers):
            lr.update(scale=SCALE, activation="gelu_tanh", window=WINDOW if i % 2 == 0 else 0)
            if i % 2:
                lr["softcap"] = SOFTCAP
    return layers


def rope_tables(n, gemma=False):
    """(cos, sin) of the stack: one pair, or for Gemma-style layers [global, local] each."""
    cos, sin = F.rope_tables(n, ROT, BASE)
    if not gemma:
        return cos, sin
    local = F.rope_tables(n, ROT, LOCAL_BASE)
    return [cos, local[0]], [sin, local[1]]


def reference(layers, x, positions, pad, interleaved, kv_half=False):
    """float64: the whole sequence at once (no cache), returning the stream with the last output added; kv_half:
    K (after RoPE) and V rounded to float16, as a float16 cache holds them."""
    x = x.astype(np.float64)
    B, L, _ = x.shape

    def rms(v, w):
        return v / np.sqrt((v**2).mean(-1, keepdims=True) + EPS) * w

    for lr in layers:
        window = lr.get("window", 0)
        base = LOCAL_BASE if window else BASE
        qkv = rms(x, lr["attn_norm"]) @ lr["qkv"].T.astype(np.float64)
        q = qkv[..., : H * D].reshape(B, L, H, D)
        k = qkv[..., H * D : (H + HKV) * D].reshape(B, L, HKV, D)
        v = qkv[..., (H + HKV) * D :].reshape(B, L, HKV, D)
        if "q_norm" in lr:  # each head normalised over its D values, before RoPE
            q, k = rms(q, lr["q_norm"]), rms(k, lr["k_norm"])
        q = rope_reference(q, positions, ROT, base, interleaved)
        k = rope_reference(k, positions, ROT, base, interleaved)
        if kv_half:
            k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
        k, v = np.repeat(k, H // HKV, 2), np.repeat(v, H // HKV, 2)  # the reference repeats; the kernel does not
        far = np.subtract.outer(np.arange(L), np.arange(L)) >= window if window else None  # key j <= i - window
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        ctx, _ = sdpa(q, k, v, attn_mask=far, key_padding_mask=pad, is_causal=True, scale=lr.get("scale"),
                      softcap=lr.get("softcap"))  # fmt: skip
        attn = ctx.transpose(0, 2, 1, 3).reshape(B, L, H * D) @ lr["o"].T
        x = x + (rms(attn, lr["post_attn_norm"]) if "post_attn_norm" in lr else attn)
        gu = rms(x, lr["ffn_norm"]) @ lr["gate_up"].T
        g, u = gu[..., :FF], gu[..., FF:]
        if lr.get("activation") == "gelu_tanh":
            g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        else:
            g = g / (1 + np.exp(-g))
        ffn = (g * u) @ lr["down"].T
        x = x + (rms(ffn, lr["post_ffn_norm"]) if "post_ffn_norm" in lr else ffn)
    return x


def fused(layers, interleaved, storage="float32"):
    """The C++ layers; storage: one weight type, or three (Q, K, V held apart, each of its type)."""

    def qkv(w):
        if isinstance(storage, str):
            return _core.PackedLinear(w, None, storage)
        rows = np.split(w, [H * D, (H + HKV) * D])
        return [_core.PackedLinear(np.ascontiguousarray(r), None, t) for r, t in zip(rows, storage)]

    return [
        _core.DecoderLayer(
            qkv(lr["qkv"]),
            _core.PackedLinear(lr["o"], None, storage if isinstance(storage, str) else storage[0]),
            _core.PackedLinear(lr["gate_up"], None, storage if isinstance(storage, str) else storage[0]),
            _core.PackedLinear(lr["down"], None, storage if isinstance(storage, str) else storage[0]),
            lr["attn_norm"], lr["ffn_norm"], EPS, H, HKV, ROT, interleaved, lr.get("q_norm"), lr.get("k_norm"),
            lr.get("post_attn_norm"), lr.get("post_ffn_norm"), lr.get("scale"), lr.get("window", 0),
            lr.get("activation", "silu"), int(lr.get("window", 0) > 0), lr.get("softcap", 0.0),
        )
        for lr in layers
    ]  # fmt: skip


def run(stack, x, positions, cos, sin, caches, past, pad):
    x = x.copy()
    pending = _core.decoder_stack(stack, x, positions, cos, sin, [c[0] for c in caches], [c[1] for c in caches],
                                  past, pad)  # fmt: skip
    return x + pending


@pytest.mark.parametrize(
    "cache, interleaved, head_norms, storage",
    [(c, i, False, "float32") for c in (np.float32, np.float16) for i in (True, False)]
    + [(np.float32, False, True, "float32"), (np.float32, True, False, ("float32",) * 3)]
    + [(c, False, "gemma", "float32") for c in (np.float32, np.float16)],
)
def test_prefill_then_steps_against_float64(isa, rng, interleaved, cache, head_norms, storage):
    """The prompt (the blocked attention path) then one token at a time (the decoding path), over a float32 cache
    or a float16 one (against a reference whose K and V are rounded to float16: within float32's error of it);
    head_norms: Qwen3's RMSNorm of each query and key head before RoPE ("gemma": Gemma 3's layers, the window of 3
    keys shorter than the prompt and the steps); three storages: Q, K and V held apart."""
    gemma = head_norms == "gemma"
    layers = make_layers(rng, head_norms=head_norms, gemma=gemma)
    stack = fused(layers, interleaved, storage)
    B, L, P = 3, 9, 5  # prompt of 5, then 4 cached steps
    x = rng.standard_normal((B, L, E)).astype(np.float32)
    mask = np.ones((B, L), bool)
    mask[1, :2] = False  # left padding
    mask[2, :4] = False
    pad = ~mask
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int64)
    want = reference(layers, x, positions, pad, interleaved, kv_half=cache == np.float16)
    cos, sin = rope_tables(64, gemma)
    caches = [(np.zeros((B, HKV, 16, D), cache), np.zeros((B, HKV, 16, D), cache)) for _ in layers]
    got = [run(stack, x[:, :P], positions[:, :P].copy(), cos, sin, caches, 0, pad[:, :P].copy())]
    for t in range(P, L):
        got.append(run(stack, x[:, t : t + 1], positions[:, t : t + 1].copy(), cos, sin, caches, t,
                       pad[:, : t + 1].copy()))  # fmt: skip
    got = np.concatenate(got, 1)
    np.testing.assert_allclose(got[mask], want[mask], rtol=2e-4, atol=2e-4)
    if cache == np.float16:  # and the rounding matters: a float32 reference is further away than that
        assert np.abs(got[mask] - reference(layers, x, positions, pad, interleaved)[mask]).max() > 2e-4


def test_block_weight_types_stay_close(rng):
    layers = make_layers(rng, 1)
    x = rng.standard_normal((1, 6, E)).astype(np.float32)
    positions = np.arange(6, dtype=np.int64)[None]
    cos, sin = F.rope_tables(8, ROT, BASE)
    want = reference(layers, x, positions, None, True)
    # random Gaussian weights are 4-bit blocks' worst case: measured min cosine 0.9897 for q4_1
    kinds = [("int8", 0.999), ("q4_0", 0.98), ("q4_1", 0.98), ("q6_k", 0.995), (("q4_1", "q5_0", "q6_k"), 0.98)]
    for storage, bar in kinds:
        caches = [(np.zeros((1, HKV, 6, D), np.float32), np.zeros((1, HKV, 6, D), np.float32))]
        got = run(fused(layers, True, storage), x, positions, cos, sin, caches, 0, None)
        cos_sim = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
        assert cos_sim.min() > bar, (storage, cos_sim.min())


@pytest.mark.parametrize(
    "storage, cache, head_norms",
    [(s, np.float32, False) for s in ("float32", "float16", "bfloat16", "int8", "q4_0", "q4_1", "q6_k")]
    + [("float32", np.float16, False), ("q4_1", np.float16, False), ("int8", np.float32, True)]
    + [(("q4_1", "q4_1", "q6_k"), np.float32, False), (("q5_0", "q5_0", "int8"), np.float16, True)]
    + [("q4_1", np.float16, "gemma"), ("float32", np.float32, "gemma")],
)
def test_one_region_step_equals_layer_by_layer(rng, storage, cache, head_norms):
    """Up to 8 rows (a decoding step) the stack runs in one parallel region, the threads sharing heads and chunks of
    columns (each its own range, then the others' ends); it gives the layer-by-layer path's results: the same bits
    for the block types (integer sums, the same float steps per column), within float rounding for the others, on
    any thread count (5 > some ops' shares) and chunk size (one panel a chunk; 0: no stealing)."""
    layers = make_layers(rng, 3, head_norms, gemma=head_norms == "gemma")
    stack = fused(layers, True, storage)
    B, P, L = 2, 7, 10
    x = rng.standard_normal((B, L, E)).astype(np.float32)
    mask = np.ones((B, L), bool)
    mask[1, :2] = False
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int64)
    cos, sin = rope_tables(16, head_norms == "gemma")

    def decode(team_rows, threads, chunk=-1):
        old = pyattn.get_num_threads()
        pyattn.set_num_threads(threads)
        _core._tune_team_rows(team_rows)
        _core._tune_team_chunk(chunk)
        try:
            caches = [(np.zeros((B, HKV, L, D), cache), np.zeros((B, HKV, L, D), cache)) for _ in layers]
            run(stack, x[:, :P], positions[:, :P].copy(), cos, sin, caches, 0, ~mask[:, :P])  # 14 rows: layer by layer
            steps = [
                run(stack, x[:, t : t + 1], positions[:, t : t + 1].copy(), cos, sin, caches, t, ~mask[:, : t + 1])
                for t in range(P, L)
            ]
            return np.concatenate(steps, 1), np.concatenate([c[0] for c in caches])
        finally:
            _core._tune_team_rows(8)
            _core._tune_team_chunk(-1)
            pyattn.set_num_threads(old)

    want, want_k = decode(0, 2)
    for threads, chunk in [(1, -1), (2, -1), (5, -1), (1, 16384), (2, 16384), (2, 1), (5, 1), (2, 0)]:
        got, got_k = decode(8, threads, chunk)
        if storage in ("int8", "q4_0", "q4_1", "q6_k") or not isinstance(storage, str):
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got_k, want_k)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got_k, want_k, rtol=1e-5, atol=1e-5)


def test_refuses_bad_arguments(rng):
    layers = make_layers(rng, 1)
    stack = fused(layers, True)
    lr = layers[0]
    lin = {k: _core.PackedLinear(lr[k]) for k in ("qkv", "o", "gate_up", "down")}
    cos, sin = F.rope_tables(8, ROT, BASE)
    x = rng.standard_normal((1, 2, E)).astype(np.float32)
    pos = np.arange(2, dtype=np.int64)[None]
    ck = [np.zeros((1, HKV, 4, D), np.float32)]
    cv = [np.zeros((1, HKV, 4, D), np.float32)]
    with pytest.raises(ValueError, match="qkv maps"):
        _core.DecoderLayer(lin["o"], lin["o"], lin["gate_up"], lin["down"], lr["attn_norm"], lr["ffn_norm"], EPS, H,
                           HKV, ROT, True)  # fmt: skip
    with pytest.raises(ValueError, match="num_kv_heads"):
        _core.DecoderLayer(*lin.values(), lr["attn_norm"], lr["ffn_norm"], EPS, H, 4, ROT, True)
    with pytest.raises(ValueError, match="rotary_dim"):
        _core.DecoderLayer(*lin.values(), lr["attn_norm"], lr["ffn_norm"], EPS, H, HKV, 7, True)
    with pytest.raises(ValueError, match="k_norm"):  # a head's D values, not d_model's
        _core.DecoderLayer(*lin.values(), lr["attn_norm"], lr["ffn_norm"], EPS, H, HKV, ROT, True,
                           np.ones(D, np.float32), np.ones(E, np.float32))  # fmt: skip
    with pytest.raises(TypeError, match="PackedLinear"):
        _core.DecoderLayer(lr["qkv"], lin["o"], lin["gate_up"], lin["down"], lr["attn_norm"], lr["ffn_norm"], EPS, H,
                           HKV, ROT, True)  # fmt: skip
    with pytest.raises(ValueError, match="position 8 is outside"):
        _core.decoder_stack(stack, x.copy(), pos + 8, cos, sin, ck, cv, 0)
    with pytest.raises(ValueError, match="caches of shape"):
        _core.decoder_stack(stack, x.copy(), pos, cos, sin, ck, cv, 3)  # past 3 + 2 rows > capacity 4
    with pytest.raises(ValueError, match="caches of shape"):  # the old row-major (B, capacity, Hkv D) layout
        _core.decoder_stack(stack, x.copy(), pos, cos, sin, [np.zeros((1, 4, HKV * D), np.float32)], cv, 0)
    with pytest.raises(ValueError, match="one K and one V cache per layer"):
        _core.decoder_stack(stack, x.copy(), pos, cos, sin, ck * 2, cv, 0)
    with pytest.raises(TypeError, match="numpy arrays"):
        _core.decoder_stack(stack, x.copy(), pos, cos, sin, [ck[0].tolist()], cv, 0)
    with pytest.raises(TypeError, match="every one float16"):  # K and V of one element type
        _core.decoder_stack(stack, x.copy(), pos, cos, sin, [ck[0].astype(np.float16)], cv, 0)
    with pytest.raises(TypeError, match="every one float16"):
        _core.decoder_stack(stack, x.copy(), pos, cos, sin, [ck[0].astype(np.float64)], [cv[0].astype(np.float64)], 0)
    with pytest.raises(ValueError, match="positions"):
        _core.decoder_stack(stack, x.copy(), pos.astype(np.int32), cos, sin, ck, cv, 0)
    with pytest.raises(ValueError, match="x of shape"):
        _core.decoder_stack(stack, x[..., :10].copy(), pos, cos, sin, ck, cv, 0)
    with pytest.raises(ValueError, match="key_padding_mask of shape"):
        _core.decoder_stack(stack, x.copy(), pos, cos, sin, ck, cv, 0, np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match="writeable"):
        ro = x.copy()
        ro.flags.writeable = False
        _core.decoder_stack(stack, ro, pos, cos, sin, ck, cv, 0)
