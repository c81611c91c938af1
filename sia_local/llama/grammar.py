"""Structured output: llama.cpp's grammar sampler, applied to a step's logits before the junction.

`Grammar(lm, gbnf)` holds one sequence's grammar state. `mask(logits)` gives the logits with every token the
grammar forbids at -inf, so top-k and the entropy are taken over the allowed tokens and the reward chooses
only among valid continuations; `accept(token)` advances the grammar. The grammar is checked on the step's
most likely tokens first (a few hundred checks), and on the whole vocabulary only when fewer than k of those
are allowed, as llama.cpp's own sampling does. JSON schemas and OpenAI's `response_format` become GBNF with
llama-cpp-python's converter (`response_format_grammar`).
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

import numpy as np

from ..errors import ConfigError

FIRST_LOOK = 256  # the likeliest tokens checked before the whole vocabulary


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
    bound = [k for k in UNENFORCED if k in out and out.get("type") in ("integer", "number", None)]
    if bound:
        raise ConfigError(f"{where} uses {', '.join(bound)}, which the grammar cannot enforce (only integer ranges of fewer than "
                          f"{ENUM_RANGE} values can be)", "use an integer range or an enum, or drop the bound",
                          api_hint=f"use an integer range or an enum in {where}")
    return out


def schema_grammar(schema: Any, where: str) -> str:
    """GBNF for a JSON schema (llama-cpp-python's converter, after `enforceable`); one line naming `where` when it
    cannot convert it."""
    from llama_cpp import llama_grammar

    schema = enforceable(schema, where)
    try:
        gbnf = str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises whatever it meets (KeyError, ValueError, RecursionError, ...)
        raise ConfigError(f"{where} is not a JSON schema llama.cpp's converter understands ({type(exc).__name__}: {exc})"[:300],
                          "simplify the schema (types, properties, required, enum, arrays)", api_hint=f"fix {where}") from None
    # the converter's string character admits control characters, which JSON forbids unescaped (json.loads refuses them)
    return gbnf.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')


class Grammar:
    """One sequence's grammar over `lm`'s vocabulary (see the module docstring)."""

    def __init__(self, lm: Any, gbnf: str) -> None:
        import llama_cpp

        self._lib = llama_cpp
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
        """(n_vocab,) logits with the tokens the grammar forbids at -inf (a copy; checks the likeliest first)."""
        out = np.full(self.n_vocab, -np.inf, dtype=np.float32)
        look = min(self.n_vocab, max(FIRST_LOOK, 4 * k))
        ids = np.argpartition(-logits, look - 1)[:look] if look < self.n_vocab else np.arange(self.n_vocab)
        out[ids] = self._apply(ids.astype(np.int32), logits)
        if np.isfinite(out[ids]).sum() < k and look < self.n_vocab:  # too few allowed among the likeliest: ask about every token
            every = np.arange(self.n_vocab, dtype=np.int32)
            out = self._apply(every, logits)
        return out

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._sampler, int(token))

    def close(self) -> None:
        if self._sampler:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:
        self.close()
