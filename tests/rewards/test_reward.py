from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sia_local.errors import RewardModelError
from sia_local.rewards.reward import OnnxReward, available_providers
from tiny_models import write_image_model, write_reward_folder


def test_scores_one_batch_of_texts(tiny_reward: Path) -> None:
    rm = OnnxReward(tiny_reward, provider="cpu")
    scores = rm.score("prompt is ignored in response mode", ["abc", "eee", "e", "", "héllo"])
    np.testing.assert_allclose(scores, [0.0, 30.0, 10.0, 0.0, 0.0])
    assert rm.n_labels == 1 and rm.label is None and rm.provider == "CPUExecutionProvider"


def test_prompt_and_response_mode_sees_the_prompt(tmp_path: Path) -> None:
    folder = write_reward_folder(tmp_path / "rm", sia={"input": "prompt+response"})
    rm = OnnxReward(folder, provider="cpu")
    np.testing.assert_allclose(rm.score("see", ["a", "e"]), [20.0, 30.0])


def test_long_texts_keep_their_end(tmp_path: Path) -> None:
    folder = write_reward_folder(tmp_path / "rm", sia={"input": "response", "max_length": 8})
    rm = OnnxReward(folder, provider="cpu")
    # only the last 8 bytes are scored: the leading e's fall off, the trailing ones stay
    np.testing.assert_allclose(rm.score("", ["e" * 20 + "aaaaaa", "a" * 20 + "aaaaee"]), [20.0, 20.0])


def test_classifier_label_log_probability(tmp_path: Path) -> None:
    folder = write_reward_folder(tmp_path / "clf", n_labels=2, bonus=1.0)
    with pytest.raises(RewardModelError, match="--reward-label"):
        OnnxReward(folder, provider="cpu")
    rm = OnnxReward(folder, label="positive", provider="cpu")
    got = rm.score("", ["a", "e", "ee"])
    # logits [0, n] -> log p(positive) = n - log(1 + e^n)
    want = [n - math.log1p(math.exp(n)) for n in (0.0, 1.0, 2.0)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert OnnxReward(folder, label=1, provider="cpu").label == "positive"
    with pytest.raises(RewardModelError, match="no label 'joy'"):
        OnnxReward(folder, label="joy", provider="cpu")


def test_token_type_ids_are_fed(tmp_path: Path) -> None:
    folder = write_reward_folder(tmp_path / "tt", inputs=("input_ids", "attention_mask", "token_type_ids"))
    assert OnnxReward(folder, provider="cpu").score("", ["e"])[0] == 10.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing", "reward folder not found"),
        (lambda p: write_reward_folder(p / "notok", tokenizer=False), "has no tokenizer.json"),
        (lambda p: write_image_model(p / "image"), "not text-model inputs"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "has no model.onnx"),
    ],
)
def test_broken_folders(tmp_path: Path, make, match: str) -> None:
    with pytest.raises(RewardModelError, match=match) as err:
        OnnxReward(make(tmp_path), provider="cpu")
    assert "\n" not in str(err.value)


def test_corrupted_model_file(tmp_path: Path) -> None:
    folder = write_reward_folder(tmp_path / "bad")
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(RewardModelError, match="not a loadable ONNX model"):
        OnnxReward(folder, provider="cpu")


def test_provider_choice_is_honest(tiny_reward: Path) -> None:
    """Asking for a provider that does not load is an error; `auto` says what it fell back to."""
    rm = OnnxReward(tiny_reward, provider="auto")
    assert rm.provider in available_providers()
    cpu = OnnxReward(tiny_reward, provider="cpu")
    assert cpu.provider == "CPUExecutionProvider" and cpu.provider_note is None  # asked for CPU: no note
    np.testing.assert_allclose(cpu.score("", ["abc", "eee"]), rm.score("", ["abc", "eee"]), atol=1e-4)
    from sia_local.rewards.reward import nvidia_gpu_present

    if "CUDAExecutionProvider" in available_providers() and not nvidia_gpu_present():
        assert rm.provider == "CPUExecutionProvider" and rm.provider_note is None  # no GPU: CUDA is not tried, nothing to report
    if rm.provider == "CPUExecutionProvider" and "CUDAExecutionProvider" in available_providers():
        with pytest.raises(RewardModelError, match="did not load"):  # asked for by name, a provider that does not load is an error
            OnnxReward(tiny_reward, provider="cuda")
        if nvidia_gpu_present():
            assert rm.provider_note and "did not load" in rm.provider_note
    with pytest.raises(RewardModelError, match="unknown reward provider"):
        OnnxReward(tiny_reward, provider="abacus")


def test_string_input_model(tmp_path: Path) -> None:
    """A model that takes the text itself (e.g. a scikit-learn pipeline through skl2onnx): no tokenizer needed."""
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path / "strings"
    folder.mkdir()
    node = helper.make_node("LabelEncoder", ["text"], ["logits"], domain="ai.onnx.ml", keys_strings=["good", "bad"],
                            values_floats=[1.0, -1.0], default_float=0.0)
    graph = helper.make_graph([node], "s", [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)], ir_version=8)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "sia.json").write_text('{"input": "response"}')
    rm = OnnxReward(folder, provider="cpu")
    np.testing.assert_allclose(rm.score("", ["good", "bad", "other"]), [1.0, -1.0, 0.0])
