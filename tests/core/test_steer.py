"""The steering loop on a tiny real GGUF model and a tiny real ONNX reward."""

from __future__ import annotations

from pathlib import Path

import pytest

from sia_local.core.config import SteerConfig
from sia_local.errors import ConfigError, PromptError
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from sia_local.core.steer import Steerer

PROMPT = "Tell me something."


@pytest.fixture(scope="module")
def reward(tiny_reward: Path) -> OnnxReward:
    return OnnxReward(tiny_reward, provider="cpu")


def test_seeded_runs_are_reproducible(tiny_lm: LM, reward: OnnxReward) -> None:
    s = Steerer(tiny_lm, reward, SteerConfig(tau=1.2, seed=7, max_tokens=30))
    a, b = s.generate(PROMPT), s.generate(PROMPT)
    assert a.token_ids == b.token_ids and a.text == b.text
    c = s.generate(PROMPT, seed=8)
    assert c.token_ids != a.token_ids


def test_dense_scores_every_step_and_none_never(tiny_lm: LM, reward: OnnxReward) -> None:
    s = Steerer(tiny_lm, reward, SteerConfig(seed=1, max_tokens=25))
    dense = s.generate(PROMPT, gate="dense").stats
    assert dense.junctions == dense.tokens > 0
    assert dense.reward_calls == dense.tokens + (dense.finish_reason == "stop")
    assert dense.candidates_scored == 10 * dense.reward_calls
    assert dense.ratio == 1.0
    none = s.generate(PROMPT, gate="none").stats
    assert none.reward_calls == 0 and none.junctions == 0 and none.reward_seconds == 0.0


def test_reward_changes_choices_at_junctions_only(tiny_lm: LM, reward: OnnxReward) -> None:
    """The reward pays 10 per 'e': steering may only change tokens at junctions, and only towards 'e' (on the raw scale, where
    +10 gives 'e' all the mass; on the junction scale a smaller push can move the shared uniform to another candidate)."""
    s = Steerer(tiny_lm, reward, SteerConfig(tau=1.3, seed=3, max_tokens=60, trace=True, strength="reference"))
    base = s.generate(PROMPT, gate="none")
    steered = s.generate(PROMPT)
    assert base.trace is not None and steered.trace is not None
    changed = [i for i, t in enumerate(steered.trace) if t.changed]
    assert changed, "with a +10 reward some junction must flip to 'e'"
    for t in steered.trace:
        assert t.junction == (t.entropy >= 1.3)
        assert t.changed <= t.junction  # never changed off a junction
        assert (t.rewards is not None) == t.junction
    for i in changed:
        assert "e" in steered.trace[i].text
    first = changed[0]
    # the same uniform draws: identical to the unsteered run until steering first changes a token
    assert steered.token_ids[:first] == base.token_ids[:first]
    assert steered.token_ids[first] != base.token_ids[first]
    assert steered.text.count("e") > base.text.count("e")


def test_junction_rewards_are_the_reward_models(tiny_lm: LM, reward: OnnxReward) -> None:
    s = Steerer(tiny_lm, reward, SteerConfig(gate="dense", seed=2, max_tokens=5, trace=True))
    g = s.generate(PROMPT)
    assert g.trace is not None
    first = g.trace[0]
    assert first.rewards is not None and len(first.rewards) == 10
    assert set(first.rewards) <= {0.0, 10.0}  # nothing generated yet: only an 'e' candidate scores


def test_normalize_standardises_rewards(tiny_lm: LM, reward: OnnxReward) -> None:
    s = Steerer(tiny_lm, reward, SteerConfig(gate="dense", seed=2, max_tokens=8, trace=True, normalize=True))
    g = s.generate(PROMPT)
    assert g.trace is not None
    for t in g.trace:
        assert t.rewards is not None
        if max(t.rewards) > min(t.rewards):
            assert sum(t.rewards) == pytest.approx(0.0, abs=1e-6)


def test_stream_pieces_add_up_to_the_text(tiny_lm: LM, reward: OnnxReward) -> None:
    s = Steerer(tiny_lm, reward, SteerConfig(tau=1.0, seed=5, max_tokens=50))
    stream = s.stream(PROMPT)
    pieces = [p.text for p in stream]
    assert stream.generation is not None
    assert "".join(pieces) == stream.generation.text
    tokens = stream.generation.stats.tokens
    # one piece per token, plus one closing piece when the text ends inside a multi-byte character
    assert len(pieces) == tokens or (len(pieces) == tokens + 1 and pieces[-1] == "\ufffd")


def test_multibyte_output_decodes_like_the_whole_byte_string(tiny_lm: LM) -> None:
    """Byte tokens split characters; streamed text must equal decoding all bytes at once."""
    s = Steerer(tiny_lm, None, SteerConfig(gate="none", seed=11, max_tokens=80))
    g = s.generate(PROMPT)
    raw = b"".join(tiny_lm.piece(t) for t in g.token_ids)
    assert g.text == raw.decode("utf-8", "replace")


def test_stop_strings_cut_the_text(tiny_lm: LM) -> None:
    s = Steerer(tiny_lm, None, SteerConfig(gate="none", seed=4, max_tokens=120))
    free = s.generate(PROMPT)
    stop = next(free.text[i : i + 2] for i in range(5, len(free.text) - 2)
                if free.text[i : i + 2].isascii() and free.text[i : i + 2].isprintable())  # a stop string this text contains
    stopped = s.generate(PROMPT, stop=(stop,))
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stopped.stats.finish_reason == "stop"


def test_finish_reasons(tiny_gguf: Path) -> None:
    lm = LM(tiny_gguf, n_ctx=48)
    s = Steerer(lm, None, SteerConfig(gate="none", seed=0, max_tokens=10))
    assert s.generate("hi").stats.finish_reason in ("length", "stop")
    g = s.generate("hi", max_tokens=500)
    assert g.stats.finish_reason in ("context", "stop")
    assert g.stats.prompt_tokens + g.stats.tokens <= lm.n_ctx  # llama.cpp rounds n_ctx up (to 256)


def test_prompt_errors(tiny_gguf: Path, tiny_lm: LM) -> None:
    s = Steerer(tiny_lm, None, SteerConfig(gate="none"))
    with pytest.raises(PromptError, match="empty"):
        s.generate("   ")
    short_lm = LM(tiny_gguf, n_ctx=32)
    short = Steerer(short_lm, None, SteerConfig(gate="none"))
    with pytest.raises(PromptError, match=f"context holds {short_lm.n_ctx}"):
        short.generate("word " * 400)
    with pytest.raises(ConfigError, match="needs a reward model"):
        Steerer(tiny_lm, None, SteerConfig(gate="dense")).generate("hi")


def test_chat_messages_and_raw_prompts(tiny_lm: LM) -> None:
    s = Steerer(tiny_lm, None, SteerConfig(gate="none", seed=0, max_tokens=4))
    chat = s.generate([{"role": "user", "content": "hi"}], system="Be kind.")
    raw = s.generate("hi", raw=True)
    assert chat.stats.prompt_tokens > raw.stats.prompt_tokens
    ids, _ = tiny_lm.render_chat([{"role": "user", "content": "hi"}])
    assert tiny_lm.tokenize("<|im_start|>")[0] == ids[0]  # special tokens are parsed, not spelled out


def test_prefix_of_the_previous_prompt_is_reused(tiny_lm: LM) -> None:
    s = Steerer(tiny_lm, None, SteerConfig(gate="none", seed=0, max_tokens=3))
    first = s.generate("a shared opening, then one ending")
    again = s.generate("a shared opening, then one ending")
    assert again.token_ids == first.token_ids  # reuse must not change results


def test_kl_and_logprobs(tiny_lm: LM, reward: OnnxReward) -> None:
    import numpy as np

    s = Steerer(tiny_lm, reward, SteerConfig(tau=1.3, seed=3, max_tokens=20, trace=True, logprobs=True))
    g = s.generate(PROMPT)
    assert g.trace is not None
    for t in g.trace:
        assert t.kl >= -1e-12
        if not t.junction:
            assert t.kl == 0.0
    assert any(t.kl > 0 for t in g.trace)
    assert g.stats.kl_per_token == pytest.approx(sum(t.kl for t in g.trace) / g.stats.tokens)
    # the first token's log-probability, recomputed from a fresh prefill of the same prompt
    ids, _ = tiny_lm.render_chat([{"role": "user", "content": PROMPT}])
    logits = tiny_lm.prefill(ids).astype(np.float64)
    lse = logits.max() + np.log(np.exp(logits - logits.max()).sum())
    assert g.trace[0].logprob == pytest.approx(logits[g.token_ids[0]] - lse, abs=1e-4)
    assert g.stats.perplexity == pytest.approx(float(np.exp(-np.mean([t.logprob for t in g.trace]))))
    zero = s.generate(PROMPT, weight=0.0)
    assert zero.stats.kl_per_token == 0.0


@pytest.mark.parametrize("temperature", [0.7, 1.6])
def test_loop_samples_at_the_temperature_but_measures_entropy_at_one(tiny_lm: LM, temperature: float) -> None:
    """At T not in {0, 1} the loop draws from softmax(z / T) over the top k, while the gate's entropy stays that of softmax(z)."""
    import numpy as np

    from sia_local.core.junction import entropy, softmax, top_k
    from sia_local.core.steer import SequenceState

    logits = tiny_lm.prefill(tiny_lm.tokenize("Hello there, how are")).copy()
    ids, z = top_k(logits, 10)
    seq = SequenceState(tiny_lm, SteerConfig(gate="none", top_k=10, temperature=temperature, max_tokens=10**6), None, 3, [1], [])
    draws = 6000
    for _ in range(draws):
        seq.propose(logits)
        assert seq._h == pytest.approx(entropy(z))
        seq.commit(None)
    counts = np.array([sum(t == int(i) for t in seq.ids) for i in ids]) / draws
    want = softmax(z / temperature)
    assert np.abs(counts - want).max() < 4 * np.sqrt(want.max() * (1 - want.max()) / draws) + 1e-3
    assert np.abs(counts - softmax(z)).max() > 0.02  # and not from the T = 1 distribution



def test_context_is_capped_at_the_training_context(tmp_path: Path) -> None:
    """The training context comes from the GGUF's metadata (llama.cpp, vocabulary-only load)."""
    from tiny_models import write_tiny_gguf

    short = write_tiny_gguf(tmp_path / "short.gguf", n_ctx=256)
    assert LM(short, n_ctx=4096).n_ctx == 256
    assert LM(short, n_ctx=0).n_ctx == 256  # 0 = the model's own
    assert LM(write_tiny_gguf(tmp_path / "long.gguf", n_ctx=2048), n_ctx=0).n_ctx == 2048


def test_the_change_rate_is_reported_and_an_objective_that_changes_nothing_is_warned_about(tiny_lm, reward: OnnxReward) -> None:
    steerer = Steerer(tiny_lm, reward, SteerConfig(tau=0.0, max_tokens=40, seed=3))  # tau 0: every step is a junction
    idle = steerer.generate("Hi", weight=0.0)  # s = z: the reward can change nothing
    assert idle.stats.junctions >= 20 and idle.stats.changed == 0 and idle.stats.change_rate == 0.0
    assert idle.stats.warning is not None and "raise --weight" in idle.stats.warning and "sia: " in idle.stats.summary()
    strong = steerer.generate("Hi", weight=50.0)
    assert strong.stats.change_rate == strong.stats.changed / strong.stats.junctions > 0.05 and strong.stats.warning is None
    plain = steerer.generate("Hi", gate="none")
    assert plain.stats.change_rate is None and plain.stats.warning is None
