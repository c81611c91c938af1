"""SIA inside code that already has a `llama_cpp.Llama`: `llm = sia_local.steered(llm, objective="kind", ratio=0.2)`.

The returned object answers `create_chat_completion`, `create_completion` and `__call__` with llama-cpp-python's
arguments and return shapes (a dict; with `stream=True` an iterator of chunk dicts), steered at junctions, with
the steering stats under "sia". It runs on the caller's own model and context (no second load), and every other
attribute is the Llama's own, so a script changes one line.

Arguments: `messages` / `prompt`, `max_tokens`, `temperature`, `top_p`, `stop`, `seed`, `stream`, `model`, the
logprobs ones (`logprobs`, `top_logprobs`: the base model's, as `sia serve` gives them), structured output
(`response_format`, `grammar`: applied before each junction, as everywhere), and `top_k` (SIA's k: the
candidates the entropy, the reward and the draw share; llama-cpp-python's default of 40 is not applied, the steered
object's k is). llama-cpp-python's defaults for temperature (0.2 in chat, 0.8 for completions), top_p (0.95) and
max_tokens hold. Any other argument (min_p, typical_p, repeat/presence/frequency penalties, mirostat, tfs_z,
logit_bias, logits_processor, tools, functions, suffix, echo, stopping_criteria) is accepted
only at its default value; anything else is refused with one line naming it, never silently ignored.
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
from .serve.openai_api import Logprobs, chunk_payload, finish_reason_of, full_response, usage_of

SUPPORTED = {"messages", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream", "model", "logprobs", "top_logprobs",
             "response_format", "grammar"}


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
            if name not in SUPPORTED and value != defaults[name]:
                raise ConfigError(f"sia_local.steered does not support {name}={value!r} (the steered draw is over SIA's top-k candidates)",
                                  f"drop {name}, or call the Llama itself for this request (.llm)")
        given = {**defaults, **kwargs}
        if not chat and isinstance(prompt, list):
            raise ConfigError("create_completion with a list of token ids is not supported by sia_local.steered", "pass the prompt as text")
        changes: dict[str, Any] = {"temperature": given["temperature"], "top_p": given["top_p"], "raw": not chat,
                                   "max_tokens": given["max_tokens"] or self.steerer.lm.n_ctx}
        stop = given.get("stop") or []
        changes["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if given.get("seed") is not None:
            changes["seed"] = given["seed"]
        k = self.steerer.config.top_k
        top_k = kwargs.get("top_k")
        if top_k is not None and 0 < int(top_k) < k:  # llama-cpp-python's top_k truncates the draw; SIA's k is steered()'s own setting
            raise ConfigError(f"top_k={top_k} would cut the draw below SIA's {k} candidates",
                              f"steer over {top_k} candidates with sia_local.steered(llm, top_k={top_k}), or drop top_k (40, 0 or >= {k} changes nothing)")
        changes["grammar"] = output_grammar(given.get("response_format"), given.get("grammar"))
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
            return self._chunks(prompt, changes, chat, rid, created, model, logprobs)
        generation = self.steerer.generate(prompt, **changes)
        out = full_response(rid, created, model, generation, chat, None, logprobs)
        del out["usage"]["sia"], out["usage"]["prompt_tokens_details"]  # llama-cpp-python's usage keys, no more
        out["sia"] = _sia_stats(generation)
        return out

    def _chunks(self, prompt: Any, changes: dict[str, Any], chat: bool, rid: str, created: int, model: str,
                logprobs: Logprobs | None) -> Iterator[dict[str, Any]]:
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
        last = chunk_payload(rid, created, model, chat, None if chat else "", finish_reason_of(generation))
        last["sia"] = _sia_stats(generation)
        yield last


def _sia_stats(generation: Generation) -> dict[str, Any]:
    """The steering stats beside llama-cpp-python's keys: the server's usage extras, cached prompt tokens included."""
    return {**usage_of(generation)["sia"], "cached_tokens": generation.stats.cached_tokens}
