"""Every shell and Python block of the README runs as written, on the bundled models, and exits 0.

A block may carry one directive in an HTML comment on the line before it (invisible on the rendered
page, visible in the source):
    <!-- readme-test: skip (why) -->              not run (set-up, the suite itself, interactive)
    <!-- readme-test: sub "A" "B" -->             run with A replaced by B (a smaller size, a model that is here)
    <!-- readme-test: setup CMD -->               run CMD first (e.g. write the input file the block reads)
    <!-- readme-test: background URL -->          start the block's command, wait until URL answers, stop it at the end
Shell blocks run line by line (comments stay: bash ignores them); Python blocks run as script files.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import needs_minilm, needs_smollm2

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<directive>[^\n]*?) -->\n)?```(?P<lang>bash|python)\n(?P<body>.*?)```", re.S)


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(directive, language, body) for every fenced bash / python block, in order."""
    return [(m["directive"] or "", m["lang"], m["body"]) for m in BLOCK.finditer(text)]


def test_the_readme_has_blocks_and_directives_parse() -> None:
    found = blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert sum(lang == "bash" for _, lang, _ in found) >= 5 and sum(lang == "python" for _, lang, _ in found) >= 3
    for directive, _, _ in found:
        assert directive == "" or directive.split()[0] in ("skip", "sub", "setup", "background"), directive


@pytest.mark.slow
@needs_smollm2
@needs_minilm
def test_every_readme_block_runs(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "SIA_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "sia-cache"), "PYTHONPATH": str(ROOT), "SIA_REPO": str(ROOT)}
    background: list[subprocess.Popen] = []
    ran = 0
    try:
        for n, (directive, lang, body) in enumerate(blocks((ROOT / "README.md").read_text(encoding="utf-8"))):
            kind, _, rest = directive.partition(" ")
            if kind == "skip":
                continue
            if kind == "sub":
                old, new = shlex.split(rest)
                assert old in body, f"block {n}: the README no longer says {old!r}"
                body = body.replace(old, new)
            if kind == "setup":
                subprocess.run(["bash", "-c", rest], cwd=tmp_path, env=env, check=True, timeout=60)
            if kind == "background":
                lines = [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]
                assert len(lines) == 1, f"block {n}: a background block holds one command"
                background.append(subprocess.Popen(["bash", "-c", f"exec {lines[0].split('#')[0]}"], cwd=tmp_path, env=env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                _wait_for(rest.strip(), background[-1])
                ran += 1
                continue
            if lang == "python":
                script = tmp_path / f"block_{n}.py"
                script.write_text(body, encoding="utf-8")
                _run(n, [sys.executable, str(script)], tmp_path, env, body)
            else:
                for line in body.splitlines():
                    if line.strip() and not line.lstrip().startswith("#"):
                        _run(n, ["bash", "-c", line], tmp_path, env, line)
            ran += 1
    finally:
        for proc in background:
            proc.terminate()
            proc.wait(timeout=30)
    assert ran >= 8


def _run(n: int, cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"README block {n} failed: {what.strip()[:300]}\n{result.stderr[-3000:]}"


def _wait_for(url: str, proc: subprocess.Popen, limit: float = 600) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, f"the background command ended with {proc.returncode} before {url} answered"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {limit:.0f} s")
