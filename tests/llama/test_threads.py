"""The thread governor on synthetic step times, and on a real llama.cpp context (counts change, results do not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sia_local.llama import LM
from sia_local.llama.threads import ThreadGovernor


def _drive(gov: ThreadGovernor, step_time: dict[int, float], steps: int) -> list[int]:
    """Feed `steps` decode times; `step_time[n]` is what a step takes at n threads. Returns the counts used."""
    used = []
    for _ in range(steps):
        used.append(gov.current)
        gov.record(step_time[gov.current])
    return used


def test_quiet_machine_keeps_all_threads_and_probes_rarely() -> None:
    gov = ThreadGovernor(2)
    used = _drive(gov, {2: 0.010, 1: 0.016}, 4000)
    assert gov.settled == 2 and gov.switches == 0
    assert used.count(1) / len(used) < 0.02  # probes of the slower count: a few steps per thousand
    assert used[-500:].count(1) <= 9  # the interval has grown to its maximum


def test_busy_machine_moves_to_fewer_threads_at_once() -> None:
    gov = ThreadGovernor(2)
    used = _drive(gov, {2: 0.040, 1: 0.017}, 200)  # two threads stall beside a busy process
    assert gov.settled == 1
    assert used[40:].count(1) / len(used[40:]) > 0.85


def test_contention_arriving_and_leaving_is_followed() -> None:
    gov = ThreadGovernor(4)
    _drive(gov, {4: 0.010, 2: 0.015}, 300)
    assert gov.settled == 4
    _drive(gov, {4: 0.060, 2: 0.020}, 40)  # another program starts: found within a few windows, not at the next routine probe
    assert gov.settled == 2
    _drive(gov, {4: 0.010, 2: 0.015}, 2500)  # and leaves: found at a routine probe
    assert gov.settled == 4 and gov.switches == 2


def test_slow_growth_of_step_time_with_context_does_not_flip() -> None:
    gov = ThreadGovernor(2)
    for i in range(3000):  # steps get slower as the context grows (attention), for every count alike
        gov.record((0.010 if gov.current == 2 else 0.016) * (1 + i / 1500))
    assert gov.settled == 2 and gov.switches == 0


def test_needs_two_threads() -> None:
    with pytest.raises(ValueError):
        ThreadGovernor(1)


def test_lm_changes_thread_count_without_changing_results(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIA_THREAD_POLICY", raising=False)
    fixed = LM(tiny_gguf, n_ctx=256, n_threads=2)
    assert fixed.governor is None  # a count the user gave is kept
    adaptive = LM(tiny_gguf, n_ctx=256)
    if adaptive.governor is None:
        pytest.skip("one core: nothing to choose")
    adaptive.governor = ThreadGovernor(2, window=2, first_interval=4, max_interval=4)  # switch often
    prompt = fixed.tokenize("Hello there")
    a, b = fixed.prefill(prompt).copy(), adaptive.prefill(prompt).copy()
    counts = set()
    for t in range(40):
        np.testing.assert_array_equal(a, b)
        token = int(np.argmax(a))
        a, b = fixed.step(token).copy(), adaptive.step(token).copy()
        counts.add(adaptive.n_threads)
    assert counts == {1, 2}
    monkeypatch.setenv("SIA_THREAD_POLICY", "fixed")
    assert LM(tiny_gguf, n_ctx=256).governor is None
