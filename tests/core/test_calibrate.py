from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sia_local.core.calibrate import TOKENS_PER_PROMPT, _profile_file, calibration_prompts, entropy_profile, is_calibrated, tau_from_entropies
from sia_local.core.config import SteerConfig
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from sia_local.core.steer import Steerer


def test_tau_is_the_upper_quantile() -> None:
    h = np.arange(100, dtype=float)  # 0..99
    assert np.mean(h >= tau_from_entropies(h, 0.2)) == pytest.approx(0.2)
    assert np.mean(h >= tau_from_entropies(h, 0.75)) == pytest.approx(0.75)
    assert tau_from_entropies(h, 0.0) == float("inf")
    assert tau_from_entropies(h, 1.0) == 0.0


UNSEEN = ["Write a limerick about a cat.", "How do tides work?", "List three uses for a paperclip.", "Describe the smell of rain.",
          "Why do onions make people cry?", "Give advice to a nervous public speaker."]


def test_ratio_is_realised_on_unseen_prompts(tiny_lm: LM, tiny_reward: Path) -> None:
    steerer = Steerer(tiny_lm, OnnxReward(tiny_reward, provider="cpu"), SteerConfig(ratio=0.3, max_tokens=48))
    tau = steerer.resolve_tau(steerer.config)
    assert not set(UNSEEN) & set(calibration_prompts())
    junctions = tokens = 0
    for i, prompt in enumerate(UNSEEN):
        stats = steerer.generate(prompt, seed=i).stats
        assert stats.tau == tau and stats.ratio_target == 0.3
        junctions += stats.junctions
        tokens += stats.tokens
    assert junctions / tokens == pytest.approx(0.3, abs=0.1)


def test_each_answer_realises_the_asked_ratio(tiny_lm: LM, tiny_reward: Path) -> None:
    """The online-controlled entropy gate: every 128-token answer lands within 0.05 of the ratio asked."""
    ratio = 0.3
    steerer = Steerer(tiny_lm, OnnxReward(tiny_reward, provider="cpu"), SteerConfig(ratio=ratio, max_tokens=128, weight=3.0))
    tau = steerer.resolve_tau(steerer.config)
    for i, prompt in enumerate(UNSEEN[:4]):
        stats = steerer.generate(prompt, seed=100 + i, raw=True).stats
        assert stats.tokens >= 100
        assert abs(stats.ratio - ratio) <= 0.05, (prompt, stats.ratio)
        fixed = steerer.generate(prompt, seed=100 + i, raw=True, tau=tau).stats  # the pure fixed-tau mode is kept
        assert fixed.ratio_target is None and fixed.tau == tau


def test_control_holds_the_ratio_where_a_fixed_tau_drifts() -> None:
    """Steered text runs hotter than the calibration set: a fixed tau over-steers, the controlled gate does not."""
    from sia_local.core.junction import ControlledEntropyGate, EntropyGate

    rng = np.random.default_rng(0)
    calibration = rng.gamma(2.0, 0.5, size=5000)
    tau = tau_from_entropies(calibration, 0.2)
    for shift in (0.0, 0.4, -0.3):  # the answer's entropies sit higher (or lower) than calibration's
        answer = rng.gamma(2.0, 0.5, size=128) + shift
        fixed, controlled = EntropyGate(tau), ControlledEntropyGate(tau, 0.2)
        share_fixed = np.mean([fixed(i, h) for i, h in enumerate(answer)])
        share_controlled = np.mean([controlled(i, h) for i, h in enumerate(answer)])
        assert abs(share_controlled - 0.2) <= 0.05, (shift, share_controlled)
        if shift:
            assert abs(share_fixed - 0.2) > 0.05, (shift, share_fixed)


@pytest.mark.parametrize("ratio", [0.2, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_control_does_not_wind_up_after_a_low_entropy_stretch(ratio: float, seed: int) -> None:
    """A long near-certain stretch (a code block) leaves no backlog: afterwards every 64-token window
    holds the asked ratio within 0.05, and no step whose top-1 probability is > 0.99 is ever steered."""
    from sia_local.core.junction import ControlledEntropyGate, entropy, softmax

    rng = np.random.default_rng(seed)
    k = 10

    def logits(certain: bool) -> np.ndarray:
        if certain:  # one token far ahead of the rest: p1 > 0.99
            return np.concatenate([[rng.uniform(7.0, 12.0)], rng.normal(0.0, 0.5, k - 1)])
        return np.sort(rng.normal(0.0, rng.uniform(0.3, 3.0), k))[::-1]

    calibration = [entropy(logits(rng.random() < 0.3)) for _ in range(4000)]
    gate = ControlledEntropyGate(tau_from_entropies(np.asarray(calibration), ratio), ratio, k=k)
    steps = [logits(True) for _ in range(120)] + [logits(rng.random() < 0.3) for _ in range(400)]
    hits = []
    for i, z in enumerate(steps):
        hit = gate(i, entropy(z))
        assert not (hit and softmax(z)[0] > 0.99), f"step {i} steered with p1 = {softmax(z)[0]:.4f}"
        hits.append(hit)
    after = np.asarray(hits[120:], dtype=float)
    windows = np.convolve(after, np.ones(64), "valid") / 64
    assert np.abs(windows - ratio).max() <= 0.05, (windows.min(), windows.max())


def test_profile_is_cached_per_model(tiny_lm: LM) -> None:
    first = entropy_profile(tiny_lm, top_k=10, temperature=1.0)
    assert is_calibrated(tiny_lm, 10), "the profile is written to the cache"
    # the cache folder also holds strength fits and other k's profiles: read this profile's own file
    payload = json.loads(_profile_file(tiny_lm, 10, 1.0, calibration_prompts(), TOKENS_PER_PROMPT, 0).read_text())
    assert payload["top_k"] == 10 and len(payload["entropies"]) == len(first)
    again = entropy_profile(tiny_lm, top_k=10, temperature=1.0)
    np.testing.assert_allclose(again, first, atol=1e-6)
    other_k = entropy_profile(tiny_lm, top_k=5, temperature=1.0)
    assert other_k.max() <= np.log(5) + 1e-9
