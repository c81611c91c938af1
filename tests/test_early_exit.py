"""Early-exit branches: layer taps on llama.cpp's eval callback, the layer head, junction distillation, --min-prob."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sia_local.config import SteerConfig
from sia_local.distill import distill_head
from sia_local.errors import ConfigError
from sia_local.fit import fit_junction_head, junction_agreement
from sia_local.head import LayerHead, load_head
from sia_local.junction import top_k
from sia_local.llama import LM
from sia_local.reward import OnnxReward
from sia_local.steer import Steerer, scored_candidates
from tiny_models import write_tiny_gguf

PROMPTS = ["Tell me about rain.", "Write a note to a friend.", "Describe a quiet morning.", "What is a good breakfast?",
           "Give me a tip for sleeping well.", "Write two lines about the sea.", "How do bees make honey?", "Plan a picnic."]


@pytest.fixture(scope="module")
def deep_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama with 6 layers, so a graph can stop in the middle."""
    return write_tiny_gguf(tmp_path_factory.mktemp("deep") / "deep.gguf", n_layer=6)


def test_a_stopped_graph_leaves_the_context_as_if_nothing_branched(deep_gguf: Path) -> None:
    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    ref = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    assert lm.taps is not None and lm.taps.toggled  # the callback is found in the context and switched per decode
    prompt = lm.tokenize("Hello there, how are you")
    cand = [int(c) for c in top_k(lm.prefill(prompt), 8)[0]]
    ref.prefill(prompt)
    full = lm.branch_layers(cand, [1, 3], final=True)  # the whole graph, observed at two layers and the end
    stopped = lm.branch_layers(cand, [1])  # stops after layer 1
    assert lm.taps.calls < 0.5 * 6 * 30  # it stopped early: far fewer nodes than a whole graph were offered
    np.testing.assert_array_equal(stopped[1], full[1])
    alone = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    np.testing.assert_allclose(full[lm.n_layer], np.stack([alone.hidden_states([*prompt, c])[-1] for c in cand]), atol=1e-4)
    assert lm.taps._slot is not None and lm.taps._slot.value is None  # switched off again: ordinary steps build graphs without it
    for token in (cand[2], 7, 11):  # the chosen token is decoded as a plain step; the branches left nothing behind
        np.testing.assert_array_equal(lm.step(token), ref.step(token))
    lm.taps.always_on()  # the fallback when the parameter cannot be switched: same states, same context
    np.testing.assert_array_equal(lm.branch_layers(cand, [1])[1].shape, (len(cand), lm.n_embd))
    np.testing.assert_array_equal(lm.step(3), ref.step(3))


def test_layers_outside_the_model_are_refused(deep_gguf: Path) -> None:
    lm = LM(deep_gguf, n_ctx=128, hidden=True)
    lm.prefill(lm.tokenize("Hi"))
    with pytest.raises(Exception, match="layers"):
        lm.branch_layers([1, 2], [5])  # the last layer is the branch head's, not an early exit


def test_junction_heads_are_fitted_per_layer_and_steer(deep_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    lm = LM(deep_gguf, n_ctx=256, hidden=True)
    teacher = OnnxReward(tiny_reward, provider="cpu")
    card = distill_head(lm, teacher, PROMPTS, tmp_path / "h", samples_per_prompt=0, junction_tokens=16, junction_ratio=0.5)
    assert {"branch.npz", "layer.npz", "head.json"} <= {p.name for p in (tmp_path / "h").iterdir()}
    assert [row["layer"] for row in card["layers"]][-1] == lm.n_layer and card["junctions"]["count"] > 0
    head = load_head(tmp_path / "h" / "layer.npz", lm)
    assert isinstance(head, LayerHead) and head.early_exit and head.layer == card["layer"]["layer"]
    steered = Steerer(lm, head, SteerConfig(gate="dense", weight=0.0, max_tokens=16, seed=3)).generate("Tell me a story.")
    base = Steerer(lm, None, SteerConfig(gate="none", max_tokens=16, seed=3)).generate("Tell me a story.")
    assert steered.token_ids == base.token_ids and steered.stats.reward_calls == steered.stats.tokens  # weight 0: cost only
    moved = Steerer(lm, head, SteerConfig(gate="dense", weight=50.0, max_tokens=16, seed=3)).generate("Tell me a story.")
    assert moved.stats.changed > 0
    again = distill_head(lm, teacher, PROMPTS, tmp_path / "h", samples_per_prompt=0, junction_tokens=16, junction_ratio=0.5)
    assert again["junctions"]["count"] == card["junctions"]["count"]  # resumed from the recorded junctions, not recorded again
    with pytest.raises(ConfigError, match="junction|settings"):
        distill_head(lm, teacher, PROMPTS, tmp_path / "h", samples_per_prompt=0, junction_tokens=8, junction_ratio=0.5)


def test_best_of_n_runs_early_exit_heads(deep_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    """Each sequence's candidates stop at layer l in one batched decode; weight 0 changes nothing but cost, and a
    steered sample ranks its candidates as the single-sequence run does (flash attention off)."""
    from sia_local.search import best_of_n

    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    distill_head(lm, OnnxReward(tiny_reward, provider="cpu"), PROMPTS, tmp_path / "h", samples_per_prompt=0, junction_tokens=12,
                 junction_ratio=0.5, layer=1)
    head = load_head(tmp_path / "h" / "layer.npz", lm)
    steerer = Steerer(lm, head, SteerConfig(gate="dense", weight=0.0, max_tokens=10, seed=7))
    zero = best_of_n(steerer, "Tell me a story.", 3)
    plain = best_of_n(steerer, "Tell me a story.", 3, gate="none")
    assert [c.generation.token_ids for c in zero.candidates] == [c.generation.token_ids for c in plain.candidates]
    assert zero.stats.reward_calls == max(c.generation.stats.tokens for c in zero.candidates)  # every sequence's junctions of a step: one call
    steered = best_of_n(steerer, "Tell me a story.", 3, weight=30.0)
    alone = [steerer.generate("Tell me a story.", weight=30.0, seed=7 + i).token_ids for i in range(3)]
    assert sum(c.generation.token_ids == a for c, a in zip(steered.candidates, alone)) >= 2


def test_the_junction_fit_learns_rankings_not_levels() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=16)
    x = rng.normal(size=(300, 10, 16)) + rng.normal(size=(300, 1, 16)) * 5  # a large per-junction offset the head must ignore
    y = x @ w + rng.normal(size=(300, 1)) * 10 + rng.normal(size=(300, 10)) * 0.1
    split = np.array(["train"] * 200 + ["val"] * 50 + ["test"] * 50)
    fit = fit_junction_head(x, y, split)
    assert fit["test"]["kendall"] > 0.9 and fit["test"]["same_top"] > 0.8
    assert junction_agreement(-y[:5], y[:5])["kendall"] == pytest.approx(-1.0)


def test_min_prob_scores_only_the_candidates_that_can_matter(tiny_gguf: Path, tiny_reward: Path) -> None:
    z = np.array([3.0, 2.9, 1.0, -2.0, -5.0])
    assert scored_candidates(z, 0.0) is None
    assert scored_candidates(z, 0.1).tolist() == [True, True, True, False, False]  # p >= 0.1 p1: z >= z1 - 2.30
    assert scored_candidates(z, 0.99).tolist() == [True, True, False, False, False]  # at least two
    lm = LM(tiny_gguf, n_ctx=256)
    reward = OnnxReward(tiny_reward, provider="cpu")
    steerer = Steerer(lm, reward, SteerConfig(gate="dense", max_tokens=16, seed=2, trace=True))
    full = steerer.generate("Tell me a story.", weight=0.0)
    pruned = steerer.generate("Tell me a story.", weight=0.0, min_prob=0.2)
    assert pruned.token_ids == full.token_ids  # weight 0: the same text
    assert pruned.stats.candidates_scored < full.stats.candidates_scored
    steered = steerer.generate("Tell me a story.", weight=4.0, min_prob=0.2)
    for info in steered.trace or []:
        assert info.rewards is not None and len(info.rewards) == len(info.candidates or [])  # k values in the trace, the unscored at the lowest
