"""scorer.py: the four kinds that implement the Scorer protocol really have every part of it."""

from __future__ import annotations

import inspect

from sia_local.heads.head import BranchHead, PrefixHead
from sia_local.rewards.reward import OnnxReward
from sia_local.core.scorer import Junction, Scorer
from sia_local.heads.vm import ValueModel


def test_every_kind_has_the_whole_protocol() -> None:
    wanted = {"score_junctions", "score_responses", "info", "reset", "objective", "lm_state"}
    for kind in (OnnxReward, ValueModel, BranchHead, PrefixHead):
        members = {name for name, _ in inspect.getmembers(kind)}
        assert wanted <= members, (kind.__name__, wanted - members)
    assert {"name", "provider", "lm_state"} <= set(Scorer.__annotations__)
    assert (OnnxReward.lm_state, ValueModel.lm_state, BranchHead.lm_state, PrefixHead.lm_state) == (None, None, "branches", "hidden")


def test_a_junction_computes_its_texts_on_demand() -> None:
    import numpy as np

    calls = []
    j = Junction("hi", [1, 2], [3], np.array([4, 5]), lambda: calls.append(1) or ["a", "b"])
    assert calls == [] and j.texts() == ["a", "b"] and calls == [1] and j.key == 0 and j.decoder is None
