"""runtime.py: a scorer recognised by its files, one clear error for anything else, one call from settings to a steerer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sia_local.core.config import SteerConfig
from sia_local.errors import PromptError, RewardModelError
from sia_local.runtime import LMSettings, ScorerSettings, load, load_lm, needs_hidden, scorer_kind


def test_scorer_kind_by_files(tmp_path: Path, tiny_reward: Path) -> None:
    assert scorer_kind(tiny_reward) == "reward"
    vm = tmp_path / "vm"
    vm.mkdir()
    (vm / "vm.json").write_text("{}")
    assert scorer_kind(vm) == "value-model"
    head = tmp_path / "head"
    head.mkdir()
    (head / "head.json").write_text(json.dumps({"n_embd": 8, "n_vocab": 10, "default": "branch"}))
    assert scorer_kind(head) == "lm-head" and needs_hidden(ScorerSettings(path=head)) and not needs_hidden(ScorerSettings(path=tiny_reward))
    with pytest.raises(RewardModelError, match="not found"):
        scorer_kind(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardModelError, match="has no model.onnx"):
        scorer_kind(tmp_path / "empty")


def test_load_gives_a_calibrated_steerer(tiny_gguf: Path, tiny_reward: Path) -> None:
    steerer = load(LMSettings(model=tiny_gguf, n_ctx=256), ScorerSettings(path=tiny_reward, provider="cpu"), SteerConfig(ratio=0.3))
    assert steerer.is_calibrated(10) and steerer.scorer is not None and not steerer.lm.hidden
    assert steerer.generate("Hi", max_tokens=4, seed=0).stats.tokens >= 1
    assert load_lm(replace(LMSettings(model=tiny_gguf, n_ctx=256), hidden=True)).hidden


def test_a_gguf_without_a_chat_template_is_refused_before_any_work(tmp_path: Path) -> None:
    from tiny_models import write_tiny_gguf

    plain = write_tiny_gguf(tmp_path / "plain.gguf", chat_template=None)
    with pytest.raises(PromptError, match="no chat template"):
        load(LMSettings(model=plain, n_ctx=256), None, SteerConfig(gate="none"), chat=True)
    assert load(LMSettings(model=plain, n_ctx=256), None, SteerConfig(gate="none")).generate("Hi", raw=True, max_tokens=2).stats.tokens >= 1
