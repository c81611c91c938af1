"""Entropy, top-k, gates and the sampler on hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sia_local.core.config import SteerConfig
from sia_local.core.junction import DenseGate, EntropyGate, FirstNGate, NoGate, RandomGate, entropy, log_normaliser, make_gate, softmax, top_k
from sia_local.core.junction import pick as _pick
from sia_local.core.sequence import _held_back, _find_stop


def test_entropy_hand_computed() -> None:
    # p = (1/2, 1/4, 1/4): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    z = np.log(np.array([0.5, 0.25, 0.25]))
    assert entropy(z) == pytest.approx(1.5 * math.log(2), abs=1e-12)
    assert entropy(np.zeros(10)) == pytest.approx(math.log(10))
    assert entropy(np.array([50.0, 0.0, 0.0])) == pytest.approx(0.0, abs=1e-18)


def test_entropy_is_at_temperature_one_and_shift_invariant() -> None:
    z = np.array([3.0, 1.0, 0.5, -2.0])
    assert entropy(z) == pytest.approx(entropy(z + 100.0))
    p = softmax(z)
    assert entropy(z) == pytest.approx(-(p * np.log(p)).sum())


def test_top_k_sorted_and_does_not_touch_logits() -> None:
    logits = np.array([0.1, 5.0, -1.0, 3.0, 4.0, 2.0], dtype=np.float32)
    before = logits.copy()
    ids, z = top_k(logits, 3)
    assert ids.tolist() == [1, 4, 3]
    assert z.tolist() == [5.0, 4.0, 3.0]
    np.testing.assert_array_equal(logits, before)
    ids_all, _ = top_k(logits, 100)  # k larger than the vocabulary
    assert len(ids_all) == 6


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 40), st.integers(0, 2**32 - 1), st.booleans())
def test_top_k_by_blocks_equals_a_full_sort(n: int, k: int, seed: int, ties: bool) -> None:
    """The block-maximum shortcut returns exactly the k largest values, highest first, for any size
    (below, at and across block boundaries) and with ties."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(n) * 4).astype(np.float32)
    if ties:
        logits = np.round(logits)
    ids, z = top_k(logits, k)
    want = np.sort(logits)[::-1][: min(k, n)]
    np.testing.assert_array_equal(z.astype(np.float32), want)
    np.testing.assert_array_equal(logits[ids], want)
    assert len(set(ids.tolist())) == len(ids)


def test_top_k_at_gemma_vocabulary_size() -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(262_144).astype(np.float32)
    logits[[7, 100_000, 262_143]] = [9.0, 8.0, 10.0]  # the first, a middle and the last block
    ids, z = top_k(logits, 10)
    assert ids[:3].tolist() == [262_143, 7, 100_000]
    np.testing.assert_array_equal(z, np.sort(logits.astype(np.float64))[::-1][:10])


def test_log_normaliser_matches_float64() -> None:
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal(50_000) * 5).astype(np.float32)
    want = np.log(np.exp(logits.astype(np.float64) - logits.max()).sum()) + logits.max()
    assert log_normaliser(logits, float(logits.max())) == pytest.approx(want, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-30, 30)))
def test_entropy_bounds(z: np.ndarray) -> None:
    h = entropy(z)
    assert -1e-9 <= h <= math.log(len(z)) + 1e-9


def test_gates() -> None:
    assert EntropyGate(1.0)(0, 1.0) and not EntropyGate(1.0)(0, 0.999)
    assert DenseGate()(5, 0.0) and not NoGate()(5, 9.0)
    first = FirstNGate(3)
    assert [first(i, 0.0) for i in range(5)] == [True, True, True, False, False]
    gate = RandomGate(0.3, np.random.default_rng(0))
    share = np.mean([gate(i, 0.0) for i in range(20000)])
    assert share == pytest.approx(0.3, abs=0.02)


def test_make_gate_picks_the_configured_gate() -> None:
    assert isinstance(make_gate(SteerConfig(gate="entropy", tau=1.2), 1.2, 0), EntropyGate)
    assert isinstance(make_gate(SteerConfig(gate="dense"), None, 0), DenseGate)
    assert isinstance(make_gate(SteerConfig(gate="random", ratio=0.5), None, 0), RandomGate)
    assert isinstance(make_gate(SteerConfig(gate="first-n", first_n=4), None, 0), FirstNGate)
    assert isinstance(make_gate(SteerConfig(gate="none"), None, 0), NoGate)


def test_pick_inverse_cdf_and_greedy() -> None:
    s = np.log(np.array([0.5, 0.3, 0.2]))
    assert _pick(s, 1.0, 0.0) == 0
    assert _pick(s, 1.0, 0.49) == 0
    assert _pick(s, 1.0, 0.51) == 1
    assert _pick(s, 1.0, 0.81) == 2
    assert _pick(s, 1.0, 0.999999) == 2
    assert _pick(np.array([0.0, 2.0, 1.0]), 0.0, 0.99) == 1  # T = 0 is greedy
    # top_p = 0.6 keeps {0.5, 0.3}: the draw is over those two, renormalised
    assert _pick(s, 1.0, 0.999999, top_p=0.6) == 1
    assert _pick(s, 1.0, 0.6, top_p=0.6) == 0
    assert _pick(s, 1.0, 0.99, top_p=0.4) == 0


def test_combination_moves_mass_to_rewarded_candidate() -> None:
    # s = z + w r: a reward of +2 on the second candidate at w = 1 multiplies its odds by e^2
    z = np.array([1.0, 0.0])
    r = np.array([0.0, 2.0])
    p = softmax(z + 1.0 * r)
    assert p[1] / p[0] == pytest.approx(math.exp(1.0))


def test_stop_string_helpers() -> None:
    assert _find_stop("hello END there", ["END"], 0) == 6
    assert _find_stop("hello", ["END"], 0) is None
    assert _held_back("hello E", ["END"]) == 1
    assert _held_back("hello EN", ["END", "ENOUGH"]) == 2
    assert _held_back("hello", ["END"]) == 0


def test_a_tiny_temperature_is_greedy_not_nan() -> None:
    import warnings

    scores = np.array([1.0, 3.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value" on the way
        assert all(_pick(scores, 1e-300, u) == 1 for u in (0.0, 0.5, 0.999))


def test_kl_at_a_tiny_temperature_is_a_number() -> None:
    from sia_local.core.sequence import _kl

    z = np.array([3.0, 2.0, 1.0])
    assert _kl(z, z, 1e-300) == 0.0 and _kl(z, z, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert _kl(np.array([1.0, 3.0, 2.0]), z, 1.0) > 0
