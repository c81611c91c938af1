"""The steering loop: Sparse Inference-time Alignment, one token at a time.

Per step (paper, Alg. 1, with the official code's defaults):
    z, ids = top-k(logits)                      # k candidates, raw logits
    H      = entropy(softmax(z))                # nats, T = 1
    if gate(step, H):                           # a junction
        r  = reward(prompt, response + piece(id_i) for each i)   # one batched ONNX run
        s  = z + w * r
    else:
        s  = z
    y ~ softmax(s / T)                          # over the k candidates only
One uniform draw per step picks the token by inverse CDF, from the steered and the base distribution
alike, so "did the reward change the choice?" has an exact answer and runs with the same seed stay
in lock-step until steering first changes a token.
"""

from __future__ import annotations

__all__ = ["Steerer", "Stream", "Generation", "Piece", "Stats", "TokenInfo", "SequenceState", "scored_candidates", "objective_parts"]

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator, Sequence

import numpy as np

from .calibrate import is_calibrated, tau_for_ratio
from .config import SteerConfig
from ..errors import ConfigError, PromptError
from .junction import gate_spec, screened_ratio
from ..llama import LM, Message
from ..llama.grammar import Grammar
from .scorer import Scorer, steered_by
from .generation import Generation, Piece, Stats, TokenInfo
from .sequence import SequenceState, scored_candidates
from . import strength
from .strength import Strength


class Stream:
    """Iterate for `Piece`s; `generation` holds the full result once the iteration ends."""

    def __init__(self, inner: Generator[Piece, None, Generation]) -> None:
        self._inner = inner
        self.generation: Generation | None = None

    def __iter__(self) -> Iterator[Piece]:
        self.generation = yield from self._inner

    def close(self) -> None:
        """Stop early (e.g. on Ctrl-C); the context stays usable."""
        self._inner.close()


@dataclass
class _Prompt:
    ids: list[int]
    reward_prompt: str  # what the reward model sees as the prompt: the last user message
    stops: list[str] = field(default_factory=list)


class Steerer:
    """Steers `lm` with a scorer (`reward`: a reward model, value model or value head) at junctions chosen by `config.gate`.

    Example:
        >>> steerer = Steerer(LM("model.gguf"), OnnxReward("rm/"), SteerConfig(ratio=0.2, seed=0))
        >>> g = steerer.generate("Write a note to a neighbour.")
        >>> g.text, g.stats.ratio
    """

    def __init__(self, lm: LM, reward: Scorer | None = None, config: SteerConfig | None = None, *,
                 announce: Callable[[str], None] | None = None) -> None:
        self.lm = lm
        self.scorer = reward  # what scores the candidates: a reward model, a value model or a value head (any `Scorer`)
        self.config = config or SteerConfig()
        self.announce = announce or _to_stderr  # says so before a calibration starts (it takes seconds to minutes)
        self._taus: dict[tuple[int, float], float] = {}
        self._strengths: dict[tuple[str, int], Strength] = {}  # (scorer, k) -> its measured strength on this model
        self._measuring = threading.Lock()  # requests from several threads: one measurement at a time on the model's context
        self.calibration_seconds = 0.0  # what the last resolve_tau spent calibrating (0 when the profile was cached)
        # `--vector NAME[:scale]` -> (vector, scale, key): set by `runtime.build_steerer` (heads.vectors.resolver)
        self.vectors: Callable[[str], tuple[Any, float, Any]] | None = None

    def with_scorer(self, scorer: Scorer | None) -> "Steerer":
        """The same model, settings and calibrations with another scorer (a request's own mix of objectives)."""
        other = Steerer(self.lm, scorer, self.config, announce=self.announce)
        other._taus = self._taus  # calibrations are the model's, whatever scores the candidates
        other._strengths, other._measuring = self._strengths, self._measuring  # keyed by scorer; one measurement at a time
        other.vectors = self.vectors
        return other

    def generate(self, prompt: str | Sequence[Message], **options: Any) -> Generation:
        """Generate one response. `prompt` is a user message, or a list of chat messages.

        Options: ``system`` (a system message), ``raw`` (skip the chat template), and any
        `SteerConfig` field to change for this call (`SteerConfig.updated` rules: None = unchanged).
        """
        stream = self.stream(prompt, **options)
        for _ in stream:
            pass
        assert stream.generation is not None
        return stream.generation

    def stream(self, prompt: str | Sequence[Message], *, system: str | None = None, raw: bool = False, tools: list[dict[str, Any]] | None = None,
               **changes: Any) -> Stream:
        """Like `generate`, yielding `Piece`s as tokens are chosen. `tools`: OpenAI's tools, for a template that renders them."""
        config = self.config_for(**changes)
        prepared = self.prepare(prompt, system, raw, tools)
        self.calibration_seconds = 0.0
        tau = self.gate_tau(config)
        m = self.resolve_strength(config)
        return Stream(self._decode(prepared, config, tau, self.calibration_seconds, m))

    def config_for(self, **changes: Any) -> SteerConfig:
        """This steerer's config with per-call changes, checked against what is loaded."""
        config = self.config.updated(**changes) if changes else self.config
        if config.steers() and self.scorer is None:
            raise ConfigError(f"the {config.gate!r} gate needs a reward model", "pass --reward, or use --gate none",
                              api_hint="the server has no reward model: use sia.gate \"none\"")
        if config.vector:
            self.vector_for(config)  # an unknown vector is refused here, before any decode (a built-in's is made once)
        if config.grammar:  # a grammar llama.cpp cannot parse is refused here, before any decode
            Grammar(self.lm, config.grammar).close()
        if config.steers() and getattr(self.scorer, "lm_state", None) == "branches" and config.top_k > self.lm.max_branches:
            raise ConfigError(f"top_k {config.top_k} is more than the {self.lm.max_branches} branches this value head's context holds",
                              f"use --top-k {self.lm.max_branches} or less", api_hint=f"use sia.top_k <= {self.lm.max_branches}")
        return config

    def vector_for(self, config: SteerConfig) -> tuple[Any, float, Any]:
        """(control vector, scale, key) of `config.vector`, or (None, 0, None) without one."""
        if not config.vector:
            return None, 0.0, None
        if self.vectors is None:
            raise ConfigError("this steerer has no control-vector resolver", "build it with sia_local.runtime.build_steerer (or load())",
                              api_hint="the server cannot load control vectors")
        return self.vectors(config.vector)

    def gate_tau(self, config: SteerConfig, progress: Callable[[int, int], None] | None = None) -> float | None:
        """The tau the gate gets: given, calibrated from the ratio, or None for gates that do not use it."""
        spec = gate_spec(config.gate)
        if spec is None or not spec.uses_tau:
            return None
        if spec.screen != 1.0 and config.tau is None and config.ratio is not None:  # it scores more steps than it steers
            config = config.replace(ratio=screened_ratio(config.ratio, spec.screen))
        return self.resolve_tau(config, progress)

    def resolve_tau(self, config: SteerConfig, progress: Callable[[int, int], None] | None = None) -> float:
        """tau from the config, or calibrated for `config.ratio` on this model (cached per model file and k).

        A calibration not yet in the cache is announced first (`announce`), never started silently.
        """
        if config.tau is not None:
            return config.tau
        assert config.ratio is not None
        key = (config.top_k, config.ratio)
        if key not in self._taus:
            fresh = not self.is_calibrated(config.top_k)
            if fresh:
                self.announce(f"calibrating tau for {self.lm.path.name} at k={config.top_k} (once per model and k; cached)")
            t = time.perf_counter()
            self._taus[key] = tau_for_ratio(self.lm, config.ratio, top_k=config.top_k, progress=progress)
            if fresh:
                self.calibration_seconds = time.perf_counter() - t
        return self._taus[key]

    def resolve_strength(self, config: SteerConfig, progress: Callable[[int, int], None] | None = None) -> float | None:
        """m in s = z + w·m·r: the scorer's measured junction strength on this model and k (`core/strength.py`; measured once,
        announced first, then cached beside tau). None where weights stay on the raw scale: `--strength reference`,
        `--normalize` (each junction standardised already), or no steering."""
        if not config.steers() or config.strength != "junction" or config.normalize or self.scorer is None:
            return None
        key = (strength.scorer_key(self.scorer), config.top_k)
        if key in self._strengths:
            return self._strengths[key].multiplier
        with self._measuring:
            return self._measure_strength(key, config, progress)

    def _measure_strength(self, key: tuple[str, int], config: SteerConfig, progress: Callable[[int, int], None] | None) -> float:
        assert self.scorer is not None
        if key not in self._strengths:
            name = self.scorer.info().name
            fresh = not strength.is_measured(self, config.top_k)
            if fresh:
                self.announce(f"measuring how strongly {name} steers {self.lm.path.name} at k={config.top_k} (once per model and objective; cached)")
            found = strength.cached(self, config.top_k, progress)
            self.calibration_seconds += found.seconds
            if found.note:
                self.announce(f"strength of {name} on {self.lm.path.name}: {found.note}")
            self._strengths[key] = found
        return self._strengths[key].multiplier

    def is_calibrated(self, top_k: int) -> bool:
        """Whether a ratio at this k resolves without decoding the calibration prompts."""
        return any(k == top_k for k, _ in self._taus) or is_calibrated(self.lm, top_k)

    def prepare(self, prompt: str | Sequence[Message], system: str | None, raw: bool, tools: list[dict[str, Any]] | None = None) -> _Prompt:
        if isinstance(prompt, str):
            if not prompt.strip():
                raise PromptError("the prompt is empty", "give a non-empty prompt")
            if raw:
                return _Prompt(self.lm.tokenize(prompt), prompt)
            messages: list[Message] = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + list(prompt)
            if not messages or not any(m.get("content", "").strip() for m in messages):
                raise PromptError("the messages are empty", "give at least one non-empty message")
        ids, stops = self.lm.render_chat(messages, tools) if tools else self.lm.render_chat(messages)
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), messages[-1]["content"])
        return _Prompt(ids, user, stops)

    def _decode(self, prompt: _Prompt, cfg: SteerConfig, tau: float | None, calibration_seconds: float,
                multiplier: float | None = None) -> Generator[Piece, None, Generation]:
        lm, reward = self.lm, self.scorer
        seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
        seq = SequenceState(lm, cfg, tau, seed, prompt.ids, list(cfg.stop) + prompt.stops,
                            steered_by(self.scorer) if cfg.steers() else None, multiplier)
        seq.stats.calibration_seconds = calibration_seconds
        start = time.perf_counter()
        lm.use_vector(*self.vector_for(cfg))  # the model's own context: set, changed or cleared (its cells go on a change)
        try:
            logits = lm.prefill(prompt.ids)
            seq.stats.prefill_seconds = time.perf_counter() - start
            seq.stats.cached_tokens = lm.cached_tokens
            yield from self._steps(seq, prompt, logits)
        finally:
            if reward is not None:
                reward.reset()  # per-generation scorer state (value-model KV caches) goes with the generation
        tail = seq.close()
        if tail is not None:
            yield tail
        return seq.result(time.perf_counter() - start)

    def _steps(self, seq: "SequenceState", prompt: _Prompt, logits: np.ndarray) -> Generator[Piece, None, None]:
        """The loop: propose (top-k, entropy, gate) -> score at a junction -> commit -> decode the token."""
        lm, reward = self.lm, self.scorer
        # A branch head decodes k candidates at the next position, each in a cell of its own: the
        # context must hold them too, so the answer ends ("context") k cells before a plain one would.
        reserve = seq.cfg.top_k if seq.cfg.steers() and getattr(reward, "lm_state", None) == "branches" else 0
        if lm.n_past + 1 + reserve >= lm.n_ctx:
            seq.end("context")
            return
        while True:
            seq.propose(logits)  # top-k, entropy, gate, the step's uniform draw
            rewards, seconds = None, 0.0
            if seq.junction:
                assert reward is not None
                t = time.perf_counter()
                rewards = reward.score_junctions([seq.scoring_request(prompt.reward_prompt, prompt.ids)])[0]  # (k,) in one batched run
                seconds = time.perf_counter() - t
            piece = seq.commit(rewards, seconds, parts=objective_parts(reward, 0) if rewards is not None else None)
            if piece is not None:
                yield piece
            if seq.done:
                break
            if lm.n_past + 1 + reserve >= lm.n_ctx:
                seq.end("context")
                break
            t = time.perf_counter()
            logits = lm.step(seq.last_token)
            seq.stats.lm_seconds += time.perf_counter() - t


def objective_parts(scorer: Any, i: int) -> dict[str, list[float]] | None:
    """Junction i's per-objective rewards from the last scoring call, when the scorer is a mix (`mix.Objectives`)."""
    parts = getattr(scorer, "last_parts", None)
    return parts[i] if parts and i < len(parts) else None


def _to_stderr(message: str) -> None:
    print(f"sia: {message}", file=sys.stderr, flush=True)
