"""Where to steer: top-k candidates, their entropy, the sampler's pick, and the gates.

A step is a *junction* when the gate says so. The entropy is that of softmax(top-k logits) at T=1 in
nats, as in the paper's code: renormalised over the k candidates, so it lies in [0, ln k].
Gates never edit logits; they only answer "steer this step?". At a junction the loop hands the scorer
a `Junction`: the step's candidates and what a scorer may need to score them.

Gates live in one registry. Adding one is a class (or any callable) plus one `register_gate` line;
the CLI's `--gate`, the server's `sia.gate`, chat's `/gate` and `sia bench --arms` all read the
registry, so nothing else changes (docs/architecture.md shows the recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np


DEFAULT_K = 10  # candidates per step, the paper's k: SteerConfig's default, and every tool's that scores "a junction"
DEFAULT_GATE = "entropy"  # where steering happens unless asked otherwise (SteerConfig, chat's /reward on, a ratio given with gate none)
_BLOCK = 256  # top_k's block size: a few hundred blocks for a 49k-262k vocabulary


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits, highest first, without a selection pass over the whole vocabulary.

    Exact: every one of the k largest values lives in a block whose maximum is among the k largest
    block maxima (otherwise k larger values would exist). So one vectorised max per block of 256, a
    selection over the block maxima and one over k blocks replace `argpartition` over all logits:
    0.78 -> 0.18 ms at Gemma 3's 262k vocabulary on our 2-core test machine.

    Args:
        logits: (n_vocab,) float32, e.g. a view on llama.cpp's output buffer (not modified).
    Returns:
        ids (k,) int64 and their logits z (k,) float64, sorted descending (ties: lower id first).
    """
    n = logits.shape[0]
    k = min(k, n)
    full = n // _BLOCK * _BLOCK
    if full // _BLOCK <= k:  # a small vocabulary: plain selection
        pool = np.arange(n)
    else:
        block_max = logits[:full].reshape(-1, _BLOCK).max(axis=1)
        best = np.argpartition(block_max, -k)[-k:]
        pool = (best[:, None] * _BLOCK + np.arange(_BLOCK)).ravel()
        if full < n:
            pool = np.concatenate([pool, np.arange(full, n)])
    values = logits[pool]
    ids = pool[np.argpartition(values, -k)[-k:]] if len(pool) > k else pool
    z = logits[ids].astype(np.float64)
    order = np.lexsort((ids, -z))
    return ids[order].astype(np.int64), z[order]


def log_normaliser(logits: np.ndarray, top: float) -> float:
    """log sum exp(logits), given their maximum `top`: exp in float32 (what llama.cpp's own softmax
    uses), the sum in float64 -- half the time of a float64 pass at a 262k vocabulary."""
    return top + float(np.log(np.exp(logits - np.float32(top)).sum(dtype=np.float64)))


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array."""
    e = np.exp(x - np.max(x))
    return e / e.sum()


def entropy(z: np.ndarray) -> float:
    """H = -sum p ln p of softmax(z) at T=1, in nats."""
    shifted = z - np.max(z)
    log_p = shifted - np.log(np.exp(shifted).sum())
    return float(-(np.exp(log_p) * log_p).sum())


def pick(scores: np.ndarray, temperature: float, u: float, top_p: float = 1.0) -> int:
    """Index drawn from softmax(scores / T) by inverse CDF at the uniform `u`; greedy when T = 0.

    With top_p < 1 only the most likely candidates whose mass reaches top_p stay in the draw. One
    uniform per step, shared by the base and the steered draw, makes "did steering change the token"
    exact.
    """
    if temperature == 0:
        return int(np.argmax(scores))
    p = softmax((scores - np.max(scores)) / temperature)  # shifted first: a tiny T gives -inf, never inf - inf
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        mask = np.zeros_like(p)
        mask[keep] = 1.0
        p = p * mask
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(scores) - 1))


@dataclass
class Junction:
    """What a scorer may need at a junction: text for sequence reward models, token ids for value models."""

    prompt: str  # the user's message
    prompt_ids: Sequence[int]  # the LM's prompt tokens (chat template applied)
    response_ids: Sequence[int]  # tokens generated so far
    candidates: np.ndarray  # (k,) candidate token ids
    texts: Callable[[], list[str]]  # the response so far + each candidate, decoded (computed on demand)
    key: int = 0  # which sequence (Best-of-N): stateful scorers keep per-sequence state under this key
    decoder: Any = None  # where the sequence's KV lives (the `LM`, or Best-of-N's `BatchContext`): heads on the LM's hidden state branch there


class Gate(Protocol):
    """Decides, from the step index and the entropy, whether a step is a junction.

    A gate may also have `keep(z, added, temperature) -> bool`: asked after the step was scored, whether to steer
    it after all (`ValueGate`); a scored step it does not keep is drawn from the base model."""

    def __call__(self, step: int, h: float) -> bool: ...


class EntropyGate:
    """H >= tau: the paper's junction rule."""

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def __call__(self, step: int, h: float) -> bool:
        return h >= self.tau


def certain_entropy(k: int, p1: float = 0.99) -> float:
    """The largest entropy (nats) a top-k distribution whose favourite has probability `p1` can have.

    Entropy over k candidates with top-1 mass p1 is largest when the rest is spread evenly, and that
    maximum falls as p1 grows: a step whose top-1 probability is above p1 has an entropy below this.
    """
    if k < 2:
        return 0.0
    rest = (1.0 - p1) / (k - 1)
    return float(-(p1 * np.log(p1) + (k - 1) * rest * np.log(rest)))


class ControlledEntropyGate:
    """H >= tau_t, with tau_t = tau + gain * e, e the junction surplus (junctions - ratio * steps), bounded.

    The paper's rule with the threshold steered online: tau (calibrated on unsteered samples of other
    prompts) is only the start. Steered text and real prompts run at higher entropy than the calibration
    set, so a fixed tau over-steers; each junction above the target share raises the threshold and each
    step below it lowers it, so an answer realises the asked ratio while still steering at its own
    highest-entropy steps.

    Two bounds keep it from winding up (a plain integral did: ~90 near-certain steps of a code block
    drove tau_t below zero and every later step became a junction until the backlog was paid):
    e stays within +-`bound` junctions, so a stretch where steering is impossible leaves at most
    `bound` junctions of debt (or credit); and tau_t stays within [certain_entropy(k), ln k), so a step
    whose top-1 probability is above 0.99 is never steered and the threshold never rises past every
    possible entropy. `gain` is in nats per junction of surplus.
    """

    def __init__(self, tau: float, ratio: float, gain: float = 0.7, bound: float = 1.2, k: int = DEFAULT_K) -> None:
        self.tau, self.ratio, self.gain, self.bound = tau, ratio, gain, bound
        self.floor = certain_entropy(k)
        self.ceiling = 0.98 * float(np.log(max(k, 2)))
        self.error = 0.0

    def threshold(self) -> float:
        return min(max(self.tau + self.gain * self.error, self.floor), self.ceiling)

    def __call__(self, step: int, h: float) -> bool:
        hit = h >= self.threshold()
        self.error = min(max(self.error + hit - self.ratio, -self.bound), self.bound)
        return hit


SCREEN = 2.0  # the value gate scores this many times the asked ratio of steps, and steers the part of them where steering gains most


def expected_gain(z: np.ndarray, added: np.ndarray, temperature: float = 1.0) -> float:
    """How much steering raises the expected added score at one step: E_steered[a] - E_base[a] with a = w·m·r added
    to the logits z (>= 0: tilting a distribution towards a never lowers its mean). Large where the candidates the
    model finds plausible differ in reward; zero where they agree or one candidate is certain. Greedy counts as T = 1."""
    t = temperature or 1.0
    p, q = softmax(z / t), softmax((z + added) / t)
    return float(((q - p) * added).sum())


class ValueGate:
    """Steer where the reward would move the draw most: entropy screens, the reward's expected gain decides.

    The entropy gate picks steps where the model is unsure, whether or not the objective cares what it picks there.
    With a near-free scorer (a value head) more steps can be scored than steered: this gate scores the steps its
    `screen` gate picks (SCREEN x the asked ratio, the highest-entropy ones) and steers those whose `expected_gain`
    is in the top share of the gains this answer has seen, so that the asked ratio is steered. The threshold is a
    quantile of the answer's own gains (no units, whatever the objective), shifted by a bounded controller on the
    steered share as `ControlledEntropyGate` shifts tau (`gain`: quantile per junction of surplus). Scoring costs
    what the entropy gate costs at the screened share; a step scored and not kept is a reward call, not a junction.
    """

    def __init__(self, screen: Gate, ratio: float, scored: float, gain: float = 0.25, bound: float = 1.2) -> None:
        self.screen, self.ratio, self.gain, self.bound = screen, ratio, gain, bound
        self.level = 1.0 - min(ratio / scored, 1.0) if scored > 0 else 0.0  # the quantile of the seen gains a kept step reaches
        self.error = 0.0  # steered - ratio x steps, within +-bound
        self.gains: list[float] = []

    def __call__(self, step: int, h: float) -> bool:
        hit = self.screen(step, h)
        if not hit:
            self._count(False)
        return hit

    def keep(self, z: np.ndarray, added: np.ndarray, temperature: float) -> bool:
        """Whether a scored step is steered: its gain against the quantile of the gains seen so far (the first one is, if it gains)."""
        g = expected_gain(z, added, temperature)
        level = min(max(self.level + self.gain * self.error, 0.0), 1.0)
        hit = g > 1e-12 and (not self.gains or g >= float(np.quantile(self.gains, level)))  # where nothing is gained, nothing is steered
        self.gains.append(g)
        self._count(hit)
        return hit

    def _count(self, steered: bool) -> None:
        self.error = min(max(self.error + steered - self.ratio, -self.bound), self.bound)


class DenseGate:
    """Every step is a junction: dense reward-guided decoding, as ARGS (Khanov et al., 2024) does."""

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


# -- the registry -----------------------------------------------------------------------------------
class GateSettings(Protocol):
    """What a gate factory may read of the settings (`config.SteerConfig` has these; this module sits below it)."""

    @property
    def ratio(self) -> float | None: ...
    @property
    def tau(self) -> float | None: ...
    @property
    def top_k(self) -> int: ...
    @property
    def first_n(self) -> int: ...
    @property
    def gate(self) -> str: ...


GateFactory = Callable[[GateSettings, "float | None", int], Gate]


@dataclass(frozen=True)
class GateSpec:
    """A registered gate.

    Attributes:
        name: what users type (`--gate NAME`, `"sia": {"gate": NAME}`, `/gate NAME`).
        build: (config, tau, seed) -> a fresh Gate for one sequence.
        help: one line for `--help` and the docs.
        uses_tau: the gate needs tau (given, or calibrated from `ratio`) before it is built.
        uses_ratio: the gate reads `config.ratio` directly (it must then be set).
        steers: the gate can mark junctions, so a reward model is needed.
        screen: tau is calibrated for `screen` x the ratio (a gate that scores more steps than it steers).
    """

    name: str
    build: GateFactory
    help: str = ""
    uses_tau: bool = False
    uses_ratio: bool = False
    steers: bool = True
    screen: float = 1.0


_GATES: dict[str, GateSpec] = {}


def register_gate(name: str, build: GateFactory, *, help: str = "", uses_tau: bool = False, uses_ratio: bool = False,
                  steers: bool = True, screen: float = 1.0) -> GateSpec:
    """Make a gate available everywhere by name; re-registering a name replaces it."""
    spec = GateSpec(name, build, help, uses_tau, uses_ratio, steers, screen)
    _GATES[name] = spec
    return spec


def gate_names() -> tuple[str, ...]:
    """Registered gate names, in registration order."""
    return tuple(_GATES)


def gate_spec(name: str) -> GateSpec | None:
    return _GATES.get(name)


def make_gate(config: GateSettings, tau: float | None, seed: int) -> Gate:
    """A fresh gate of the kind `config.gate` names; `tau` must be resolved already for tau gates."""
    spec = _GATES[config.gate]  # SteerConfig checked the name
    if spec.uses_tau and tau is None:
        raise ValueError(f"the {spec.name!r} gate needs tau resolved before it is built")
    return spec.build(config, tau, seed)


def _random(config: GateSettings, tau: float | None, seed: int) -> Gate:
    assert config.ratio is not None  # SteerConfig requires a ratio for uses_ratio gates
    return RandomGate(config.ratio, np.random.default_rng([seed, 1]))


def _entropy(config: GateSettings, tau: float | None, seed: int) -> Gate:
    assert tau is not None
    if config.tau is not None or config.ratio is None or config.ratio in (0.0, 1.0):
        return EntropyGate(tau)  # a tau given by the user is kept fixed
    return ControlledEntropyGate(tau, config.ratio, k=config.top_k)


def _value(config: GateSettings, tau: float | None, seed: int) -> Gate:
    assert tau is not None
    if config.ratio is None:  # only a tau: steer every step it screens (no share to keep)
        return EntropyGate(tau)
    scored = screened_ratio(config.ratio, SCREEN)  # what `Steerer.gate_tau` calibrated tau for (GateSpec.screen)
    screen = EntropyGate(tau) if config.tau is not None else ControlledEntropyGate(tau, scored, k=config.top_k)
    return ValueGate(screen, config.ratio, scored)


def screened_ratio(ratio: float, screen: float) -> float:
    """The share of steps a gate that screens `screen` x the ratio scores."""
    return min(1.0, screen * ratio)


register_gate("entropy", _entropy, help="H >= tau (the paper); with --ratio, tau starts calibrated and is steered online to realise the ratio",
              uses_tau=True)
register_gate("value", _value, help=f"scores the {SCREEN:g}x --ratio highest-entropy steps and steers the --ratio where the reward's expected gain "
              "is largest (costs as entropy at that share)", uses_tau=True, screen=SCREEN)
register_gate("dense", lambda c, tau, seed: DenseGate(), help="every step: dense reward-guided decoding, as in ARGS (Khanov et al., 2024)")
register_gate("none", lambda c, tau, seed: NoGate(), help="no step: base top-k sampling", steers=False)
register_gate("random", _random, help="each step with probability --ratio (the matched-sparsity ablation)", uses_ratio=True)
register_gate("first-n", lambda c, tau, seed: FirstNGate(c.first_n), help="the first --first-n steps")
