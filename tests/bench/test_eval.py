"""`sia eval`: judges that are not the reward, paired differences with 95 % intervals, resumable, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sia_local.bench.eval import comparisons, eval_arms, markdown
from sia_local.bench.judges import BowJudge, judges_for, named_judges, tone_judges
from sia_local.errors import ConfigError

GOOD = [f"thank you so much, that is kind and {w}" for w in "lovely warm gentle caring generous sweet bright helpful thoughtful patient cheerful "
        "friendly hopeful grateful tender calm honest loyal brave wise".split()]
BAD = [f"go away, that is rude and {w}" for w in "nasty cold harsh cruel mean bitter dull useless careless impatient grumpy hostile "
       "hopeless ungrateful rough angry dishonest disloyal cowardly foolish".split()]


def test_the_bag_of_words_judge_learns_its_examples_and_says_how_well() -> None:
    judge = BowJudge(GOOD, BAD, name="bow:polite", data="your examples")
    assert judge.auc > 0.9 and judge.name == "bow:polite"
    kind, rude = judge("", ["thank you, that is kind", "go away, that is rude"])
    assert kind > rude
    with pytest.raises(ConfigError, match="needs 20 of each"):
        BowJudge(GOOD[:5], BAD[:5])


def test_judges_are_never_the_steering_reward(tiny_lm) -> None:
    from sia_local.core.config import SteerConfig
    from sia_local.core.steer import Steerer

    steerer = Steerer(tiny_lm, None, SteerConfig(gate="none"))
    pytest.importorskip("vaderSentiment")
    assert [j.name for j in judges_for(steerer, "kind")][0] == "vader" and all(j.name in ("vader", "textblob", "afinn") for j in tone_judges())
    assert judges_for(steerer, "polite", GOOD, BAD)[0].name == "bow:polite"
    with pytest.raises(ConfigError, match="--good FILE --bad FILE"):
        judges_for(steerer, "my-objective")


def test_the_style_judges_read_register_and_density_and_say_which_way_is_better() -> None:
    pytest.importorskip("textblob")
    from sia_local.bench.judges import DensityJudge, FScoreJudge, InformalJudge

    informal = InformalJudge()
    assert informal.lower_is_better and informal("", ["Hey, it's fine, don't worry about it!", "We regret to inform you of the delay.", ""]) == \
        [pytest.approx(100 * 4 / 7), 0.0, 0.0]  # hey, it's, don't, "!" over seven words
    nominal, chatty = FScoreJudge()("", ["The committee approved the annual budget of the department.", "I think you can just do it, really."])
    assert nominal > 50 > chatty  # nouns, adjectives, prepositions, articles vs pronouns, verbs, adverbs
    assert FScoreJudge()("", ["I can't."]) == FScoreJudge()("", ["I can not."])  # contractions are spelled out, not tagged as nouns
    dense, padded = DensityJudge()("", ["Restart the router, then check the cable.", "Well, I mean, it is what it is, you know, so yes."])
    assert dense > 0.5 > padded
    for name, judge in (("formal", informal), ("concise", DensityJudge())):  # each tells its objective's shipped examples apart
        rows = [json.loads(line) for line in (Path(__file__).parents[2] / "sia_local" / "data" / "objectives" / f"{name}.jsonl").read_text().splitlines()]
        good = np.mean(judge("", [r["text"] for r in rows if r["label"] == "good"]))
        bad = np.mean(judge("", [r["text"] for r in rows if r["label"] == "bad"]))
        assert (good < bad) if getattr(judge, "lower_is_better", False) else (good > bad)


def test_formal_and_concise_get_judges_that_are_not_their_reward(tiny_lm) -> None:
    pytest.importorskip("textblob")
    from sia_local.core.config import SteerConfig
    from sia_local.core.steer import Steerer

    steerer = Steerer(tiny_lm, None, SteerConfig(gate="none"))
    assert [j.name for j in judges_for(steerer, "formal")] == ["informal/100w", "f-score", "bow:formal"]
    assert [j.name for j in judges_for(steerer, "concise:2")] == ["density", "bow:concise"]
    report = {"setup": {"judges": [{"name": "informal/100w", "better": "lower"}, {"name": "f-score", "better": "higher"}]},
              "comparisons": {}, "arms": {}}
    assert "| informal/100w (lower is better) | f-score |" in markdown(report)
    assert [j.name for j in named_judges(["density", "informal", "density"])] == ["density", "informal/100w"]
    with pytest.raises(ConfigError, match="--judges: unknown judge 'formality'.*choose from vader"):
        named_judges(["formality"])


def test_the_arms_and_comparisons_a_user_asks_about() -> None:
    arms = eval_arms(0.2)
    assert [a.name for a in arms] == ["base", "prompt", "sia@0.2", "random@0.2", "dense", "prompt+sia@0.2"]
    assert ("sia@0.2", "random@0.2") in comparisons(arms, 0.2) and ("prompt+sia@0.2", "prompt") in comparisons(arms, 0.2)
    assert comparisons(eval_arms(0.2, ["base", "sia@0.2"]), 0.2) == [("sia@0.2", "base")]
    study = eval_arms(0.2, ["base", "sia@0.2", "random@0.2", "value@0.2", "random-value@0.2", "tau@0.2", "random-tau@0.2"])
    by_name = {a.name: a for a in study}
    assert (by_name["value@0.2"].gate, by_name["value@0.2"].ratio) == ("value", 0.2)
    assert (by_name["random-value@0.2"].gate, by_name["random-value@0.2"].match) == ("random", "value@0.2")
    pairs = comparisons(study, 0.2)  # the gate study: every gate against chance at the ratio it realised, and against entropy
    assert {("sia@0.2", "random@0.2"), ("value@0.2", "random-value@0.2"), ("value@0.2", "sia@0.2"), ("tau@0.2", "random-tau@0.2")} <= set(pairs)
    assert len(pairs) == len(set(pairs))


def test_sia_eval_runs_resumes_and_reports_intervals(tiny_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    from sia_local.cli import main

    (tmp_path / "prompts.txt").write_text("\n".join(f"Say something about {w}." for w in ("rain", "bread", "trains", "tea")) + "\n")
    (tmp_path / "good.txt").write_text("\n".join(GOOD) + "\n")
    (tmp_path / "bad.txt").write_text("\n".join(BAD) + "\n")
    out = tmp_path / "ev"
    args = ["eval", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--prompts", str(tmp_path / "prompts.txt"), "--seeds", "2", "-n", "6",
            "--tau", "1.0", "--ratio", "0.3", "--good", str(tmp_path / "good.txt"), "--bad", str(tmp_path / "bad.txt"),
            "--objective-prompt", "Be kind.", "--parallel", "2", "--judges", "informal", "-o", str(out)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    report = json.loads((out / "eval.json").read_text())
    rows = (out / "results.jsonl").read_text().splitlines()
    assert len(rows) == 4 * 2 * 6  # prompts x seeds x arms
    cell = report["comparisons"]["sia@0.3 vs base"]["judge:bow:prompts"] if "judge:bow:prompts" in report["comparisons"]["sia@0.3 vs base"] else \
        next(v for k, v in report["comparisons"]["sia@0.3 vs base"].items() if k.startswith("judge:bow"))
    lo, hi = cell["ci95"]
    assert lo <= cell["mean_diff"] <= hi and cell["prompts"] == 4 and cell["pairs"] == 8
    assert set(report["arms"]) == {"base", "prompt", "sia@0.3", "random@0.3", "dense", "prompt+sia@0.3"}
    judged = [j["name"] for j in report["setup"]["judges"]]
    assert judged[0].startswith("bow:") and judged[1:] == ["informal/100w"] and "informal/100w (lower is better)" in first.output
    assert report["arms"]["sia@0.3"]["change_rate"] is not None and "log_perplexity" in report["comparisons"]["dense vs base"]
    assert (out / "eval.md").read_text().startswith("| comparison |") and (out / "eval.png").exists()
    assert "500 prompts x 2 seeds" in first.output  # a small run says it is one
    again = CliRunner().invoke(main, args)  # resumes: every row is there, none decoded again
    assert again.exit_code == 0 and len((out / "results.jsonl").read_text().splitlines()) == len(rows)
    assert markdown(json.loads((out / "eval.json").read_text())) == (out / "eval.md").read_text().rstrip("\n")


def test_the_vector_arms_add_the_runs_control_vector(tiny_reward: Path, tmp_path: Path) -> None:
    from sia_local.cli import main
    from sia_local.heads.vectors import fit_vector
    from sia_local.llama import LM
    from tiny_models import write_tiny_gguf

    tiny_gguf = write_tiny_gguf(tmp_path / "deep.gguf", n_layer=6)
    vector = fit_vector(LM(tiny_gguf, n_ctx=512, hidden=True), GOOD[:4], BAD[:4]).save(tmp_path / "v.gguf")
    (tmp_path / "prompts.txt").write_text("Say something.\nTell a story.\n")
    out = tmp_path / "ev"
    result = CliRunner().invoke(main, ["eval", "-m", str(tiny_gguf), "-r", str(tiny_reward), "--prompts", str(tmp_path / "prompts.txt"),
                                       "--seeds", "1", "-n", "5", "--tau", "1.0", "--vector", f"{vector}:6", "--arms", "base,vector,vector+sia@0.2,sia@0.2",
                                       "--judge", str(tiny_reward), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    text = {(r["arm"], r["prompt_index"]): r["text"] for r in rows}
    assert text[("vector", 0)] != text[("base", 0)] or text[("vector", 1)] != text[("base", 1)]  # the vector arm has it ...
    assert {"vector vs base", "vector+sia@0.2 vs vector", "sia@0.2 vs vector"} <= set(json.loads((out / "eval.json").read_text())["comparisons"])


def test_base_perplexity_is_the_decodes_own_without_a_vector(tiny_lm) -> None:
    from sia_local.bench.grid import base_perplexity
    from sia_local.core.config import SteerConfig
    from sia_local.core.steer import Steerer

    steerer = Steerer(tiny_lm, None, SteerConfig(gate="none", max_tokens=12, seed=2, logprobs=True))
    g = steerer.generate("Tell me about rain.")
    assert base_perplexity(steerer, "Tell me about rain.", g.token_ids) == pytest.approx(g.stats.perplexity, rel=1e-3)
