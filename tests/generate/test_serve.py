"""`llmforge serve` through the official openai client on a loopback server with a tiny random model:
chat and text completions (streamed and not) equal the KV-cache generate() reference under greedy
decoding, stop strings, concurrency, the bounded queue, and OpenAI-shaped errors."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

openai = pytest.importorskip("openai")

from llmforge.data.chat import render_chat  # noqa: E402
from llmforge.generate.engine import generate  # noqa: E402
from llmforge.generate.sampling import SamplingParams  # noqa: E402
from llmforge.generate.server import OpenAIServer  # noqa: E402
from llmforge.model import ModelConfig, Transformer  # noqa: E402
from llmforge.tokenizer import Tokenizer  # noqa: E402

TEXT = ("The quick brown fox jumps over the lazy dog. A king and a queen ruled the land of the north. "
        "Once upon a time there was a small model that learned to talk. ") * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_from_iterator([TEXT], vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                                max_seq_len=256)).eval()
    m.reset_parameters(std=0.15)       # peaked distributions: greedy has no near-ties across batch shapes
    return m


@pytest.fixture(scope="module")
def server(model, tok):
    srv = OpenAIServer(model, tok, model_name="tiny", port=0, max_batch=4, max_queue=32, max_tokens_cap=100,
                       max_prompt_tokens=120).start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def _reference(model, tok, ids, n, stop_ids):
    """Greedy tokens from the contiguous-cache generate() and their text (stop token excluded)."""
    toks = generate(model, [ids], n, SamplingParams(temperature=0), stop_ids=stop_ids).tokens[0]
    body = toks[:-1] if toks and toks[-1] in stop_ids else toks
    return toks, tok.decode(body, skip_special=True)


def _chat_ids(tok, msgs):
    return tok.encode(render_chat(msgs, "chatml", add_generation_prompt=True, bos_token=tok.bos_token,
                                  eos_token=tok.eos_token))


def _chat_stops(tok):
    return {tok.token_to_id("<|eos|>"), tok.token_to_id("<|im_end|>")}


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_chat_matches_reference_streamed_and_not(client, model, tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the fox."}]
    ids = _chat_ids(tok, msgs)
    toks, text = _reference(model, tok, ids, 40, _chat_stops(tok))
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0)
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == text
    assert r.choices[0].finish_reason == ("stop" if len(toks) < 40 else "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(toks))
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == r.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [r.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(toks)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1     # it really streamed


def test_completions_and_stop_strings(client, model, tok):
    prompts = ["Once upon a time", "The king and"]
    refs = [_reference(model, tok, tok.encode(p), 30, {tok.token_to_id("<|eos|>")}) for p in prompts]
    r = client.completions.create(model="tiny", prompt=prompts, max_tokens=30, temperature=0)
    assert r.object == "text_completion"
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [t for _, t in refs]
    assert r.usage.completion_tokens == sum(len(t) for t, _ in refs)
    s = list(client.completions.create(model="tiny", prompt=prompts[0], max_tokens=30, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in s) == refs[0][1]
    # a stop string taken from the middle of the greedy text cuts the answer just before it
    text = refs[0][1]
    cut = next(i for i in range(3, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    stop = text[cut:cut + 2]
    r = client.completions.create(model="tiny", prompt=prompts[0], max_tokens=30, temperature=0, stop=[stop, "@@"])
    assert r.choices[0].text == text[:text.find(stop)] and r.choices[0].finish_reason == "stop"
    s = list(client.completions.create(model="tiny", prompt=prompts[0], max_tokens=30, temperature=0, stop=stop,
                                       stream=True))
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text
    # token-id prompts and echo
    ids = tok.encode(prompts[1])
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=30, temperature=0, echo=True)
    assert r.choices[0].text == prompts[1] + refs[1][1]


def test_seeded_sampling_reproduces(client):
    kw = dict(model="tiny", prompt="The quick", max_tokens=20, temperature=1.0, extra_body={"top_k": 50})
    a, b, c = (client.completions.create(seed=s, **kw).choices[0].text for s in (11, 11, 12))
    assert a == b and a != c


def test_concurrent_requests_all_complete(client, model, tok, server):
    prompts = [f"{w} the" for w in ("Once", "A", "The", "Fox", "King", "Land", "Model", "Small", "Queen", "Dog")]
    stop = {tok.token_to_id("<|eos|>")}
    refs = [_reference(model, tok, tok.encode(p), 25, stop)[1] for p in prompts]
    out = [None] * len(prompts)

    def ask(i):
        r = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=25, temperature=0)
        out[i] = r.choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert out == refs
    deadline = time.time() + 10            # the engine frees blocks just after the last token goes out
    while server.engine.cache.num_used_blocks and time.time() < deadline:
        time.sleep(0.01)
    assert server.worker.in_flight == 0 and server.engine.cache.num_free_blocks == server.engine.cache.num_blocks


def _raw(server, method, path, body=None, headers=None):
    url = server.url.rsplit("/v1", 1)[0] + path
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_errors_have_openai_shape(client, server):
    msgs = [{"role": "user", "content": "hi"}]
    status, body = _raw(server, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    assert _raw(server, "POST", "/v1/chat/completions", [1, 2])[0] == 400
    status, body = _raw(server, "POST", "/v1/completions", b'{"model": "tiny", "prompt": "a", "top_p": NaN}')
    assert status == 400 and body["error"]["param"] == "top_p"
    assert _raw(server, "GET", "/v1/nothing")[0] == 404
    assert _raw(server, "GET", "/v1/chat/completions")[0] == 405
    assert _raw(server, "POST", "/v1/nothing", {"a": 1})[0] == 404
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=msgs)
    assert e.value.code == "model_not_found"
    bad = [dict(extra_body={"bogus": 1}), dict(temperature="hot"), dict(temperature=5),
           dict(max_tokens=0), dict(max_tokens=101), dict(n=2), dict(stop=[""]), dict(stop=7), dict(seed=1.5),
           dict(stream="yes"), dict(logprobs=True), dict(messages=[]),
           dict(messages=[{"role": "robot", "content": "x"}]),
           dict(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])]
    for kw in bad:
        args = {"model": "tiny", "messages": msgs, **kw}
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(**args)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="fox " * 200, max_tokens=5)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=[10**6], max_tokens=5)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=5, suffix="y")
    # the server still answers after all that
    r = client.completions.create(model="tiny", prompt="The", max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_full_queue_gets_429_and_disconnect_frees(model, tok):
    srv = OpenAIServer(model, tok, model_name="tiny", port=0, max_queue=1)
    srv._thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    srv._thread.start()                                  # HTTP up, engine thread not yet: requests wait in the queue
    c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=60)
    first = {}
    t = threading.Thread(target=lambda: first.setdefault(
        "r", c.completions.create(model="tiny", prompt="The fox", max_tokens=5, temperature=0)))
    t.start()
    deadline = time.time() + 30
    while srv.worker.in_flight < 1 and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(openai.RateLimitError):
        c.completions.create(model="tiny", prompt="The dog", max_tokens=5)
    srv.worker.start()
    t.join(timeout=60)
    assert first["r"].choices[0].finish_reason in ("stop", "length")
    # a client that leaves mid-stream: its request is aborted and its blocks freed. Each engine
    # step is slowed (5 ms) so that 200 tokens outlast the server's noticing the closed socket: on a
    # fast CPU the tiny model finished them first ("length") in about 1 run of 6
    step = srv.engine.step
    srv.engine.step = lambda: (time.sleep(0.005), step())[1]
    stream = c.completions.create(model="tiny", prompt="The fox", max_tokens=200, temperature=0,
                                  stop=None, stream=True, extra_body={"min_p": 0.0})
    next(iter(stream))
    stream.close()
    deadline = time.time() + 30
    while (srv.worker.in_flight or srv.engine.running) and time.time() < deadline:
        time.sleep(0.02)
    assert srv.worker.in_flight == 0 and srv.engine.cache.num_free_blocks == srv.engine.cache.num_blocks
    assert [r.finish_reason for r in srv.engine.done.values()][-1] == "abort"
    srv.close()


def _mutated(body, rng):
    """body (a dict of JSON values) with one field changed to another JSON type or an extreme value,
    removed, or one unknown field added."""
    import copy

    b = copy.deepcopy(body)
    values = [None, True, -1, 0, 2**63, -1e308, 1e308, float("nan"), "", "x" * 5000, [], [1, "a"], {},
              {"role": "user"}, [[1]], [{"role": "tool", "content": 3}], [-5, 10**9]]
    key = list(b)[rng.integers(len(b))]
    kind = rng.integers(4)
    if kind == 0:
        b[key] = values[rng.integers(len(values))]
    elif kind == 1:
        del b[key]
    elif kind == 2:
        b["extra_" + str(rng.integers(100))] = values[rng.integers(len(values))]
    elif isinstance(b.get("messages"), list):
        m = b["messages"][0]
        m[list(m)[rng.integers(len(m))]] = values[rng.integers(len(values))]
    return b


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                              "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "seed": 3, "stream": False}),
    ("/v1/completions", {"model": "tiny", "prompt": "Once upon", "max_tokens": 4, "temperature": 0,
                         "presence_penalty": 0.5, "stream": False, "echo": False}),
])
def test_malformed_bodies_get_4xx_and_the_server_lives(server, path, body):
    """Random type swaps, extreme numbers, missing and unknown fields: every reply is 200 or a 4xx
    with an OpenAI-shaped error (never a 500, a hang or a dead server)."""
    import numpy as np

    rng = np.random.default_rng(5)
    statuses = []
    for _ in range(120):
        data = json.dumps(_mutated(body, rng)).encode()  # NaN becomes the non-JSON token NaN: also bad input
        status, reply = _raw(server, "POST", path, data)
        statuses.append(status)
        assert status == 200 or 400 <= status < 500, (status, reply, data[:300])
        if status != 200:
            assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["message"]
    assert statuses.count(400) >= 40
    assert _raw(server, "POST", path, body)[0] == 200
