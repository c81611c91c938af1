"""Steering settings, declared once.

`SteerConfig` is the single source of every steering default: the CLI, the server and the Python API
take their defaults from it. Names follow the paper (k, tau, ratio, w) and llama.cpp (top_k,
temperature, max_tokens).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import ConfigError

GATES = ("entropy", "dense", "none", "random", "first-n")


@dataclass(frozen=True)
class SteerConfig:
    """How to decode and where to steer.

    Attributes:
        gate: where to call the reward model: ``entropy`` (H >= tau, the paper), ``dense`` (every
            step, i.e. ARGS), ``none`` (base top-k sampling), ``random`` (each step with probability
            ``ratio``, the matched-sparsity ablation), ``first-n`` (the first ``first_n`` steps).
        top_k: k, the candidate set for both the entropy and the reward (paper: 10).
        weight: w in s_i = z_i + w * r_i (paper: 1.0).
        temperature: T for sampling from softmax(s / T); 0 means greedy. The entropy always uses T=1.
        top_p: nucleus sampling inside the k candidates (1.0 = off, the paper).
        tau: entropy threshold in nats (0 .. ln k). When None, derived from ``ratio`` by calibration.
        ratio: target share of junction steps in [0, 1]; used for ``entropy`` (via tau calibration)
            and ``random`` (as the probability).
        first_n: number of steered steps for the ``first-n`` gate.
        max_tokens: upper bound on generated tokens.
        seed: seed of the sampler (and of the random gate); None draws a fresh one.
        normalize: standardise the k rewards per junction (zero mean, unit variance) before w.
        stop: extra stop strings; the text is cut before the first one.
        trace: keep per-token records (entropy, junction, rank, rewards) in the result.
        logprobs: record each chosen token's log-probability under the full base distribution at
            T=1 (for perplexity); costs one log-sum-exp over the vocabulary per token.
    """

    gate: str = "entropy"
    top_k: int = 10
    weight: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    tau: float | None = None
    ratio: float | None = 0.2
    first_n: int = 32
    max_tokens: int = 256
    seed: int | None = None
    normalize: bool = False
    stop: tuple[str, ...] = field(default_factory=tuple)
    trace: bool = False
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise ConfigError(f"`gate` must be one of {', '.join(GATES)}, got {self.gate!r}", "fix --gate")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"`top_k` must be an integer >= 1, got {self.top_k!r}", "fix --top-k")
        _finite("weight", self.weight, "--weight")
        _finite("temperature", self.temperature, "--temperature")
        if self.temperature < 0:
            raise ConfigError(f"`temperature` must be >= 0, got {self.temperature}", "fix --temperature (0 = greedy)")
        _finite("top_p", self.top_p, "--top-p")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"`top_p` must be in (0, 1], got {self.top_p}", "fix --top-p")
        if self.tau is not None:
            _finite("tau", self.tau, "--tau")
            if self.tau < 0:
                raise ConfigError(f"`tau` must be >= 0 nats, got {self.tau}", "fix --tau")
        if self.ratio is not None:
            _finite("ratio", self.ratio, "--ratio")
            if not 0.0 <= self.ratio <= 1.0:
                raise ConfigError(f"`ratio` must be in [0, 1], got {self.ratio}", "fix --ratio")
        if self.gate == "entropy" and self.tau is None and self.ratio is None:
            raise ConfigError("the entropy gate needs `tau` or `ratio`", "pass --tau or --ratio")
        if self.gate == "random" and self.ratio is None:
            raise ConfigError("the random gate needs `ratio`", "pass --ratio")
        if self.first_n < 0:
            raise ConfigError(f"`first_n` must be >= 0, got {self.first_n}", "fix --first-n")
        if self.max_tokens < 1:
            raise ConfigError(f"`max_tokens` must be >= 1, got {self.max_tokens}", "fix --max-tokens")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    def replace(self, **changes: object) -> "SteerConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _finite(name: str, value: float, flag: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"`{name}` must be a finite number, got {value!r}", f"fix {flag}")
