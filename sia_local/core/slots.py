"""Slots: several requests decoded together in one llama.cpp context (continuous batching).

As llama.cpp's own server does it: N slots share one context (`BatchContext`, one KV sequence a slot).
Every step is ONE `llama_decode` with the next token of every decoding slot and a chunk of any prompt
being admitted (chunks of at most the batch's room, so running slots keep streaming while a long prompt
goes in). Then every slot with fresh logits proposes (top-k, entropy, its own gate and uniform draw);
the junctions of all slots are scored together, one call per scorer (for an early-exit head, one tapped decode
of each slot's candidates in that slot's own branch context, then one run of the head; one ONNX run for a
reward; scorers that share an embedder run it once over all their texts, `Scorer.shared`); each slot commits
its token. A slot that finishes, stops or
whose client leaves is free before the next step, and the queue's next request takes it. Its cells stay as a
prompt cache, as in llama.cpp's server: a request is given the free slot that holds the longest start of its
prompt (a chat's earlier turns, a shared system prompt), and only the rest of its prompt is decoded. (With a
value head's branches the slots share one KV buffer, where idle cells widen every slot's attention: there an
idle slot keeps, when another request is admitted, only the start it shares with that request's prompt.)

Each slot keeps its own `SequenceState` -- settings, gate and tau control, weight, seed and random
stream, stop strings, grammar. llama.cpp's kernels round a row differently by what else is in its batch
(attention takes other paths for one row or many, for long contexts, for tiles of rows; a unified KV buffer
spans the other slots' cells), and at a temperature of 1 a last-bit difference changes a token within a
few dozen. So a request that names its seed is *exact*: its rows never share a decode, a branch decode or
a scorer call with another request's (`Job.exact`), and its answer is the one it gets with the server
otherwise idle, whatever else runs. Requests without a seed (a random one each) share them: that is the
batching gain. A Best-of-N
request occupies n slots: its prompt is prefilled once and shared; sample i has seed + i, as in
`best_of_n`; the samples are ranked when the last one ends. A Best-of-N larger than all the slots runs
alone, in a context of its own, once the slots are empty.

One thread (`sia-slots`) owns the context and runs the steps while there is work; `submit` (any thread)
prepares a request -- its errors are raised there, before anything is queued -- and returns a Future.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import Busy, Cancelled, ConfigError, ContextLengthError
from ..llama import LM, BatchContext, Message
from .scorer import Junction, steered_by
from .search import best_of_n, rank_samples
from .sequence import SequenceState
from .steer import Piece, Steerer, objective_parts

CELL_KEPT_WORTH = 0.1  # a cached cell another request may come back to, against a prompt token to decode now


@dataclass(eq=False)
class Job:
    """One request in the slots: its prepared prompt, settings, scorer, n samples, and where its results go."""

    steerer: Steerer  # the model, the scorer (a request's own objectives: `Steerer.with_scorer`) and the settings
    prompt: str | Sequence[Message]
    n: int
    changes: dict[str, Any]
    system: str | None = None
    raw: bool = False
    on_piece: Callable[[int, Piece], None] | None = None  # (sample, piece), called from the slots' thread
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)  # a Generation (n = 1) or a BestOfN
    exact: bool = False  # decoded and scored in calls of its own (a seeded request: its answer whatever else runs)
    tools: list[dict[str, Any]] | None = None  # OpenAI's tools, for a chat template that renders them
    vector: tuple[Any, float, Any] = (None, 0.0, None)  # its control vector (vector, scale, key): the whole context's, see `_admit`
    # set by submit (prepared) and by the scheduler (admitted)
    ids: list[int] = field(default_factory=list)
    reward_prompt: str = ""
    seqs: list[SequenceState] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    live: list[bool] = field(default_factory=list)
    fed: int = 0  # prompt tokens in the slot's cells so far
    cached: int = 0  # of them, reused from the slot's last request
    start: float = 0.0
    prefill_seconds: float = 0.0
    first_step: int = 0  # the scheduler's decode count at admission (a group's decode_calls)
    reward_seconds: float = 0.0
    reward_calls: int = 0

    @property
    def decoding(self) -> bool:
        return self.fed >= len(self.ids)


class SlotScheduler:
    """N slots over one llama.cpp context; `submit` a request from any thread, wait on its Future.

    Args:
        lm: the model (the slots' context is a second context over its weights).
        n_slots: how many sequences decode together (`sia serve --parallel`).
        scorer: the scorer most requests use; a value head on the LM makes every slot room for `branches` candidates.
        slot_ctx: tokens of context each slot holds (default: the LM's).
        branches: the most candidates a junction may branch (a head's top_k; default 16, fewer when the slots x
            branches would pass llama.cpp's 256 sequences).
        max_queue: requests that may wait for a slot; `submit` refuses more (`full`).
    """

    def __init__(self, lm: LM, n_slots: int, *, scorer: Any = None, slot_ctx: int | None = None, branches: int | None = None,
                 max_queue: int = 8) -> None:
        if n_slots < 1:
            raise ConfigError(f"--parallel must be at least 1, got {n_slots}", "use --parallel 1 or more")
        needs = getattr(scorer, "lm_state", None)
        self.lm = lm
        self.lm_state = needs
        self.n_slots = n_slots
        # llama.cpp holds at most 256 sequences in a context: each slot and its branch sequences
        self.k = max(1, min(branches or 16, 256 // n_slots - 1)) if needs == "branches" else 0
        self.ctx = BatchContext(lm, n_slots, 0, 0, branches=self.k, track_hidden=needs == "hidden", slot_ctx=slot_ctx or lm.n_ctx,
                                exit_layer=_exit_layer(scorer) if needs == "branches" else None)
        self.slot_ctx = self.ctx.n_ctx
        self.max_queue = max_queue
        self.free: list[int] = list(range(n_slots))
        self.queue: deque[Job] = deque()
        self.running: list[Job] = []
        self.steps = 0
        self.served = 0
        self.cancelled = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._alone: Job | None = None  # a Best-of-N running alone now
        self._ranking = threading.Lock()  # one ranking at a time: an answer-fitted head ranks on the LM's own context
        self._vector_key: Any = None  # the control vector set on the slots' context (`_admit`)

    # -- any thread ------------------------------------------------------------------------------
    def submit(self, steerer: Steerer, prompt: str | Sequence[Message], *, n: int = 1, system: str | None = None, raw: bool = False,
               on_piece: Callable[[int, Piece], None] | None = None, cancel: threading.Event | None = None, exact: bool | None = None,
               bounded: bool = False, tools: list[dict[str, Any]] | None = None, **changes: Any) -> Future:
        """Prepare a request (its errors are raised here) and queue it; the Future gets a Generation, or a BestOfN when
        n > 1. Setting `cancel` stops it at the next step and frees its slots (the Future then raises `Cancelled`).
        `exact`: decode it in calls of its own (default: when it names a seed; see the module docstring). `bounded`: raise
        `Busy` rather than queue beyond `max_queue` (checked under the lock that queues it, so a burst cannot pass it)."""
        job = Job(steerer, prompt, n, changes, system, raw, on_piece, cancel or threading.Event(), tools=tools)
        self._prepare(job)
        job.exact = exact if exact is not None else changes.get("seed") is not None
        with self._cond:
            if self._closed or (self._thread is not None and not self._thread.is_alive()):
                raise ConfigError("the slots were closed", "start a new scheduler")
            if bounded and len(self.queue) >= self.max_queue + len(self.free):
                raise Busy(f"the server is busy: {self.active} slots running and {len(self.queue)} queued", "retry later",
                           api_hint="retry later")
            self.queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sia-slots", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job.future

    def full(self) -> bool:
        """Whether a new request would find no free slot and no room in the queue."""
        with self._cond:
            return len(self.queue) >= self.max_queue + len(self.free)

    @property
    def active(self) -> int:
        """Slots decoding a request now."""
        return self.n_slots - len(self.free)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def close(self) -> None:
        """Stop the thread after its current step; queued and running requests are cancelled; the context is freed."""
        with self._cond:
            self._closed = True
            for job in [*self.running, *self.queue, *([self._alone] if self._alone is not None else [])]:
                job.cancel.set()  # a Best-of-N running alone stops at its next step instead of being waited for
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for job in [*self.running, *self.queue]:
            _settle(job.future, error=Cancelled("the server is shutting down", "retry once it is back"))
        self.running, self.queue = [], deque()
        self.ctx.close()

    def _prepare(self, job: Job) -> None:
        steerer = job.steerer
        if job.n < 1:
            raise ConfigError(f"`n` must be >= 1, got {job.n}", "fix --best-of")
        if job.n > 1 and steerer.scorer is None:
            raise ConfigError("Best-of-N needs a reward model to pick the winner", "pass --reward")
        cfg = steerer.config_for(**job.changes)
        if cfg.steers() and getattr(steerer.scorer, "lm_state", None) == "branches" and cfg.top_k > self.k:
            raise ConfigError(f"top_k {cfg.top_k} is more than the {self.k} branches each slot holds", f"use --top-k {self.k} or less",
                              api_hint=f"use sia.top_k <= {self.k}")
        if cfg.steers() and getattr(steerer.scorer, "lm_state", None) not in (None, self.lm_state):
            raise ConfigError("this scorer needs LM states the slots' context was not made for", "start the slots with this scorer")
        prepared = steerer.prepare(job.prompt, job.system, job.raw, job.tools)
        if len(prepared.ids) + 1 >= self.slot_ctx:
            raise ContextLengthError(f"the prompt has {len(prepared.ids)} tokens but the context holds {self.slot_ctx} (a slot's)",
                                     "shorten the prompt or raise --ctx-size", api_hint="shorten the messages")
        tau = steerer.gate_tau(cfg)
        seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
        stops = list(cfg.stop) + prepared.stops
        job.ids, job.reward_prompt = prepared.ids, prepared.reward_prompt
        job.vector = steerer.vector_for(cfg)
        by = steered_by(steerer.scorer) if cfg.steers() else None
        m = steerer.resolve_strength(cfg)
        job.seqs = [SequenceState(steerer.lm, cfg, tau, seed + i, prepared.ids, stops, by, m) for i in range(job.n)]

    # -- the slots' thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the thread is dying: nothing may wait forever on it
            with self._cond:
                jobs = [*self.running, *self.queue]
                self.running, self.queue = [], deque()
            for job in jobs:  # the error goes to every waiting request; `submit` refuses new ones (the thread is dead)
                _settle(job.future, error=exc if isinstance(exc, Exception) else Cancelled("the slots stopped", "retry"))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self.queue and not self.running:
                    self._cond.wait()
                if self._closed:
                    return
                alone = self._admit()
            if alone is not None:
                self._alone = alone
                try:
                    self._run_alone(alone)
                finally:
                    self._alone = None
                continue
            try:
                self._step()
            except Exception as exc:  # a failed decode or scorer run outside one request: every running request fails with it
                for job in list(self.running):
                    self._release(job, forget=True)
                    _settle(job.future, error=exc)

    def _admit(self) -> Job | None:
        """Move queued requests into free slots, in order; a Best-of-N larger than all slots waits for them to empty."""
        while self.queue:
            job = self.queue[0]
            if job.cancel.is_set():
                self.queue.popleft()
                self.cancelled += 1
                _settle(job.future, error=_cancelled())
                continue
            if job.n > self.n_slots:
                if self.running:
                    return None
                return self.queue.popleft()
            if job.vector[2] != self._vector_key:  # a control vector is the whole context's: another one waits for the slots
                if self.running:  # to empty, then the context switches (its cached cells go: they were computed under the old one)
                    return None
                self.ctx.use_vector(*job.vector)
                self._vector_key = job.vector[2]
            if len(self.free) < job.n:
                return None
            self.queue.popleft()
            lead = self._slot_for(job.ids)
            self.free.remove(lead)
            job.slots = [lead] + [self.free.pop(0) for _ in range(job.n - 1)]
            job.fed = job.cached = self.ctx.reuse(lead, job.ids)  # the prompt's start may be in the slot's cells already
            for s in job.slots[1:]:
                self.ctx.drop(s)  # a Best-of-N's other samples get the lead's cells once its prompt is in
            if self.ctx.unified:  # one buffer (a head's branches): idle slots' answers would widen every running slot's
                for s in self.free:  # attention (measured 7 % a token on SmolLM2): they keep only the start they share with
                    if self.ctx.held[s]:  # this prompt (a system prompt the next requests likely share too)
                        self.ctx.reuse(s, job.ids)
            job.live = [True] * job.n
            job.start = time.perf_counter()
            job.first_step = self.ctx.decode_calls
            self.running.append(job)
        return None

    def _slot_for(self, ids: Sequence[int]) -> int:
        """The free slot for a prompt: the one whose cells save the most decoding now (the start of the prompt they
        hold: a chat's earlier turns, the same system prompt) less a tenth of the cells it would lose, so a shared
        system prompt alone never evicts a long conversation its client may come back to while an emptier slot is
        free. Equals: the slot free the longest."""
        def worth(s: int) -> float:
            kept = self.ctx.common_prefix(s, ids)
            return kept - CELL_KEPT_WORTH * (len(self.ctx.held[s]) - kept)

        return max(self.free, key=worth)

    def _run_alone(self, job: Job) -> None:
        """A Best-of-N with more samples than slots: its own batched context, as `best_of_n` runs it, the slots idle."""
        try:
            with self._ranking:  # its ranking may use the LM's own context too
                result = best_of_n(job.steerer, job.prompt, job.n, system=job.system, raw=job.raw, on_piece=job.on_piece, cancel=job.cancel,
                                   **job.changes)
            self.served += 1
            _settle(job.future, result=result)
        except Cancelled as exc:
            self.cancelled += 1
            _settle(job.future, error=exc)
        except Exception as exc:
            _settle(job.future, error=exc)

    def _step(self) -> None:
        """One decode for every slot, the junctions of all of them scored together, one token committed in each."""
        ctx = self.ctx
        for job in list(self.running):
            if job.cancel.is_set():
                self._release(job)
                self.cancelled += 1
                _settle(job.future, error=_cancelled())
        if not self.running:
            return
        tokens = {job.slots[i]: seq.last_token for job in self.running if job.decoding for i, seq in enumerate(job.seqs) if job.live[i]}
        shared = [job for job in self.running if not job.exact]
        parts = ([shared] if shared else []) + [[job] for job in self.running if job.exact]  # an exact request decodes alone
        prompts: dict[int, tuple[list[int], bool]] = {}
        for part in parts:
            room = ctx.n_batch - sum(1 for job in part if job.decoding for i in range(job.n) if job.live[i])
            for job in part:
                if not job.decoding and room > 0:
                    chunk = job.ids[job.fed : job.fed + room]
                    prompts[job.slots[0]] = (chunk, job.fed + len(chunk) == len(job.ids))
                    room -= len(chunk)
        groups = [{s for job in part for s in job.slots} for part in parts] if len(parts) > 1 else None
        t = time.perf_counter()
        logits = ctx.step(tokens, prompts, groups)
        dt = time.perf_counter() - t
        self.steps += 1
        ready: list[tuple[Job, int]] = []  # (job, sample) with fresh logits
        for job in self.running:
            if job.decoding:
                for i, seq in enumerate(job.seqs):
                    if job.live[i]:
                        seq.stats.lm_seconds += dt
                        ready.append((job, i))
            elif job.slots[0] in prompts:
                job.fed += len(prompts[job.slots[0]][0])
                if job.decoding:  # the prompt is in: the group's other samples share its cells and its logits
                    lead = job.slots[0]
                    for s in job.slots[1:]:
                        ctx.share(lead, s)
                        logits[s] = logits[lead]
                    job.prefill_seconds = time.perf_counter() - job.start
                    for seq in job.seqs:
                        seq.stats.prefill_seconds = job.prefill_seconds
                        seq.stats.cached_tokens = job.cached
                    ready += [(job, i) for i in range(job.n)]
        for job, i in ready:
            s = job.slots[i]
            if ctx.pos[s] + 1 >= self.slot_ctx:
                job.seqs[i].end("context")
            else:
                self._guard(job, lambda: job.seqs[i].propose(logits[s]))  # a grammar with no way on fails its own request only
        ready = [(job, i) for job, i in ready if job in self.running]
        rewards, shares, parts = self._score([(job, i) for job, i in ready if not job.seqs[i].done and job.seqs[i].junction])
        for job, i in ready:
            seq, s = job.seqs[i], job.slots[i]
            if job not in self.running:
                continue
            if not seq.done:
                piece = seq.commit(rewards.get(s), shares.get(s, 0.0), parts=parts.get(s))
                if piece is not None and job.on_piece is not None:
                    self._guard(job, lambda: job.on_piece(i, piece))  # type: ignore[misc]
                if not seq.done and ctx.pos[s] + 1 >= self.slot_ctx:
                    seq.end("context")
            if job in self.running and seq.done:
                job.live[i] = False
                self.free.append(s)  # its cells stay: the next request that starts the same way reuses them
        for job in [j for j in self.running if not any(j.live)]:
            self._finish(job)

    def _score(self, at: list[tuple[Job, int]]) -> tuple[dict[int, np.ndarray], dict[int, float], dict[int, Any]]:
        """Every junction of this step, one call per scorer; scorers sharing an embedder get it run once over all their texts."""
        rewards: dict[int, np.ndarray] = {}
        shares: dict[int, float] = {}
        parts: dict[int, Any] = {}
        groups: dict[tuple[int, int], tuple[Any, list[tuple[Job, int, Junction]]]] = {}
        for job, i in at:
            scorer = job.steerer.scorer
            junction = job.seqs[i].scoring_request(job.reward_prompt, job.ids, key=job.slots[i], decoder=self.ctx)
            key = (id(scorer), id(job) if job.exact else 0)  # an exact request's junctions are scored in a call of their own
            groups.setdefault(key, (scorer, []))[1].append((job, i, junction))
        sharing: dict[int, tuple[Any, list[list[tuple[Job, int, Junction]]]]] = {}  # embedder -> the scorer groups that use it
        for scorer, members in groups.values():
            peer = getattr(scorer, "shared", None)
            if peer is not None and not members[0][0].exact:
                sharing.setdefault(id(peer), (peer, []))[1].append(members)
        ahead = [peer for peer, uses in sharing.values() if len(uses) > 1]  # one scorer alone runs its embedder itself
        for peer in ahead:
            try:
                peer.ahead([t for members in sharing[id(peer)][1] for _, _, j in members for t in j.texts()])
            except Exception:  # the shared run failed: each scorer embeds for itself, and fails only its own requests
                peer.ahead([])
        try:
            for scorer, members in groups.values():
                t = time.perf_counter()
                scored = self._guard(members[0][0], lambda: scorer.score_junctions([j for _, _, j in members]), [job for job, _, _ in members])
                if scored is None:
                    continue
                dt = time.perf_counter() - t
                for n, ((job, i, _), r) in enumerate(zip(members, scored)):
                    s = job.slots[i]
                    rewards[s], shares[s], parts[s] = r, dt / len(members), objective_parts(scorer, n)
                for job in {id(job): job for job, _, _ in members}.values():
                    job.reward_seconds += dt
                    job.reward_calls += 1
        finally:
            for peer in ahead:
                peer.ahead([])
        return rewards, shares, parts

    def _finish(self, job: Job) -> None:
        """All of a request's samples ended: flush their text, hand back the Generation or the ranked Best-of-N."""
        self._release(job)
        try:
            generations = []
            for i, seq in enumerate(job.seqs):
                tail = seq.close()
                if tail is not None and job.on_piece is not None:
                    job.on_piece(i, tail)
                generations.append(seq.result(time.perf_counter() - job.start))
            if job.n == 1:
                self.served += 1
                _settle(job.future, result=generations[0])
                return
            counts = dict(decode_calls=self.ctx.decode_calls - job.first_step, tokens_decoded=len(job.ids) + sum(g.stats.tokens for g in generations),
                          reward_calls=job.reward_calls, prefill_seconds=job.prefill_seconds,
                          lm_seconds=max(s.stats.lm_seconds for s in job.seqs), reward_seconds=job.reward_seconds)
        except Exception as exc:
            _settle(job.future, error=exc)
            return

        def rank() -> None:  # off the slots' thread: a teacher's first load or an ONNX run over n answers stalls no stream
            try:
                with self._ranking:
                    result = rank_samples(job.steerer.scorer, job.reward_prompt, job.ids, generations, start=job.start, **counts)
                self.served += 1
                _settle(job.future, result=result)
            except Exception as exc:
                _settle(job.future, error=exc)

        threading.Thread(target=rank, name="sia-rank", daemon=True).start()

    def _guard(self, job: Job, fn: Callable[[], Any], jobs: list[Job] | None = None) -> Any:
        """fn(), or None when it raised: then the request (or each of `jobs`, a scorer's group) fails with that error and
        leaves its slots; the other requests go on."""
        try:
            return fn()
        except Exception as exc:
            for j in jobs or [job]:
                if j in self.running:
                    self._release(j)
                    _settle(j.future, error=exc)
            return None

    def _release(self, job: Job, forget: bool = False) -> None:
        """Take a request out of the slots (their cells stay as a prompt cache, unless `forget`: a failed decode); its
        scorer forgets per-request state once no slot uses it."""
        for i, s in enumerate(job.slots):
            if job.live[i]:  # a sample that ended earlier gave its slot back then (it may be another request's now)
                if forget:
                    self.ctx.drop(s)
                self.free.append(s)
                job.live[i] = False
        if job in self.running:
            self.running.remove(job)
        scorer = job.steerer.scorer
        if scorer is not None and not any(j.steerer.scorer is scorer for j in self.running):
            scorer.reset()


def _exit_layer(scorer: Any) -> int | None:
    """The layer an early-exit scorer stops at (the highest of a mix's heads), or None (a final-state head)."""
    if not getattr(scorer, "early_exit", False):
        return None
    heads = getattr(scorer, "heads", None)
    return max(int(h.layer) for h, _ in heads) if heads else int(scorer.layer)


def _cancelled() -> Cancelled:
    return Cancelled("the generation was stopped", "the client left or the request ran past its time limit",
                     api_hint="raise the server's --request-timeout or ask for fewer tokens")


def _settle(future: Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    future.set_exception(error) if error is not None else future.set_result(result)
