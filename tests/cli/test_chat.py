"""`sia chat` driven through its stdin, as a user would type."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_two_turns_and_slash_commands(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    saved = tmp_path / "chat.json"
    typed = "\n".join(["Hello there", "/ratio 0.5", "/gate dense", "/stats", "And a second question", "/reward off",
                       "/weight abc", "/save " + str(saved), "/quit"]) + "\n"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "sia_local.cli", "chat", "-m", str(tiny_gguf), "-r", str(tiny_reward),
                           "--tau", "1.3", "-n", "12", "--seed", "0", "--highlight"],
                          input=typed, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b[" not in out  # no colour codes when stdout is not a terminal
    assert out.count("tok/s") >= 3  # two answers' stats lines + /stats
    assert '"ratio": 0.5' in out and '"gate": "dense"' in out
    assert "junctions=12 (100%" in out  # the second answer ran with the dense gate
    assert "reward off" in out and "/weight needs a number" in out
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    assert data["messages"][2]["content"] == "And a second question"
    assert data["settings"]["gate"] == "none"


def test_chat_session_keeps_history(tiny_lm, tiny_reward: Path) -> None:
    from sia_local.cli.chat import ChatSession
    from sia_local.core.config import SteerConfig
    from sia_local.rewards.reward import OnnxReward
    from sia_local.core.steer import Steerer

    session = ChatSession(Steerer(tiny_lm, OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.3, max_tokens=8, seed=1)), system="Be kind.")
    pieces: list[str] = []
    first = session.ask("hi", lambda p: pieces.append(p.text))
    assert first is not None and "".join(pieces) == first.text
    second = session.ask("more", lambda p: None)
    assert second is not None and second.stats.prompt_tokens > first.stats.prompt_tokens + first.stats.tokens
    assert session.command("/reset") == "conversation cleared" and session.messages == []
