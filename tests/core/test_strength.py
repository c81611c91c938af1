"""What a weight of 1 means (`core/strength.py`): measured per model and scorer on the tiny GGUF and the tiny ONNX reward."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sia_local.core import strength
from sia_local.core.config import SteerConfig
from sia_local.core.steer import Steerer
from sia_local.errors import ConfigError
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from tests.tiny_models import write_reward_folder

PROMPT = "Tell me something."


def test_change_probability_is_the_overlap_of_the_two_draws() -> None:
    z = np.log(np.array([0.5, 0.3, 0.2]))
    assert strength.change_probability(z, z) == pytest.approx(0.0, abs=1e-12)
    # [0.5, 0.5] -> [1, 0]: u < 0.5 picks the first either way, u >= 0.5 the second before and the first after
    assert strength.change_probability(np.log(np.array([0.5, 0.5])), np.array([0.0, -1e9])) == pytest.approx(0.5)
    # a reward on the last candidate only ever moves mass onto it
    assert 0.0 < strength.change_probability(z, z + np.array([0.0, 0.0, 2.0])) < 1.0


def test_the_multiplier_follows_the_spreads() -> None:
    rng = np.random.default_rng(0)
    logp = [list(np.log(rng.dirichlet(np.ones(10)))) for _ in range(50)]
    rewards = [list(rng.normal(size=10)) for _ in range(50)]
    one = strength.strength_from(logp, rewards)
    assert one.note is None and one.junctions == 50 and 0 < one.change_rate < 1
    assert one.multiplier == pytest.approx(strength.JUNCTION_SPREAD * one.logit_spread / one.reward_spread)
    # a reward 4x larger gets a multiplier 4x smaller: the same steering, whatever the reward's units
    four = strength.strength_from(logp, [[4 * v for v in r] for r in rewards])
    assert four.multiplier == pytest.approx(one.multiplier / 4) and four.change_rate == pytest.approx(one.change_rate)
    few = strength.strength_from(logp[:5], rewards[:5])
    assert few.multiplier == 1.0 and "only 5 junctions" in (few.note or "")
    flat = strength.strength_from(logp, [[1.0] * 10 for _ in rewards])
    assert flat.multiplier == 1.0 and "does not vary" in (flat.note or "")


def test_mix_weight_is_the_total_weight() -> None:
    assert strength.mix_weight(SimpleNamespace(members=[SimpleNamespace(weight=2.0)])) == 2.0
    assert strength.mix_weight(SimpleNamespace(heads=[(None, 1.0), (None, -0.5)])) == 1.5
    assert strength.mix_weight(object()) == 1.0


def test_strength_is_measured_once_applied_and_kept(tiny_lm: LM, tmp_path: Path) -> None:
    reward = OnnxReward(write_reward_folder(tmp_path / "prefers-a", favourite="a", bonus=3.0), provider="cpu")  # not measured yet
    said: list[str] = []
    s = Steerer(tiny_lm, reward, SteerConfig(ratio=0.5, seed=3, max_tokens=40, trace=True), announce=said.append)
    g = s.generate(PROMPT)
    m = g.stats.strength
    assert m is not None and m > 0 and any("measuring how strongly" in line for line in said)
    found = strength.cached(s, 10)
    assert found.multiplier == pytest.approx(m) and found.seconds == 0.0  # from the cache now
    raw = s.generate(PROMPT, strength="reference")
    assert raw.stats.strength is None
    # the first junction comes before any change: the same candidates, their rewards x m on the junction scale
    first = next(i for i, t in enumerate(g.trace or []) if t.junction)
    assert g.token_ids[:first] == raw.token_ids[:first]
    assert np.allclose(np.array(g.trace[first].rewards), m * np.array(raw.trace[first].rewards))  # type: ignore[index, union-attr]
    # a fresh steerer on the same model and scorer reads the cache: no second measurement
    said.clear()
    again = Steerer(tiny_lm, reward, SteerConfig(ratio=0.5, seed=3, max_tokens=5), announce=said.append).generate(PROMPT)
    assert again.stats.strength == pytest.approx(m) and not any("measuring" in line for line in said)
    assert any(m_["multiplier"] == pytest.approx(round(m, 3)) for m_ in strength.measured())
    from sia_local.info import _strengths

    lines = _strengths()
    assert isinstance(lines, list) and any(f"x{round(m, 3):g}" in line and "of junction picks at weight 1" in line for line in lines)


def test_a_reward_in_other_units_steers_the_same(tiny_lm: LM, tmp_path: Path) -> None:
    """The same reward x 5: its multiplier is 5x smaller, so at one weight both steer to the same tokens."""
    # both measured here, on this LM: a measurement is a sampled decode, and another test's LM (another context size)
    # may have measured the shared tiny reward along a path a rounding difference apart
    small = OnnxReward(write_reward_folder(tmp_path / "prefers-e", bonus=10.0), provider="cpu")
    big = OnnxReward(write_reward_folder(tmp_path / "prefers-e-x5", bonus=50.0), provider="cpu")
    cfg = SteerConfig(ratio=0.5, seed=11, max_tokens=40)
    a, b = Steerer(tiny_lm, small, cfg).generate(PROMPT), Steerer(tiny_lm, big, cfg).generate(PROMPT)
    assert a.stats.strength == pytest.approx(5 * b.stats.strength, rel=1e-4)  # type: ignore[operator]
    assert a.token_ids == b.token_ids


def test_raw_scale_where_asked_or_not_steering(tiny_lm: LM, tiny_reward: Path) -> None:
    reward = OnnxReward(tiny_reward, provider="cpu")
    s = Steerer(tiny_lm, reward, SteerConfig(ratio=0.5, seed=1, max_tokens=5))
    assert s.generate(PROMPT, normalize=True).stats.strength is None
    assert s.generate(PROMPT, gate="none").stats.strength is None
    with pytest.raises(ConfigError, match="strength"):
        SteerConfig(strength="loud")


def test_a_model_without_a_chat_template_is_measured_on_plain_text(tiny_reward: Path, tmp_path: Path) -> None:
    """As tau's calibration does: the calibration prompts go in as plain text (Gemma 3's package GGUF has no template)."""
    from tests.tiny_models import write_tiny_gguf

    lm = LM(write_tiny_gguf(tmp_path / "plain.gguf", chat_template=None), n_ctx=512)
    g = Steerer(lm, OnnxReward(tiny_reward, provider="cpu"), SteerConfig(ratio=0.5, seed=2, max_tokens=8)).generate(PROMPT, raw=True)
    assert g.stats.strength is not None and g.stats.strength > 0
