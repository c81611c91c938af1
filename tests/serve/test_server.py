"""`sia serve` on a real loopback port, spoken to by the official openai client and raw HTTP."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")

from sia_local.core.config import SteerConfig  # noqa: E402
from sia_local.llama import LM  # noqa: E402
from sia_local.rewards.reward import OnnxReward  # noqa: E402
from sia_local.serve.server import create_app  # noqa: E402
from sia_local.core.steer import Steerer  # noqa: E402

MODEL = "tiny"

from servers import _free_port, _Server  # noqa: E402 - shared with the batch tests


@pytest.fixture(scope="module")
def steerer(tiny_gguf: Path, tiny_reward: Path) -> Steerer:
    return Steerer(LM(tiny_gguf, n_ctx=1024), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.3, max_tokens=32))


@pytest.fixture(scope="module")
def server(steerer: Steerer) -> Iterator[_Server]:
    app = create_app(steerer, model_id=MODEL, max_queue=4, max_body_bytes=64_000)
    with _Server(app, _free_port()) as s:
        yield s


class EndlessScorer:
    """A scorer that makes a generation unable to finish early on any machine: it rules out every
    end-of-generation candidate (so only max_tokens ends it) and takes 5 ms per junction step."""

    name, provider, lm_state, objective = "endless", "test", None, "never stop"

    def __init__(self, lm: LM) -> None:
        self.lm = lm

    def score_junctions(self, junctions):
        time.sleep(0.005)
        return [np.array([-1e4 if self.lm.is_eog(int(c)) else 0.0 for c in j.candidates]) for j in junctions]

    def score_responses(self, prompt, prompt_ids, responses):
        return np.zeros(len(responses))

    def info(self):
        from sia_local.core.scorer import ScorerInfo

        return ScorerInfo(kind="test", name=self.name, path="", provider=self.provider, provider_note=None, objective=self.objective)

    def reset(self) -> None:
        pass


@pytest.fixture(scope="module")
def endless(steerer: Steerer) -> Iterator[_Server]:
    """A server whose dense-gated answers run to max_tokens (>= 4.5 s at 900 tokens): clients can leave before the end."""
    slow = Steerer(steerer.lm, EndlessScorer(steerer.lm), SteerConfig(gate="dense", max_tokens=32))
    with _Server(create_app(slow, model_id=MODEL, max_queue=4), _free_port()) as s:
        yield s


@pytest.fixture()
def client(server: _Server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(client, server: _Server) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL


def test_chat_completion_matches_the_core(client, steerer: Steerer) -> None:
    msgs = [{"role": "user", "content": "Tell me something."}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=20, seed=5)
    core = steerer.generate(msgs, max_tokens=20, seed=5)
    assert r.choices[0].message.content == core.text
    assert r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.completion_tokens == core.stats.tokens
    assert u.prompt_tokens == core.stats.prompt_tokens
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    sia = u.model_extra["sia"]
    assert sia["junctions"] == core.stats.junctions and sia["gate"] == "entropy"


def test_streaming_chat_adds_up(client) -> None:
    msgs = [{"role": "user", "content": "Tell me something."}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=25, seed=9, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals and finals[-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    whole = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=25, seed=9)
    assert text == whole.choices[0].message.content


def test_completion_endpoint(client) -> None:
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, seed=1)
    assert r.object == "text_completion" and r.usage.completion_tokens > 0
    assert isinstance(r.choices[0].text, str)


def test_steering_params_change_the_stats(client, steerer: Steerer) -> None:
    steerer.resolve_tau(steerer.config.updated(ratio=0.5))  # k = 10 calibrated, as `sia serve` would be (a request never calibrates)
    msgs = [{"role": "user", "content": "Tell me something."}]
    none = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=20, seed=2, extra_body={"sia": {"gate": "none"}})
    dense = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=20, seed=2, extra_body={"sia": {"gate": "dense", "weight": 2.0}})
    assert none.usage.model_extra["sia"]["reward_calls"] == 0
    d = dense.usage.model_extra["sia"]
    assert d["junctions"] == dense.usage.completion_tokens and d["weight"] == 2.0
    ratio = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=20, seed=2, extra_body={"sia": {"ratio": 0.5}})
    assert ratio.usage.model_extra["sia"]["tau"] != 1.3  # the request's ratio replaced the server's tau


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).encode(), 400, "max_tokens"),
        (json.dumps({"messages": [{"role": "user", "content": "word " * 3000}]}).encode(), 400, "context holds"),
        (json.dumps({"messages": []}).encode(), 400, "messages"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "sia": {"ratio": 2}}).encode(), 400, "sia.ratio"),
        (json.dumps({"messages": [{"role": "user", "content": "x" * 70_000}]}).encode(), 413, "over"),
    ],
)
def test_errors_in_openai_format(server: _Server, body: bytes, status: int, fragment: str) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and set(err) == {"message", "type", "param", "code"}


def test_any_model_name_is_answered_by_the_model_served_unless_strict(client, steerer: Steerer) -> None:
    """Scripts written for other servers send their own model names; llama.cpp's server answers them with its one model."""
    from sia_local.serve.server import create_app

    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.model == MODEL  # the response says which model answered
    with _Server(create_app(steerer, model_id=MODEL, strict_model=True), _free_port()) as strict:
        r = httpx.post(strict.url + "/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"] and "--strict-model" in r.json()["error"]["message"]


def test_openai_client_sees_errors(client) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=-1)


def test_concurrent_clients_get_unmixed_answers_or_503(server: _Server, steerer: Steerer) -> None:
    def ask(i: int) -> tuple[int, int, str]:
        r = httpx.post(server.url + "/v1/chat/completions", timeout=120,
                       json={"messages": [{"role": "user", "content": f"Client {i} here."}], "max_tokens": 24, "seed": i})
        return i, r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.json()["error"]["code"]

    with ThreadPoolExecutor(50) as pool:  # 50 at once against a queue of 4
        results = list(pool.map(ask, range(50)))
    ok = [(i, text) for i, code, text in results if code == 200]
    busy = [i for i, code, text in results if code == 503]
    assert len(ok) + len(busy) == 50 and ok and busy
    assert all(text == "server_busy" for i, code, text in results if code == 503)
    for i, text in ok:  # each answer is exactly what that request alone produces
        assert text == steerer.generate([{"role": "user", "content": f"Client {i} here."}], max_tokens=24, seed=i).text


def test_disconnect_mid_stream_frees_the_model(endless: _Server) -> None:
    server = endless
    before = httpx.get(server.url + "/health").json()
    body = {"messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 900, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
    health = _wait_until_freed(server, before["cancelled"])
    assert health["served"] == before["served"] and health["cancelled"] == before["cancelled"] + 1
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


def _wait_until_freed(server: _Server, before: int) -> dict:
    deadline = time.time() + 30
    while True:
        health = httpx.get(server.url + "/health").json()
        if health["active"] == 0 and health["cancelled"] > before:
            return health
        assert time.time() < deadline, health
        time.sleep(0.05)


@pytest.mark.parametrize("n", [1, 4])
def test_disconnect_without_streaming_frees_the_model(endless: _Server, n: int) -> None:
    """A client that stops waiting for a non-streamed answer (or a Best-of-N one) is noticed at the next token / step."""
    server = endless
    before = httpx.get(server.url + "/health").json()
    body = {"messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 900, "n": n}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    health = _wait_until_freed(server, before["cancelled"])
    assert health["served"] == before["served"]  # stopped, not finished
    time.sleep(0.3)  # a departed request is counted once, not once per poll while it winds down
    assert httpx.get(server.url + "/health").json()["cancelled"] == before["cancelled"] + 1


def test_client_that_leaves_while_queued_is_never_run(endless: _Server) -> None:
    """A request whose client gives up while it waits behind another is dropped when its turn comes."""
    server = endless
    before = httpx.get(server.url + "/health").json()
    long = {"messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 900}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**long, "stream": True}, timeout=60) as first:
        next(first.iter_lines())  # the model is busy with this one
        with pytest.raises(httpx.ReadTimeout):  # this one queues behind it, then its client leaves
            httpx.post(server.url + "/v1/chat/completions", json=long, timeout=httpx.Timeout(60, read=0.3))
    health = _wait_until_freed(server, before["cancelled"] + 1)
    assert health["cancelled"] >= before["cancelled"] + 2 and health["served"] == before["served"]


def test_api_key(steerer: Steerer) -> None:
    app = create_app(steerer, model_id=MODEL, api_key="s3cret")
    with _Server(app, _free_port()) as s:
        assert httpx.get(s.url + "/v1/models").status_code == 401
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.models.list().data[0].id == MODEL
        assert httpx.get(s.url + "/health").status_code == 200


def test_n_gives_best_of_n(client, steerer: Steerer) -> None:
    msgs = [{"role": "user", "content": "Tell me something."}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, seed=3, n=3, extra_body={"sia": {"gate": "none"}})
    assert len(r.choices) == 3 and [c.index for c in r.choices] == [0, 1, 2]
    scores = [c.model_extra["sia_score"] for c in r.choices]
    assert scores == sorted(scores, reverse=True)  # best first
    singles = [steerer.generate(msgs, gate="none", max_tokens=10, seed=3 + i) for i in range(3)]
    assert {c.message.content for c in r.choices} == {g.text for g in singles}
    assert r.usage.completion_tokens == sum(g.stats.tokens for g in singles)
    assert r.usage.model_extra["sia"]["best_of"] == 3
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=msgs, n=2, stream=True)


def test_zero_queue_still_serves_one(steerer: Steerer) -> None:
    app = create_app(steerer, model_id=MODEL, max_queue=0)
    with _Server(app, _free_port()) as s:
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=60)
        assert r.status_code == 200, r.text


def test_the_trace_rides_along_and_the_openai_client_parses_it(client) -> None:
    """With sia.trace each streamed chunk carries its token's steering info; a whole answer carries the list."""
    msgs = [{"role": "user", "content": "Tell me something."}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, seed=1, stream=True,
                                                 extra_body={"sia": {"trace": True, "gate": "dense"}}))
    tokens = [t for c in chunks for t in ((c.model_extra or {}).get("sia") or {}).get("tokens", [])]
    assert 1 <= len(tokens) <= 8
    for t in tokens:
        assert t["junction"] is True and len(t["candidates"]) == 10
        assert abs(sum(c["p_base"] for c in t["candidates"]) - 1) < 1e-3 and abs(sum(c["p_steered"] for c in t["candidates"]) - 1) < 1e-3
        assert all("reward" in c and isinstance(c["text"], str) for c in t["candidates"])
    full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, seed=1, extra_body={"sia": {"trace": True, "gate": "dense"}})
    listed = full.model_extra["sia"]["tokens"]
    assert len(listed) == full.usage.completion_tokens == len(tokens)
    assert [t["text"] for t in listed] == [t["text"] for t in tokens] and [t["changed"] for t in listed] == [t["changed"] for t in tokens]
    plain = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, stream=True))
    assert all("sia" not in (c.model_extra or {}) for c in plain)  # off by default


def test_settings_endpoint_states_each_range_once(server: _Server) -> None:
    from sia_local.core.config import settings

    data = httpx.get(server.url + "/v1/sia/settings").json()
    by = {f["name"]: f for f in data["settings"]}
    for name, s in settings():
        if s.api:
            assert (by[name]["lo"], by[name]["hi"], by[name]["lo_open"]) == (s.lo, s.hi, s.lo_open), name
    assert by["ratio"]["place"] == "sia.ratio" and by["temperature"]["place"] == "temperature" and by["tau"]["default"] == 1.3
    assert "entropy" in data["gates"] and data["limits"]["top_k"] == 64 and any(o["name"] == "kind" for o in data["objectives"])
