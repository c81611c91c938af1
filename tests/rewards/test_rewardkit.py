"""`sia reward check` and `sia reward build` (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from conftest import needs_minilm
from sia_local.cli import main
from tiny_models import write_image_model, write_reward_folder


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_check_good_folder(tiny_reward: Path) -> None:
    result = run("reward", "check", str(tiny_reward), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["info"]["inputs"] == ["input_ids", "attention_mask"] and data["info"]["n_labels"] == 1
    assert set(data["ms_per_junction"]) == {"64", "256", "512"} and all(v > 0 for v in data["ms_per_junction"].values())
    scores = list(data["scores"].values())
    assert len(scores) == 3
    text = run("reward", "check", str(tiny_reward))
    assert "junction (k=10) at  64 tokens" in text.stdout


def test_check_broken_folders(tmp_path: Path) -> None:
    no_tok = write_reward_folder(tmp_path / "no-tok", tokenizer=False)
    image = write_image_model(tmp_path / "image")
    corrupt = write_reward_folder(tmp_path / "corrupt")
    (corrupt / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    wrong_names = write_reward_folder(tmp_path / "names", inputs=("input_ids", "attention_mask", "pixel_mask"))
    cases = [(no_tok, "no tokenizer.json"), (image, "not text-model inputs"), (corrupt, "not a loadable ONNX model"),
             (wrong_names, "not text-model inputs"), (tmp_path / "missing", "not found")]
    for folder, expected in cases:
        result = run("reward", "check", str(folder))
        assert result.exit_code == 1, folder
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


@needs_minilm
def test_build_default_and_attribute(tmp_path: Path) -> None:
    from sia_local.rewards.reward import OnnxReward

    result = run("reward", "build", "default", "-o", str(tmp_path / "default"))
    assert result.exit_code == 0, result.stderr
    result = run("reward", "build", "attribute", "-o", str(tmp_path / "polite"), "--positive", "polite, warm and respectful",
                 "--negative", "rude, dismissive and insulting")
    assert result.exit_code == 0, result.stderr
    rm = OnnxReward(tmp_path / "polite", provider="cpu")
    kind, rude = rm.score("", ["Thank you so much, I really appreciate your help.", "Shut up, nobody cares what you think."])
    assert kind > rude
    assert "zero-shot" in rm.objective and "('" not in rm.objective and 'like "polite, warm and respectful"' in rm.objective  # words, not a Python tuple
    assert run("reward", "build", "attribute", "-o", str(tmp_path / "x"), "--positive", "only one side").exit_code != 0
