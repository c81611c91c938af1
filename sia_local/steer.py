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
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Generator, Iterator, Sequence

import numpy as np

from .config import SteerConfig
from .errors import ConfigError, PromptError
from .junction import entropy, make_gate, softmax, top_k
from .lm import LM, Message
from .reward import Scorer


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


@dataclass
class Stats:
    """What a generation cost and how much it was steered."""

    prompt_tokens: int = 0
    tokens: int = 0
    junctions: int = 0
    ratio: float = 0.0  # junctions / tokens: the realised steering ratio
    changed: int = 0  # junctions where the reward changed the sampled token
    reward_calls: int = 0  # batched reward-model runs
    candidates_scored: int = 0
    prefill_seconds: float = 0.0
    lm_seconds: float = 0.0  # llama.cpp decoding after the prompt
    reward_seconds: float = 0.0
    seconds: float = 0.0  # wall time of the whole generation
    tokens_per_s: float = 0.0  # generated tokens / (seconds - prefill_seconds)
    tau: float | None = None
    gate: str = ""
    top_k: int = 0
    weight: float = 0.0
    seed: int = 0
    finish_reason: str = ""  # stop (EOS / end of turn / stop string), length (max_tokens), context (context full)


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
    """Steers `lm` with `reward` at junctions chosen by `config.gate`.

    Example:
        >>> steerer = Steerer(LM("model.gguf"), OnnxReward("rm/"), SteerConfig(ratio=0.2, seed=0))
        >>> g = steerer.generate("Write a note to a neighbour.")
        >>> g.text, g.stats.ratio
    """

    def __init__(self, lm: LM, reward: Scorer | None = None, config: SteerConfig | None = None) -> None:
        self.lm = lm
        self.reward = reward
        self.config = config or SteerConfig()
        self._taus: dict[tuple[int, float, float], float] = {}

    def generate(self, prompt: str | Sequence[Message], **options: Any) -> Generation:
        """Generate one response. `prompt` is a user message, or a list of chat messages.

        Options: ``system`` (a system message), ``raw`` (skip the chat template), and any
        `SteerConfig` field to override for this call.
        """
        stream = self.stream(prompt, **options)
        for _ in stream:
            pass
        assert stream.generation is not None
        return stream.generation

    def stream(self, prompt: str | Sequence[Message], *, system: str | None = None, raw: bool = False, **overrides: Any) -> Stream:
        """Like `generate`, yielding `Piece`s as tokens are chosen."""
        config = self.config.replace(**overrides) if overrides else self.config
        if config.gate != "none" and self.reward is None:
            raise ConfigError(f"the {config.gate!r} gate needs a reward model", "pass --reward, or use --gate none")
        prepared = self._prepare(prompt, system, raw)
        tau = self.resolve_tau(config) if config.gate == "entropy" else None
        return Stream(self._decode(prepared, config, tau))

    def resolve_tau(self, config: SteerConfig, progress: Callable[[int, int], None] | None = None) -> float:
        """tau from the config, or calibrated for `config.ratio` on this model (cached per model file)."""
        if config.tau is not None:
            return config.tau
        assert config.ratio is not None
        key = (config.top_k, config.temperature, config.ratio)
        if key not in self._taus:
            from .calibrate import tau_for_ratio

            self._taus[key] = tau_for_ratio(self.lm, config.ratio, top_k=config.top_k, temperature=config.temperature, progress=progress)
        return self._taus[key]

    def _prepare(self, prompt: str | Sequence[Message], system: str | None, raw: bool) -> _Prompt:
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

    def _decode(self, prompt: _Prompt, cfg: SteerConfig, tau: float | None) -> Generator[Piece, None, Generation]:
        lm, reward = self.lm, self.reward
        seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
        rng = np.random.default_rng(seed)  # the sampler's stream: one draw per step, whatever the gate
        gate = make_gate(cfg, tau, seed)
        stops = list(cfg.stop) + prompt.stops
        stats = Stats(prompt_tokens=len(prompt.ids), tau=tau, gate=cfg.gate, top_k=cfg.top_k, weight=cfg.weight, seed=seed)
        trace: list[TokenInfo] | None = [] if cfg.trace else None
        out_ids: list[int] = []
        out_bytes = bytearray()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, emitted = "", 0
        info: TokenInfo | None = None
        stopped_on_string = False

        start = time.perf_counter()
        logits = lm.prefill(prompt.ids)
        stats.prefill_seconds = time.perf_counter() - start
        stats.finish_reason = "length"
        for step in range(cfg.max_tokens):
            ids, z = top_k(logits, cfg.top_k)  # (k,), (k,) highest first
            h = entropy(z)
            is_junction = gate(step, h)
            u = rng.random()
            base_choice = _pick(z, cfg.temperature, u, cfg.top_p)
            rewards = None
            if is_junction:
                assert reward is not None
                done = bytes(out_bytes)
                texts = [(done + lm.piece(int(c))).decode("utf-8", "ignore") for c in ids]
                t = time.perf_counter()
                r = reward.score(prompt.reward_prompt, texts)  # (k,)
                stats.reward_seconds += time.perf_counter() - t
                stats.reward_calls += 1
                stats.candidates_scored += len(texts)
                if cfg.normalize:
                    r = (r - r.mean()) / (r.std() + 1e-6)
                choice = _pick(z + cfg.weight * r, cfg.temperature, u, cfg.top_p)
                rewards = [float(x) for x in r]
            else:
                choice = base_choice
            token = int(ids[choice])
            if lm.is_eog(token):
                stats.finish_reason = "stop"
                break
            stats.junctions += is_junction
            stats.changed += choice != base_choice
            out_ids.append(token)
            piece = lm.piece(token)
            out_bytes += piece
            text += decoder.decode(piece)
            info = TokenInfo(token, piece.decode("utf-8", "replace"), h, is_junction, choice, choice != base_choice, rewards)
            if trace is not None:
                trace.append(info)

            cut = _find_stop(text, stops, emitted)
            if cut is not None:
                text = text[:cut]
                yield Piece(text[emitted:], info)
                emitted = len(text)
                stats.finish_reason = "stop"
                stopped_on_string = True
                break
            safe = len(text) - _held_back(text, stops)
            yield Piece(text[emitted:safe], info)
            emitted = safe
            if lm.n_past + 1 >= lm.n_ctx:
                stats.finish_reason = "context"
                break
            if step + 1 < cfg.max_tokens:
                t = time.perf_counter()
                logits = lm.step(token)
                stats.lm_seconds += time.perf_counter() - t
        if not stopped_on_string:
            text += decoder.decode(b"", final=True)  # a dangling partial character becomes U+FFFD
            if emitted < len(text) and info is not None:
                yield Piece(text[emitted:], info)  # text held back for a stop string that never came
        stats.tokens = len(out_ids)
        stats.ratio = stats.junctions / stats.tokens if stats.tokens else 0.0
        stats.seconds = time.perf_counter() - start
        decode_seconds = stats.seconds - stats.prefill_seconds
        stats.tokens_per_s = stats.tokens / decode_seconds if decode_seconds > 0 else 0.0
        return Generation(text=text, token_ids=out_ids, stats=stats, trace=trace)


def _pick(scores: np.ndarray, temperature: float, u: float, top_p: float = 1.0) -> int:
    """Index drawn from softmax(scores / T) by inverse CDF at `u`; greedy when T = 0.

    With top_p < 1 only the most likely candidates whose mass reaches top_p stay in the draw.
    """
    if temperature == 0:
        return int(np.argmax(scores))
    p = softmax(scores / temperature)
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        mask = np.zeros_like(p)
        mask[keep] = 1.0
        p = p * mask
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(scores) - 1))


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
