"""What a newcomer tripped over, each fixed with a test that can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from sia_local.bench.grid import summarise
from sia_local.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_trace_without_json_is_refused(tiny_gguf: Path) -> None:
    result = CliRunner().invoke(main, ["generate", "Hi", "-m", str(tiny_gguf), "--gate", "none", "-n", "4", "--trace"])
    assert result.exit_code != 0 and "--json" in result.output


def test_a_rerun_counts_stored_error_rows(tmp_path: Path, tiny_gguf: Path) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"id": 1, "prompt": "Hello"}) + "\n" + json.dumps({"id": 2, "prompt": "  "}) + "\n")
    args = ["batch", str(rows), "-o", str(tmp_path / "out.jsonl"), "-m", str(tiny_gguf), "-c", "256", "--gate", "none", "-n", "4"]
    assert CliRunner().invoke(main, args).exit_code == 1
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "1 of them errors: --retry-errors" in again.output


def test_chat_errors_name_the_slash_command(tiny_lm, tiny_reward: Path) -> None:
    from sia_local.cli.chat import ChatSession
    from sia_local.core.config import SteerConfig
    from sia_local.rewards.reward import OnnxReward
    from sia_local.core.steer import Steerer

    session = ChatSession(Steerer(tiny_lm, OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.3, max_tokens=4)))
    said = session.command("/ratio 7")
    assert "/ratio" in said and "--ratio" not in said


def test_piped_chat_prints_no_colour_legend(tiny_gguf: Path, tiny_reward: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sia_local.cli", "chat", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--tau", "1.3",
                           "-n", "4", "--highlight"], input="/quit\n", capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "reward changed the token" not in proc.stdout


def test_pareto_front_is_sorted_by_cost() -> None:
    from sia_local.bench.grid import Arm

    def row(arm: str, judge: float, seconds: float) -> dict:
        return {"arm": arm, "prompt_index": 0, "seed": 0, "reward": judge, "judge": judge, "ratio": 0.0, "reward_calls": 0, "tokens": 10,
                "generated_tokens": 10, "wall_seconds": seconds, "kl_per_token": 0.0, "perplexity": None, "text": "a b c"}

    arms = [Arm("dense", "dense"), Arm("base", "none"), Arm("mid", "none")]
    summary = summarise([row("dense", 0.9, 5.0), row("base", 0.1, 1.0), row("mid", 0.5, 2.0)], arms, {})
    assert summary["pareto_front"] == ["base", "mid", "dense"]
