"""The prompt sets the package ships, and prompt files a user gives: read in one place.

- calibration: varied tasks and tones, decoded unsteered to calibrate tau (`calibrate.py`) and each objective's strength
  (`strength.py`: the reward scored, not applied);
- bench: 50 prompts, many about annoying or sad situations, so a tone objective has room to move (`sia bench`);
- distill: 1,100 prompts, 220 situations from many parts of life x 24 kinds of request x 12 registers, disjoint from
  the two above (`sia vm distill`);
- heldout: 70 prompts of other situations, asked in other ways: evaluation only (`scripts/study/head_vs_teacher.py`); no code
  fits on them, but the heads' spread scaling was adopted after looking at their figures (docs/value-heads.md), and with
  bench they chose what a weight of 1 means (`scripts/study/strength_curve.py`).
- eval: 600 prompts, 120 situations that no other set mentions, each asked 5 ways (`scripts/data/make_eval_prompts.py`):
  `sia eval`'s default; nothing is calibrated, distilled, tuned or chosen on them.
A user's file is JSONL ({"prompt": ...} per line) or plain text (one prompt a line).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .errors import ConfigError

SHIPPED = {"calibration": "calibration_prompts.txt", "bench": "bench_prompts.jsonl", "distill": "distill_prompts.txt",
           "heldout": "heldout_prompts.txt", "eval": "eval_prompts.txt"}


def shipped(name: str) -> list[str]:
    """One of the shipped prompt sets by name: calibration, bench, distill, heldout or eval."""
    text = resources.files("sia_local.data").joinpath(SHIPPED[name]).read_text(encoding="utf-8")
    return _parse(text, f"sia_local/data/{SHIPPED[name]}")


def load_prompts(path: str | Path | None = None, default: str = "bench") -> list[str]:
    """Prompts from a JSONL or text file; without a path, the shipped set `default`."""
    if path is None:
        return shipped(default)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompt file not found: {p}" if not p.exists() else f"{p} is not a file", "pass --prompts with a JSONL or text file")
    return _parse(read_utf8(p), str(p))


def read_utf8(path: Path) -> str:
    """A text file's contents, or one line naming the file and the first byte that is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})", "save it as UTF-8") from None


def _parse(text: str, where: str) -> list[str]:
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                prompt = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{where}:{n} is not a JSON object with a \"prompt\" field", "fix that line") from None
            if not isinstance(prompt, str):
                raise ConfigError(f"{where}:{n}: \"prompt\" must be a string", "fix that line")
            prompts.append(prompt)
        else:
            prompts.append(line)
    if not prompts:
        raise ConfigError(f"{where} holds no prompts", "add one prompt per line")
    return prompts
