"""`sia_local.steered`: a llama-cpp-python script, unchanged but for one line, runs steered with the same shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = '''import json, sys
from llama_cpp import Llama

llm = Llama(model_path=sys.argv[1], n_ctx=512, verbose=False)
messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Say something about rain."}]
print(json.dumps(llm.create_chat_completion(messages=messages, max_tokens=8, seed=1)))
for chunk in llm.create_chat_completion(messages=messages, max_tokens=6, stream=True, seed=2):
    print(json.dumps(chunk))
print(json.dumps(llm.create_completion("Once upon a time", max_tokens=6, seed=3)))
print(json.dumps(llm("The sea is", max_tokens=4, stop=["\\\\n"])))
'''
STEERED = 'llm = __import__("sia_local").steered(Llama(model_path=sys.argv[1], n_ctx=512, verbose=False), objective=sys.argv[2], tau=1.0)'


def _shape(value):
    """A JSON value's structure: its keys all the way down (a list by its first element), not its values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__ if value is not None else None


def _run(script: Path, *args: str) -> list[dict]:
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_a_llama_cpp_python_script_runs_steered_with_one_line_changed(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    plain, steered = tmp_path / "plain.py", tmp_path / "steered.py"
    plain.write_text(SCRIPT)
    lines = SCRIPT.splitlines()
    changed = [STEERED if line.startswith("llm = Llama(") else line for line in lines]
    assert sum(a != b for a, b in zip(lines, changed)) == 1
    steered.write_text("\n".join(changed) + "\n")
    base, ours = _run(plain, str(tiny_gguf)), _run(steered, str(tiny_gguf), str(tiny_reward))

    def parts(outputs: list[dict]) -> tuple[dict, list[dict], dict, dict]:
        chunks = [o for o in outputs if o["object"] == "chat.completion.chunk"]
        return outputs[0], chunks, outputs[-2], outputs[-1]

    (chat_b, chunks_b, completion_b, call_b), (chat_o, chunks_o, completion_o, call_o) = parts(base), parts(ours)
    for mine in (chat_o, completion_o, call_o):
        assert "junctions" in mine.pop("sia")  # the steering stats ride along, under "sia"
    for theirs, mine in ((chat_b, chat_o), (completion_b, completion_o), (call_b, call_o)):
        assert _shape(mine) == _shape(theirs), (theirs, mine)  # llama-cpp-python's keys, all the way down
    assert chunks_o[0]["choices"][0]["delta"] == chunks_b[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert _shape(chunks_o[1]) == _shape(chunks_b[1]) and chunks_o[-1].pop("sia")
    assert chunks_o[-1]["choices"][0]["finish_reason"] in ("length", "stop") and _shape(chunks_o[-1]) == _shape(chunks_b[-1])


def test_arguments_it_cannot_honour_are_refused(tiny_gguf: Path, tiny_reward: Path) -> None:
    import llama_cpp

    from sia_local import steered
    from sia_local.errors import ConfigError

    llm = steered(llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=256, verbose=False), objective=str(tiny_reward), tau=1.0)
    messages = [{"role": "user", "content": "Hi"}]
    for bad in ({"mirostat_mode": 2}, {"typical_p": 0.5}, {"tfs_z": 0.9}, {"echo": True}, {"logits_processor": [print]}):
        with pytest.raises(ConfigError, match="is not supported"):
            llm.create_chat_completion(messages=messages, max_tokens=2, **bad) if "echo" not in bad else llm.create_completion("Hi", max_tokens=2, **bad)
    with pytest.raises(ConfigError, match="tools\\[0\\]"):  # a malformed tool is named
        llm.create_chat_completion(messages=messages, max_tokens=2, tools=[{}])
    with pytest.raises(ConfigError, match="not an argument"):
        llm.create_chat_completion(messages=messages, max_token=2)
    ok = llm.create_chat_completion(messages=messages, max_tokens=2, repeat_penalty=1.3, min_p=0.05, logit_bias={1: 5.0},
                                    typical_p=1.0, mirostat_mode=0)  # honoured, or refused ones at their defaults
    k = llm.steerer.config.top_k
    wide = llm.create_chat_completion(messages=messages, max_tokens=2, top_k=40, seed=4)  # llama-cpp-python's habitual top_k: a
    assert wide["sia"]["top_k"] == k  # truncation wider than SIA's k candidates changes nothing, and never becomes SIA's k
    narrow = llm.create_completion("Once", max_tokens=6, top_k=1, temperature=1.0, seed=4, min_p=0.0)  # top_k 1: greedy, whatever T
    llm.steerer.config = llm.steerer.config.replace(gate="none")  # the model's own greedy answer (steering may change a greedy pick)
    greedy = llm.create_completion("Once", max_tokens=6, temperature=0.0, seed=9, min_p=0.0)
    assert narrow["choices"][0]["text"] == greedy["choices"][0]["text"] and narrow["sia"]["top_k"] == k
    assert ok["choices"][0]["message"]["role"] == "assistant" and llm.n_ctx() == 256  # the Llama's own attributes pass through
    done = llm.create_completion("Once upon a time", max_tokens=5, logprobs=2)  # llama-cpp-python would need logits_all; we need not
    lp = done["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == done["usage"]["completion_tokens"] and all(p <= 0 for p in lp["token_logprobs"])


def test_structured_output_through_the_drop_in(tiny_gguf: Path, tiny_reward: Path) -> None:
    import llama_cpp

    from sia_local import steered

    llm = steered(llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=512, verbose=False), objective=str(tiny_reward), tau=1.0)
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"]}
    out = llm.create_chat_completion(messages=[{"role": "user", "content": "x"}], max_tokens=300,
                                     response_format={"type": "json_object", "schema": schema})  # llama-cpp-python's own shape
    assert 0 <= json.loads(out["choices"][0]["message"]["content"])["a"] <= 9
    grammar = llama_cpp.LlamaGrammar.from_string('root ::= "yes" | "no"', verbose=False)
    assert llm.create_completion("Answer:", grammar=grammar, max_tokens=5)["choices"][0]["text"] in ("yes", "no")
