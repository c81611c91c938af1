"""Distillation keeps what it was given: its settings live with its data, splits are by situation, alpha is scale-free."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sia_local.heads.distill import sample_labelled
from sia_local.heads.runs import RUN_FILE
from sia_local.fit import ALPHAS, fit_value_heads, situation_groups, split_by_situation
from sia_local.errors import ConfigError
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward

TEMPLATES = ["Write a short message about {}.", "How should I deal with {}?", "Describe {} in a few sentences.", "Tell a story about {}."]
SITUATIONS = ["a parcel that arrived broken", "a bus that was forty minutes late", "a noisy party upstairs on a weeknight",
              "a garden ruined by a storm", "the first snow of the year", "a friend who always arrives late",
              "a laptop that crashed before I saved my thesis", "learning to bake bread", "a flight that was cancelled at midnight",
              "a quiet Sunday afternoon in the park"]


def test_templated_prompts_split_by_situation_never_by_template() -> None:
    prompts = [t.format(s) for s in SITUATIONS for t in TEMPLATES]
    groups = situation_groups(prompts)
    assert len(SITUATIONS) - 2 <= len(set(groups)) <= len(SITUATIONS)  # two situations that share a phrase may merge: never a split
    for i, s in enumerate(SITUATIONS):  # the prompts of one situation share a group
        assert len({groups[j] for j, p in enumerate(prompts) if s in p}) == 1, s
    parts = split_by_situation(prompts, seed=3)
    for s in SITUATIONS:
        assert len({parts[j] for j, p in enumerate(prompts) if s in p}) == 1  # no situation straddles train / val / test
    assert {"train", "val", "test"} == set(parts)
    with pytest.raises(ConfigError, match="situation"):
        split_by_situation([t.format(SITUATIONS[0]) for t in TEMPLATES])


def test_a_users_file_with_unevenly_repeated_situations_never_straddles_a_split() -> None:
    """40 situations, each asked 2 to 6 ways (the review's case: the old median rule let 15 of 40 straddle)."""
    import random

    rng = random.Random(7)
    nouns = ["kettle", "violin", "tractor", "hammock", "lantern", "glacier", "pigeon", "saxophone", "canoe", "wardrobe"]
    first = ("amber basil cedar dune ember fjord garnet harbor indigo jasper kelp lilac maple nectar onyx pepper quartz "
             "raven saffron thistle umber velvet willow yarrow zinnia acorn birch clover dahlia elm fennel ginger hazel iris "
             "juniper kale laurel myrtle nutmeg olive").split()
    second = ("parrot quilt rocket sled tulip urn vase wagon yacht zither anchor bucket candle drum easel fiddle gong hatchet "
              "igloo jug kite ladder mitten needle oar pail quiver rake saddle tent umbrella vest whistle xylophone yoyo zipper "
              "apron bellows compass dome").split()
    situations = [f"the {a} {b} I lost last spring" for a, b in zip(first, second)]  # worded apart, as real situations are
    templates = ["Write a short note about {}.", "How should I deal with {}?", "Describe {} in a few words.", "Tell a story about {}.",
                 "What would you do about {}?", "Give me advice on {}."]
    prompts, owner = [], []
    for i, s in enumerate(situations):
        for t in rng.sample(templates, rng.randint(2, 6)):
            prompts.append(t.format(s))
            owner.append(i)
    groups = situation_groups(prompts)
    assert all(len({groups[j] for j in range(len(prompts)) if owner[j] == i}) == 1 for i in range(40))
    parts = split_by_situation(prompts, seed=1)
    assert all(len({parts[j] for j in range(len(prompts)) if owner[j] == i}) == 1 for i in range(40))
    assert {"train", "val", "test"} == set(parts)
    chained = [f"Tell me about the {n} and the {m} at home." for n in nouns for m in nouns if n != m]  # everything shares phrases
    with pytest.raises(ConfigError, match="no split keeps situations apart|situation"):
        split_by_situation(chained)


def test_alpha_does_not_depend_on_the_scale_of_the_hidden_state() -> None:
    rng = np.random.default_rng(0)
    h = [rng.normal(size=(int(rng.integers(3, 9)), 16)) for _ in range(90)]
    w_true = rng.normal(size=16)
    r = np.array([x.mean(0) @ w_true + rng.normal(0, 0.5) for x in h])
    split = np.array(["train"] * 60 + ["val"] * 15 + ["test"] * 15)
    small, large = fit_value_heads(h, r, split), fit_value_heads([1000 * x for x in h], r, split)
    for name in ("mean", "prefix-value"):
        assert small[name]["alpha"] == large[name]["alpha"]  # the same choice for any scale of hidden state
        assert small[name]["test_mean_corr"] == pytest.approx(large[name]["test_mean_corr"], abs=1e-6)
        assert np.isfinite(small[name]["test_per_position_corr"]) and small[name]["test_mean_corr"] > 0.8
    assert ALPHAS[0] < small["mean"]["alpha"] < ALPHAS[-1] and not small["mean"]["alpha_on_edge"]


def test_a_rerun_with_other_settings_is_refused_and_fresh_starts_over(tiny_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    lm = LM(tiny_gguf, n_ctx=256)
    teacher = OnnxReward(tiny_reward, provider="cpu")
    data = tmp_path / "data.jsonl"
    prompts = ["Tell me about rain.", "Write a note.", "Describe a morning."]
    rows = sample_labelled(lm, teacher, prompts, data, samples_per_prompt=2, max_tokens=6)
    before = data.read_bytes()
    assert len(rows) == 6 and json.loads((tmp_path / RUN_FILE).read_text())["samples_per_prompt"] == 2
    for change, fragment in [({"samples_per_prompt": 3}, "samples_per_prompt (2 then, 3 now)"), ({"max_tokens": 7}, "max_tokens"),
                             ({"seed": 5}, "seed"), ({"prompts": prompts[:2]}, "the prompts")]:
        kwargs = {"samples_per_prompt": 2, "max_tokens": 6, "seed": 0, "prompts": prompts, **change}
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as info:
            sample_labelled(lm, teacher, kwargs.pop("prompts"), data, **kwargs)
        assert "--fresh" in str(info.value)
        assert data.read_bytes() == before  # nothing lost, nothing mixed
    assert sample_labelled(lm, teacher, prompts, data, samples_per_prompt=2, max_tokens=6) == rows  # the same settings resume
    again = sample_labelled(lm, teacher, prompts, data, samples_per_prompt=3, max_tokens=6, fresh=True)
    assert len(again) == 9 and not list(tmp_path.glob("*.tmp"))
