"""SIA inside code that already has a `llama_cpp.Llama`: `llm = sia_local.steered(llm, objective="kind", ratio=0.2)`.

The returned object answers `create_chat_completion`, `create_completion` and `__call__` with llama-cpp-python's
arguments and return shapes (a dict; with `stream=True` an iterator of chunk dicts), steered at junctions, with
the steering stats under "sia". It runs on the caller's own model and context (no second load), and every other
attribute is the Llama's own, so a script changes one line.

Every argument of llama-cpp-python's two calls is in one table with the server's fields (`serve/fields.py`,
docs/server.md): the sampling ones (`temperature`, `top_p`, `top_k` as a truncation, `min_p`, `repeat_penalty`,
`frequency_penalty`, `presence_penalty`, `logit_bias`) act on the full-vocabulary logits before SIA's top-k;
`tools` / `tool_choice` (and `functions` / `function_call`) make calls constrained by each function's schema;
`response_format` / `grammar` constrain the answer; logprobs are the base model's. llama-cpp-python's defaults hold
(temperature 0.2 in chat and 0.8 for completions, top_p 0.95, min_p 0.05, top_k 40). The few it cannot honour
(typical_p, tfs_z, mirostat, suffix, echo, logits_processor, stopping_criteria) are accepted only at their
default; anything else is refused with one line naming it, never silently ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterator, Sequence

from .core.config import SteerConfig
from .core.generation import Generation
from .core.steer import Steerer
from .errors import ConfigError
from .llama import LM, completion_defaults
from .llama.grammar import response_format_grammar, schema_grammar
from .runtime import ScorerSettings, build_steerer, load_scorer
from .core.tools import ToolPlan, plan as plan_tools
from .serve.fields import DROPIN, check_field
from .serve.openai_api import Logprobs, call_delta, chunk_payload, finish_reason_of, full_response, tool_message, usage_of



def steered(llm: Any, objective: str | Sequence[str] = "kind", **settings: Any) -> "SteeredLlama":
    """`llm` (a `llama_cpp.Llama`) steered towards `objective`: a name from `sia reward list`, a reward folder, or
    several ("kind", "polite:0.5"); `settings` are `SteerConfig` fields (ratio, weight, gate, tau, top_k, ...). tau is
    calibrated for the model on first use (cached per model file), as `sia generate` does."""
    lm = LM.from_llama(llm)
    specs = [objective] if isinstance(objective, str) else list(objective)
    # _note says which scorer steers and why (the teacher where a head exists: this Llama has no hidden states)
    if len(specs) == 1 and ":" not in specs[0]:
        scorer = load_scorer(ScorerSettings(path=specs[0]), lm, note=_note)
    else:
        from .rewards.mix import parse_objective

        scorer = load_scorer(ScorerSettings(mix=tuple(parse_objective(s) for s in specs)), lm, note=_note)
    return SteeredLlama(llm, build_steerer(lm, scorer, SteerConfig().updated(**settings)))


def _note(message: str) -> None:
    import sys

    print(f"sia_local.steered: {message}", file=sys.stderr)


def output_grammar(response_format: Any, grammar: Any) -> str | None:
    """The GBNF of llama-cpp-python's structured-output arguments: a `LlamaGrammar`, or `response_format` in its shape
    ({"type": "json_object"}, optionally with "schema") or OpenAI's ({"type": "json_schema", "json_schema": {...}})."""
    if grammar is not None:
        text = getattr(grammar, "_grammar", None)
        if not isinstance(text, str):
            raise ConfigError("grammar must be a llama_cpp.LlamaGrammar", "build it with LlamaGrammar.from_string(...)")
        return text
    if isinstance(response_format, dict) and response_format.get("type") == "json_object" and "schema" in response_format:
        return schema_grammar(response_format["schema"], "response_format.schema")
    return response_format_grammar(response_format)


class SteeredLlama:
    """A `llama_cpp.Llama` whose completions are steered (see the module docstring); `.steerer` is the core underneath."""

    def __init__(self, llm: Any, steerer: Steerer) -> None:
        self.llm, self.steerer = llm, steerer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)  # tokenize, n_ctx, metadata, ...: the Llama's own

    def create_chat_completion(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        return self._create(messages, kwargs, chat=True)

    def create_completion(self, prompt: str, **kwargs: Any) -> Any:
        return self._create(prompt, kwargs, chat=False)

    __call__ = create_completion

    def _create(self, prompt: Any, kwargs: dict[str, Any], *, chat: bool) -> Any:
        method, defaults = completion_defaults(chat)
        for name, value in kwargs.items():
            if name not in defaults:
                raise ConfigError(f"{name} is not an argument of llama-cpp-python's {method}", "check the argument's name")
            check_field(name, value, DROPIN)  # refused ones, unless at their default (one line naming them)
        given = {**defaults, **kwargs}
        if not chat and isinstance(prompt, list):
            raise ConfigError("create_completion with a list of token ids is not supported by sia_local.steered", "pass the prompt as text")
        changes: dict[str, Any] = {"temperature": given["temperature"], "top_p": given["top_p"], "raw": not chat,
                                   "max_tokens": given["max_tokens"] or self.steerer.lm.n_ctx, "min_p": given["min_p"],
                                   "sample_top_k": max(int(given["top_k"] or 0), 0), "repeat_penalty": given["repeat_penalty"],
                                   "frequency_penalty": given["frequency_penalty"], "presence_penalty": given["presence_penalty"],
                                   "logit_bias": given.get("logit_bias") or ()}
        stop = given.get("stop") or []
        changes["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if given.get("seed") is not None:
            changes["seed"] = given["seed"]
        tools = plan_tools(given.get("tools"), given.get("tool_choice"), given.get("functions"), given.get("function_call")) if chat else None
        grammar = output_grammar(given.get("response_format"), given.get("grammar"))
        if tools is not None and tools.calls_possible:
            if grammar is not None:
                raise ConfigError("tools and response_format/grammar both constrain the answer", "pass one of them")
            changes.update(grammar=tools.grammar(), grammar_trigger=tools.trigger)
        else:
            changes["grammar"] = grammar
        if chat:  # earlier calls and tool results in the format calls are made in; the tools, for a template that renders them
            native = tools is not None and self.steerer.lm.renders_tools
            prompt = (tools or ToolPlan((), "none")).messages(prompt, native)
            if native and tools is not None:
                changes["tools"] = [{"type": "function", "function": f.signature()} for f in tools.offered()]
        if chat:  # chat: logprobs true + top_logprobs N; completions: logprobs N
            n = (given["top_logprobs"] or 0) if given["logprobs"] else None
        else:
            n = given["logprobs"]
        logprobs = Logprobs(self.steerer.lm.piece, int(n)) if n is not None else None
        if logprobs is not None:
            changes.update(logprobs=True, trace=True)
        rid = ("chatcmpl-" if chat else "cmpl-") + str(uuid.uuid4())
        created, model = int(time.time()), given.get("model") or self.llm.model_path
        if given["stream"]:
            return self._chunks(prompt, changes, chat, rid, created, model, logprobs, tools)
        generation = self.steerer.generate(prompt, **changes)
        out = full_response(rid, created, model, generation, chat, None, logprobs, tools)
        del out["usage"]["sia"], out["usage"]["prompt_tokens_details"]  # llama-cpp-python's usage keys, no more
        out["sia"] = _sia_stats(generation)
        return out

    def _chunks(self, prompt: Any, changes: dict[str, Any], chat: bool, rid: str, created: int, model: str,
                logprobs: Logprobs | None, tools: ToolPlan | None) -> Iterator[dict[str, Any]]:
        """llama-cpp-python's chunks: a chat stream opens with the role, each token's text follows, the last says why it ended."""
        if chat:
            first = chunk_payload(rid, created, model, chat, None, None, role=True)
            first["choices"][0]["delta"] = {"role": "assistant"}
            yield first
        stream = self.steerer.stream(prompt, **changes)
        seen, offset = None, 0
        for piece in stream:
            lp = None
            if logprobs is not None and piece.token is not seen:
                lp = logprobs.chat([piece.token]) if chat else logprobs.completion([piece.token], offset)
            seen, offset = piece.token, offset + len(piece.text)
            if piece.text or lp is not None:
                yield chunk_payload(rid, created, model, chat, piece.text, None, logprobs=lp)
        generation = stream.generation
        assert generation is not None
        finish = finish_reason_of(generation)
        if chat and tools is not None:  # a call comes whole once complete (the grammar held it back from the text)
            _, calls, finish = tool_message(generation, tools)
            if calls:
                call = chunk_payload(rid, created, model, chat, None, None)
                call["choices"][0]["delta"] = call_delta(calls)
                yield call
        last = chunk_payload(rid, created, model, chat, None if chat else "", finish)
        last["sia"] = _sia_stats(generation)
        yield last


def _sia_stats(generation: Generation) -> dict[str, Any]:
    """The steering stats beside llama-cpp-python's keys: the server's usage extras, cached prompt tokens included."""
    return {**usage_of(generation)["sia"], "cached_tokens": generation.stats.cached_tokens}
