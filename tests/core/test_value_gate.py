"""The value gate: entropy screens twice the ratio, the reward's expected gain picks which half is steered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sia_local.core.config import SteerConfig
from sia_local.core.junction import DenseGate, EntropyGate, RandomGate, ValueGate, expected_gain, make_gate
from sia_local.core.steer import Steerer
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward

PROMPT = "Tell me something."


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, 10, elements=st.floats(-8, 8)), arrays(np.float64, 10, elements=st.floats(-5, 5)))
def test_expected_gain_is_never_negative_and_zero_without_a_spread(z: np.ndarray, r: np.ndarray) -> None:
    assert expected_gain(z, r) >= -1e-9
    assert expected_gain(z, np.full(10, 3.0)) == pytest.approx(0.0, abs=1e-12)


def test_the_gain_is_large_where_plausible_candidates_differ_in_reward() -> None:
    r = np.array([1.0, -1.0] + [0.0] * 8)
    unsure = np.array([2.0, 2.0] + [-5.0] * 8)  # two likely candidates the reward tells apart
    certain = np.array([9.0, 0.0] + [-5.0] * 8)  # the model knows; steering hardly moves the draw
    indifferent = np.array([-5.0, -5.0] + [2.0] * 8)  # unsure among candidates the reward does not care about
    assert expected_gain(unsure, r) > 10 * expected_gain(certain, r)
    assert expected_gain(unsure, r) > 10 * expected_gain(indifferent, r)


def test_the_value_gate_steers_the_asked_share_at_the_steps_with_the_largest_gains() -> None:
    rng = np.random.default_rng(0)
    for screen, scored in ((RandomGate(0.4, np.random.default_rng(1)), 0.4), (DenseGate(), 1.0)):
        gate = ValueGate(screen, ratio=0.2, scored=scored)
        kept, gains = [], []
        for step in range(4000):
            if not gate(step, 0.0):
                continue
            z, added = rng.normal(size=10) * 2, rng.normal(size=10) * rng.exponential()
            kept.append(gate.keep(z, added, 1.0))
            gains.append(expected_gain(z, added))
        kept_, gains_ = np.array(kept), np.array(gains)
        assert kept_.sum() / 4000 == pytest.approx(0.2, abs=0.02)
        assert gains_[kept_].mean() > 2 * gains_[~kept_].mean()


def test_the_value_gate_is_registered_and_screens_at_the_calibrated_tau() -> None:
    gate = make_gate(SteerConfig(gate="value", ratio=0.2), 1.1, 0)
    assert isinstance(gate, ValueGate) and gate.level == pytest.approx(0.5)
    fixed = make_gate(SteerConfig(gate="value", tau=1.3), 1.3, 0)  # a tau given: the screen keeps it fixed
    assert isinstance(fixed, ValueGate) and isinstance(fixed.screen, EntropyGate)
    assert isinstance(make_gate(SteerConfig(gate="value", tau=1.3, ratio=None), 1.3, 0), EntropyGate)  # a tau alone: nothing to share out


@pytest.fixture(scope="module")
def reward(tiny_reward: Path) -> OnnxReward:
    return OnnxReward(tiny_reward, provider="cpu")


def test_on_a_model_scored_steps_outnumber_steered_ones_and_only_steered_ones_change(tiny_lm: LM, reward: OnnxReward) -> None:
    s = Steerer(tiny_lm, reward, SteerConfig(gate="value", ratio=0.2, seed=4, max_tokens=120, trace=True, strength="reference"))
    entropy_tau = s.gate_tau(SteerConfig(ratio=0.2))
    value_tau = s.gate_tau(s.config)
    assert value_tau < entropy_tau  # calibrated for twice the ratio: a lower threshold
    g = s.generate(PROMPT)
    assert g.trace is not None and g.stats.tokens >= 40
    assert g.stats.reward_calls > g.stats.junctions > 0  # scored more steps than it steered
    for t in g.trace:
        assert t.changed <= t.junction
        assert (t.rewards is not None) == t.junction
    assert g.stats.ratio_target == 0.2
