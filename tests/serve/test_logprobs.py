"""OpenAI logprobs from `sia serve`: the base model's log-probabilities (full vocabulary, T = 1) in OpenAI's shapes,
streamed and not, parsed by the official client; the steered draw's under `sia`."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")

from servers import _free_port, _Server  # noqa: E402
from sia_local.core.config import SteerConfig  # noqa: E402
from sia_local.core.junction import top_k  # noqa: E402
from sia_local.llama import LM  # noqa: E402
from sia_local.rewards.reward import OnnxReward  # noqa: E402
from sia_local.serve.server import create_app  # noqa: E402
from sia_local.core.steer import Steerer  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def setup(tiny_gguf: Path, tiny_reward: Path):
    steerer = Steerer(LM(tiny_gguf, n_ctx=1024), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.0, max_tokens=12, seed=3))
    with _Server(create_app(steerer, model_id="tiny"), _free_port()) as s:
        yield steerer, s, openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_logprobs_are_the_base_models_in_openais_shape(setup) -> None:
    steerer, _, client = setup
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, seed=3, logprobs=True, top_logprobs=3,
                                       extra_body={"sia": {"gate": "dense", "weight": 30.0}})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens > 0
    for entry in content:
        assert entry.logprob <= 0 and isinstance(entry.bytes, list) and len(entry.top_logprobs) == 3
        alts = [a.logprob for a in entry.top_logprobs]
        assert alts == sorted(alts, reverse=True) and alts[0] >= entry.logprob - 1e-6
        extra = entry.model_extra["sia"]
        assert extra["junction"] and extra["draw_logprob"] <= 0  # dense: every token drawn from the steered distribution
    assert any(e.model_extra["sia"]["changed"] for e in content)  # weight 30 moves some tokens off the base favourite
    # the first token's logprob, computed independently: log softmax of the model's logits after the prompt
    lm = steerer.lm
    logits = lm.prefill(steerer.prepare(MESSAGES, None, False).ids).astype(np.float64)
    full = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    first = content[0]
    token = [c for c in top_k(logits, 10)[0] if bytes(lm.piece(int(c))) == bytes(first.bytes)][0]
    assert first.logprob == pytest.approx(full[token], abs=1e-4)
    assert [a.logprob for a in first.top_logprobs] == pytest.approx(list(np.sort(full)[::-1][:3]), abs=1e-4)


def test_streamed_logprobs_match_the_whole_answer(setup) -> None:
    _, _, client = setup
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, "seed": 5, "logprobs": True, "top_logprobs": 2}
    whole = client.chat.completions.create(**body).choices[0].logprobs.content
    streamed = [e for chunk in client.chat.completions.create(**body, stream=True)
                for e in ((chunk.choices[0].logprobs.content or []) if chunk.choices and chunk.choices[0].logprobs else [])]
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [(e.token, round(e.logprob, 5)) for e in whole]


def test_completion_logprobs_and_refusals(setup) -> None:
    _, server, client = setup
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, seed=1, logprobs=2, extra_body={"sia": {"gate": "none"}})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == r.usage.completion_tokens
    assert all(len(alts) <= 2 and max(alts.values()) >= p - 1e-6 for alts, p in zip(lp.top_logprobs, lp.token_logprobs))
    assert lp.text_offset == sorted(lp.text_offset)
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
    assert plain.choices[0].logprobs is None
    bad = httpx.post(server.url + "/v1/chat/completions", json={"messages": MESSAGES, "top_logprobs": 2})
    assert bad.status_code == 400 and "logprobs" in bad.json()["error"]["message"]
    bad = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "logprobs": 6})
    assert bad.status_code == 400
