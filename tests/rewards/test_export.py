"""`sia reward export` on tiny randomly initialised Hugging Face models (needs the `export` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

_HOW = 'pip install "torch==2.13.0" && pip install -e ".[export]" (or WITH_EXPORT=1 bash scripts/install.sh)'
torch = pytest.importorskip("torch", reason=_HOW)
pytest.importorskip("transformers", reason=_HOW)
pytest.importorskip("onnxscript", reason=_HOW)

from click.testing import CliRunner  # noqa: E402

from sia_local.cli import main  # noqa: E402
from sia_local.errors import RewardModelError  # noqa: E402
from sia_local.rewards.export import export_reward  # noqa: E402
from sia_local.rewards.reward import OnnxReward  # noqa: E402
from tiny_hf import make_decoder, make_encoder  # noqa: E402

pytestmark = pytest.mark.export
PAIRS = [("How was it?", "thank you so much, that was kind"), ("How was it?", "i hate waiting in the rain"),
         ("Say hi", "hello there, how are you today? the quick brown fox jumps over the lazy dog")]


def _torch_scores(src: Path, pairs, mode: str) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    out = []
    for prompt, response in pairs:  # one at a time: no padding on the torch side
        if mode == "pair":
            enc = tok(prompt, response, return_tensors="pt")
        else:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
            enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out.append(model(**enc).logits[0].numpy())
    return np.array(out)


def test_encoder_classifier_round_trip(tmp_path: Path) -> None:
    src = make_encoder(tmp_path / "hf-bert")
    report = export_reward(str(src), tmp_path / "rm", label="positive")
    assert report.input_mode == "pair" and report.fp32_max_abs_diff < 1e-4 and report.texts >= 200
    rm = OnnxReward(tmp_path / "rm", provider="cpu")
    assert rm.label == "positive" and rm.n_labels == 2
    logits = _torch_scores(src, PAIRS, "pair")
    want = logits[:, 1] - np.log(np.exp(logits).sum(axis=1))  # log p(positive)
    np.testing.assert_allclose(rm.score(PAIRS[0][0], [r for _, r in PAIRS[:2]]), want[:2], atol=1e-4)
    spec = json.loads((tmp_path / "rm" / "sia.json").read_text())
    assert spec["export"]["fp32_max_abs_diff"] == report.fp32_max_abs_diff


def test_decoder_reward_model_round_trip_with_chat_template(tmp_path: Path) -> None:
    src = make_decoder(tmp_path / "hf-llama")
    report = export_reward(str(src), tmp_path / "rm")
    assert report.input_mode == "chat" and report.architecture == "LlamaForSequenceClassification"
    rm = OnnxReward(tmp_path / "rm", provider="cpu")
    got = rm.score("Say hi", ["hello there", "hello there, how are you today? the quick brown fox"])  # padded batch of 2
    want = _torch_scores(src, [("Say hi", "hello there"), ("Say hi", "hello there, how are you today? the quick brown fox")], "chat")[:, 0]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_int8_keeps_the_ranking(tmp_path: Path) -> None:
    src = make_decoder(tmp_path / "hf-llama")
    report = export_reward(str(src), tmp_path / "rm8", int8=True)
    assert report.int8 and report.int8_kendall_tau is not None
    assert report.int8_kendall_tau > 0.4  # tiny random models have flat scores; real RMs agree far more (see README)
    assert report.onnx_mb < export_reward(str(src), tmp_path / "rm32").onnx_mb
    OnnxReward(tmp_path / "rm8", provider="cpu").score("x", ["a", "b"])


def test_export_refuses_what_it_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardModelError, match="cannot load"):
        export_reward(str(tmp_path / "empty"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export(tmp_path: Path) -> None:
    src = make_encoder(tmp_path / "hf-bert")
    result = CliRunner().invoke(main, ["reward", "export", str(src), str(tmp_path / "rm"), "--label", "positive", "--input", "response"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["input_mode"] == "response"
    assert json.loads((tmp_path / "rm" / "sia.json").read_text())["label"] == "positive"
