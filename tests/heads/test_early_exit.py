"""Early-exit branches: layer taps on llama.cpp's eval callback, the layer head, junction distillation, --min-prob."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sia_local.core.config import SteerConfig
from sia_local.heads.distill import distill_head
from sia_local.errors import ConfigError, ModelError
from sia_local.fit import fit_junction_head, junction_agreement
from sia_local.heads.head import LayerHead, load_head
from sia_local.core.junction import top_k
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from sia_local.core.steer import Steerer, scored_candidates
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
    assert lm.taps is not None and lm.early_exit == "early exit (layer taps)"
    prompt = lm.tokenize("Hello there, how are you")
    cand = [int(c) for c in top_k(lm.prefill(prompt), 8)[0]]
    ref.prefill(prompt)
    full = lm.branch_layers(cand, [1, 3], final=True)  # the whole graph, observed at two layers and the end
    whole = lm.taps.calls
    stopped = lm.branch_layers(cand, [1])  # stops after layer 1
    assert lm.taps.calls < 0.5 * whole  # it stopped early: far fewer nodes than a whole graph were offered
    np.testing.assert_array_equal(stopped[1], full[1])
    alone = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    np.testing.assert_allclose(full[lm.n_layer], np.stack([alone.hidden_states([*prompt, c])[-1] for c in cand]), atol=1e-4)
    for token in (cand[2], 7, 11):  # the chosen token is decoded as a plain step; the branches left nothing behind
        np.testing.assert_array_equal(lm.step(token), ref.step(token))
    assert lm.taps.calls == 0 or lm.taps.got  # ordinary steps are not counted: nothing is armed between tapped decodes


def test_a_one_candidate_tapped_decode_after_a_one_token_step_is_read(deep_gguf: Path) -> None:
    """A 1-candidate decode has the shape of the ordinary step before it, so llama.cpp reuses that graph: the callback
    (always installed) must still see it, and give the same states as a fresh context."""
    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    fresh = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    prompt = lm.tokenize("One two three four")
    lm.prefill(prompt)
    lm.step(5)  # a one-token decode with one output: the same shape as a 1-candidate branch decode
    first = lm.branch_layers([9], [2])[2]
    again = lm.branch_layers([9], [2])[2]
    fresh.prefill([*prompt, 5])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, fresh.branch_layers([9], [2])[2], atol=1e-5)
    assert first.shape == (1, lm.n_embd)


def test_a_decode_that_raises_inside_the_taps_restores_the_context(deep_gguf: Path) -> None:
    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    ref = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    prompt = lm.tokenize("Hello there")
    lm.prefill(prompt)
    ref.prefill(prompt)
    with pytest.raises(ModelError, match="branches asked"):
        lm.branch_layers(list(range(lm.max_branches + 1)), [1], final=True)  # refused before anything is armed
    def failing() -> int:
        raise ModelError("a decode that fails", "")
    with pytest.raises(ModelError, match="a decode that fails"):
        lm.taps.decode(failing, [b"l_out-1"], b"l_out-1", cleanup=lambda: None)
    assert not lm.taps._want  # disarmed: ordinary steps see nothing armed
    import llama_cpp
    monkey = lm._start_branches
    lm._start_branches = lambda *a, **k: (_ for _ in ()).throw(ModelError("inside the tapped decode", ""))  # type: ignore[method-assign]
    with pytest.raises(ModelError, match="inside the tapped decode"):
        lm.branch_layers([3, 4], [1], final=True)  # the embeddings flag was on for this decode
    lm._start_branches = monkey  # type: ignore[method-assign]
    assert not lm.taps._want
    del llama_cpp
    np.testing.assert_array_equal(lm.step(4), ref.step(4))  # the embeddings flag is off again: a plain step as before
    assert lm.branch_layers([3, 4], [1])[1].shape == (2, lm.n_embd)


def test_the_taps_are_gated_on_the_tested_llama_cpp_python_versions(monkeypatch: pytest.MonkeyPatch, deep_gguf: Path) -> None:
    from sia_local.llama.taps import TESTED, supported

    lo, hi = TESTED
    assert supported(".".join(map(str, lo)), env={}) is None
    assert "outside the versions" in supported(".".join(map(str, hi)), env={})
    assert "outside the versions" in supported("0.2.90", env={})
    assert supported("9.9.9", env={"SIA_TAPS": "on"}) is None  # an untested version, asked for
    assert "SIA_TAPS=off" in supported(".".join(map(str, lo)), env={"SIA_TAPS": "off"})
    monkeypatch.setenv("SIA_TAPS", "off")
    lm = LM(deep_gguf, n_ctx=128, hidden=True)
    assert lm.taps is None and lm.early_exit.startswith("full branches: layer taps are off")
    lm.prefill(lm.tokenize("Hi"))
    with pytest.raises(ModelError, match="no layer taps"):
        lm.branch_layers([1, 2], [1])


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
    from sia_local.core.search import best_of_n

    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    teacher = OnnxReward(tiny_reward, provider="cpu")
    distill_head(lm, teacher, PROMPTS, tmp_path / "h", samples_per_prompt=0, junction_tokens=12, junction_ratio=0.5, layer=1)
    head = load_head(tmp_path / "h" / "layer.npz", lm)
    steerer = Steerer(lm, head, SteerConfig(gate="dense", weight=0.0, max_tokens=10, seed=7))
    with pytest.raises(ConfigError, match="fitted on differences between a junction's candidates"):
        best_of_n(steerer, "Tell me a story.", 2)  # a junction head alone cannot rank whole answers
    head.teacher = lambda: teacher  # what runtime.load_scorer attaches (the card's teacher)
    zero = best_of_n(steerer, "Tell me a story.", 3)
    assert "teacher" in zero.ranked_by and zero.to_dict()["ranked_by"] == zero.ranked_by
    prepared = steerer.prepare("Tell me a story.", None, False)
    by_teacher = teacher.score_responses(prepared.reward_prompt, prepared.ids, [(c.generation.text, c.generation.token_ids) for c in zero.candidates])
    assert [c.score for c in zero.candidates] == pytest.approx(list(by_teacher))
    assert zero.best_index == int(np.argmax(by_teacher))
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
    with pytest.raises(ConfigError, match="validation junction"):
        fit_junction_head(x, y, np.array(["train"] * 250 + ["test"] * 50))  # no validation: alpha cannot be chosen


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


def test_runtime_attaches_the_teacher_a_head_was_distilled_from(deep_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    from sia_local.runtime import ScorerSettings, load_scorer

    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    card = distill_head(lm, OnnxReward(tiny_reward, provider="cpu"), PROMPTS[:4], tmp_path / "h", samples_per_prompt=0, junction_tokens=8,
                        junction_ratio=0.5, layer=1)
    assert card["teacher_path"] == str(tiny_reward)
    head = load_scorer(ScorerSettings(path=tmp_path / "h" / "layer.npz"), lm)
    assert head.teacher is not None and "teacher" in head.info().details["ranks_answers_with"]
    assert head.info().details["early_exit"] == f"early exit at layer 1 of {lm.n_layer}"


def test_best_of_n_contexts_are_freed_after_each_search(deep_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    """Nothing of a Best-of-N context (its callback, taps, last copies) stays referenced from the model: 30 searches
    leave no BatchContext or LayerTaps alive."""
    import gc

    from sia_local.llama import BatchContext
    from sia_local.llama.taps import LayerTaps
    from sia_local.core.search import best_of_n

    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    teacher = OnnxReward(tiny_reward, provider="cpu")
    distill_head(lm, teacher, PROMPTS[:4], tmp_path / "h", samples_per_prompt=0, junction_tokens=8, junction_ratio=0.5, layer=1)
    head = load_head(tmp_path / "h" / "layer.npz", lm)
    head.teacher = lambda: teacher
    steerer = Steerer(lm, head, SteerConfig(gate="dense", max_tokens=4, seed=1))

    def alive() -> tuple[int, int]:
        gc.collect()
        objs = gc.get_objects()
        return sum(isinstance(o, BatchContext) for o in objs), sum(isinstance(o, LayerTaps) for o in objs)

    before = alive()
    for _ in range(30):
        best_of_n(steerer, "Tell me a story.", 3)
    assert alive() == before  # the LM's own taps only


def test_junctions_are_read_one_layer_at_a_time(deep_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    from sia_local import junction_data

    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    card = distill_head(lm, OnnxReward(tiny_reward, provider="cpu"), PROMPTS, tmp_path / "h", samples_per_prompt=0, junction_tokens=8,
                        junction_ratio=0.5, layer=1)
    folder = tmp_path / "h" / "junctions"
    rewards, _, _, owner = junction_data.load(folder, len(PROMPTS))
    full = np.concatenate([np.load(f)["states"] for f in sorted(folder.glob("p*.npz"))])  # (J, L', k, d): what is no longer loaded
    for i in range(full.shape[1]):
        layer = junction_data.load_layer(folder, len(PROMPTS), i)
        assert layer.shape == (len(rewards), rewards.shape[1], lm.n_embd) and np.array_equal(layer, full[:, i])
    assert card["junctions"]["count"] == len(rewards) == len(owner)
