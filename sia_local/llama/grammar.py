"""Structured output: llama.cpp's grammar sampler, applied to a step's logits before the junction.

`Grammar(lm, gbnf)` holds one sequence's grammar state. `mask(logits)` gives the logits with every token the
grammar forbids at -inf, so top-k and the entropy are taken over the allowed tokens and the reward chooses
only among valid continuations; `accept(token)` advances the grammar. The grammar is checked on the step's
most likely tokens first (a few hundred checks), then a few thousand while fewer than k are allowed, and the
whole vocabulary only when none of those is. JSON schemas and OpenAI's `response_format` become GBNF with
llama-cpp-python's converter (`response_format_grammar`).

Bounded repetitions (`maxLength`, `maxItems`, a pattern's `{m,n}`) are written as GBNF's `x{m,n}`, which
llama.cpp's parser expands itself and caps at `REPETITION_LIMIT`: llama-cpp-python's converter writes them as
parentheses nested n deep, which llama.cpp's parser refuses from ~1,100 and, past a few thousand, recurses
until the process dies. Bounds above `REPETITION_LIMIT` are refused with one line naming the key, and a user's own GBNF
nested deeper than `NESTING_LIMIT` is refused before llama.cpp reads it.
"""

from __future__ import annotations

import ctypes
import json
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError

FIRST_LOOK = 256  # the likeliest tokens checked first
WIDE_LOOK = 4096  # then these, before the whole vocabulary


def response_format_grammar(value: Any) -> str | None:
    """GBNF for OpenAI's `response_format`: {"type": "json_object"} (any JSON object), {"type": "json_schema",
    "json_schema": {"schema": {...}}} (that schema), {"type": "text"} (None: no grammar). One line when malformed."""
    from llama_cpp import llama_grammar

    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return llama_grammar.JSON_GBNF
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ConfigError("response_format.json_schema.schema must be a JSON schema object", "send {\"type\": \"json_schema\", "
                              "\"json_schema\": {\"name\": ..., \"schema\": {...}}}", api_hint="fix response_format.json_schema.schema")
        return schema_grammar(schema, "response_format.json_schema.schema")
    raise ConfigError(f"response_format type {kind!r} is not one of text, json_object, json_schema", "fix response_format",
                      api_hint="use response_format {\"type\": \"json_object\"} or {\"type\": \"json_schema\", ...}")


REPETITION_LIMIT = 1000  # the largest {m,n} llama.cpp's GBNF parser takes in every position (its cap, 2000, counts a group's
# repetitions together with the ones around it: a pattern's (ab|c){1,1001} is refused, an array's 1,999 items pass)
NESTING_LIMIT = 256  # parentheses a GBNF may nest (llama.cpp's parser recurses once a level, with no limit of its own)
REPEATED = ("minLength", "maxLength", "minItems", "maxItems")
ENUM_RANGE = 1000  # an integer range up to this size becomes an enum of its values (the converter ignores minimum/maximum)
UNENFORCED = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
NAMED = ("properties", "$defs", "definitions", "patternProperties")  # name -> schema maps: their keys are names, not keywords


def enforceable(schema: Any, where: str) -> Any:
    """`schema` with what llama-cpp-python's converter would silently ignore made explicit: a bounded integer range
    becomes an enum of its values; any other numeric bound is refused (one line naming it), never left unenforced."""
    if isinstance(schema, list):
        return [enforceable(v, f"{where}[{i}]") for i, v in enumerate(schema)]
    if not isinstance(schema, dict):
        return schema
    out = {k: ({name: enforceable(sub, f"{where}.{k}.{name}") for name, sub in v.items()} if k in NAMED and isinstance(v, dict)
               else enforceable(v, f"{where}.{k}")) for k, v in schema.items()}
    lo, hi = out.get("minimum"), out.get("maximum")
    if out.get("type") == "integer" and isinstance(lo, int) and isinstance(hi, int) and 0 <= hi - lo < ENUM_RANGE and not (
            set(out) & {"exclusiveMinimum", "exclusiveMaximum", "multipleOf"}):
        out = {k: v for k, v in out.items() if k not in ("type", "minimum", "maximum")}
        out["enum"] = list(range(lo, hi + 1))
    for key in REPEATED:
        value = out.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > REPETITION_LIMIT:
            raise ConfigError(f"{where}.{key} is {value}, above the {REPETITION_LIMIT} repetitions a grammar can bound", f"lower {key} to "
                              f"{REPETITION_LIMIT} or less, or drop it (max_tokens bounds the answer anyway)",
                              api_hint=f"lower {where}.{key} to {REPETITION_LIMIT} or less")
    bound = [k for k in UNENFORCED if k in out and out.get("type") in ("integer", "number", None)]
    if bound:
        raise ConfigError(f"{where} uses {', '.join(bound)}, which the grammar cannot enforce (only integer ranges of fewer than "
                          f"{ENUM_RANGE} values can be)", "use an integer range or an enum, or drop the bound",
                          api_hint=f"use an integer range or an enum in {where}")
    return out


def schema_grammar(schema: Any, where: str) -> str:
    """GBNF for a JSON schema (llama-cpp-python's converter, after `enforceable`, its repetitions bounded the way
    llama.cpp bounds them); one line naming `where` when it cannot convert it."""
    from llama_cpp import llama_grammar

    schema = enforceable(schema, where)
    try:
        with _bounded_repetitions(llama_grammar):
            gbnf = str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except ConfigError as exc:  # a pattern's {m,n} past the limit
        raise ConfigError(f"{where}: {exc.message}", exc.hint, api_hint=f"fix {where}: {exc.api_hint}") from None
    except Exception as exc:  # the converter raises whatever it meets (KeyError, ValueError, RecursionError, ...)
        raise ConfigError(f"{where} is not a JSON schema llama.cpp's converter understands ({type(exc).__name__}: {exc})"[:300],
                          "simplify the schema (types, properties, required, enum, arrays)", api_hint=f"fix {where}") from None
    # the converter's string character admits control characters, which JSON forbids unescaped (json.loads refuses them)
    return gbnf.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')


_CONVERTER_LOCK = threading.Lock()


@contextmanager
def _bounded_repetitions(module: Any) -> Iterator[None]:
    """While converting: the converter's repetition writer replaced by `repetition` (the same language, spelt so that
    llama.cpp's parser bounds it). Restored after; a lock keeps two conversions from interleaving the swap."""
    with _CONVERTER_LOCK:
        saved = module._build_repetition
        module._build_repetition = repetition
        try:
            yield
        finally:
            module._build_repetition = saved


def repetition(item: str, lo: int, hi: int | None, separator_rule: str | None = None, item_rule_is_literal: bool = False) -> str:
    """GBNF for `lo` to `hi` (None: any number) of `item`, separated by `separator_rule`: llama-cpp-python's
    `_build_repetition` signature, written with `{m,n}` (llama.cpp expands it without recursing)."""
    if max(lo, hi or 0) > REPETITION_LIMIT:
        raise ConfigError(f"a repetition of {lo} to {hi} is above the {REPETITION_LIMIT} a grammar can bound",
                          f"use at most {REPETITION_LIMIT} repetitions", api_hint=f"use at most {REPETITION_LIMIT} repetitions")
    if hi is not None and hi < lo:
        raise ConfigError(f"a repetition of {lo} to {hi} allows nothing", "make the upper bound at least the lower one",
                          api_hint="make the upper bound at least the lower one")
    if not separator_rule:
        return f"({item}){_quantifier(lo, hi)}"
    if hi == 0:
        return ""
    rest = f"({separator_rule} {item}){_quantifier(max(lo - 1, 0), None if hi is None else hi - 1)}"
    return f"{item} {rest}" if lo > 0 else f"({item} {rest})?"


def _quantifier(lo: int, hi: int | None) -> str:
    if hi is None:
        return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    if (lo, hi) == (0, 1):
        return "?"
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


def check_nesting(gbnf: str, where: str = "the grammar") -> None:
    """Refuse (one line) a GBNF nested deeper than NESTING_LIMIT parentheses: llama.cpp's parser would recurse
    once a level until the process dies. Quoted strings and character classes are skipped."""
    depth = deepest = 0
    for ch in _outside_literals(gbnf):
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    if deepest > NESTING_LIMIT:
        raise ConfigError(f"{where} nests parentheses {deepest} deep, more than the {NESTING_LIMIT} allowed", "write repetitions as "
                          "x{m,n} rather than nested optional groups", api_hint=f"nest {where} at most {NESTING_LIMIT} deep")


def _outside_literals(gbnf: str) -> Iterator[str]:
    """The characters of `gbnf` outside "..." strings, [...] classes and # comments."""
    i, n = 0, len(gbnf)
    while i < n:
        ch = gbnf[i]
        if ch in "\"[":
            close = '"' if ch == '"' else "]"
            i += 1
            while i < n and gbnf[i] != close:
                i += 2 if gbnf[i] == "\\" else 1
        elif ch == "#":
            while i < n and gbnf[i] != "\n":
                i += 1
        else:
            yield ch
        i += 1


class Grammar:
    """One sequence's grammar over `lm`'s vocabulary (see the module docstring)."""

    def __init__(self, lm: Any, gbnf: str) -> None:
        import llama_cpp

        self._lib = llama_cpp
        check_nesting(gbnf)
        self._sampler = llama_cpp.llama_sampler_init_grammar(lm._vocab, gbnf.encode("utf-8"), b"root")
        if not self._sampler:
            raise ConfigError("the grammar does not parse (llama.cpp's GBNF parser refused it)", "check the grammar file (GBNF, a `root` rule)",
                              api_hint="fix the grammar or response_format")
        self.n_vocab = lm.n_vocab
        self._cells = np.zeros(self.n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])

    def _apply(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The grammar's verdict on tokens `ids`: their logits, -inf where forbidden."""
        n = len(ids)
        cells = self._cells[:n]
        cells["id"], cells["logit"], cells["p"] = ids, logits[ids], 0.0
        data = cells.ctypes.data_as(ctypes.POINTER(self._lib.llama_token_data))
        array = self._lib.llama_token_data_array(data, n, -1, False)
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(array))
        return cells["logit"].astype(np.float32)

    def mask(self, logits: np.ndarray, k: int) -> np.ndarray:
        """(n_vocab,) logits with the tokens the grammar forbids at -inf (a copy). The likeliest FIRST_LOOK tokens are
        checked first; while fewer than k of them are allowed, the likeliest WIDE_LOOK; the whole vocabulary only when
        none of those is allowed. So a structural JSON step (one or two tokens allowed) costs a few thousand checks, not
        128k-262k; what it leaves out are allowed tokens ranked below WIDE_LOOK, whose share of the mass is nil."""
        for look in (max(FIRST_LOOK, 4 * k), WIDE_LOOK, self.n_vocab):
            look = min(look, self.n_vocab)
            out = np.full(self.n_vocab, -np.inf, dtype=np.float32)
            ids = np.argpartition(-logits, look - 1)[:look] if look < self.n_vocab else np.arange(self.n_vocab)
            out[ids] = self._apply(ids.astype(np.int32), logits)
            allowed = int(np.isfinite(out[ids]).sum())
            if look >= self.n_vocab or allowed >= k or (allowed and look >= WIDE_LOOK):
                return out
        return out

    def allows(self, token: int) -> bool:
        """Whether the grammar allows `token` next (accepting a token it forbids would abort the process)."""
        return bool(np.isfinite(self._apply(np.array([token], dtype=np.int32), np.zeros(int(token) + 1, dtype=np.float32))[0]))

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._sampler, int(token))

    def close(self) -> None:
        if self._sampler:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:
        self.close()
