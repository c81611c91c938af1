"""Best-of-N: N sequences in one llama.cpp context, on the tiny real models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sia_local.cli import main
from sia_local.core.config import SteerConfig
from sia_local.errors import ConfigError
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from sia_local.core.search import best_of_n
from sia_local.core.steer import Steerer

PROMPT = "Tell me something."


@pytest.fixture(scope="module")
def steerer(tiny_lm: LM, tiny_reward: Path) -> Steerer:
    return Steerer(tiny_lm, OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.3, max_tokens=30, seed=10, trace=True))


@pytest.mark.parametrize("gate", ["entropy", "none", "dense", "value"])
def test_each_sequence_equals_its_single_run(steerer: Steerer, gate: str) -> None:
    result = best_of_n(steerer, PROMPT, 4, gate=gate)
    assert [c.index for c in result.candidates] == [0, 1, 2, 3]
    for c in result.candidates:
        single = steerer.generate(PROMPT, gate=gate, seed=10 + c.index)
        assert c.generation.token_ids == single.token_ids
        assert c.generation.text == single.text
        assert c.generation.stats.junctions == single.stats.junctions
        assert c.generation.stats.seed == 10 + c.index


def test_winner_is_the_best_scored(steerer: Steerer) -> None:
    result = best_of_n(steerer, PROMPT, 5, gate="none")
    scores = [c.score for c in result.candidates]
    assert result.best_index == scores.index(max(scores))
    assert result.best is result.candidates[result.best_index].generation
    rescored = steerer.scorer.score(PROMPT, [c.generation.text for c in result.candidates])  # type: ignore[union-attr]
    assert scores == pytest.approx(list(rescored))


def test_prompt_is_decoded_once(steerer: Steerer) -> None:
    result = best_of_n(steerer, PROMPT, 6, gate="none", max_tokens=12)
    st = result.stats
    longest = max(c.generation.stats.tokens for c in result.candidates)
    # one prompt decode + one per later step while any sequence lives (a final token is never fed back;
    # a sequence that ends on end-of-turn takes one more step to find out)
    assert st.decode_calls in (longest, longest + 1)
    assert st.tokens_decoded <= st.prompt_tokens + st.tokens  # the prompt once, not six times
    assert st.tokens == sum(c.generation.stats.tokens for c in result.candidates)


def test_sequences_may_finish_at_different_times(steerer: Steerer) -> None:
    free = [c.generation.text for c in best_of_n(steerer, PROMPT, 4, gate="none", max_tokens=60).candidates]

    def first_at(ch: str) -> set[int]:
        return {t.index(ch) if ch in t else len(t) for t in free}

    # a printable character the samples reach at different places: they stop at different steps
    stop = next(ch for ch in sorted(set("".join(free))) if ch.isascii() and ch.isprintable() and len(first_at(ch)) > 1)
    result = best_of_n(steerer, PROMPT, 4, gate="none", stop=(stop,), max_tokens=60)
    lengths = {c.generation.stats.tokens for c in result.candidates}
    reasons = {c.generation.stats.finish_reason for c in result.candidates}
    assert len(lengths) > 1 and "stop" in reasons
    for c, text in zip(result.candidates, free):
        assert stop not in c.generation.text
        assert c.generation.text == (text[: text.index(stop)] if stop in text else text)


def test_junctions_of_a_step_share_one_reward_run(steerer: Steerer) -> None:
    result = best_of_n(steerer, PROMPT, 4, gate="dense", max_tokens=10)
    per_seq = sum(c.generation.stats.reward_calls for c in result.candidates)
    assert result.stats.reward_calls < per_seq  # batched across sequences
    assert result.stats.reward_calls <= 10


def test_needs_a_reward_model(tiny_lm: LM) -> None:
    with pytest.raises(ConfigError, match="needs a reward model"):
        best_of_n(Steerer(tiny_lm, None, SteerConfig(gate="none")), PROMPT, 2)


def test_cli_best_of_json(tiny_gguf: Path, tiny_reward: Path) -> None:
    result = CliRunner().invoke(main, ["generate", PROMPT, "-m", str(tiny_gguf), "-r", str(tiny_reward), "--best-of", "3",
                                       "--gate", "none", "--seed", "1", "-n", "10", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["samples"]) == 3 and [s["index"] for s in data["samples"]] == [0, 1, 2]
    assert data["best"]["text"] == data["text"] == data["samples"][data["best_index"]]["text"]
    assert data["stats"]["n"] == 3
