from __future__ import annotations

import pytest

from sia_local.config import SteerConfig
from sia_local.errors import ConfigError


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"top_k": 0}, "--top-k"),
        ({"ratio": 1.5}, "--ratio"),
        ({"weight": float("nan")}, "--weight"),
        ({"weight": float("inf")}, "--weight"),
        ({"temperature": -1.0}, "--temperature"),
        ({"tau": -0.1}, "--tau"),
        ({"gate": "sometimes"}, "--gate"),
        ({"max_tokens": 0}, "--max-tokens"),
        ({"gate": "random", "ratio": None}, "--ratio"),
    ],
)
def test_bad_settings_name_the_flag(changes: dict, flag: str) -> None:
    with pytest.raises(ConfigError) as err:
        SteerConfig(**changes)
    assert flag in str(err.value)
    assert "\n" not in str(err.value)


def test_defaults_follow_the_paper() -> None:
    c = SteerConfig()
    assert (c.top_k, c.weight, c.temperature, c.gate, c.normalize) == (10, 1.0, 1.0, "entropy", False)
    assert c.replace(top_k=5).top_k == 5
