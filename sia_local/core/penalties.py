"""The caller's sampling fields, applied where they belong: on the full-vocabulary logits, before SIA's top-k.

Repetition, frequency and presence penalties and a logit bias change which tokens are likely; min-p and a top-k
truncation drop unlikely ones. Hugging Face's samplers and llama.cpp's chain both apply them to the whole vocabulary
before any top-k, and so does SIA here: the k candidates, their entropy, the junction and the reward all see the
penalised logits. Applied after SIA's top-k instead, a penalty of 1.3 would hit most of the 10 candidates (they are
the likely tokens, which are the repeated ones) rather than a handful of the vocabulary's, and push the draw to rare
tokens -- an independent SIA deployment lost 75 % of its reward that way (docs/server.md, "Sampling fields").

Penalties follow llama.cpp's `llama_sampler_init_penalties`: over the last `repeat_last_n` tokens of prompt and
answer, a seen token's logit is divided by `repeat_penalty` (multiplied when negative), then reduced by
`frequency_penalty` x its count and `presence_penalty` once. Only the seen tokens and the biased ones are touched,
so a step costs O(repeat_last_n), not O(vocabulary), beyond one copy of the logits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .config import SteerConfig


class LogitProcessor:
    """One sequence's penalties and bias; `apply(logits, history)` returns the logits the step's top-k is taken from."""

    def __init__(self, cfg: SteerConfig, n_vocab: int) -> None:
        self.repeat, self.frequency, self.presence = cfg.repeat_penalty, cfg.frequency_penalty, cfg.presence_penalty
        self.last_n = cfg.repeat_last_n
        bias = [(t, b) for t, b in cfg.logit_bias if t < n_vocab]  # ids past the vocabulary name no token: nothing to bias
        self.bias_ids = np.array([t for t, _ in bias], dtype=np.int64)
        self.bias_values = np.array([b for _, b in bias], dtype=np.float32)
        self.penalises = self.last_n > 0 and (self.repeat != 1.0 or self.frequency != 0.0 or self.presence != 0.0)
        self.active = self.penalises or len(bias) > 0

    def apply(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """`logits` penalised for the tokens in `history`'s last `repeat_last_n` and biased (a copy; `logits` itself when
        nothing applies)."""
        if not self.active:
            return logits
        out = np.array(logits, dtype=np.float32, copy=True)
        if self.penalises and history:
            seen, counts = np.unique(np.asarray(history[-self.last_n:], dtype=np.int64), return_counts=True)
            z = out[seen]
            z = np.where(z > 0, z / self.repeat, z * self.repeat)
            out[seen] = z - self.frequency * counts - self.presence
        if len(self.bias_ids):
            out[self.bias_ids] += self.bias_values
        return out


def truncation(cfg: SteerConfig) -> int:
    """How many candidates a step keeps: SIA's k, narrowed by the caller's top-k truncation when that is smaller."""
    return min(cfg.top_k, cfg.sample_top_k) if cfg.sample_top_k > 0 else cfg.top_k


def min_p_keep(z: np.ndarray, min_p: float) -> np.ndarray | None:
    """Which of the candidates (logits `z`, highest first, the vocabulary's top among them) min-p keeps: probability at
    least min_p x the top token's. None = all. The top is the whole vocabulary's, so taking it over the k is exact."""
    if min_p <= 0.0 or len(z) <= 1:
        return None
    keep = z >= z[0] + np.log(min_p)
    return None if keep.all() else keep
