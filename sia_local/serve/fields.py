"""Every request field of OpenAI's API, llama.cpp's server and llama-cpp-python's `create_*` calls, and what happens to it.

One table for the server's two endpoints and the drop-in (`sia_local.steered`), so a field is never honoured in one
interface and ignored in another: `honoured` fields do what the caller's API says; `no effect` fields are taken and
change nothing an answer depends on (said here and in docs/server.md); `refused` fields are refused with one line
naming them unless they hold their default. A field in no row is refused as unknown. docs/server.md's table is
this one (a test compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

SERVER, DROPIN = "server", "llama-cpp-python"
_NO_DEFAULT = object()


@dataclass(frozen=True)
class Field:
    name: str
    where: tuple[str, ...]  # SERVER and/or DROPIN
    fate: str  # "honoured", "no effect" or "refused"
    what: str  # what happens to it, one line
    default: Any = _NO_DEFAULT  # refused fields: the value that is still accepted (None always is)


_BOTH = (SERVER, DROPIN)
FIELDS: tuple[Field, ...] = (
    Field("messages", _BOTH, "honoured", "the conversation (chat), rendered by the model's chat template; `role: tool` results continue it"),
    Field("prompt", _BOTH, "honoured", "the text (completions); a list of strings is joined on the server"),
    Field("model", _BOTH, "honoured", "any name is answered by the model served, and `model` in the answer says which (`--strict-model`: 404 on another)"),
    Field("max_tokens", _BOTH, "honoured", "most tokens to generate"),
    Field("max_completion_tokens", (SERVER,), "honoured", "OpenAI's newer name for max_tokens"),
    Field("temperature", _BOTH, "honoured", "T of the draw over the candidates (the entropy always uses T = 1)"),
    Field("top_p", _BOTH, "honoured", "nucleus sampling over the candidates"),
    Field("top_k", _BOTH, "honoured", "a truncation, before SIA's k: below k it narrows the candidates, at or above k it changes nothing "
                                      "(SIA's own k is `sia.top_k`; in the drop-in `steered(llm, top_k=...)`)"),
    Field("min_p", _BOTH, "honoured", "drops tokens below min_p x the top one's probability, before the top-k (llama-cpp-python's default 0.05 "
                                      "holds in the drop-in)"),
    Field("repeat_penalty", _BOTH, "honoured", "llama.cpp's repetition penalty, on the full-vocabulary logits before the top-k"),
    Field("repeat_last_n", (SERVER,), "honoured", "tokens the penalties look back over (llama.cpp's server's field; default 64)"),
    Field("frequency_penalty", _BOTH, "honoured", "minus the penalty x the token's count, on the full-vocabulary logits before the top-k"),
    Field("presence_penalty", _BOTH, "honoured", "minus the penalty for every token seen, on the full-vocabulary logits before the top-k"),
    Field("logit_bias", _BOTH, "honoured", "added to the tokens' logits before the top-k (-100 bans a token)"),
    Field("stop", _BOTH, "honoured", "up to 4 stop strings"),
    Field("seed", _BOTH, "honoured", "the same seed gives the same answer, whatever else the server runs"),
    Field("stream", _BOTH, "honoured", "chunks as tokens are chosen (not with n > 1)"),
    Field("stream_options", (SERVER,), "honoured", "`include_usage`: a last chunk with the usage and the steering stats"),
    Field("n", (SERVER,), "honoured", "n choices: with a reward model, Best-of-N's n samples ranked best first (`sia_score`); without one, "
                                      "n independent samples (seeds seed .. seed + n - 1)"),
    Field("logprobs", _BOTH, "honoured", "the base model's log-probabilities (full vocabulary, after penalties and bias), and `sia.draw_logprob`"),
    Field("top_logprobs", _BOTH, "honoured", "alternatives per token, at most the k candidates"),
    Field("response_format", _BOTH, "honoured", "json_object / json_schema: a grammar every token keeps valid"),
    Field("grammar", _BOTH, "honoured", "GBNF text (llama.cpp's server) or a LlamaGrammar (llama-cpp-python)"),
    Field("tools", _BOTH, "honoured", "function calling: calls are constrained by a grammar from each function's schema"),
    Field("tool_choice", _BOTH, "honoured", "auto, none, required, or a named function"),
    Field("parallel_tool_calls", (SERVER,), "honoured", "false: at most one call an answer (default: up to 8)"),
    Field("functions", _BOTH, "honoured", "the older form of tools: the answer carries `function_call`"),
    Field("function_call", _BOTH, "honoured", "the older form of tool_choice"),
    Field("sia", (SERVER,), "honoured", "steering settings and objectives (the `sia` object)"),
    Field("user", (SERVER,), "no effect", "taken and not used"),
    Field("metadata", (SERVER,), "no effect", "taken and not stored"),
    Field("store", (SERVER,), "no effect", "nothing is stored"),
    Field("service_tier", (SERVER,), "no effect", "one tier"),
    Field("cache_prompt", (SERVER,), "no effect", "the prompt prefix is always reused (llama.cpp's server's field)"),
    Field("mirostat_tau", _BOTH, "no effect", "only mirostat reads it, and mirostat is refused"),
    Field("mirostat_eta", _BOTH, "no effect", "only mirostat reads it, and mirostat is refused"),
    Field("typical_p", _BOTH, "refused", "locally typical sampling is not applied before the top-k", 1.0),
    Field("tfs_z", _BOTH, "refused", "tail-free sampling is not applied before the top-k", 1.0),
    Field("mirostat_mode", (DROPIN,), "refused", "mirostat sets its own candidates, which SIA's top-k replaces", 0),
    Field("mirostat", (SERVER,), "refused", "mirostat sets its own candidates, which SIA's top-k replaces", 0),
    Field("suffix", _BOTH, "refused", "insertion (fill-in-the-middle) is not supported", None),
    Field("echo", _BOTH, "refused", "the prompt is not echoed", False),
    Field("best_of", (SERVER,), "refused", "use n (Best-of-N by the reward model)", 1),
    Field("logits_processor", (DROPIN,), "refused", "Python processors would run per token outside the steering loop", None),
    Field("stopping_criteria", (DROPIN,), "refused", "use stop strings or max_tokens", None),
    Field("modalities", (SERVER,), "refused", "text only", ["text"]),
    Field("audio", (SERVER,), "refused", "text only", None),
    Field("prediction", (SERVER,), "refused", "predicted outputs are not supported", None),
    Field("reasoning_effort", (SERVER,), "refused", "not a reasoning model setting here", None),
    Field("web_search_options", (SERVER,), "refused", "no web access", None),
)
BY_NAME = {f.name: f for f in FIELDS}


def check_field(name: str, value: Any, where: str) -> None:
    """Refuse (one line naming it) a field that `where` does not honour: unknown, or refused and not at its default."""
    field = BY_NAME.get(name)
    if field is None or where not in field.where:
        raise ConfigError(f"{name} is not a field sia-local knows (docs/server.md lists every field and what happens to it)",
                          f"drop {name}", api_hint=f"drop {name}")
    if field.fate == "refused" and value is not None and value != field.default:
        raise ConfigError(f"{name}={value!r} is not supported: {field.what}"[:300], f"drop {name}, or set it to {field.default!r}",
                          api_hint=f"drop {name}, or send {field.default!r}")


def table() -> str:
    """The Markdown table in docs/server.md."""
    rows = ["| field | where | what happens |", "| --- | --- | --- |"]
    for f in FIELDS:
        fate = "" if f.fate == "honoured" else f"**{f.fate}**{'' if f.default is _NO_DEFAULT else f' (unless {f.default!r})'}: "
        rows.append(f"| `{f.name}` | {', '.join(f.where)} | {fate}{f.what} |")
    return "\n".join(rows)
