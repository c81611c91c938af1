"""Bad input thrown by a machine: random request bodies at the server, random rows at `sia batch`.

No body may become a 500 (or leave the server unable to answer /health), and every batch row must
become exactly one output row with the same keys. scripts/check/fuzz_server.py runs the same strategies
longer, against a live `sia serve`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fuzz_bodies import batch_rows, request_bodies
from sia_local.batch import Worker, WorkerSpec, read_rows
from sia_local.core.config import SteerConfig
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from sia_local.runtime import LMSettings, ScorerSettings
from sia_local.serve.server import create_app
from sia_local.core.steer import Steerer

FUZZ = settings(max_examples=120, deadline=None, phases=[Phase.generate, Phase.target, Phase.shrink],
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def api(tiny_gguf: Path, tiny_reward: Path):
    from fastapi.testclient import TestClient

    steerer = Steerer(LM(tiny_gguf, n_ctx=256), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.3, max_tokens=4))
    app = create_app(steerer, model_id="tiny", max_tokens_limit=8, max_body_bytes=20_000)
    with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1") as client:
        yield client


@FUZZ
@given(chat=st.booleans(), data=st.data())
def test_no_request_body_is_a_500(api, chat: bool, data: st.DataObject) -> None:
    body = data.draw(request_bodies(chat))
    path = "/v1/chat/completions" if chat else "/v1/completions"
    r = api.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, (body, r.status_code, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"]
    elif not r.headers.get("content-type", "").startswith("text/event-stream"):  # "stream": "1" streams too (pydantic's lax bool)
        json.loads(r.text)  # a whole answer is valid JSON (no NaN or Infinity)
    assert api.get("/health").json()["status"] == "ok"


@pytest.fixture(scope="module")
def worker(tiny_gguf: Path, tiny_reward: Path) -> Worker:
    spec = WorkerSpec(LMSettings(model=tiny_gguf, n_ctx=128, n_threads=1), ScorerSettings(path=tiny_reward, provider="cpu", threads=1),
                      SteerConfig(tau=1.3, max_tokens=4))
    return Worker(spec)


@FUZZ
@given(rows=st.lists(batch_rows(), min_size=1, max_size=4))
def test_every_batch_row_gives_one_output_row(worker: Worker, tmp_path_factory: pytest.TempPathFactory, rows: list) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    read = read_rows(path)
    assert len(read) == len(rows)
    results = [worker.run(row, 0) for row in read]
    keys = {"id", "line", "text", "finish_reason", "stats", "error"}
    for row, result in zip(read, results):
        assert keys <= set(result) and result["line"] == row.line, result
        assert (result["error"] is None) == (result["finish_reason"] != "error")
        json.loads(json.dumps(result))
