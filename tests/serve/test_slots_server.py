"""`sia serve --parallel N`: requests in slots, 503 beyond slots + queue, the KV budget checked at start-up."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sia_local.core.config import SteerConfig
from sia_local.core.steer import Steerer
from sia_local.errors import ConfigError
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from sia_local.serve.server import create_app
from servers import _free_port, _Server

MODEL = "tiny"


@pytest.fixture(scope="module")
def steerer(tiny_gguf: Path, tiny_reward: Path) -> Steerer:
    return Steerer(LM(tiny_gguf, n_ctx=512), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.3, max_tokens=24))


def test_a_request_beyond_the_slots_and_the_queue_gets_503(steerer: Steerer) -> None:
    """Two slots and a queue of one: with both slots taken and one request waiting, the next is refused at once."""
    app = create_app(steerer, model_id=MODEL, parallel=2, max_queue=1)
    engine = app.state.engine
    holding, release = threading.Event(), threading.Event()

    def hold(_: int, piece: object) -> None:  # the first slot's first token waits here: the slots' thread stands still
        holding.set()
        release.wait()

    with _Server(app, _free_port()) as s:
        taken = [engine.slots.submit(steerer, "hello", raw=True, max_tokens=3, on_piece=hold)]
        assert holding.wait(30)
        taken += [engine.slots.submit(steerer, "hi there", raw=True, max_tokens=3) for _ in range(2)]  # the second slot, the queue
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "one more", "max_tokens": 3}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
        health = httpx.get(s.url + "/health").json()
        assert health["parallel"] == 2 and health["queued"] == 2
        release.set()
        assert all(f.result(timeout=60).stats.tokens == 3 for f in taken)
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "one more", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200


def test_parallel_streams_and_best_of_n_share_the_slots(steerer: Steerer) -> None:
    """Four streaming clients and a Best-of-2 at once on four slots: each answer is the one it gets alone."""
    app = create_app(steerer, model_id=MODEL, parallel=4, max_queue=8)
    with _Server(app, _free_port()) as s:
        settings = httpx.get(s.url + "/v1/sia/settings").json()
        assert settings["slots"] == {"parallel": 4, "context": 512, "queue": 8}

        def stream(i: int) -> str:
            body = {"messages": [{"role": "user", "content": f"Client {i}."}], "max_tokens": 20, "seed": i, "stream": True}
            text = ""
            with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=120) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        import json

                        text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            return text

        def best() -> dict:
            body = {"messages": [{"role": "user", "content": "Tell me something."}], "max_tokens": 10, "seed": 3, "n": 2}
            return httpx.post(s.url + "/v1/chat/completions", json=body, timeout=120).json()

        with ThreadPoolExecutor(5) as pool:
            streams = [pool.submit(stream, i) for i in range(4)]
            bon = pool.submit(best)
            texts = [f.result() for f in streams]
            result = bon.result()
    for i, text in enumerate(texts):
        assert text == steerer.generate([{"role": "user", "content": f"Client {i}."}], max_tokens=20, seed=i).text
    singles = {steerer.generate([{"role": "user", "content": "Tell me something."}], max_tokens=10, seed=3 + i).text for i in range(2)}
    assert {c["message"]["content"] for c in result["choices"]} == singles


def test_slots_beyond_the_kv_budget_are_refused_at_start_up(steerer: Steerer) -> None:
    with pytest.raises(ConfigError, match="--parallel 8 x 512 context tokens"):
        create_app(steerer, model_id=MODEL, parallel=8, max_batch_tokens=2048)
    app = create_app(steerer, model_id=MODEL, max_batch_tokens=1024)  # no --parallel: what the budget holds
    assert app.state.engine.parallel == 2
    app.state.engine.slots.close()
    from sia_local.serve.server import default_parallel

    class OnGpu:  # layers offloaded: the KV lives in GPU memory, which a host-RAM budget does not measure
        n_ctx, n_gpu_layers = 512, -1

    assert default_parallel(OnGpu(), 1 << 30) == 1  # one slot unless --parallel says more (the start-up line says so)


def test_a_conversations_next_turn_reports_its_cached_prompt_tokens(steerer: Steerer) -> None:
    """usage.prompt_tokens_details.cached_tokens (OpenAI's field): the earlier turns' cells, kept in the slot, not decoded again."""
    with _Server(create_app(steerer, model_id=MODEL, parallel=2), _free_port()) as s:
        messages = [{"role": "user", "content": "Tell me something."}]
        body = {"messages": messages, "max_tokens": 8, "seed": 1, "sia": {"gate": "none"}}
        one = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=120).json()
        assert one["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        messages += [one["choices"][0]["message"], {"role": "user", "content": "And then?"}]
        two = httpx.post(s.url + "/v1/chat/completions", json=dict(body, messages=messages), timeout=120).json()
        assert one["usage"]["prompt_tokens"] <= two["usage"]["prompt_tokens_details"]["cached_tokens"] < two["usage"]["prompt_tokens"]


@pytest.mark.parametrize("exact", [True, False])
def test_seeded_requests_are_exact_unless_the_server_batches_them(steerer: Steerer, exact: bool) -> None:
    app = create_app(steerer, model_id=MODEL, exact_seeds=exact)
    engine = app.state.engine
    asked: list = []
    real = engine.slots.submit
    engine.slots.submit = lambda *a, **k: (asked.append(k["exact"]), real(*a, **k))[1]
    try:
        with _Server(app, _free_port()) as s:
            r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "seed": 3})
            assert r.status_code == 200
    finally:
        engine.slots.close()
    assert asked == [None if exact else False]  # None: exact when the request names a seed (`SlotScheduler.submit`)
