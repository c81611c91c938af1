"""Reliability, round two: no input hangs a batch or becomes a 500, no request runs unbounded.

Each test here failed on the code before it: a worker that died mid-row hung the batch, a bad row
stopped it, a branch head at the end of the context was a 500, and the server served unbounded k,
uncalibrated k, huge Best-of-N, chunked bodies of any size and values JSON cannot carry.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from sia_local.batch import read_rows, run
from sia_local.cli import main
from sia_local.core.config import SteerConfig
from sia_local.errors import ConfigError, ModelError, RewardModelError
from sia_local.heads.head import load_head
from sia_local.llama import LM, BatchContext
from sia_local.rewards.reward import OnnxReward
from sia_local.serve.server import create_app
from sia_local.core.steer import Steerer
from test_batch import _spec
from servers import _free_port, _Server


# -- batch: every row becomes exactly one output row ---------------------------------------------------
def test_bad_rows_become_error_rows_and_the_run_goes_on(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"id": "ok", "prompt": "Hello there"},
        {"id": "seed", "prompt": "Hi", "seed": -1},
        {"id": "stop", "prompt": "Hi", "stop": 5},
        {"id": "system", "messages": [{"role": "user", "content": "Hi"}], "system": 5},
        {"id": "content", "messages": [{"role": "user", "content": {"a": 1}}]},
        {"id": "prompt", "prompt": ["a", "b"]},
        {"id": "many-stops", "prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]},
        {"id": "ok2", "prompt": "Hello again", "stop": ["zz"]},
    ]))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["batch", str(rows), "-o", str(out), "-m", str(tiny_gguf), "-c", "512", "-r", str(tiny_reward),
                                       "--tau", "1.2", "-n", "6"])
    assert result.exit_code == 6, result.output
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(out.read_text().splitlines()) == 8 and set(got) == {"ok", "seed", "stop", "system", "content", "prompt", "many-stops", "ok2"}
    assert got["ok"]["error"] is None and got["ok2"]["error"] is None
    assert "seed" in got["seed"]["error"] and ">= 0" in got["seed"]["error"]
    assert "stop" in got["stop"]["error"] and "system" in got["system"]["error"] and "messages" in got["content"]["error"]
    assert "prompt" in got["prompt"]["error"] and "at most 4" in got["many-stops"]["error"]
    assert all(set(r) == set(got["ok"]) - {"stats"} | {"stats"} for r in got.values())  # every row has the same keys
    assert all("\n" not in (r["error"] or "") for r in got.values())


def test_ordered_output_with_repeated_ids_keeps_every_row(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join(json.dumps({"id": i % 3, "prompt": f"Prompt {i}"}) for i in range(6)))
    rows = read_rows(path)
    out = list(run(rows, _spec(tiny_gguf, tiny_reward, max_tokens=4), workers=2, ordered=True))
    assert [r["line"] for r in out] == [1, 2, 3, 4, 5, 6]  # the repeats are error rows, none overwrites a held result
    assert [r["error"] is None for r in out] == [True, True, True, False, False, False]


def _kill_first(times: int, line: int):
    killed: list[int] = []

    def on_dispatch(pid: int, row) -> None:
        if row.line == line and len(killed) < times:
            os.kill(pid, signal.SIGKILL)  # the worker dies holding this row
            killed.append(pid)

    return on_dispatch, killed


def test_a_row_whose_worker_dies_is_retried_on_a_fresh_worker(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("".join(f"Prompt number {i}\n" for i in range(6)))
    rows = read_rows(path)
    spec = _spec(tiny_gguf, tiny_reward, max_tokens=4)
    on_dispatch, killed = _kill_first(2, line=3)
    out = list(run(rows, spec, workers=2, on_dispatch=on_dispatch))
    assert len(killed) == 2 and sorted(r["id"] for r in out) == [1, 2, 3, 4, 5, 6]  # every id once
    assert all(r["error"] is None for r in out)  # the row killed twice ran on its third worker
    alone = {r["id"]: r["text"] for r in run(rows, spec, workers=1)}
    assert {r["id"]: r["text"] for r in out} == alone
    on_dispatch, killed = _kill_first(3, line=2)
    out = {r["id"]: r for r in run(rows, spec, workers=2, on_dispatch=on_dispatch)}
    assert len(out) == 6 and "worker died" in out[2]["error"] and "SIGKILL" in out[2]["error"]
    assert all(r["error"] is None for i, r in out.items() if i != 2)  # the run went on


def test_a_worker_that_cannot_load_ends_the_run_with_one_line(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a\nb\nc\n")
    broken = tmp_path / "not-a-reward"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"this is no onnx model")
    rows = tmp_path / "in.txt"
    rows.write_text("Hello\nHi\n")
    t = time.perf_counter()
    result = CliRunner().invoke(main, ["batch", str(rows), "-o", str(tmp_path / "o.jsonl"), "-m", str(tiny_gguf), "-c", "512",
                                       "-r", str(broken), "--tau", "1.2", "--workers", "2"])
    assert result.exit_code != 0 and "could not start" in result.output and "Traceback" not in result.output
    assert time.perf_counter() - t < 120  # ended, not respawned without end


def test_batch_files_that_cannot_be_read_say_so_in_one_line(tmp_path: Path, tiny_gguf: Path) -> None:
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    base = ["-m", str(tiny_gguf), "-c", "512", "--gate", "none"]
    cases = [(["batch", str(latin), "-o", str(tmp_path / "o.jsonl"), *base], "not UTF-8"),
             (["batch", str(tmp_path), "-o", str(tmp_path / "o.jsonl"), *base], "not a file"),
             (["batch", str(latin), "-o", str(tmp_path), *base], "is a directory"),
             (["batch", str(latin), "-o", str(tmp_path / "o.jsonl"), "--ray", "--ray-runtime-env", "{nope", *base], "not valid JSON")]
    for args, fragment in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0 and fragment in result.output and "Traceback" not in result.output, (args, result.output)


# -- value heads at the end of the context --------------------------------------------------------------
@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, tiny_reward: Path) -> Path:
    from sia_local.heads.distill import distill_head

    out = tmp_path_factory.mktemp("head") / "head"
    lm = LM(tiny_gguf, n_ctx=256, hidden=True)
    distill_head(lm, OnnxReward(tiny_reward, provider="cpu"), ["Tell me about rain.", "Write a note.", "Describe a morning.", "Hi there."], out,
                 samples_per_prompt=2, max_tokens=8, rank=2)
    return out


def test_a_branch_head_reaching_the_end_of_the_context_finishes_with_context(head: Path, tiny_gguf: Path) -> None:
    for n_ctx in (64, 65, 70):
        lm = LM(tiny_gguf, n_ctx=n_ctx, hidden=True)
        steerer = Steerer(lm, load_head(head, lm), SteerConfig(gate="dense", max_tokens=400))
        g = steerer.generate("Tell me a long story about the sea.", seed=1)
        assert g.stats.finish_reason in ("context", "stop"), g.stats
        if g.stats.finish_reason == "context":
            assert g.stats.prompt_tokens + g.stats.tokens + 10 <= n_ctx  # ended k cells early: the branches had room
    lm = LM(tiny_gguf, n_ctx=256, hidden=True)
    steerer = Steerer(lm, load_head(head, lm), SteerConfig(gate="dense", max_tokens=8))
    with pytest.raises(ConfigError, match="top_k"):  # more candidates than a junction may have (and than branches a context may hold)
        steerer.generate("Hi", top_k=65)


def test_batch_prefill_asks_one_output_row(tiny_gguf: Path) -> None:
    lm = LM(tiny_gguf, n_ctx=512, hidden=True)
    ctx = BatchContext(lm, 2, 200, 8, track_hidden=True)
    ids = lm.tokenize("word " * 30)[:150]
    logits = ctx.prefill(ids)
    expected = lm.prefill(ids)
    np.testing.assert_allclose(logits, expected, atol=0.05)  # another batch split: the same logits up to float noise
    assert ctx.tokens_decoded == len(ids)


def test_head_files_from_elsewhere_say_what_is_wrong(head: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    import shutil

    lm = LM(tiny_gguf, n_ctx=128, hidden=True)

    def broken(name: str, edit) -> Path:
        folder = tmp_path / name
        shutil.copytree(head, folder)
        edit(folder)
        return folder

    card = json.loads((head / "head.json").read_text())
    cases = {
        "not readable JSON": broken("json", lambda f: (f / "head.json").write_text("{oops")),
        "lacks n_embd": broken("key", lambda f: (f / "head.json").write_text(json.dumps({k: v for k, v in card.items() if k != "n_embd"}))),
        "not a readable .npz": broken("npz", lambda f: (f / "branch.npz").write_bytes((f / "branch.npz").read_bytes()[:40])),
        "has shape": broken("shape", lambda f: np.savez(f / "branch.npz", w=np.zeros(3), b=np.float64(0))),
        "non-finite": broken("nan", lambda f: np.savez(f / "branch.npz", w=np.full(lm.n_embd, np.nan), b=np.float64(0))),
        "disagree on token": broken("vocab", lambda f: (f / "head.json").write_text(json.dumps(
            {**card, "vocab_sample": {**card["vocab_sample"], next(iter(card["vocab_sample"])): "not-this-token"}}))),
        "outside the": broken("vocab-id", lambda f: (f / "head.json").write_text(json.dumps(
            {**card, "vocab_sample": {"99999999": "x"}}))),
        "reads layer": broken("layer", lambda f: np.savez(f / "layer.npz", w=np.zeros(lm.n_embd), b=np.float64(0), layer=np.int32(7))),
    }
    for fragment, folder in cases.items():
        broke = {"has shape": ["branch.npz"], "non-finite": ["branch.npz"], "not a readable .npz": ["branch.npz"], "reads layer": ["layer.npz"]}
        for target in [folder / name for name in broke[fragment]] if fragment in broke else [folder, folder / "branch.npz", folder / "layer.npz"]:
            with pytest.raises(RewardModelError, match=fragment) as info:
                load_head(target, lm)
            assert folder.name in str(info.value) and "\n" not in str(info.value)


# -- the thread count a batched context and prompt processing get --------------------------------------
def test_batch_context_uses_the_settled_thread_count(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    monkeypatch.setenv("SIA_THREAD_POLICY", "adaptive")
    lm = LM(tiny_gguf, n_ctx=256, n_threads=None)
    if lm.governor is None:
        pytest.skip("one core: nothing to govern")
    lm._use_threads(lm.governor.low)  # as if a generation had ended inside a probe of half the cores
    ctx = BatchContext(lm, 2, 16, 8)
    assert llama_cpp.llama_n_threads(ctx._ctx) == lm.governor.settled == lm.max_threads
    assert llama_cpp.llama_n_threads_batch(lm._ctx) == lm.max_threads  # prompt processing keeps every thread
    lm.use_all_threads()
    assert llama_cpp.llama_n_threads(lm._ctx) == lm.max_threads


# -- the server: every request bounded, every refusal a 4xx ---------------------------------------------
@pytest.fixture(scope="module")
def ratio_server(tiny_gguf: Path, tiny_reward: Path):
    steerer = Steerer(LM(tiny_gguf, n_ctx=512), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(ratio=0.3, max_tokens=8))
    steerer.resolve_tau(steerer.config)  # k = 10 calibrated at start-up, as `sia serve` does
    with _Server(create_app(steerer, model_id="tiny", max_body_bytes=10_000, max_batch_tokens=600), _free_port()) as s:
        yield s


@pytest.mark.parametrize("body, status, fragment", [
    ({"prompt": "Hi", "sia": {"top_k": 50000}}, 400, "less than or equal to 64"),
    ({"prompt": "Hi", "sia": {"top_k": 12}}, 400, "sia calibrate --top-k 12"),
    ({"prompt": "Hi", "sia": {"ratio": 0}}, 400, "greater than 0"),
    ({"prompt": "Hi", "sia": {"weight": 1e308}}, 400, "less than or equal to 1000"),
    ({"prompt": "Hi", "seed": -1}, 400, "greater than or equal to 0"),
    ({"prompt": "Hi", "temperature": 3}, 400, "less than or equal to 2"),
    ({"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
    ({"prompt": "Hi", "stop": "x" * 65}, 400, "at most 64"),
    ({"prompt": "Hi", "n": 8, "max_tokens": 100}, 400, "--max-batch-tokens"),
    ({"prompt": "Hi", "max_completion_tokens": 0}, 400, "greater than or equal to 1"),
])
def test_costly_or_unserialisable_requests_are_400s(ratio_server: _Server, body: dict, status: int, fragment: str) -> None:
    r = httpx.post(ratio_server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"], r.json()


def test_content_parts_must_carry_text(ratio_server: _Server) -> None:
    bad = {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    r = httpx.post(ratio_server.url + "/v1/chat/completions", json=bad, timeout=60)
    assert r.status_code == 400 and "messages.0.content" in r.json()["error"]["message"]
    good = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert httpx.post(ratio_server.url + "/v1/chat/completions", json=good, timeout=60).status_code == 200


def test_a_chunked_body_is_counted_as_it_arrives(ratio_server: _Server) -> None:
    def chunks():
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"x" * 1000  # 100 kB without a Content-Length
        yield b'"}'

    r = httpx.post(ratio_server.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    small = httpx.post(ratio_server.url + "/v1/completions", content=iter([b'{"prompt": "Hi", ', b'"max_tokens": 2}']),
                       headers={"content-type": "application/json"}, timeout=60)
    assert small.status_code == 200, small.text
    assert httpx.get(ratio_server.url + "/health").json()["status"] == "ok"


def test_best_of_n_within_the_budget_is_served(ratio_server: _Server) -> None:
    r = httpx.post(ratio_server.url + "/v1/completions", json={"prompt": "Hi", "n": 2, "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


def test_tau_for_ratio_one_and_fixed_tau_serialise(ratio_server: _Server) -> None:
    for sia in ({"ratio": 1.0}, {"tau": 1e300}):
        r = httpx.post(ratio_server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "sia": sia}, timeout=60)
        assert r.status_code == 200, r.text


# -- sia models: stores from elsewhere ---------------------------------------------------------------------
def test_odd_ollama_manifests_are_skipped_not_fatal(tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sia_local.llama.models import find_models, resolve_model

    root = tmp_path / "ollama"
    manifests = root / "manifests" / "registry.ollama.ai" / "library"
    good_digest = "sha256:" + "cd" * 32
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / good_digest.replace(":", "-")).write_bytes(tiny_gguf.read_bytes())
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(tiny_gguf.read_bytes())
    layer = {"mediaType": "application/vnd.ollama.image.model"}
    for model, content in {"good": {"layers": [{**layer, "digest": good_digest}]},
                           "escape": {"layers": [{**layer, "digest": "../../outside.gguf"}]},
                           "list": [1, 2, 3],
                           "layers": {"layers": "nope"},
                           "junk": "{not json"}.items():
        (manifests / model).mkdir(parents=True)
        (manifests / model / "latest").write_text(content if isinstance(content, str) else json.dumps(content))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    found = find_models()
    assert [m.name for m in found if m.source != "package"] == ["good:latest"]
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0 and "good:latest" in result.output and "skipping" in result.output and "Traceback" not in result.output
    assert resolve_model("good:latest") == root / "blobs" / good_digest.replace(":", "-")


def test_a_name_two_stores_share_is_refused(tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sia_local.llama.models import resolve_model

    home = tmp_path / "home"
    for store in (".lmstudio/models", ".cache/lm-studio/models"):
        folder = home / store / "pub"
        folder.mkdir(parents=True)
        (folder / "same.gguf").write_bytes(tiny_gguf.read_bytes())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    with pytest.raises(ModelError, match="different files"):
        resolve_model("pub/same.gguf")



def test_a_worker_that_dies_while_idle_loses_nothing(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    """A worker killed between rows (its row delivered, no new one yet) is not a row's death: the run goes on."""
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "long", "prompt": "Go on and on.", "max_tokens": 3000, "sia": {"gate": "dense"}}) + "\n"
                    + json.dumps({"id": "short", "prompt": "Hi", "max_tokens": 1}) + "\n")
    rows = read_rows(path)
    pids: dict[int, int] = {}
    out = []
    for result in run(rows, _spec(tiny_gguf, tiny_reward, max_tokens=4), workers=2, on_dispatch=lambda pid, row: pids.__setitem__(row.line, pid)):
        out.append(result)
        if result["id"] == "short":  # its worker is idle now (nothing left to hand it) while the long row runs
            os.kill(pids[2], signal.SIGKILL)
    assert sorted(r["id"] for r in out) == ["long", "short"] and all(r["error"] is None for r in out)


def test_a_worker_still_starting_never_sees_ctrl_c() -> None:
    """Ctrl-C reaches the whole process group: a worker still importing (before it ignores SIGINT) must neither die nor
    print a traceback (CI caught one). The signal is sent the moment each start returns, long before any interpreter
    has imported anything, so no machine is fast enough to dodge it."""
    import multiprocessing

    from sia_local.batch.pool import _follow_parent, spawn

    ctx = multiprocessing.get_context("spawn")
    procs = [spawn(ctx, _follow_parent) for _ in range(3)]  # the first start also launches multiprocessing's tracker
    for proc in procs:
        os.kill(proc.pid, signal.SIGINT)
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_stopping_sia_batch_stops_its_workers_in_one_line(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path, how: str) -> None:
    import subprocess
    import sys

    rows = tmp_path / "rows.jsonl"
    long = {"type": "string", "minLength": 1000}  # no row can end before 3,000 characters: 29k dense tokens at least, no machine ends first
    endless = {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"a": long, "b": long, "c": long},
                                                                 "required": ["a", "b", "c"]}}}
    rows.write_text("".join(json.dumps({"id": i, "prompt": "Go on.", "max_tokens": 1} if i == 0 else
                                       {"id": i, "prompt": "Go on.", "max_tokens": 4000, "response_format": endless}) + "\n" for i in range(40)))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "sia_local.cli", "batch", str(rows), "-o", str(out), "-m", str(tiny_gguf), "-c", "4200",
                             "-r", str(tiny_reward), "--gate", "dense", "--workers", "2", "-t", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out.exists() and out.read_text().strip()):  # the short row is done: workers are busy
            time.sleep(0.1)
        assert out.read_text().strip(), "no row was written"
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: the whole process group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == (143 if how == "SIGTERM" else 130), err
    said = [line for line in err.splitlines() if line.strip() and not line.startswith("batch: ")]  # besides the progress lines
    assert "Traceback" not in err and len(said) == 1 and ("stopped" in said[0] or "interrupted" in said[0]), err
    time.sleep(0.5)
    assert not [p for p in workers if os.path.exists(f"/proc/{p}") and "zombie" not in open(f"/proc/{p}/status").read().lower()], "a worker outlived the run"
    assert json.loads(out.read_text().splitlines()[0])["id"] == 0  # what was written is kept
