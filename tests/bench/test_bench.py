"""`sia bench` on the tiny models: valid JSON, non-empty PNGs, resumable; and the speed table."""

from __future__ import annotations

import math

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sia_local.bench.grid import Arm, default_arms, distinct_n, run_grid, summarise
from sia_local.bench.judges import RewardJudge
from sia_local.prompts import load_prompts
from sia_local.cli import main
from sia_local.core.config import SteerConfig
from sia_local.errors import ConfigError
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from sia_local.core.steer import Steerer

pytest.importorskip("matplotlib")


def test_grid_writes_results_summary_and_plots(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Hello there.", "Tell me a story.", "Why?"]))
    out = tmp_path / "out"
    args = ["bench", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--judge", str(tiny_reward), "--prompts", str(prompts),
            "-n", "12", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    arms = {a.name for a in default_arms(12)}
    assert {r["arm"] for r in rows} == arms and len(rows) == 3 * len(arms)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == arms and summary["pareto_front"]
    assert summary["setup"]["prompts"] == 3 and "llama-cpp-python" in summary["setup"]["versions"]
    base, dense = summary["arms"]["base"], summary["arms"]["dense"]
    assert base["reward_calls_per_token"] == 0 and dense["ratio"] == 1.0 and base["cost_vs_base"] == 1.0
    assert dense["kl_per_token"] > 0 == base["kl_per_token"]
    assert summary["arms"]["bon-8"]["best_of"] == 8
    for png in ("judge_vs_cost.png", "score_vs_ratio.png", "entropy_hist.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # random gating ran, prompt by prompt, at the ratio the entropy gate realised on that prompt
    for r in (0.2, 0.4):
        sia_rows = {row["prompt_index"]: row["ratio"] for row in rows if row["arm"] == f"sia@{r:g}"}
        targets = {row["prompt_index"]: row["ratio_target"] for row in rows if row["arm"] == f"random@{r:g}"}
        assert targets == pytest.approx(sia_rows) and len(targets) == 3

    # a rerun resumes: nothing is decoded again, the rows stay the same
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.stderr
    assert [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] == rows


def test_resume_after_an_interrupted_row(tmp_path: Path, tiny_lm: LM, tiny_reward: Path) -> None:
    rm = OnnxReward(tiny_reward, provider="cpu")
    steerer = Steerer(tiny_lm, rm, SteerConfig(max_tokens=8))
    arms = [Arm("base"), Arm("dense", "dense")]
    first = run_grid(steerer, RewardJudge(rm), ["a", "b"], arms[:1], tmp_path, plots=False)
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"arm": "dense", "prompt_in')  # a row cut off mid-write
    calls: list[str] = []
    second = run_grid(steerer, RewardJudge(rm), ["a", "b"], arms, tmp_path, plots=False, progress=lambda d, t, name: calls.append(name))
    assert calls == ["dense", "dense"]  # only the missing rows ran
    assert second.rows[:2] == first.rows


def test_prompt_files_and_helpers(tmp_path: Path) -> None:
    assert len(load_prompts()) == 50
    text = tmp_path / "p.txt"
    text.write_text("one\n\ntwo\n")
    assert load_prompts(text) == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ConfigError, match="prompt"):
        load_prompts(bad)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert summarise([], [Arm("base")], {}) == {"arms": {}, "pareto_front": [], "paired": {}}


def test_paired_comparison_and_prompt_level_errors() -> None:
    """Seeds of one prompt are averaged before the standard error; SIA is paired with its matched random arm."""
    def row(arm: str, prompt: int, seed: int, judge: float) -> dict:
        return {"arm": arm, "prompt_index": prompt, "seed": seed, "judge": judge, "reward": 2 * judge, "ratio": 0.2, "tokens": 10,
                "reward_calls": 2, "wall_seconds": 1.0, "generated_tokens": 10, "kl_per_token": 0.0, "perplexity": None, "text": "a b"}
    rows = [row("sia@0.2", p, s, 1.0 + p + 0.1 * s) for p in range(3) for s in range(2)]
    rows += [row("random@0.2", p, s, 0.5 + p + (0.2 if p == 0 else 0.0)) for p in range(3) for s in range(2)]
    rows.append(row("random@0.2", 9, 0, 7.0))  # no SIA row to pair with: left out of the comparison
    summary = summarise(rows, [Arm("sia@0.2", "entropy", ratio=0.2), Arm("random@0.2", "random", match="sia@0.2")], {})
    sia = summary["arms"]["sia@0.2"]
    assert sia["judge"] == pytest.approx(2.05)  # per-prompt means 1.05, 2.05, 3.05
    assert sia["judge_se"] == pytest.approx(1.0 / math.sqrt(3))  # sd of the three prompt means is 1
    d = summary["paired"]["sia@0.2 vs random@0.2"]["judge"]
    assert d["pairs"] == 6 and d["prompts"] == 3
    assert d["mean_diff"] == pytest.approx((0.35 + 0.55 + 0.55) / 3)
    assert d["prompts_ahead"] == 1.0
    assert summary["paired"]["sia@0.2 vs random@0.2"]["reward"]["mean_diff"] == pytest.approx(2 * d["mean_diff"])


def test_speed_table(tiny_gguf: Path, tiny_reward: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "-m", str(tiny_gguf), "-r", str(tiny_reward), "speed", "--tokens", "12", "--repeats", "1",
                                       "--best-of", "3"])
    assert result.exit_code == 0, result.stderr
    for label in ("llama-cpp-python", "entropy@0.2", "dense", "bon-3 batched", "bon-3 sequential", "BoN-3 batched / sequential"):
        assert label in result.stdout


def test_prompt_baseline_arms(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    """`prompt` and `prompt+sia@R` send the objective as a system message; summary.json pairs them with SEs."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello there.\nTell me a story.\nWhy?\n")
    out = tmp_path / "out"
    args = ["bench", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--judge", str(tiny_reward), "--prompts", str(prompts), "-n", "8",
            "--arms", "base,prompt,sia@0.25,prompt+sia@0.25,random@0.25", "--objective-prompt", "Use the letter e a lot.", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert {"prompt vs base", "sia@0.25 vs prompt", "prompt+sia@0.25 vs prompt", "sia@0.25 vs random@0.25"} <= set(summary["paired"])
    assert all({"mean_diff", "se"} <= set(summary["paired"]["prompt vs base"][k]) for k in ("judge", "reward"))
    assert summary["setup"]["objective_prompt"] == "Use the letter e a lot."
    rows = {(r["arm"], r["prompt_index"]): r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows[("prompt", 0)]["text"] != rows[("base", 0)]["text"] or rows[("prompt", 1)]["text"] != rows[("base", 1)]["text"]  # the system message changed the context
    unknown = CliRunner().invoke(main, args[:-2] + ["--arms", "prompt+random@0.2", "-o", str(tmp_path / "x")])
    assert unknown.exit_code != 0 and "unknown arm" in unknown.output
    no_prompt = CliRunner().invoke(main, ["bench", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--judge", str(tiny_reward), "--prompts",
                                          str(prompts), "-n", "4", "--arms", "base,prompt", "-o", str(tmp_path / "y")])
    assert no_prompt.exit_code != 0 and "--objective-prompt" in no_prompt.output  # the tiny reward has no description to ask for


def test_raw_completions_have_no_prompt_baseline(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\nThe weather today\n")
    base = ["bench", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--judge", str(tiny_reward), "--prompts", str(prompts), "-n", "6", "--raw"]
    ok = CliRunner().invoke(main, base + ["--arms", "base,sia@0.3", "-o", str(tmp_path / "raw")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "raw" / "summary.json").read_text())["setup"]["raw"] is True
    refused = CliRunner().invoke(main, base + ["--arms", "base,prompt", "--objective-prompt", "x", "-o", str(tmp_path / "p")])
    assert refused.exit_code != 0 and "no system message" in refused.output


def test_a_random_arm_matching_a_ratio_of_zero_steers_nothing(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    """Where SIA realised no junction (an answer that ended at once), its matched random arm runs unsteered, not as an error."""
    out = tmp_path / "out"
    out.mkdir()
    sia_row = {"arm": "sia@0.25", "prompt_index": 0, "seed": 0, "gate": "entropy", "best_of": 1, "tau": 1.0, "ratio_target": 0.25, "text": "",
               "tokens": 0, "ratio": 0.0, "junctions": 0, "changed": 0, "wall_seconds": 0.01, "reward": 0.0, "judge": 0.0, "kl_per_token": 0.0,
               "perplexity": None, "finish_reason": "stop", "generated_tokens": 0, "reward_calls": 0}
    (out / "results.jsonl").write_text(json.dumps(sia_row) + "\n")
    steerer = Steerer(LM(tiny_gguf, n_ctx=256), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(max_tokens=6))
    from sia_local.bench.grid import select_arms

    result = run_grid(steerer, RewardJudge(OnnxReward(tiny_reward, provider="cpu")), ["Hello there.", "Tell me more."],
                      select_arms(["sia@0.25", "random@0.25"], 6), out, plots=False)
    by = {(r["arm"], r["prompt_index"]): r for r in result.rows}
    assert by[("random@0.25", 0)]["gate"] == "none" and by[("random@0.25", 0)]["junctions"] == 0
    assert by[("random@0.25", 1)]["gate"] == "random"  # the next row matches its own SIA row again


def test_a_tau_arm_keeps_the_calibrated_threshold_fixed(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    """tau@R is the paper's rule: the tau calibrated for R, never moved by the ratio control; it is paired with sia@R and
    with random@R in the summary."""
    from sia_local.bench.grid import select_arms

    arms = select_arms(["sia@0.3", "tau@0.3", "random@0.3", "random-tau@0.3"], 12)
    assert [a.fixed for a in arms] == [False, True, False, False] and arms[3].match == "tau@0.3"
    steerer = Steerer(LM(tiny_gguf, n_ctx=256), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(max_tokens=12))
    result = run_grid(steerer, RewardJudge(OnnxReward(tiny_reward, provider="cpu")), ["Hello there.", "Tell me more.", "A story."], arms,
                      tmp_path, plots=False)
    calibrated = result.summary["arms"]["tau@0.3"]["tau"]
    tau_rows = [r for r in result.rows if r["arm"] == "tau@0.3"]
    assert calibrated == result.summary["arms"]["sia@0.3"]["tau"] and all(r["tau"] == pytest.approx(calibrated) for r in tau_rows)
    assert {"sia@0.3 vs tau@0.3", "tau@0.3 vs random-tau@0.3", "sia@0.3 vs random@0.3"} <= set(result.summary["paired"])
    by = {(r["arm"], r["prompt_index"]): r for r in result.rows}
    assert all(by[("random-tau@0.3", i)]["ratio_target"] in (by[("tau@0.3", i)]["ratio"], None) for i in range(3))  # matched to tau's ratio
    with pytest.raises(ConfigError, match="tau@R"):
        select_arms(["tau@"], 12)
