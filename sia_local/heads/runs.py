"""Derived data kept with the settings that made it: resumed only with the same settings, never mixed.

Distillation samples answers and records junctions for many minutes; a rerun resumes from what is on
disk. Rows made with another model, teacher, prompt set or length would silently mix with the new
ones, so the settings are written beside the data (run.json) and a rerun with other settings is
refused in one line naming them; `fresh` starts over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..paths import write_atomic

RUN_FILE = "run.json"  # beside data.jsonl: the settings its rows were sampled with


def check_run(data_file: Path, settings: dict[str, Any], *, fresh: bool = False) -> None:
    """Keep what a distillation was given: data sampled with other settings is refused (naming the setting), never
    mixed or thrown away; `fresh` starts over. Data from before run files existed is taken as it is."""
    run_file = data_file.parent / RUN_FILE
    if fresh:
        for old in (data_file, run_file):
            old.unlink(missing_ok=True)
        shutil.rmtree(data_file.parent / "hidden", ignore_errors=True)
    if data_file.exists() and data_file.stat().st_size and run_file.exists():
        try:
            before = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = {}
        differ = [k for k in settings if k in before and before[k] != settings[k]]
        if differ:
            said = ", ".join(f"{k} ({before[k]} then, {settings[k]} now)" if k != "prompts" else "the prompts" for k in differ)
            raise ConfigError(f"{data_file} was sampled with other settings: {said}",
                              "rerun with the same settings to resume, or pass --fresh to start over (the sampled data is deleted)")
    data_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(run_file, json.dumps(settings, indent=1))
