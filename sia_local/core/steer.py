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

import codecs
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Generator, Iterator, Sequence

import numpy as np

from .calibrate import is_calibrated, tau_for_ratio
from .config import SteerConfig
from ..errors import ConfigError, PromptError
from .junction import entropy, gate_spec, log_normaliser, make_gate, pick, softmax, top_k
from ..llama import LM, Message
from .scorer import Junction, Scorer


@dataclass
class TokenInfo:
    """One generated token, as the trace and the stream report it."""

    id: int
    text: str  # the token's bytes decoded on their own (may be part of a character)
    entropy: float  # nats, over the top-k at T = 1
    junction: bool
    rank: int  # the chosen token's rank among the k by base logit (0 = the model's favourite)
    changed: bool  # the reward made the sampler pick another token than the base distribution would have
    rewards: list[float] | None = None  # the k candidates' rewards at a junction (after --normalize)
    kl: float = 0.0  # KL(steered || base) over the k candidates at this step, nats (0 off junctions)
    logprob: float | None = None  # log p_base(token) over the full vocabulary, T = 1 (with config.logprobs)
    objectives: dict[str, list[float]] | None = None  # with a mix of objectives: each one's raw rewards of the k candidates
    candidates: list[int] | None = None  # with config.trace: the k candidate ids, highest base logit first
    p_base: list[float] | None = None  # ... their probabilities in the base draw (softmax of z / T over the k)
    p_steered: list[float] | None = None  # ... and in the steered draw at a junction (softmax of (z + w r) / T)


@dataclass
class Stats:
    """What a generation cost and how much it was steered."""

    prompt_tokens: int = 0
    tokens: int = 0
    junctions: int = 0
    ratio: float = 0.0  # junctions / tokens: the realised steering ratio
    ratio_target: float | None = None  # the ratio asked for (entropy and random gates)
    changed: int = 0  # junctions where the reward changed the sampled token
    kl_per_token: float = 0.0  # mean KL(steered || base) per generated token, nats
    perplexity: float | None = None  # of the response under the base model (with config.logprobs)
    objectives: dict[str, float] | None = None  # with a mix: each objective's mean raw reward of the chosen candidates at junctions
    reward_calls: int = 0  # batched reward-model runs
    candidates_scored: int = 0
    prefill_seconds: float = 0.0
    lm_seconds: float = 0.0  # llama.cpp decoding after the prompt
    reward_seconds: float = 0.0
    logprob_seconds: float = 0.0  # spent on `logprobs` (a full-vocabulary pass per token); benchmarks subtract it
    seconds: float = 0.0  # wall time of the whole generation
    tokens_per_s: float = 0.0  # generated tokens / (seconds - prefill_seconds)
    tau: float | None = None
    calibration_seconds: float = 0.0  # > 0 when this call had to calibrate tau first (a new model or k)
    gate: str = ""
    top_k: int = 0
    weight: float = 0.0
    seed: int = 0
    finish_reason: str = ""  # stop (EOS / end of turn / stop string), length (max_tokens), context (context full)

    def summary(self) -> str:
        """The one stats line the CLI and chat print after an answer."""
        tau = f"tau={self.tau:.3f} " if self.tau is not None else ""
        asked = f", asked {self.ratio_target:.0%}" if self.ratio_target is not None else ""
        return (f"{self.tokens} tokens, {self.tokens_per_s:.1f} tok/s, gate={self.gate} {tau}junctions={self.junctions} ({self.ratio:.0%}{asked}), "
                f"changed={self.changed}, reward {self.reward_seconds:.2f}s / lm {self.lm_seconds + self.prefill_seconds:.2f}s, seed={self.seed}, "
                f"{self.finish_reason}")


@dataclass
class Generation:
    """The result of one generation."""

    text: str
    token_ids: list[int]
    stats: Stats
    trace: list[TokenInfo] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Piece:
    """A streamed chunk: new text (possibly empty while a stop string or a character is incomplete) and its token."""

    text: str
    token: TokenInfo


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
        self.calibration_seconds = 0.0  # what the last resolve_tau spent calibrating (0 when the profile was cached)

    def with_scorer(self, scorer: Scorer | None) -> "Steerer":
        """The same model, settings and calibrations with another scorer (a request's own mix of objectives)."""
        other = Steerer(self.lm, scorer, self.config, announce=self.announce)
        other._taus = self._taus  # calibrations are the model's, whatever scores the candidates
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

    def stream(self, prompt: str | Sequence[Message], *, system: str | None = None, raw: bool = False, **changes: Any) -> Stream:
        """Like `generate`, yielding `Piece`s as tokens are chosen."""
        config = self.config_for(**changes)
        prepared = self.prepare(prompt, system, raw)
        self.calibration_seconds = 0.0
        tau = self.gate_tau(config)
        return Stream(self._decode(prepared, config, tau, self.calibration_seconds))

    def config_for(self, **changes: Any) -> SteerConfig:
        """This steerer's config with per-call changes, checked against what is loaded."""
        config = self.config.updated(**changes) if changes else self.config
        if config.steers() and self.scorer is None:
            raise ConfigError(f"the {config.gate!r} gate needs a reward model", "pass --reward, or use --gate none",
                              api_hint="the server has no reward model: use sia.gate \"none\"")
        if config.steers() and getattr(self.scorer, "lm_state", None) == "branches" and config.top_k > self.lm.max_branches:
            raise ConfigError(f"top_k {config.top_k} is more than the {self.lm.max_branches} branches this value head's context holds",
                              f"use --top-k {self.lm.max_branches} or less", api_hint=f"use sia.top_k <= {self.lm.max_branches}")
        return config

    def gate_tau(self, config: SteerConfig, progress: Callable[[int, int], None] | None = None) -> float | None:
        """The tau the gate gets: given, calibrated from the ratio, or None for gates that do not use it."""
        spec = gate_spec(config.gate)
        return self.resolve_tau(config, progress) if spec is not None and spec.uses_tau else None

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

    def is_calibrated(self, top_k: int) -> bool:
        """Whether a ratio at this k resolves without decoding the calibration prompts."""
        return any(k == top_k for k, _ in self._taus) or is_calibrated(self.lm, top_k)

    def prepare(self, prompt: str | Sequence[Message], system: str | None, raw: bool) -> _Prompt:
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
        ids, stops = self.lm.render_chat(messages)
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), messages[-1]["content"])
        return _Prompt(ids, user, stops)

    def _decode(self, prompt: _Prompt, cfg: SteerConfig, tau: float | None, calibration_seconds: float) -> Generator[Piece, None, Generation]:
        lm, reward = self.lm, self.scorer
        seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
        seq = SequenceState(lm, cfg, tau, seed, len(prompt.ids), list(cfg.stop) + prompt.stops)
        seq.stats.calibration_seconds = calibration_seconds
        start = time.perf_counter()
        try:
            logits = lm.prefill(prompt.ids)
            seq.stats.prefill_seconds = time.perf_counter() - start
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


class SequenceState:
    """One response being decoded: its sampler stream, gate, text, stats and trace.

    A driver feeds it logits (`propose`), scores `scoring_request(...)` when `junction` is set, and hands
    the rewards back (`commit`). `Steerer` drives one sequence; Best-of-N (`search.py`) drives N in
    one llama.cpp batch, with the junctions of all of them scored in one reward-model run.
    """

    def __init__(self, lm: LM, cfg: SteerConfig, tau: float | None, seed: int, prompt_tokens: int, stops: list[str]) -> None:
        self.lm, self.cfg = lm, cfg
        self.rng = np.random.default_rng(seed)  # the sampler's stream: one draw per step, whatever the gate
        self.gate = make_gate(cfg, tau, seed)
        self.stops = stops
        self.stats = Stats(prompt_tokens=prompt_tokens, tau=tau, gate=cfg.gate, top_k=cfg.top_k, weight=cfg.weight, seed=seed,
                           finish_reason="length", ratio_target=_asked_ratio(cfg))
        self.trace: list[TokenInfo] | None = [] if cfg.trace else None
        self.ids: list[int] = []
        self.done = False
        self.junction = False
        self.last_token = -1
        self.stop_token: int | None = None  # the end-of-generation token it stopped on (never appended to ids)
        self._bytes = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text, self._emitted = "", 0
        self._info: TokenInfo | None = None
        self._cut_at_stop = False
        self._cand = np.zeros(0, dtype=np.int64)
        self._z = np.zeros(0)
        self._scored: np.ndarray | None = None  # --min-prob: which candidates this junction scores (None = all)
        self._h, self._u, self._base = 0.0, 0.0, 0
        self._lse = 0.0
        self._kl_sum = 0.0
        self._logprob_sum = 0.0
        self._objective_sums: dict[str, float] = {}
        self._objective_count = 0

    def propose(self, logits: np.ndarray) -> None:
        """Read this step's top-k and entropy, ask the gate, draw the step's uniform."""
        self._cand, self._z = top_k(logits, self.cfg.top_k)  # (k,), (k,) highest first
        if self.cfg.logprobs:
            t = time.perf_counter()
            self._lse = log_normaliser(logits, float(self._z[0]))
            self.stats.logprob_seconds += time.perf_counter() - t
        self._h = entropy(self._z)
        self.junction = self.gate(len(self.ids), self._h)
        self._scored = scored_candidates(self._z, self.cfg.min_prob) if self.junction else None
        self._u = self.rng.random()
        self._base = pick(self._z, self.cfg.temperature, self._u, self.cfg.top_p)

    def scoring_request(self, prompt: str, prompt_ids: Sequence[int], key: int = 0, decoder: Any = None) -> Junction:
        """This step's candidates, for the scorer; `decoder` holds the sequence's KV (default: the LM)."""
        return Junction(prompt, prompt_ids, self.ids, self._scored_ids(), self.candidate_texts, key, decoder if decoder is not None else self.lm)

    def _scored_ids(self) -> np.ndarray:
        return self._cand if self._scored is None else self._cand[self._scored]

    def candidate_texts(self) -> list[str]:
        """The response so far with each scored candidate appended (a partial UTF-8 character is dropped)."""
        done = bytes(self._bytes)
        return [(done + self.lm.piece(int(c))).decode("utf-8", "ignore") for c in self._scored_ids()]

    def commit(self, rewards: np.ndarray | None, reward_seconds: float = 0.0, parts: dict[str, list[float]] | None = None) -> Piece | None:
        """Choose this step's token (steered if `rewards` is given) and append it; returns the new text.
        `parts`: with a mix of objectives, each objective's raw rewards of the k candidates."""
        cfg, stats = self.cfg, self.stats
        choice, kept, kl, steered = self._base, None, 0.0, None
        if rewards is not None:
            stats.reward_seconds += reward_seconds
            stats.reward_calls += 1
            stats.candidates_scored += len(rewards)
            r = (rewards - rewards.mean()) / (rewards.std() + 1e-6) if cfg.normalize else rewards
            if self._scored is not None:  # --min-prob: back on all k, the unscored at the lowest reward scored
                r = _on_all(r, self._scored)
                if parts:
                    parts = {name: [float(v) for v in _on_all(np.asarray(values), self._scored)] for name, values in parts.items()}
            steered = self._z + cfg.weight * r
            choice = pick(steered, cfg.temperature, self._u, cfg.top_p)
            kept = [float(x) for x in r]
            kl = _kl(steered, self._z, cfg.temperature)
        token = int(self._cand[choice])
        if self.lm.is_eog(token):
            self.stop_token = token
            self.end("stop")
            return None
        stats.junctions += self.junction
        stats.changed += choice != self._base
        self._kl_sum += kl
        logprob = float(self._z[choice]) - self._lse if cfg.logprobs else None
        if logprob is not None:
            self._logprob_sum += logprob
        self.ids.append(token)
        self.last_token = token
        piece = self.lm.piece(token)
        self._bytes += piece
        self._text += self._decoder.decode(piece)
        self._info = TokenInfo(token, piece.decode("utf-8", "replace"), self._h, self.junction, choice, choice != self._base, kept, kl, logprob,
                               parts)
        if cfg.trace:  # what a page needs to show why this token: the candidates and both draws
            t = cfg.temperature or 1.0
            self._info.candidates = [int(c) for c in self._cand]
            self._info.p_base = [round(float(p), 5) for p in softmax((self._z - self._z.max()) / t)]
            self._info.p_steered = [round(float(p), 5) for p in softmax((steered - steered.max()) / t)] if steered is not None else None
        if parts:
            for name, values in parts.items():
                self._objective_sums[name] = self._objective_sums.get(name, 0.0) + values[choice]
            self._objective_count += 1
        if self.trace is not None:
            self.trace.append(self._info)
        cut = _find_stop(self._text, self.stops, self._emitted)
        if cut is not None:
            self._text = self._text[:cut]
            self._cut_at_stop = True
            self.end("stop")
            return self._emit(len(self._text))
        if len(self.ids) >= cfg.max_tokens:
            self.end("length")
        return self._emit(len(self._text) - _held_back(self._text, self.stops))

    def end(self, reason: str) -> None:
        self.done = True
        self.stats.finish_reason = reason

    def close(self) -> Piece | None:
        """Flush the UTF-8 decoder and any text held back for a stop string that never came."""
        if self._cut_at_stop:
            return None
        self._text += self._decoder.decode(b"", final=True)  # a dangling partial character becomes U+FFFD
        return self._emit(len(self._text)) if self._emitted < len(self._text) else None

    def result(self, seconds: float) -> Generation:
        stats = self.stats
        stats.tokens = len(self.ids)
        stats.ratio = stats.junctions / stats.tokens if stats.tokens else 0.0
        stats.kl_per_token = self._kl_sum / stats.tokens if stats.tokens else 0.0
        if self._objective_count:
            stats.objectives = {k: v / self._objective_count for k, v in self._objective_sums.items()}
        if self.cfg.logprobs and stats.tokens:
            stats.perplexity = float(np.exp(-self._logprob_sum / stats.tokens))
        stats.seconds = seconds
        decode_seconds = seconds - stats.prefill_seconds
        stats.tokens_per_s = stats.tokens / decode_seconds if decode_seconds > 0 else 0.0
        return Generation(text=self._text, token_ids=self.ids, stats=stats, trace=self.trace)

    def _emit(self, upto: int) -> Piece | None:
        if self._info is None:
            return None
        piece = Piece(self._text[self._emitted : upto], self._info)
        self._emitted = upto
        return piece


def scored_candidates(z: np.ndarray, min_prob: float) -> np.ndarray | None:
    """Which of the k candidates (logits `z`, highest first) a junction scores: those with base probability
    >= min_prob x the top one's, at least 2; None = all."""
    if min_prob <= 0.0 or len(z) <= 2:
        return None
    keep = z >= z[0] + np.log(min_prob)
    keep[:2] = True
    return None if keep.all() else keep


def _on_all(values: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Rewards of the scored candidates, back on all k: the unscored get the lowest scored."""
    out = np.full(len(scored), float(values.min()))
    out[scored] = values
    return out


def objective_parts(scorer: Any, i: int) -> dict[str, list[float]] | None:
    """Junction i's per-objective rewards from the last scoring call, when the scorer is a mix (`mix.Objectives`)."""
    parts = getattr(scorer, "last_parts", None)
    return parts[i] if parts and i < len(parts) else None


def _kl(steered: np.ndarray, base: np.ndarray, temperature: float) -> float:
    """KL(softmax(steered/T) || softmax(base/T)) over the k candidates, nats (greedy counts as T = 1)."""
    t = temperature or 1.0
    a, b = (steered - steered.max()) / t, (base - base.max()) / t  # shifted first: a tiny T gives -inf, never inf - inf
    log_p = a - np.log(np.exp(a).sum())
    log_q = b - np.log(np.exp(b).sum())
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)  # 0 log 0 = 0
    return float(terms.sum()) if np.isfinite(terms.sum()) else float("inf")


def _find_stop(text: str, stops: list[str], emitted: int) -> int | None:
    """Index of the earliest stop string in the not-yet-emitted tail of `text`, if any."""
    best = None
    for s in stops:
        i = text.find(s, max(0, emitted - len(s) + 1))
        if i != -1 and (best is None or i < best):
            best = i
    return best


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return hold


def _to_stderr(message: str) -> None:
    print(f"sia: {message}", file=sys.stderr, flush=True)


def _asked_ratio(cfg: SteerConfig) -> float | None:
    """The junction share the user asked for, when the gate works from a ratio (not from a given tau)."""
    spec = gate_spec(cfg.gate)
    if spec is None or cfg.ratio is None or not (spec.uses_ratio or (spec.uses_tau and cfg.tau is None)):
        return None
    return cfg.ratio
