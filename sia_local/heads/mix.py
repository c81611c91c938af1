"""Several objectives' heads as one scorer: a weighted sum of heads, read from one tapped decode.

`-r kind -r polite:0.5` on a model with a head for each: every head's values are on its objective's
reference scale (it was distilled from the standardised objective, `rewards/mix.py`), so the weighted
sum means what the teacher mix means, and the candidates are decoded once, stopped after the deepest
layer any head reads. Heads without layer taps (full branches) are summed the same way on the final
state.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..core.junction import Junction
from ..core.scorer import ScorerInfo
from ..errors import ConfigError
from ..llama import LM
from .head import LayerHead, _Head, teacher_scores


class HeadMix:
    """Σ weight × head value over the candidates: one early-exit decode for all heads (and all junctions of a step)."""

    lm_state: str | None = "branches"

    def __init__(self, heads: Sequence[tuple[_Head, float]], lm: LM) -> None:
        if not heads:
            raise ConfigError("a mix of heads needs at least one head", "pass -r NAME[:WEIGHT]")
        self.heads = [(h, float(w)) for h, w in heads]
        self.lm = lm
        self._keys: list[str] = []  # each head's objective, as the trace names it (`-r kind -r kind:-0.5`: kind, kind#2)
        bases = [str(h.card.get("objective_name") or h.folder.name) for h, _ in self.heads]
        for i, base in enumerate(bases):
            seen = bases[:i].count(base)
            self._keys.append(base if not seen else f"{base}#{seen + 1}")
        self.name = "+".join(f"{k}:{w:g}" for k, (_, w) in zip(self._keys, self.heads))
        self.provider = "llama.cpp"
        self.teacher: Callable[[], Any] | None = None  # the objectives themselves, for whole answers (set by runtime)
        self._teacher: Any = None
        self.chosen: str | None = None
        self.early_exit = all(isinstance(h, LayerHead) and h.early_exit for h, _ in self.heads)
        # without one early exit for all: every head on the final state (a layer head's branch.npz); read only then
        self._final = [] if self.early_exit else [h._value_head() if isinstance(h, LayerHead) and h.early_exit else (h.w, h.b)  # type: ignore[attr-defined]
                                                  for h, _ in self.heads]
        self.last_parts: list[dict[str, list[float]]] = []  # per junction of the last call: each head's values (the trace)

    @property
    def objective(self) -> str | None:
        return "; ".join(f"{w:+g} x {key} ({h.objective or 'no description'})" for key, (h, w) in zip(self._keys, self.heads) if w)

    def info(self) -> ScorerInfo:
        details = {"heads": [{"folder": str(h.folder), "weight": w, "layer": getattr(h, "layer", None)} for h, w in self.heads],
                   "early_exit": f"one decode stopped after layer {max(h.layer for h, _ in self.heads)}" if self.early_exit  # type: ignore[attr-defined]
                   else "full branches (the final-state heads)", "ranks_answers_with": "the objectives' teacher", "chosen": self.chosen}
        return ScorerInfo(kind="lm-head", name=self.name, path="", provider=self.provider, provider_note=None, objective=self.objective,
                          details=details)

    def reset(self) -> None:
        """No per-generation state."""

    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        decoder = _Head._decoder(junctions, self.lm)
        requests = {j.key: [int(c) for c in j.candidates] for j in junctions}
        parts: list[dict[str, np.ndarray]] = [{} for _ in junctions]
        if self.early_exit:
            states = decoder.exit_branches(requests, sorted({h.layer for h, _ in self.heads}))  # type: ignore[attr-defined]
            for n, j in enumerate(junctions):
                for key, (h, _) in zip(self._keys, self.heads):
                    parts[n][key] = h.value(states[j.key][h.layer])  # type: ignore[attr-defined]
        else:
            hidden = decoder.branches(requests)
            for n, j in enumerate(junctions):
                for key, (w, b) in zip(self._keys, self._final):
                    parts[n][key] = (hidden[j.key] @ np.asarray(w, dtype=np.float32) + float(b)).astype(np.float64)
        self.last_parts = [{k: [float(x) for x in v] for k, v in p.items()} for p in parts]
        return [sum(w * p[key] for key, (_, w) in zip(self._keys, self.heads)) for p in parts]  # type: ignore[misc]

    def score_responses(self, prompt: str, prompt_ids: Sequence[int], responses: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
        """Whole answers are ranked by the objectives' teacher: the heads were fitted on differences within junctions."""
        if self.teacher is None:
            raise ConfigError("this mix of heads cannot rank whole answers without its objectives' teacher", "load it through runtime.load_scorer")
        return teacher_scores(self, prompt, prompt_ids, responses)
