"""What a generation returns: each token's record (`TokenInfo`), the stats (`Stats`), the whole answer
(`Generation`) and a streamed chunk (`Piece`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TokenInfo:
    """One generated token, as the trace and the stream report it."""

    id: int
    text: str  # the token's bytes decoded on their own (may be part of a character)
    entropy: float  # nats, over the top-k at T = 1
    junction: bool
    rank: int  # the chosen token's rank among the k by base logit (0 = the model's favourite)
    changed: bool  # the reward made the sampler pick another token than the base distribution would have
    rewards: list[float] | None = None  # the k candidates' rewards at a junction as added: s = z + w·rewards (after --normalize, x strength)
    kl: float = 0.0  # KL(steered || base) over the k candidates at this step, nats (0 off junctions)
    logprob: float | None = None  # log p_base(token) over the full vocabulary, T = 1 (with config.logprobs)
    objectives: dict[str, list[float]] | None = None  # with a mix of objectives: each one's raw rewards of the k candidates
    candidates: list[int] | None = None  # with config.trace: the k candidate ids, highest base logit first
    p_base: list[float] | None = None  # ... their probabilities in the base draw (softmax of z / T over the k)
    p_steered: list[float] | None = None  # ... and in the steered draw at a junction (softmax of (z + w r) / T)
    top_logprobs: list[float] | None = None  # with config.logprobs: the k candidates' log p_base over the full vocabulary, T = 1
    draw_logprob: float | None = None  # with config.logprobs: log p of the token in the draw it came from (steered at a junction), over the k, at T


@dataclass
class Stats:
    """What a generation cost and how much it was steered."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens already in the context (a chat's earlier turns, a shared system prompt): not decoded again
    tokens: int = 0
    junctions: int = 0
    ratio: float = 0.0  # junctions / tokens: the realised steering ratio
    ratio_target: float | None = None  # the ratio asked for (entropy and random gates)
    changed: int = 0  # junctions where the reward changed the sampled token
    change_rate: float | None = None  # changed / junctions: how much the objective steered at its weight (None: no junction)
    warning: str | None = None  # one line when the objective at its weight changed almost nothing (`steer_warning`)
    kl_per_token: float = 0.0  # mean KL(steered || base) per generated token, nats
    perplexity: float | None = None  # of the response under the base model (with config.logprobs)
    scorer: str | None = None  # what steered (`scorer.steered_by`): head / teacher / reward model, its name, a head's path; None: nothing
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
    strength: float | None = None  # m in s = z + w·m·r: the objective's measured junction strength (`core/strength.py`); None: raw scale
    seed: int = 0
    finish_reason: str = ""  # stop (EOS / end of turn / stop string), length (max_tokens), context (context full)

    def summary(self) -> str:
        """The one stats line the CLI and chat print after an answer (and its warning, on a line of its own)."""
        tau = f"tau={self.tau:.3f} " if self.tau is not None else ""
        asked = f", asked {self.ratio_target:.0%}" if self.ratio_target is not None else ""
        rate = f" ({self.change_rate:.0%} of junctions)" if self.change_rate is not None else ""
        return (f"{self.tokens} tokens, {self.tokens_per_s:.1f} tok/s, gate={self.gate} {tau}junctions={self.junctions} ({self.ratio:.0%}{asked}), "
                f"changed={self.changed}{rate}, reward {self.reward_seconds:.2f}s / lm {self.lm_seconds + self.prefill_seconds:.2f}s, seed={self.seed}, "
                f"{self.finish_reason}" + (f", by {self.scorer}" if self.scorer else "") + (f"\nsia: {self.warning}" if self.warning else ""))


LOW_CHANGE = 0.05  # below this share of junctions changed, an objective at its weight is not steering
LOW_CHANGE_MIN_JUNCTIONS = 20  # ... judged over at least this many junctions (one short answer says little)


def steer_warning(junctions: int, changed: int, weight: float) -> str | None:
    """One line when the reward changed almost none of many junction picks: the objective at this weight barely steers."""
    if junctions < LOW_CHANGE_MIN_JUNCTIONS or changed >= LOW_CHANGE * junctions:
        return None
    return (f"the reward changed {changed} of {junctions} junction picks ({changed / junctions:.0%}): at weight {weight:g} this objective "
            f"barely steers; raise --weight (sia.weight), or check it with `sia eval`")


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
