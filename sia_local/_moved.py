"""Old import paths keep working: `sia_local.steer` is `sia_local.core.steer`, and so on for every module that
moved into a subpackage. The same module object under both names (a finder on `sys.meta_path`, loaded lazily)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Sequence

MOVED = {
    "config": "core.config", "junction": "core.junction", "scorer": "core.scorer", "steer": "core.steer", "search": "core.search",
    "calibrate": "core.calibrate", "threads": "llama.threads", "models": "llama.models", "reward": "rewards.reward",
    "sentiment": "rewards.sentiment", "defaults": "rewards.defaults", "objectives": "rewards.objectives", "mix": "rewards.mix",
    "rewardkit": "rewards.rewardkit", "export": "rewards.export", "head": "heads.head", "vm": "heads.vm", "vmgraph": "heads.vmgraph",
    "junction_data": "heads.junction_data", "distill": "heads.distill", "runs": "heads.runs", "server": "serve.server",
    "openai_api": "serve.openai_api", "page": "serve.page", "worker": "batch.worker", "pool": "batch.pool", "speed": "bench.speed",
    "chat": "cli.chat",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.partition(".")
        if prefix != "sia_local" or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module("sia_local." + MOVED[spec.name.partition(".")[2]])

    def exec_module(self, module: ModuleType) -> None:
        """Already executed under its new name."""


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
