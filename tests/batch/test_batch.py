"""`sia batch`: a prompt file in, one result row per prompt out; resumable after SIGINT / SIGKILL; local workers and Ray agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sia_local.batch import WorkerSpec, finished_ids, read_rows, run
from sia_local.cli import main
from sia_local.core.config import SteerConfig
from sia_local.runtime import LMSettings, ScorerSettings

TIMING = {"prefill_seconds", "lm_seconds", "reward_seconds", "seconds", "tokens_per_s", "calibration_seconds",
          "cached_tokens"}  # how a run went (times, prompt cells reused), not what it gave
ROOT = Path(__file__).resolve().parents[2]


def _prompts(tmp_path: Path, n: int) -> Path:
    words = ["kind", "rain", "Monday", "neighbour", "cake", "train", "letter", "garden"]
    file = tmp_path / "in.jsonl"
    file.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about the {words[i % len(words)]} number {i}."}) + "\n"
                            for i in range(n)))
    return file


def _comparable(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: {"text": r.get("text"), "finish_reason": r.get("finish_reason"), "error": r.get("error"),
                      "stats": {k: v for k, v in (r.get("stats") or {}).items() if k not in TIMING}} for r in rows}


def _spec(tiny_gguf: Path, tiny_reward: Path, **config) -> WorkerSpec:
    return WorkerSpec(LMSettings(model=tiny_gguf, n_ctx=512, n_threads=1), ScorerSettings(path=tiny_reward, provider="cpu", threads=1),
                      SteerConfig(tau=1.2, max_tokens=config.pop("max_tokens", 16), **config))


def test_rows_from_jsonl_and_text(tmp_path: Path) -> None:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"id": "a", "prompt": "Hi", "sia": {"ratio": 0.3}, "max_tokens": 5, "stop": "x"}),
        json.dumps({"id": "b", "messages": [{"role": "user", "content": "Hello"}]}),
        "{not json",
        json.dumps({"id": "c", "prompt": "Hi", "sia": {"speed": 2}}),
        json.dumps({"id": "a", "prompt": "again"}),
        json.dumps({"id": "d"}),
        "",
    ]))
    rows = read_rows(jsonl)
    assert [r.id for r in rows] == ["a", "b", 3, "c", "a", "d"]
    assert rows[0].changes == {"ratio": 0.3, "max_tokens": 5, "stop": "x"} and rows[0].error is None
    assert rows[1].prompt == [{"role": "user", "content": "Hello"}]
    assert "rows.jsonl:3 is not valid JSON" in rows[2].error
    assert "unknown setting sia.speed" in rows[3].error
    assert "appears twice" in rows[4].error
    assert 'neither "prompt" nor "messages"' in rows[5].error
    text = tmp_path / "rows.txt"
    text.write_text("first prompt\n\nsecond prompt\n")
    assert [(r.id, r.prompt) for r in read_rows(text)] == [(1, "first prompt"), (3, "second prompt")]


def test_torn_last_line_is_redone(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "a", "text": "x"}) + "\n" + '{"id": "b", "te')
    assert finished_ids(out) == {'"a"'}
    assert out.read_text().endswith("\n") and out.read_text().count("\n") == 1


def test_cli_batch_writes_every_row_and_counts_failures(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text("\n".join([json.dumps({"id": 1, "prompt": "Hello there"}),
                               json.dumps({"id": 2, "prompt": "   "}),  # empty prompt: an error row
                               json.dumps({"id": 3, "prompt": "word " * 600}),  # over the 512-token context
                               json.dumps({"id": 4, "prompt": "Hi", "sia": {"ratio": 3}}),  # out of range
                               json.dumps({"id": 5, "messages": [{"role": "user", "content": "Hi"}], "sia": {"gate": "dense"}, "max_tokens": 6})]))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(rows), "-o", str(out), "-m", str(tiny_gguf), "-c", "512", "-r", str(tiny_reward), "--tau", "1.2", "-n", "8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.output  # three rows failed
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(got) == {1, 2, 3, 4, 5}
    assert got[1]["error"] is None and got[1]["text"] and got[1]["stats"]["tokens"] > 0
    assert "empty" in got[2]["error"] and "context" in got[3]["error"] and "ratio" in got[4]["error"]
    assert got[5]["stats"]["gate"] == "dense" and got[5]["stats"]["junctions"] == got[5]["stats"]["tokens"] <= 6
    again = CliRunner().invoke(main, args)  # everything is there: nothing runs, the same file
    assert "0 rows written" in again.output and len(out.read_text().splitlines()) == 5
    retry = CliRunner().invoke(main, args + ["--retry-errors"])
    assert "3 rows written" in retry.output and len(out.read_text().splitlines()) == 5


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_resume_after_interrupt(sig: int, tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    prompts = _prompts(tmp_path, 120)  # long enough that a loaded machine cannot finish it before the signal lands
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    cmd = [sys.executable, "-m", "sia_local.cli", "batch", str(prompts), "-m", str(tiny_gguf), "-c", "512", "-t", "1", "-r", str(tiny_reward),
           "--reward-threads", "1", "--tau", "1.2", "-n", "48"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd + ["-o", str(full)], check=True, env=env, capture_output=True, timeout=600)
    # a shell without job control starts background jobs with SIGINT ignored, and children inherit that: give the run the default
    proc = subprocess.Popen(cmd + ["-o", str(cut)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and (not cut.exists() or cut.read_text().count("\n") < 1):
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    written = cut.read_text().count("\n")
    assert 1 <= written < 120, "the run was stopped part-way"
    subprocess.run(cmd + ["-o", str(cut)], check=True, env=env, capture_output=True, timeout=600)
    assert _comparable(cut) == _comparable(full)


def test_two_workers_give_the_same_rows(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    rows = read_rows(_prompts(tmp_path, 8))
    spec = _spec(tiny_gguf, tiny_reward)
    one = {r["id"]: r for r in run(rows, spec, workers=1)}
    two = list(run(rows, spec, workers=2))
    assert sorted(r["id"] for r in two) == sorted(one)
    for r in two:
        assert r["text"] == one[r["id"]]["text"] and r["stats"]["junctions"] == one[r["id"]]["stats"]["junctions"]
    ordered = [r["id"] for r in run(rows, spec, workers=2, ordered=True)]
    assert ordered == [row.id for row in rows]


def test_rows_in_slots_give_the_same_rows(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    """--parallel 4 here and --workers 2 --parallel 2: the same rows as one at a time, error rows included."""
    rows = read_rows(_prompts(tmp_path, 10))
    rows[3].error = "line 4: a broken row"
    rows[5].best_of = 2
    spec = _spec(tiny_gguf, tiny_reward)
    one = {r["id"]: r for r in run(rows, spec, workers=1)}
    for kwargs in ({"parallel": 4}, {"parallel": 2, "workers": 2}):
        got = list(run(rows, spec, **kwargs))
        assert sorted(r["id"] for r in got) == sorted(one)
        for r in got:
            ref = one[r["id"]]
            assert (r["text"], r["error"], r.get("samples") and [x["text"] for x in r["samples"]]) == (
                ref["text"], ref["error"], ref.get("samples") and [x["text"] for x in ref["samples"]])
    out = tmp_path / "out.jsonl"
    args = ["batch", str(_prompts(tmp_path, 6)), "-o", str(out), "-m", str(tiny_gguf), "-c", "512", "-r", str(tiny_reward), "--tau", "1.2",
            "-n", "8", "--parallel", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 6


@pytest.mark.ray
def test_ray_actors_give_the_same_rows_and_survive_a_kill(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    ray = pytest.importorskip("ray")
    rows = read_rows(_prompts(tmp_path, 10))
    spec = _spec(tiny_gguf, tiny_reward, max_tokens=32)
    local = {r["id"]: r["text"] for r in run(rows, spec, workers=1)}
    ray.init(num_cpus=2, namespace="sia-batch", include_dashboard=False, log_to_driver=False)
    try:
        seen: list[dict] = []
        for result in run(rows, spec, workers=2, use_ray=True):
            seen.append(result)
            if len(seen) == 2:  # kill one actor mid-run: its row must be retried elsewhere
                ray.kill(ray.get_actor("sia-batch-0", namespace="sia-batch"))
        assert sorted(r["id"] for r in seen) == sorted(local)
        assert all(r["error"] is None for r in seen)
        assert {r["id"]: r["text"] for r in seen} == local
        in_slots = {r["id"]: r["text"] for r in run(rows, spec, workers=1, use_ray=True, parallel=3)}  # one actor, its rows in 3 slots
        assert in_slots == local
    finally:
        ray.shutdown()


def test_bench_grid_on_two_workers_equals_one(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    pytest.importorskip("vaderSentiment")
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello there.\nTell me a story.\nWhy?\n")
    base = ["bench", "-m", str(tiny_gguf), "-c", "512", "-r", str(tiny_reward), "--prompts", str(prompts), "-n", "10", "--tau", "1.2",
            "--arms", "base,sia@0.4,random@0.4,dense,bon-2"]
    one = CliRunner().invoke(main, base + ["-o", str(tmp_path / "one")])
    two = CliRunner().invoke(main, base + ["-o", str(tmp_path / "two"), "--workers", "2"])
    assert one.exit_code == 0 and two.exit_code == 0, (one.output, two.output)

    def rows(d: str) -> dict:
        out = {}
        for line in (tmp_path / d / "results.jsonl").read_text().splitlines():
            r = json.loads(line)
            out[(r["arm"], r["prompt_index"])] = (r["text"], r["junctions"], round(r["reward"], 6), r.get("bon_scores"))
        return out

    assert rows("one") == rows("two") and len(rows("one")) == 15


def test_slots_in_one_process_prepare_a_window_of_rows_not_all(tiny_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    """10,000 structured rows would hold gigabytes of grammar cells if every row were prepared before the first ran."""
    import dataclasses

    from sia_local.batch.worker import Worker

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Row {i}.", "max_tokens": 3}) + "\n" for i in range(11)))
    worker = Worker(dataclasses.replace(_spec(tiny_gguf, tiny_reward), parallel=2))
    submitted, out = [0], []
    real = worker.submit

    def counted(row, base_seed, done):  # type: ignore[no-untyped-def]
        submitted[0] += 1
        assert submitted[0] - len(out) <= 4, "more rows prepared than twice the slots"
        real(row, base_seed, done)

    worker.submit = counted  # type: ignore[method-assign]
    try:
        for result in worker.run_slots(read_rows(path), 0):
            out.append(result)
    finally:
        worker.close()
    assert sorted(r["id"] for r in out) == list(range(11)) and all(r["error"] is None for r in out)
