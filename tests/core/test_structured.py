"""Structured output under steering: the grammar constrains the candidates before the junction, so every answer
keeps to it, with any gate, through every shell (API response_format, --json-schema, batch rows), and Best-of-N."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from servers import _free_port, _Server
from sia_local.core.config import SteerConfig
from sia_local.core.steer import Steerer
from sia_local.errors import ConfigError
from sia_local.llama import LM
from sia_local.llama.grammar import response_format_grammar, schema_grammar
from sia_local.rewards.reward import OnnxReward

SCHEMA = {"type": "object", "properties": {"mood": {"type": "string", "enum": ["happy", "sad", "calm"]}, "score": {"type": "integer"}},
          "required": ["mood", "score"]}


def _valid(text: str) -> bool:
    jsonschema = pytest.importorskip("jsonschema")
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


@pytest.fixture(scope="module")
def steerer(tiny_gguf: Path, tiny_reward: Path) -> Steerer:
    return Steerer(LM(tiny_gguf, n_ctx=1024), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.0, max_tokens=400, weight=5.0))


def test_every_answer_keeps_to_the_schema_whatever_the_gate(steerer: Steerer) -> None:
    grammar = schema_grammar(SCHEMA, "test")
    for gate in ("none", "entropy", "dense"):
        for seed in range(3):
            g = steerer.generate("Give me JSON.", raw=True, gate=gate, seed=seed, grammar=grammar, trace=True)
            assert g.stats.finish_reason == "stop" and _valid(g.text), (gate, seed, g.text)
    free = steerer.generate("Give me JSON.", raw=True, gate="dense", seed=0)
    assert not _valid(free.text)  # the tiny model alone writes bytes, not JSON


def test_top_k_and_the_junction_see_only_allowed_tokens(steerer: Steerer) -> None:
    g = steerer.generate("Give me JSON.", raw=True, gate="dense", seed=1, grammar=schema_grammar(SCHEMA, "test"), trace=True)
    first = g.trace[0]
    assert [steerer.lm.piece(c) for c in first.candidates] == [b"{"]  # the only token a JSON object can start with here
    assert first.rewards is not None and len(first.rewards) == 1 and first.entropy == 0.0
    assert max(len(t.candidates) for t in g.trace) > 1  # inside a string many tokens are valid: the reward chooses among them


def test_best_of_n_keeps_to_the_schema(steerer: Steerer) -> None:
    from sia_local.core.search import best_of_n

    result = best_of_n(steerer, "Give me JSON.", 3, raw=True, gate="dense", seed=4, grammar=schema_grammar(SCHEMA, "test"))
    assert all(_valid(c.generation.text) for c in result.candidates)


def test_response_format_through_the_server_and_bad_schemas(steerer: Steerer, tmp_path: Path) -> None:
    from sia_local.serve.server import create_app

    with _Server(create_app(steerer, model_id="tiny"), _free_port()) as s:
        body = {"messages": [{"role": "user", "content": "Mood?"}], "seed": 2, "sia": {"gate": "dense"},
                "response_format": {"type": "json_schema", "json_schema": {"name": "mood", "schema": SCHEMA}}}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200 and _valid(r.json()["choices"][0]["message"]["content"])
        streamed = httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120)
        text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in streamed.text.splitlines()
                       if line.startswith("data: {") and json.loads(line[6:])["choices"])
        assert _valid(text)
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "JSON:", "seed": 3, "max_tokens": 400, "response_format": {"type": "json_object"}},
                       timeout=120)
        choice = r.json()["choices"][0]
        assert r.status_code == 200 and choice["text"].startswith("{")  # an object's first token; complete unless cut at max_tokens
        assert choice["finish_reason"] == "length" or isinstance(json.loads(choice["text"]), dict)
        for bad in ({"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": 5}}}, {"type": "yaml"},
                    {"type": "json_schema", "json_schema": {}}):
            r = httpx.post(s.url + "/v1/chat/completions", json={**body, "response_format": bad}, timeout=60)
            assert r.status_code == 400 and "response_format" in r.json()["error"]["message"], r.text
    assert response_format_grammar({"type": "text"}) is None
    with pytest.raises(ConfigError, match="GBNF|grammar"):
        steerer.generate("x", raw=True, grammar="root ::= (((")


def test_json_schema_flag_and_batch_rows(tiny_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    from sia_local.cli import main

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    result = CliRunner().invoke(main, ["generate", "Mood?", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--json-schema", str(schema),
                                       "--gate", "dense", "-n", "400", "--seed", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert _valid(json.loads(result.stdout)["text"])
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": 1, "prompt": "Mood?", "max_tokens": 400, "response_format": {"type": "json_schema",
                                                                                                   "json_schema": {"schema": SCHEMA}}}) + "\n"
                    + json.dumps({"id": 2, "prompt": "Mood?", "response_format": {"type": "nope"}}) + "\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["batch", str(rows), "-o", str(out), "-m", str(tiny_gguf), "-r", str(tiny_reward), "--tau", "1.0", "--raw"])
    assert result.exit_code == 1 and "1 failed" in result.output  # the row with a bad response_format is an error row
    answers = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert _valid(answers[1]["text"]) and "response_format" in answers[2]["error"]


def test_what_the_converter_would_ignore_is_enforced_or_refused() -> None:
    from sia_local.llama.grammar import enforceable

    ranged = {"type": "object", "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 5},
                                               "minimum": {"type": "string"}}}  # a property may be called "minimum"
    assert enforceable(ranged, "s")["properties"] == {"rating": {"enum": [1, 2, 3, 4, 5]}, "minimum": {"type": "string"}}
    for bad in ({"type": "number", "minimum": 0.5}, {"type": "integer", "minimum": 0}, {"type": "integer", "multipleOf": 3}):
        with pytest.raises(ConfigError, match="cannot enforce"):
            schema_grammar({"type": "object", "properties": {"x": bad}}, "schema")
