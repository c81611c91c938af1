"""Where to steer: top-k candidates, their entropy, and the gates that turn entropy into a decision.

A step is a *junction* when the gate says so. The entropy is that of softmax(top-k logits) at T=1 in
nats, as in the paper's code: renormalised over the k candidates, so it lies in [0, ln k].
Gates never edit logits; they only answer "steer this step?".
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .config import SteerConfig


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits, highest first.

    Args:
        logits: (n_vocab,) float32, e.g. a view on llama.cpp's output buffer (not modified).
    Returns:
        ids (k,) int64 and their logits z (k,) float64, sorted descending.
    """
    k = min(k, logits.shape[0])
    ids = np.argpartition(logits, -k)[-k:]  # (k,) unordered
    z = logits[ids].astype(np.float64)
    order = np.argsort(-z, kind="stable")
    return ids[order].astype(np.int64), z[order]


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array."""
    e = np.exp(x - np.max(x))
    return e / e.sum()


def entropy(z: np.ndarray) -> float:
    """H = -sum p ln p of softmax(z) at T=1, in nats."""
    shifted = z - np.max(z)
    log_p = shifted - np.log(np.exp(shifted).sum())
    return float(-(np.exp(log_p) * log_p).sum())


class Gate(Protocol):
    """Decides, from the step index and the entropy, whether a step is a junction."""

    def __call__(self, step: int, h: float) -> bool: ...


class EntropyGate:
    """H >= tau: the paper's junction rule."""

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def __call__(self, step: int, h: float) -> bool:
        return h >= self.tau


class DenseGate:
    """Every step is a junction (ARGS-style dense steering)."""

    def __call__(self, step: int, h: float) -> bool:
        return True


class NoGate:
    """No step is a junction: plain top-k sampling from the base model."""

    def __call__(self, step: int, h: float) -> bool:
        return False


class RandomGate:
    """Junction with probability `ratio`, independent of entropy: the matched-sparsity ablation.

    It draws from its own generator so that it does not shift the sampler's random stream.
    """

    def __init__(self, ratio: float, rng: np.random.Generator) -> None:
        self.ratio = ratio
        self.rng = rng

    def __call__(self, step: int, h: float) -> bool:
        return bool(self.rng.random() < self.ratio)


class FirstNGate:
    """The first n steps are junctions (the paper's `intervene_num` ablation)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, step: int, h: float) -> bool:
        return step < self.n


def make_gate(config: SteerConfig, tau: float | None, seed: int) -> Gate:
    """The gate `config.gate` names; `tau` must be resolved already for the entropy gate."""
    if config.gate == "entropy":
        assert tau is not None, "resolve tau before building the entropy gate"
        return EntropyGate(tau)
    if config.gate == "dense":
        return DenseGate()
    if config.gate == "random":
        assert config.ratio is not None
        return RandomGate(config.ratio, np.random.default_rng([seed, 1]))
    if config.gate == "first-n":
        return FirstNGate(config.first_n)
    return NoGate()
