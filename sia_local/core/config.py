"""Steering settings, declared once.

`SteerConfig` is the single source of every steering setting: each field carries its type, range,
default, unit and help in a `Setting`, and the CLI flags (`cli.steer_options`), the server's `sia`
request object (`server.SiaParams`), chat's slash commands and bench's arm changes are all derived
from it or validated by it. Names follow the paper (k, tau, ratio, w) and llama.cpp (top_k,
temperature, max_tokens).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from ..errors import ConfigError
from .junction import DEFAULT_GATE, DEFAULT_K, gate_names, gate_spec


STRENGTHS = ("junction", "reference")  # what a weight of 1 means (`core/strength.py`)
MAX_TOP_K = 64  # candidates per step: more is no longer "sparse" (a branch head has 63 branch sequences at most)


@dataclass(frozen=True)
class Setting:
    """How one `SteerConfig` field appears to users.

    Attributes:
        help: one line, with the unit.
        kind: the value's type: int, float, str, bool, "strs" (a repeatable string) or "bias" (token id -> bias pairs).
        flag: the CLI long flag; `short` its one-letter form; `aliases` more long forms.
        lo, hi: the allowed range (inclusive; `lo_open` makes the lower bound exclusive).
        max_items, max_len: for "strs", how many strings and how long each (OpenAI's limits for `stop`).
        api: where HTTP requests set it: "sia" (the `sia` extension object), "openai" (a top-level field of OpenAI's or
            llama.cpp's request, of the same meaning, declared by the server), or None.
        wire: the request's name for it when that differs from the field's (`sample_top_k` is a request's `top_k`: the
            caller's truncation, where SIA's own k is `sia.top_k`).
        chat: slash-command names in `sia chat` (first is the main one).
    """

    help: str
    kind: Any = float
    flag: str | None = None
    short: str | None = None
    aliases: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    max_items: int | None = None  # "strs": at most this many strings ...
    max_len: int | None = None  # ... each at most this many characters
    api: str | None = None
    wire: str | None = None
    chat: tuple[str, ...] = ()

    def place(self, name: str) -> str:
        """Where a request sets the field `name`: `sia.NAME`, its top-level wire name, or "" (nowhere)."""
        if self.api == "sia":
            return f"sia.{name}"
        return (self.wire or name) if self.api else ""

    def range_text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return ""


def _s(default: Any, setting: Setting, **kw: Any) -> Any:
    return field(default=default, metadata={"setting": setting}, **kw)


@dataclass(frozen=True)
class SteerConfig:
    """How to decode and where to steer. Every field's meaning, unit and range is in its `Setting`.

    gate: where to call the reward model (see `junction.gate_names()`); top_k: k, the candidate set for
    both the entropy and the reward; weight: w in s = z + w·r; temperature: T of the draw from
    softmax(s / T) (the entropy always uses T = 1); tau: the entropy threshold in nats; ratio: the
    target share of junction steps (tau is calibrated from it; the random gate uses it as its
    probability); first_n: steered steps of the first-n gate; trace / logprobs: keep per-token records /
    each token's log-probability under the base model (API only); grammar: GBNF that every token must
    keep valid (structured output), applied before top-k, so junctions choose among valid tokens.
    """

    gate: str = _s(DEFAULT_GATE, Setting("where to steer", str, "--gate", api="sia", chat=("gate",)))
    top_k: int = _s(DEFAULT_K, Setting("candidates per step, for the entropy and the reward", int, "--top-k", "-k", lo=1, hi=MAX_TOP_K, api="sia",
                                chat=("top-k", "topk", "k")))
    weight: float = _s(1.0, Setting("w in s = z + w*m*r (m: --strength; weight 1 means the same push for every objective)", float, "--weight", "-w", lo=-1000.0, hi=1000.0, api="sia", chat=("weight",)))
    temperature: float = _s(1.0, Setting("sampling temperature (0 = greedy); the entropy always uses T = 1", float, "--temperature",
                                         aliases=("--temp",), lo=0.0, hi=2.0, api="openai", chat=("temp", "temperature")))
    top_p: float = _s(1.0, Setting("nucleus sampling inside the k candidates (1 = off)", float, "--top-p", lo=0.0, hi=1.0, lo_open=True,
                                   api="openai", chat=("top-p",)))
    tau: float | None = _s(None, Setting("entropy threshold in nats (wins over --ratio)", float, "--tau", lo=0.0, api="sia", chat=("tau",)))
    ratio: float | None = _s(0.2, Setting("target share of junction steps; tau is calibrated per model (use --gate none for no steering)",
                                          float, "--ratio", lo=0.0, hi=1.0, lo_open=True, api="sia", chat=("ratio",)))
    first_n: int = _s(32, Setting("steered steps for the first-n gate", int, "--first-n", lo=0, api="sia", chat=("first-n",)))
    max_tokens: int = _s(256, Setting("most tokens to generate", int, "--max-tokens", "-n", lo=1, api="openai", chat=("max-tokens",)))
    seed: int | None = _s(None, Setting("sampler seed (the same seed gives the same text)", int, "--seed", lo=0, api="openai",
                                        chat=("seed",)))
    min_prob: float = _s(0.0, Setting("at a junction, score only candidates with base probability >= this x the top one's (at least 2; "
                                      "0 = all k): fewer branches, the rest keep their base logit and the lowest reward scored", float,
                                      "--min-prob", lo=0.0, hi=1.0, api="sia", chat=("min-prob",)))
    normalize: bool = _s(False, Setting("standardise the k rewards at each junction before weighting", bool, "--normalize", api="sia",
                                        chat=("normalize",)))
    strength: str = _s("junction", Setting("what a weight of 1 means: junction = the reward spreads a junction's candidates as much as "
                                           "the model's own logits do (measured once per model and objective, cached beside tau); "
                                           "reference = one spread of the objective over shipped reference answers (the raw scale)", str,
                                           "--strength", api="sia", chat=("strength",)))
    stop: tuple[str, ...] = _s((), Setting("stop string (repeatable, at most 4 of at most 64 characters)", "strs", "--stop", max_items=4,
                                           max_len=64, api="openai"))
    vector: str | None = _s(None, Setting("a control vector added to the model's middle layer: an objective's name or a .gguf file, "
                                          "with :scale (formal:1.5); free per token, the whole context's", str, "--vector", api="sia",
                                          chat=("vector",)))
    # The caller's sampling fields (llama.cpp's and OpenAI's): they act on the full-vocabulary logits before SIA's top-k,
    # the entropy, the junction and the reward (`core/penalties.py`), so a penalty changes which k tokens are scored.
    repeat_penalty: float = _s(1.0, Setting("divide the logit of tokens seen in the last --repeat-last-n tokens (multiply when negative) "
                                            "by this, before the top-k (1 = off)", float, "--repeat-penalty", lo=0.01, hi=10.0,
                                            api="openai", chat=("repeat-penalty",)))
    repeat_last_n: int = _s(64, Setting("tokens (prompt and answer) the penalties look back over", int, "--repeat-last-n", lo=0, hi=1 << 20,
                                        api="openai", chat=("repeat-last-n",)))
    frequency_penalty: float = _s(0.0, Setting("subtract this x a token's count in the last --repeat-last-n tokens from its logit, before the "
                                               "top-k", float, "--frequency-penalty", lo=-2.0, hi=2.0, api="openai", chat=("frequency-penalty",)))
    presence_penalty: float = _s(0.0, Setting("subtract this from the logit of every token seen in the last --repeat-last-n tokens, before "
                                              "the top-k", float, "--presence-penalty", lo=-2.0, hi=2.0, api="openai", chat=("presence-penalty",)))
    min_p: float = _s(0.0, Setting("drop tokens with probability below this x the top token's, before the top-k (0 = off)", float, "--min-p",
                                   lo=0.0, hi=1.0, api="openai", chat=("min-p",)))
    sample_top_k: int = _s(0, Setting("the caller's top-k truncation: at most this many candidates (0 = off; below k it narrows SIA's k "
                                      "candidates, at or above k it changes nothing)", int, "--sample-top-k", lo=0, hi=1 << 20, api="openai",
                                      wire="top_k", chat=("sample-top-k",)))
    logit_bias: tuple[tuple[int, float], ...] = _s((), Setting("add BIAS to token ID's logit before the top-k (repeatable ID=BIAS; "
                                                               "-100 bans it)", "bias", "--logit-bias", lo=-100.0, hi=100.0, max_items=1024,
                                                               api="openai"))
    trace: bool = False
    logprobs: bool = False
    grammar: str | None = None  # GBNF text: only tokens it allows are candidates (`--grammar`, `--json-schema`, `response_format`)
    grammar_trigger: str | None = None  # with a grammar: it applies once the answer opens with this text ("" = from the first token; tool calls)
    steer_arguments: bool = False  # junctions inside a tool call too (`sia.steer_arguments`); by default a call is the grammar's and the model's

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # one stop string, or a list of them (JSON has no tuples)
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "logit_bias", bias_pairs(self.logit_bias))
        for name, setting in settings():
            _check(name, setting, getattr(self, name))
        if self.gate not in gate_names():
            raise ConfigError(f"`gate` must be one of {', '.join(gate_names())}, got {self.gate!r}", "fix --gate", api_hint="fix `sia.gate`")
        if self.strength not in STRENGTHS:
            raise ConfigError(f"`strength` must be one of {', '.join(STRENGTHS)}, got {self.strength!r}", "fix --strength",
                              api_hint="fix `sia.strength`")
        spec = gate_spec(self.gate)
        assert spec is not None
        if spec.uses_tau and self.tau is None and self.ratio is None:
            raise ConfigError(f"the {self.gate} gate needs `tau` or `ratio`", "pass --tau or --ratio", api_hint="set `sia.ratio` or `sia.tau`")
        if spec.uses_ratio and self.ratio is None:
            raise ConfigError(f"the {self.gate} gate needs `ratio`", "pass --ratio", api_hint="set `sia.ratio`")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    def replace(self, **changes: Any) -> "SteerConfig":
        """A copy with some fields changed, exactly as given (validated again)."""
        return dataclasses.replace(self, **changes)

    def updated(self, **changes: Any) -> "SteerConfig":
        """A copy with the settings a user gave (None = not given, skipped); validated again.

        The rules between settings live here, and only here: an explicit ratio clears tau unless tau is
        given too (then tau wins); a ratio or a tau given while the gate is "none" (and no gate is given)
        asks for steering, so the gate becomes the default one (`junction.DEFAULT_GATE`). The CLI, the server, batch rows, chat and bench
        all change settings through it.
        """
        given = {k: v for k, v in changes.items() if v is not None}
        if given.get("ratio") is not None and "tau" not in given:
            given["tau"] = None
        if "gate" not in given and self.gate == "none" and (given.get("ratio") is not None or given.get("tau") is not None):
            given["gate"] = DEFAULT_GATE
        return dataclasses.replace(self, **given) if given else self

    def steers(self) -> bool:
        """Whether this gate can mark junctions (so a reward model is needed)."""
        spec = gate_spec(self.gate)
        return bool(spec and spec.steers)

    def needs_tau(self) -> bool:
        """Whether tau must be calibrated from `ratio` before decoding."""
        spec = gate_spec(self.gate)
        return bool(spec and spec.uses_tau and self.tau is None)


def settings() -> Iterator[tuple[str, Setting]]:
    """(field name, Setting) for every user-facing field of SteerConfig."""
    for f in dataclasses.fields(SteerConfig):
        setting = f.metadata.get("setting")
        if setting is not None:
            yield f.name, setting


def request_changes(fields: Mapping[str, Any], sia: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """SteerConfig changes from a request in the OpenAI shape: its top-level fields that a Setting marks
    `api="openai"` (`max_completion_tokens` is OpenAI's newer name for `max_tokens`) and its `sia` object.
    The server and `sia batch` rows both go through here; values are checked by SteerConfig itself."""
    wire = {setting.wire or name: name for name, setting in settings() if setting.api == "openai"}
    out = {wire[k]: v for k, v in fields.items() if k in wire and v is not None}
    if fields.get("max_completion_tokens") is not None:
        out["max_tokens"] = fields["max_completion_tokens"]
    if fields.get("response_format") is not None:  # structured output: OpenAI's shape -> the grammar the loop applies
        from ..llama.grammar import response_format_grammar

        out["grammar"] = response_format_grammar(fields["response_format"])
    if sia:
        out.update({k: v for k, v in sia.items() if v is not None})  # None = not given; `updated` applies "a ratio clears tau"
    return out


def bias_pairs(value: Any) -> tuple[tuple[int, float], ...]:
    """A logit bias as sorted (token id, bias) pairs, from OpenAI's {"id": bias}, llama-cpp-python's {id: bias}, pairs, or
    the CLI's "ID=BIAS" strings. One line when a key is not a token id or a bias not a finite number."""
    if value is None:
        return ()
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = [tuple(v.split("=", 1)) if isinstance(v, str) and "=" in v else v for v in value]
    else:
        raise ConfigError(f"`logit_bias` must map token ids to biases, got {value!r}"[:200], "fix --logit-bias ID=BIAS",
                          api_hint="send logit_bias as {\"token id\": bias}")
    out: dict[int, float] = {}
    for item in items:
        try:
            token, bias = item
            if isinstance(token, bool) or isinstance(bias, bool):
                raise ValueError
            token_id, b = int(str(token).strip()), float(bias)
        except (TypeError, ValueError):
            raise ConfigError(f"`logit_bias` entry {item!r} is not a token id and a bias"[:200], "fix --logit-bias ID=BIAS",
                              api_hint="send logit_bias as {\"token id\": bias}") from None
        if token_id < 0 or not math.isfinite(b):
            raise ConfigError(f"`logit_bias` entry {item!r} needs a token id >= 0 and a finite bias"[:200], "fix --logit-bias ID=BIAS",
                              api_hint="fix logit_bias in the request")
        out[token_id] = b
    return tuple(sorted(out.items()))


def setting_default(name: str) -> Any:
    f = next(f for f in dataclasses.fields(SteerConfig) if f.name == name)
    return f.default


def nullable(name: str) -> bool:
    """Whether a setting may be cleared (its type admits None: tau, ratio, seed)."""
    f = next(f for f in dataclasses.fields(SteerConfig) if f.name == name)
    return "None" in str(f.type)


def parse_value(name: str, text: str) -> Any:
    """A setting's value from text (chat's slash commands); "none" clears an optional one.

    Raises ValueError when the text is not of the setting's kind (range checks are SteerConfig's).
    """
    setting = dict(settings())[name]
    text = text.strip()
    if text.lower() == "none" and nullable(name):
        return None
    if setting.kind is bool:
        if text.lower() in ("", "1", "on", "true", "yes"):
            return True
        if text.lower() in ("0", "off", "false", "no"):
            return False
        raise ValueError(f"on or off, got {text!r}")
    if setting.kind in (int, float):
        try:
            return setting.kind(text)
        except ValueError:
            raise ValueError(f"a number, got {text!r}") from None
    if setting.kind == "strs":
        return tuple(s for s in text.split("|") if s)
    if setting.kind == "bias":
        return bias_pairs(text.split())
    return text


def _check(name: str, setting: Setting, value: Any) -> None:
    if value is None:
        return
    api = f"`sia.{name}`" if setting.api == "sia" else f"`{name}`"
    hint, api_hint = f"fix {setting.flag}", f"fix {api} in the request"
    if setting.kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{name}` must be a string, got {value!r}", hint, api_hint=api_hint)
        return
    if setting.kind == "strs":
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"`{name}` must be a string or a list of strings, got {value!r}", hint, api_hint=api_hint)
        if setting.max_items is not None and len(value) > setting.max_items:
            raise ConfigError(f"`{name}` has {len(value)} strings; at most {setting.max_items} are allowed", hint, api_hint=api_hint)
        long = [v for v in value if setting.max_len is not None and len(v) > setting.max_len]
        if long:
            raise ConfigError(f"`{name}` has a string of {len(long[0])} characters; at most {setting.max_len} are allowed", hint, api_hint=api_hint)
        return
    if setting.kind == "bias":
        if setting.max_items is not None and len(value) > setting.max_items:
            raise ConfigError(f"`{name}` has {len(value)} entries; at most {setting.max_items} are allowed", hint, api_hint=api_hint)
        for token, bias in value:
            if not setting.lo <= bias <= setting.hi:  # type: ignore[operator]
                raise ConfigError(f"`{name}` gives token {token} the bias {bias}; biases must be in {setting.range_text()}", hint,
                                  api_hint=api_hint)
        return
    if setting.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{name}` must be true or false, got {value!r}", hint, api_hint=api_hint)
        return
    if setting.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"`{name}` must be an integer, got {value!r}", hint, api_hint=api_hint)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"`{name}` must be a finite number, got {value!r}", hint, api_hint=api_hint)
    lo_bad = setting.lo is not None and (value <= setting.lo if setting.lo_open else value < setting.lo)
    hi_bad = setting.hi is not None and value > setting.hi
    if lo_bad or hi_bad:
        raise ConfigError(f"`{name}` must be {'in ' if setting.hi is not None else ''}{setting.range_text()}, got {value}", hint, api_hint=api_hint)
