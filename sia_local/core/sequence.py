"""One response being decoded: its sampler stream, gate, text, stats and trace (`SequenceState`).

`propose` reads a step's top-k, entropy and gate and draws the step's one uniform; `commit` picks the token
from the steered or the base draw (the same uniform), appends it, and handles stop strings and
end-of-generation. `Steerer` drives one sequence, Best-of-N drives N.
"""

from __future__ import annotations

import codecs
import time
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..llama import LM
from ..llama.grammar import Grammar
from .config import SteerConfig
from .junction import entropy, gate_spec, log_normaliser, make_gate, pick, softmax, top_k
from .penalties import LogitProcessor, min_p_keep, truncation
from .scorer import Junction
from .generation import Generation, Piece, Stats, TokenInfo, steer_warning


class SequenceState:
    """One response being decoded: its sampler stream, gate, text, stats and trace.

    A driver feeds it logits (`propose`), scores `scoring_request(...)` when `junction` is set, and hands
    the rewards back (`commit`). `Steerer` drives one sequence; Best-of-N (`search.py`) drives N in
    one llama.cpp batch, with the junctions of all of them scored in one reward-model run.
    """

    def __init__(self, lm: LM, cfg: SteerConfig, tau: float | None, seed: int, prompt_ids: Sequence[int], stops: list[str],
                 scorer: str | None = None, strength: float | None = None) -> None:
        self.lm, self.cfg = lm, cfg
        self.strength = strength if strength is not None and cfg.steers() else None  # m in s = z + w·m·r (`core/strength.py`)
        prompt_tokens = len(prompt_ids)
        self.processor = LogitProcessor(cfg, lm.n_vocab)  # the caller's penalties and bias, before the top-k
        self._prompt_tail = list(prompt_ids[-cfg.repeat_last_n:]) if self.processor.penalises else []
        self._keep = truncation(cfg)  # SIA's k, or the caller's smaller top-k
        self.rng = np.random.default_rng(seed)  # the sampler's stream: one draw per step, whatever the gate
        self.gate = make_gate(cfg, tau, seed)
        self.stops = stops
        self.stats = Stats(prompt_tokens=prompt_tokens, tau=tau, gate=cfg.gate, top_k=cfg.top_k, weight=cfg.weight, strength=self.strength, seed=seed,
                           finish_reason="length", ratio_target=_asked_ratio(cfg), scorer=scorer if cfg.steers() else None)
        self.trace: list[TokenInfo] | None = [] if cfg.trace else None
        # structured output: this sequence's grammar state; with a trigger (a tool call under `auto`) it waits for the answer
        # to open with that text, and what follows is a call: constrained, not emitted as text, not steered unless asked
        self._trigger = cfg.grammar_trigger or None if cfg.grammar else None
        self.grammar = Grammar(lm, cfg.grammar) if cfg.grammar and not self._trigger else None
        self.in_call = bool(cfg.grammar) and cfg.grammar_trigger == ""
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
        """Read this step's top-k and entropy, ask the gate, draw the step's uniform. The caller's penalties, bias, top-k
        truncation and min-p act first, on the whole vocabulary (`penalties.py`): they decide which k are candidates."""
        if self.processor.active:
            logits = self.processor.apply(logits, self._prompt_tail + self.ids[-self.cfg.repeat_last_n:] if self.processor.penalises else ())
        if self.grammar is not None:  # top-k and entropy over what the grammar allows: junctions choose among valid tokens
            cand, z = top_k(self.grammar.mask(logits, self._keep), self._keep)
            allowed = np.isfinite(z)
            if not allowed.any():
                raise ConfigError("the grammar allows no token here", "check the grammar: it must end where the model can stop",
                                  api_hint="check the grammar or response_format")
            self._cand, self._z = cand[allowed], z[allowed]  # (k' <= k,)
        else:
            self._cand, self._z = top_k(logits, self._keep)  # (k,), (k,) highest first
        keep = min_p_keep(self._z, self.cfg.min_p)
        if keep is not None:
            self._cand, self._z = self._cand[keep], self._z[keep]
        if self.cfg.logprobs:
            t = time.perf_counter()
            top = float(self._z[0]) if self.grammar is None else float(logits.max())  # a grammar's top allowed token is not the max:
            self._lse = log_normaliser(logits, top)  # a forbidden one far above it would overflow exp
            self.stats.logprob_seconds += time.perf_counter() - t
        self._h = entropy(self._z)
        self.junction = self.gate(len(self.ids), self._h) if not self.in_call or self.cfg.steer_arguments else False
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
            if self.strength is not None:
                r = r * self.strength
            keep = getattr(self.gate, "keep", None)  # a gate that scores more steps than it steers (`junction.ValueGate`)
            if keep is None or keep(self._z, cfg.weight * r, cfg.temperature):
                steered = self._z + cfg.weight * r
                choice = pick(steered, cfg.temperature, self._u, cfg.top_p)
                kept = [float(x) for x in r]
                kl = _kl(steered, self._z, cfg.temperature)
            else:
                self.junction, parts = False, None  # scored, drawn from the base model
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
        if self.grammar is not None:
            self.grammar.accept(token)
        self.ids.append(token)
        self.last_token = token
        piece = self.lm.piece(token)
        self._bytes += piece
        self._text += self._decoder.decode(piece)
        if self._trigger is not None:
            self._watch_trigger()
        self._info = TokenInfo(token, piece.decode("utf-8", "replace"), self._h, self.junction, choice, choice != self._base, kept, kl, logprob,
                               parts)
        if cfg.logprobs:  # OpenAI's logprobs: the base model's (full vocabulary, T = 1), and the draw the token came from
            self._info.candidates = [int(c) for c in self._cand]
            self._info.top_logprobs = [round(float(v), 6) for v in self._z - self._lse]
            self._info.draw_logprob = _draw_logprob(steered if steered is not None else self._z, choice, cfg.temperature)
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
        self._trigger = None  # the answer ended before opening a call: what was held back is text
        return self._emit(len(self._text)) if self._emitted < self._visible(len(self._text)) else None

    def result(self, seconds: float) -> Generation:
        stats = self.stats
        stats.tokens = len(self.ids)
        stats.ratio = stats.junctions / stats.tokens if stats.tokens else 0.0
        stats.kl_per_token = self._kl_sum / stats.tokens if stats.tokens else 0.0
        stats.change_rate = stats.changed / stats.junctions if stats.junctions else None
        stats.warning = steer_warning(stats.junctions, stats.changed, stats.weight) if self.cfg.steers() else None
        if self._objective_count:
            stats.objectives = {k: v / self._objective_count for k, v in self._objective_sums.items()}
        if self.cfg.logprobs and stats.tokens:
            stats.perplexity = float(np.exp(-self._logprob_sum / stats.tokens))
        stats.seconds = seconds
        decode_seconds = seconds - stats.prefill_seconds
        stats.tokens_per_s = stats.tokens / decode_seconds if decode_seconds > 0 else 0.0
        return Generation(text=self._text, token_ids=self.ids, stats=stats, trace=self.trace)

    def _watch_trigger(self) -> None:
        """Under a lazy grammar: once the answer (leading whitespace aside) opens with the trigger, the grammar takes over,
        fed the answer's tokens so far; once it cannot, the answer is free text for good."""
        assert self._trigger is not None and self.cfg.grammar
        text = self._text.lstrip()
        if text.startswith(self._trigger):
            grammar = Grammar(self.lm, self.cfg.grammar)
            if all(grammar.allows(t) and grammar.accept(t) is None for t in self.ids):
                self.grammar, self.in_call = grammar, True  # a call opens the answer: none of it is text
            else:  # the token that completed the trigger also carries text no call can continue with
                grammar.close()
            self._trigger = None
        elif not self._trigger.startswith(text):
            self._trigger = None

    def _visible(self, upto: int) -> int:
        """How much of the text may be emitted: never a call (it opens the answer), nor what may still open one."""
        if self.in_call or (self._trigger is not None and self._trigger.startswith(self._text.lstrip())):
            return self._emitted
        return upto

    def _emit(self, upto: int) -> Piece | None:
        if self._info is None:
            return None
        upto = max(self._visible(upto), self._emitted)
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


def _draw_logprob(s: np.ndarray, choice: int, temperature: float) -> float:
    """log p of candidate `choice` in softmax(s / T) over the k (greedy, T = 0: 0 for the top one, -inf elsewhere)."""
    if temperature <= 1e-6:
        return 0.0 if choice == int(np.argmax(s)) else float("-inf")
    x = (s - s.max()) / temperature
    return round(float(x[choice] - np.log(np.exp(x).sum())), 6)


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


def _asked_ratio(cfg: SteerConfig) -> float | None:
    """The junction share the user asked for, when the gate works from a ratio (not from a given tau)."""
    spec = gate_spec(cfg.gate)
    if spec is None or cfg.ratio is None or not (spec.uses_ratio or (spec.uses_tau and cfg.tau is None)):
        return None
    return cfg.ratio
