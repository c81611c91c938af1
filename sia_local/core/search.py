"""Best-of-N: N (optionally SIA-steered) samples decoded together, the best kept by the reward model.

The N sequences share one llama.cpp context: the prompt is decoded once and shared by a KV sequence
copy, each step is one `llama_decode` with one token per live sequence, and the junctions of all
sequences at a step are scored in one reward-model run. Sequence i samples with seed + i, exactly
as `Steerer.generate(..., seed=seed + i)` would; the tokens match a single-sequence run except where
batched matrix products round differently in the last bits (a draw that falls on a boundary).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import Cancelled, ConfigError, ContextLengthError
from ..llama import BatchContext, Message
from .scorer import steered_by
from .steer import Generation, Piece, SequenceState, Steerer, objective_parts


@dataclass
class Candidate:
    """One of the N samples and its reward on the whole response."""

    index: int
    score: float
    generation: Generation
    hidden: np.ndarray | None = field(default=None, repr=False, compare=False)  # keep_hidden: see `best_of_n`


@dataclass
class SearchStats:
    n: int
    prompt_tokens: int
    tokens: int  # generated, all sequences
    decode_calls: int  # llama_decode calls, prompt included
    tokens_decoded: int  # tokens through llama.cpp: the prompt once + every generated token
    reward_calls: int  # batched reward runs while steering (all sequences' junctions of a step together)
    seconds: float
    prefill_seconds: float
    lm_seconds: float
    reward_seconds: float  # steering + final scoring
    tokens_per_s: float  # generated tokens / seconds


@dataclass
class BestOfN:
    """The winner, every candidate with its score, and what the search cost."""

    best: Generation
    best_index: int
    candidates: list[Candidate]
    stats: SearchStats
    ranked_by: str = ""  # what scored the whole answers (a head fitted at junctions ranks with its teacher)

    def samples(self) -> list[dict[str, Any]]:
        """Every sample in one shape, the same in `sia generate --json` and `sia batch` rows."""
        return [{"index": c.index, "score": c.score, "text": c.generation.text, "finish_reason": c.generation.stats.finish_reason,
                 "tokens": c.generation.stats.tokens} for c in self.candidates]

    def to_dict(self) -> dict[str, Any]:
        """The winner (`text`, `best`: its whole Generation), every sample (`samples`) and the search's cost (`stats`)."""
        return {"text": self.best.text, "best_index": self.best_index, "ranked_by": self.ranked_by, "samples": self.samples(),
                "best": self.best.to_dict(), "stats": asdict(self.stats)}


def best_of_n(
    steerer: Steerer,
    prompt: str | Sequence[Message],
    n: int,
    *,
    system: str | None = None,
    raw: bool = False,
    on_piece: Callable[[int, Piece], None] | None = None,
    cancel: threading.Event | None = None,
    keep_hidden: bool = False,
    **changes: Any,
) -> BestOfN:
    """Decode `n` samples of `prompt` together and keep the one the reward model scores highest.

    Each sample is steered as `steerer.config` (plus `changes`) says; ``gate="none"`` gives plain
    Best-of-N. `on_piece(i, piece)` sees every sequence's text as it is generated. Setting `cancel`
    stops the search at the next step (raises `Cancelled`): the server uses it when a client leaves.
    `keep_hidden` (an LM loaded with hidden states): each candidate also gets `hidden`, the final
    hidden states of the prompt's last token, of every response token and of the end-of-generation
    token it stopped on, if any: read from the decodes that sampled it, plus one small decode of each
    sequence's tail, so distillation needs no second pass over the samples.
    """
    if steerer.scorer is None:
        raise ConfigError("Best-of-N needs a reward model to pick the winner", "pass --reward")
    if n < 1:
        raise ConfigError(f"`n` must be >= 1, got {n}", "fix --best-of")
    cfg = steerer.config_for(**changes)
    lm, reward = steerer.lm, steerer.scorer
    prepared = steerer.prepare(prompt, system, raw)
    room = lm.n_ctx - len(prepared.ids) - 1  # the batch context is sized from this: never more than the model's context
    if room < 1:
        raise ContextLengthError(f"the prompt has {len(prepared.ids)} tokens but the context holds {lm.n_ctx}", "shorten the prompt or raise --ctx-size",
                                 api_hint="shorten the messages")
    cfg = cfg.replace(max_tokens=min(cfg.max_tokens, room))
    tau = steerer.gate_tau(cfg)
    m = steerer.resolve_strength(cfg)
    seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
    stops = list(cfg.stop) + prepared.stops

    start = time.perf_counter()
    needs = getattr(reward, "lm_state", None) if cfg.steers() else None  # value heads on the LM: branch / keep hidden states per sequence
    ctx = BatchContext(lm, n, len(prepared.ids), cfg.max_tokens, branches=cfg.top_k if needs == "branches" else 0,
                       track_hidden=needs == "hidden" or keep_hidden)
    reward_seconds = lm_seconds = 0.0
    reward_calls = 0
    try:
        ctx.use_vector(*steerer.vector_for(cfg))
        first = ctx.prefill(prepared.ids)
        prefill_seconds = time.perf_counter() - start
        by = steered_by(steerer.scorer) if cfg.steers() else None
        seqs = [SequenceState(lm, cfg, tau, seed + i, prepared.ids, stops, by, m) for i in range(n)]
        for s in seqs:
            s.stats.prefill_seconds = prefill_seconds
        logits: dict[int, np.ndarray] = {i: first for i in range(n)}
        hidden: dict[int, list[np.ndarray]] = {i: [ctx.hidden_of(i)] for i in range(n)} if keep_hidden else {}
        live = list(range(n))
        while live:
            if cancel is not None and cancel.is_set():
                raise Cancelled("the Best-of-N request was cancelled", "the client left or the request ran past its time limit")
            for i in live:
                seqs[i].propose(logits[i])
            steered = [i for i in live if seqs[i].junction]
            rewards: dict[int, np.ndarray] = {}
            shares: dict[int, float] = {}
            parts: dict[int, dict[str, list[float]] | None] = {}
            if steered:
                t = time.perf_counter()
                scored = reward.score_junctions([seqs[i].scoring_request(prepared.reward_prompt, prepared.ids, key=i, decoder=ctx) for i in steered])
                dt = time.perf_counter() - t
                reward_seconds += dt
                reward_calls += 1
                for n_j, (i, r) in enumerate(zip(steered, scored)):  # a sequence reward model scores all of them in one run
                    rewards[i] = r
                    shares[i] = dt / len(steered)
                    parts[i] = objective_parts(reward, n_j)
            for i in live:
                piece = seqs[i].commit(rewards.get(i), shares.get(i, 0.0), parts=parts.get(i))
                if piece is not None and on_piece is not None:
                    on_piece(i, piece)
                if not seqs[i].done and ctx.pos[i] + 1 >= min(lm.n_ctx, ctx.n_ctx):
                    seqs[i].end("context")
            if keep_hidden:  # the tokens a finished sequence never decoded: its last one and the stop token
                tails = {i: seqs[i].ids[len(hidden[i]) - 1 :] + ([seqs[i].stop_token] if seqs[i].stop_token is not None else [])
                         for i in live if seqs[i].done}
                for i, h in ctx.extend({i: t for i, t in tails.items() if t}).items():
                    hidden[i].extend(h)
            for i in live:
                if seqs[i].done:
                    ctx.drop(i)
            live = [i for i in live if not seqs[i].done]
            if live:
                t = time.perf_counter()
                logits = ctx.step({i: seqs[i].last_token for i in live})
                step_seconds = time.perf_counter() - t
                lm_seconds += step_seconds
                for i in live:
                    seqs[i].stats.lm_seconds += step_seconds
                    if keep_hidden:
                        hidden[i].append(ctx.hidden_of(i))
        generations = []
        for i, s in enumerate(seqs):
            tail = s.close()
            if tail is not None and on_piece is not None:
                on_piece(i, tail)
            generations.append(s.result(time.perf_counter() - start))
    finally:
        ctx.close()
        reward.reset()
    return rank_samples(reward, prepared.reward_prompt, prepared.ids, generations, start=start, decode_calls=ctx.decode_calls,
                        tokens_decoded=ctx.tokens_decoded, reward_calls=reward_calls, prefill_seconds=prefill_seconds, lm_seconds=lm_seconds,
                        reward_seconds=reward_seconds, hidden=[np.stack(hidden[i]) for i in range(n)] if keep_hidden else None)


def rank_samples(reward: Any, reward_prompt: str, prompt_ids: Sequence[int], generations: list[Generation], *, start: float, decode_calls: int,
                 tokens_decoded: int, reward_calls: int, prefill_seconds: float, lm_seconds: float, reward_seconds: float,
                 hidden: list[np.ndarray] | None = None) -> BestOfN:
    """Score the finished samples as whole answers and keep the best: the end of every Best-of-N (here, or as a group
    of slots in `slots.py`). `start`: when the search began (perf_counter)."""
    t = time.perf_counter()
    final = reward.score_responses(reward_prompt, prompt_ids, [(g.text, g.token_ids) for g in generations])  # (n,)
    reward_seconds += time.perf_counter() - t
    best = int(np.argmax(final))
    seconds = time.perf_counter() - start
    tokens = sum(g.stats.tokens for g in generations)
    stats = SearchStats(n=len(generations), prompt_tokens=len(prompt_ids), tokens=tokens, decode_calls=decode_calls, tokens_decoded=tokens_decoded,
                        reward_calls=reward_calls, seconds=seconds, prefill_seconds=prefill_seconds, lm_seconds=lm_seconds,
                        reward_seconds=reward_seconds, tokens_per_s=tokens / seconds if seconds > 0 else 0.0)
    candidates = [Candidate(i, float(final[i]), g, hidden[i] if hidden is not None else None) for i, g in enumerate(generations)]
    ranked_by = getattr(reward, "ranking", None) or f"the scorer ({getattr(reward, 'name', '?')})"
    return BestOfN(best=generations[best], best_index=best, candidates=candidates, stats=stats, ranked_by=ranked_by)
