"""Limits a real server and a real laptop need: bounded allocations, clients that leave, time limits, hostile input."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from sia_local.core.config import SteerConfig
from sia_local.errors import PromptError
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward, position_limit
from sia_local.serve.server import create_app
from sia_local.core.steer import Steerer
from servers import _free_port, _Server
from tiny_models import write_tiny_gguf


@pytest.fixture(scope="module")
def steerer(tiny_gguf: Path, tiny_reward: Path) -> Steerer:
    return Steerer(LM(tiny_gguf, n_ctx=512), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.3, max_tokens=32))


def test_huge_best_of_n_is_refused_before_allocating(steerer: Steerer) -> None:
    with _Server(create_app(steerer, model_id="tiny"), _free_port()) as s:
        t = time.perf_counter()
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "Hi", "n": 16, "max_tokens": 10**6}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert time.perf_counter() - t < 2  # refused, not attempted
        ok = httpx.post(s.url + "/v1/completions", json={"prompt": "Hi", "n": 2, "max_tokens": 4000, "sia": {"gate": "none"}}, timeout=120)
        assert ok.status_code == 200  # under the limit: the context (512) bounds what is allocated, answers stop when it is full
        assert all(c["finish_reason"] in ("length", "stop") for c in ok.json()["choices"])


def test_request_timeout(steerer: Steerer) -> None:
    with _Server(create_app(steerer, model_id="tiny", request_timeout=0.3), _free_port()) as s:
        t = time.perf_counter()
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "Go on.", "max_tokens": 4000, "sia": {"gate": "dense"}}, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
        assert time.perf_counter() - t < 5
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "Go on.", "max_tokens": 4000, "n": 3, "sia": {"gate": "dense"}}, timeout=30)
        assert r.status_code == 504


def test_hostile_bodies_and_cors(steerer: Steerer) -> None:
    with _Server(create_app(steerer, model_id="tiny"), _free_port()) as s:
        deep = '{"prompt": "x", "stop": ' + "[" * 5000 + "]" * 5000 + "}"
        r = httpx.post(s.url + "/v1/completions", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nests deeper" in r.json()["error"]["message"]
        r = httpx.get(s.url + "/v1/models", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers  # no CORS unless asked for
    with _Server(create_app(steerer, model_id="tiny", allow_origins=["http://localhost:3000"]), _free_port()) as s:
        r = httpx.get(s.url + "/v1/models", headers={"origin": "http://localhost:3000"})
        assert r.headers.get("access-control-allow-origin") == "http://localhost:3000"


def test_chat_templates_run_sandboxed(tmp_path: Path) -> None:
    lm = LM(write_tiny_gguf(tmp_path / "t.gguf"), n_ctx=256, chat_template="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(PromptError, match="rejected the messages"):
        lm.render_chat([{"role": "user", "content": "hi"}])


def test_roberta_position_tables() -> None:
    assert position_limit({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}) == 512
    assert position_limit({"model_type": "xlm-roberta", "max_position_embeddings": 514}) == 512
    assert position_limit({"model_type": "bert", "max_position_embeddings": 512}) == 512
    assert position_limit({}) is None


def test_bench_on_a_model_without_chat_template(tmp_path: Path, tiny_reward: Path) -> None:
    from sia_local.bench.grid import run_grid, select_arms
    from sia_local.bench.judges import VaderJudge

    pytest.importorskip("vaderSentiment")
    lm = LM(write_tiny_gguf(tmp_path / "plain.gguf", chat_template=None), n_ctx=256)
    steerer = Steerer(lm, OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.2, max_tokens=6))
    result = run_grid(steerer, VaderJudge(), ["Hello.", "Why?"], select_arms(["base", "dense", "bon-2"], 6), tmp_path / "b", plots=False)
    assert len(result.rows) == 6 and all(r["tokens"] > 0 for r in result.rows)


def test_random_gate_differs_per_prompt(tmp_path: Path, tiny_lm, tiny_reward: Path) -> None:
    from sia_local.bench.grid import run_grid, select_arms
    from sia_local.bench.judges import VaderJudge

    pytest.importorskip("vaderSentiment")
    steerer = Steerer(tiny_lm, OnnxReward(tiny_reward, provider="cpu"), SteerConfig(ratio=0.5, max_tokens=16))
    prompts = ["Tell me a story.", "Tell me a story!", "Tell me a story?", "Tell me a story..."]
    result = run_grid(steerer, VaderJudge(), prompts, select_arms(["sia@0.4", "random@0.4"], 16), tmp_path / "r", plots=False)
    rows = {(r["arm"], r["prompt_index"]): r for r in result.rows}
    from sia_local.bench.grid import row_seed

    assert len({row_seed(0, i) for i in range(4)}) == 4  # every prompt draws its own sampler and random-gate stream
    assert len({(rows[("random@0.4", i)]["junctions"], rows[("random@0.4", i)]["tokens"]) for i in range(4)}) > 1
    for i in range(4):  # each random row targets the ratio its SIA row realised on the same prompt
        assert rows[("random@0.4", i)]["ratio_target"] == pytest.approx(rows[("sia@0.4", i)]["ratio"])


def test_a_finished_request_cancels_its_timeout(steerer: Steerer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request's timer goes with its response (streamed or not), so none pile up in the event loop under load."""
    import asyncio

    timers: list[asyncio.TimerHandle] = []
    real = asyncio.BaseEventLoop.call_later

    def recorded(self, delay, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
        handle = real(self, delay, callback, *args, **kwargs)
        if delay == 3600:
            timers.append(handle)
        return handle

    monkeypatch.setattr(asyncio.BaseEventLoop, "call_later", recorded)
    with _Server(create_app(steerer, model_id="tiny", request_timeout=3600), _free_port()) as s:
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        assert httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
        assert httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60).status_code == 200
        assert httpx.post(s.url + "/v1/chat/completions", json={**body, "max_tokens": 0}, timeout=60).status_code == 400
        time.sleep(0.2)
    assert len(timers) == 2 and all(t.cancelled() for t in timers)
