"""The steering signal's seam: what the loop asks of anything that scores candidates.

Four kinds implement `Scorer`: sequence reward models on text (`reward.OnnxReward`, kind "reward"),
token-level ONNX value models on the LM's own token ids (`vm.ValueModel`, "value-model"), and value
heads on the LM's own hidden state, scored inside llama.cpp (`head.BranchHead` and `head.PrefixHead`,
"lm-head"). The steering loop, Best-of-N, bench, chat and the server use only this protocol; none of
them checks a concrete class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from .junction import Junction  # what a scorer receives at a junction (defined beside the gates)

__all__ = ["Junction", "Scorer", "ScorerInfo", "steered_by"]


@dataclass(frozen=True)
class ScorerInfo:
    """What `sia info`, `--json` and the server report about a loaded scorer."""

    kind: str  # "reward" (a sequence reward model), "value-model" (an ONNX value model) or "lm-head" (a value head on the LM)
    name: str
    path: str
    provider: str  # the onnxruntime provider that really runs it
    provider_note: str | None  # why it is not the provider asked for, if so
    objective: str | None  # what a higher score means, in words
    details: dict[str, Any] = field(default_factory=dict)  # kind-specific facts (inputs, labels, samples, ...)


class Scorer(Protocol):
    """Scores the k candidates of junctions, and whole responses (for Best-of-N and benchmarks)."""

    name: str
    provider: str
    lm_state: str | None  # what it needs from the LM's context: None, "branches" (k-branch decodes) or "hidden" (last hidden states)

    @property
    def objective(self) -> str | None:
        """What a higher score means, in words (None when the folder does not say)."""
        ...

    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        """(k,) float64 rewards per junction; higher is better. All junctions of a step come together."""
        ...

    def score_responses(self, prompt: str, prompt_ids: Sequence[int], responses: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
        """(n,) one reward per finished response (text, token ids)."""
        ...

    def info(self) -> ScorerInfo:
        ...

    def reset(self) -> None:
        """Forget per-generation state (caches); called when a generation ends."""
        ...


KIND_WORDS = {"lm-head": "head", "objectives": "teacher", "reward": "reward model", "value-model": "value model"}


def steered_by(scorer: Any) -> str | None:
    """Which scorer steers, in a phrase every result carries (stats, rows, usage.sia, the page): its kind, its name and,
    for a head, how its junctions run -- so a head that is missing (the teacher steered) or fell back to full branches
    shows in the results, not only in `sia info`."""
    if scorer is None:
        return None
    if not hasattr(scorer, "info"):  # a user's own scorer that keeps to less than the protocol
        return str(getattr(scorer, "name", type(scorer).__name__))
    info = scorer.info()
    how = info.details.get("early_exit")
    return f"{KIND_WORDS.get(info.kind, info.kind)} {info.name}" + (f" ({how})" if how else "")
