"""Hypothesis strategies for bad input: request bodies for `sia serve` and rows for `sia batch`.

Shared by tests/test_fuzz.py (a short run in the suite) and scripts/check/fuzz_server.py (a long run against
a live server). Values come from three sources: any JSON at all (shapes, types, nesting, unicode),
request-shaped bodies whose fields take random values, and every `Setting`'s range edges (just inside,
on, just outside, wrong types), so each declared bound is hit on both sides.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from sia_local.core.config import settings
from sia_local.core.junction import gate_names

SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                        max_leaves=25)


def _edges(lo: float | None, hi: float | None, kind: Any) -> list[Any]:
    values: list[Any] = [0, 1, -1, 0.5, 2**63, -(2**63), 1e308, -1e308, math.inf, -math.inf, math.nan, "1", "", None, True, [], {}]
    for bound in (lo, hi):
        if bound is not None:
            values += [bound, bound - 1, bound + 1, bound - 1e-9, bound + 1e-9]
    if kind is int:
        values = [int(v) if isinstance(v, float) and math.isfinite(v) else v for v in values]
    return values


def _valid(name: str) -> st.SearchStrategy[Any]:
    """Values inside the setting's range (what a real client mostly sends), so requests reach the model too."""
    setting = dict(settings())[name]
    if setting.kind == "strs":
        return st.lists(st.text(min_size=1, max_size=8), max_size=4)
    if setting.kind == "bias":
        return st.dictionaries(st.integers(0, 300).map(str), st.floats(-100, 100), max_size=4)
    if setting.kind is str:
        return st.sampled_from(gate_names())
    if setting.kind is bool:
        return st.booleans()
    lo = setting.lo if setting.lo is not None else -50
    hi = setting.hi if setting.hi is not None else lo + 100
    if setting.kind is int:
        return st.integers(int(lo) + (1 if setting.lo_open else 0), int(min(hi, lo + 100)))
    return st.floats(lo, hi, exclude_min=setting.lo_open)


def setting_values(name: str) -> st.SearchStrategy[Any]:
    """Values for one setting: mostly inside its range, else its range edges, the wrong types, and anything at all."""
    setting = dict(settings())[name]
    if setting.kind == "strs":
        invalid = st.one_of(st.text(max_size=70), st.lists(st.text(max_size=70), max_size=7), ANY_JSON)
    elif setting.kind == "bias":
        invalid = st.one_of(st.dictionaries(st.text(max_size=5), SCALARS, max_size=3), ANY_JSON)
    elif setting.kind is str:
        invalid = st.one_of(st.sampled_from(["", "nope", "ENTROPY"]), ANY_JSON)
    else:
        invalid = st.one_of(st.sampled_from(_edges(setting.lo, setting.hi, setting.kind)), SCALARS)
    return mostly(_valid(name), invalid)


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any], share: int = 9) -> st.SearchStrategy[Any]:
    """`valid` share/10 of the time, else `invalid`: a body with several fields still reaches the model often."""
    return st.integers(0, 9).flatmap(lambda i: valid if i < share else invalid)


def _settings_object(api: str) -> st.SearchStrategy[dict[str, Any]]:
    names = {s.wire or name: name for name, s in settings() if s.api == api}  # a request's names (`top_k` for sample_top_k)
    return st.fixed_dictionaries({}, optional={wire: setting_values(name) for wire, name in names.items()})


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "", "x"]) | ANY_JSON},
                                optional={"content": st.text(max_size=60) | ANY_JSON | st.lists(st.fixed_dictionaries(
                                    {"type": st.sampled_from(["text", "image_url"]) | ANY_JSON}, optional={"text": SCALARS}), max_size=3)})


def request_bodies(chat: bool) -> st.SearchStrategy[Any]:
    """A body for /v1/chat/completions (chat) or /v1/completions: request-shaped most of the time, any JSON otherwise."""
    key = "messages" if chat else "prompt"
    if chat:
        valid = st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.text(min_size=1, max_size=60)}), min_size=1, max_size=3)
        main = mostly(valid, st.lists(MESSAGE, max_size=4) | ANY_JSON, 7)
    else:
        main = mostly(st.text(min_size=1, max_size=80), st.lists(st.text(max_size=20), max_size=3) | ANY_JSON, 7)
    extra = st.fixed_dictionaries({}, optional={
        "n": mostly(st.integers(1, 3), st.sampled_from([0, 16, 17, -1, 2**40, "2", None])),
        "stream": mostly(st.booleans(), SCALARS), "model": mostly(st.just("tiny"), SCALARS),
        "max_completion_tokens": mostly(st.integers(1, 8), SCALARS), "stream_options": mostly(st.just({"include_usage": True}), ANY_JSON)})
    shaped = st.builds(lambda base, openai, sia, more: {**base, **openai, **more, **({"sia": sia} if sia is not None else {})},
                       st.fixed_dictionaries({key: main}), _settings_object("openai"),
                       st.none() | mostly(_settings_object("sia"), ANY_JSON), extra)
    return mostly(shaped, ANY_JSON)


def batch_rows() -> st.SearchStrategy[Any]:
    """A JSON value for one line of a `sia batch` input: row-shaped most of the time."""
    shaped = st.builds(lambda base, openai, sia, system: {**base, **openai, **({"sia": sia} if sia is not None else {}),
                                                          **({"system": system} if system is not None else {})},
                       st.one_of(st.fixed_dictionaries({"prompt": st.text(max_size=40) | SCALARS}),
                                 st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=3) | SCALARS}),
                                 st.fixed_dictionaries({}, optional={"id": ANY_JSON})),
                       _settings_object("openai"),
                       st.none() | _settings_object("sia") | SCALARS,
                       st.none() | SCALARS)
    return st.one_of(shaped, shaped, ANY_JSON)
