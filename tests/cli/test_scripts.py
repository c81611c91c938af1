"""Every script under scripts/ answers --help at once and writes nothing (no model load, no package data), and
scripts/README.md indexes every one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (ROOT / "scripts").rglob("*") if p.suffix in (".py", ".sh") and "results" not in p.relative_to(ROOT / "scripts").parts)


def _tree() -> dict[str, tuple[int, int]]:
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis"}
    out = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        for name in filenames:
            st = (Path(dirpath) / name).stat()
            out[os.path.relpath(Path(dirpath) / name, ROOT)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_help_has_no_side_effects(script: Path, tmp_path: Path) -> None:
    before = _tree()
    cmd = [sys.executable, str(script), "--help"] if script.suffix == ".py" else ["bash", str(script), "--help"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIA_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), "--help prints a description"
    assert _tree() == before, "--help changed files in the project"
    assert not (tmp_path / "cache").exists() and list(tmp_path.iterdir()) == [], "--help wrote files"


def test_prefix_head_ceiling_runs_on_a_tiny_head(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    from sia_local.heads.distill import distill_head
    from sia_local.llama import LM
    from sia_local.rewards.reward import OnnxReward

    head = tmp_path / "head"
    prompts = ["Tell me about rain.", "Write a note.", "Describe a morning.", "Hi there.", "What is a good breakfast?", "Write about the sea."]
    distill_head(LM(tiny_gguf, n_ctx=256, hidden=True), OnnxReward(tiny_reward, provider="cpu"), prompts, head, samples_per_prompt=2,
                 max_tokens=8, rank=2)
    out = tmp_path / "ceiling.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "study" / "prefix_head_ceiling.py"), str(head), "-m", str(tiny_gguf),
                             "--json", str(out)], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "shipped prefix head" in json.loads(out.read_text())["models"]


def test_the_index_names_every_script() -> None:
    index = (ROOT / "scripts" / "README.md").read_text(encoding="utf-8")
    missing = [str(p.relative_to(ROOT / "scripts")) for p in SCRIPTS if f"`{p.relative_to(ROOT / 'scripts')}`" not in index]
    assert not missing, f"scripts/README.md does not index {missing}"
