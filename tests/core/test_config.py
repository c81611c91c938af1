from __future__ import annotations

import pytest

from sia_local.core.config import SteerConfig
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


# -- every setting declared once: its flag, its API place, its chat command, one range everywhere ------------
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from sia_local.core.config import nullable, parse_value, request_changes, settings  # noqa: E402


def _outside(setting) -> list:
    """Values just outside a numeric setting's one range (what every shell must refuse alike)."""
    out = []
    if setting.lo is not None:
        out.append(setting.lo if setting.lo_open else (setting.lo - 1 if setting.kind is int else setting.lo - 0.5))
    if setting.hi is not None:
        out.append(setting.hi + 1 if setting.kind is int else setting.hi + 0.5)
    return out


def test_every_setting_is_declared_whole() -> None:
    for name, s in settings():
        assert s.help and s.flag and s.flag.startswith("--"), name  # a flag, with help
        assert s.api in ("sia", "openai", None), name  # a place in requests (or none, said by None)
        assert isinstance(s.chat, tuple), name  # chat commands (or none, said by ())
        if s.chat:
            assert parse_value(name, "none" if nullable(name) else ("on" if s.kind is bool else "gate" if name == "gate" else "1")) is not None or nullable(name)


@pytest.mark.parametrize("name", [n for n, s in settings() if s.kind in (int, float) and (s.lo is not None or s.hi is not None)])
def test_one_range_enforced_alike_by_the_config_the_cli_the_server_and_batch(name: str, tiny_gguf: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from sia_local.batch import read_rows
    from sia_local.cli import main
    from sia_local.llama import LM
    from sia_local.serve.server import create_app
    from sia_local.core.steer import Steerer

    setting = dict(settings())[name]
    app = create_app(Steerer(LM(tiny_gguf, n_ctx=256), None, SteerConfig(gate="none", max_tokens=4)), model_id="tiny")
    client = TestClient(app, base_url="http://127.0.0.1")
    for value in _outside(setting):
        with pytest.raises(ConfigError):  # the config
            SteerConfig().updated(**{name: value})
        cli = CliRunner().invoke(main, ["generate", "Hi", "-m", str(tiny_gguf), "--gate", "none", setting.flag, str(value)])
        assert cli.exit_code == 2 and setting.flag in cli.output, (name, value, cli.output)  # the CLI refuses before loading anything
        wire = setting.wire or name  # a request's name for it (`top_k` for sample_top_k)
        body = {"prompt": "Hi", "max_tokens": 2, **({"sia": {name: value}} if setting.api == "sia" else {wire: value} if setting.api else {})}
        if setting.api:
            r = client.post("/v1/completions", json=body)
            assert r.status_code == 400 and wire in r.json()["error"]["message"], (name, value, r.text)  # the server
            rows = tmp_path / f"{name}.jsonl"
            rows.write_text(json.dumps({"id": 1, **body}) + "\n")
            row = read_rows(rows)[0]
            assert row.error is not None and (name in row.error or wire in row.error), (name, value, row.error)  # a batch row
    inside = setting.lo if not setting.lo_open and setting.lo is not None else setting.hi
    assert SteerConfig().updated(**{name: inside}) is not None  # the edge itself is allowed


def test_request_changes_take_the_openai_fields_and_the_sia_object() -> None:
    got = request_changes({"max_completion_tokens": 5, "temperature": 0.5, "stream": True, "n": 2}, {"ratio": 0.3, "tau": None})
    assert got == {"max_tokens": 5, "temperature": 0.5, "ratio": 0.3}


def test_one_rule_for_which_gate_a_ratio_or_tau_asks_for() -> None:
    off = SteerConfig(gate="none")
    assert off.updated(ratio=0.3).gate == "entropy" and off.updated(tau=1.0).gate == "entropy"
    assert off.updated(ratio=0.3, gate="none").gate == "none"  # a gate given wins
    assert SteerConfig(gate="dense").updated(ratio=0.3).gate == "dense"
    assert SteerConfig(tau=1.0).updated(ratio=0.4).tau is None  # a ratio clears tau...
    assert SteerConfig().updated(ratio=0.4, tau=1.2).tau == 1.2  # ...unless tau is given too
