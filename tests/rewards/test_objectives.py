"""`sia reward fit`: objectives from examples, kept by name, loaded by name, refused when the examples do not separate."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import needs_minilm
from sia_local.cli import main
from sia_local.errors import ConfigError

TOPICS = ["the report", "the delivery", "the meeting notes", "your help", "the invoice", "the schedule", "the repair", "the draft",
          "the booking", "the slides", "the refund", "the update", "the parcel", "the review", "the recipe", "the photos", "the list",
          "the plan", "the tickets", "the form", "the budget", "the timetable", "the map", "the feedback", "the contract"]
POLITE = ["Thank you so much for {t}, I really appreciate it.", "Could you please send me {t} when you have a moment? Many thanks!"]
RUDE = ["Send me {t} already, it is not hard.", "Nobody cares about {t}, stop wasting my time."]


def _examples() -> tuple[list[str], list[str]]:
    return [p.format(t=t) for t in TOPICS for p in POLITE], [r.format(t=t) for t in TOPICS for r in RUDE]


@needs_minilm
def test_fit_keep_by_name_score_and_steer(tmp_path: Path, tiny_gguf: Path) -> None:
    from sia_local.rewards.objectives import find_objective, fit_objective
    from sia_local.rewards.reward import OnnxReward
    from sia_local.rewards.rewardkit import check
    from sia_local.rewards.sentiment import Embedder

    good, bad = _examples()
    card = fit_objective("polite", good=good, bad=bad, describe="Answer politely.")
    assert card["cv"]["metric"] == "auc" and card["cv"]["mean"] > 0.95 and card["examples"] == {"good": 50, "bad": 50, "in_both_dropped": 0}
    assert card["cv"]["nested"]  # the reported AUC was not chosen on the folds it scores
    folder = find_objective("polite")
    assert folder is not None and check(folder)["info"]["objective"] == "Answer politely."
    texts = ["Thanks so much, that was kind of you.", "Stop bothering me with this."]
    head = json.loads((folder / "objective.json").read_text())
    assert head["reward"]["std"] > 0
    rm = OnnxReward(folder, provider="cpu")
    kind, rude = rm.score("", texts)
    assert kind > rude
    # the ONNX folder computes exactly the numpy head on the same embeddings
    from sia_local.rewards.objectives import fit_classifier

    x = Embedder()(good + bad).astype(np.float64)
    fit = fit_classifier(x, np.r_[np.ones(50), np.zeros(50)])
    np.testing.assert_allclose(rm.score("", good[:3]), x[:3] @ fit.w + fit.b, atol=2e-3)
    listed = CliRunner().invoke(main, ["reward", "list"])
    assert listed.exit_code == 0 and "polite" in listed.output and "kind" in listed.output and "CV AUC" in listed.output
    scored = CliRunner().invoke(main, ["reward", "score", "polite"], input="\n".join(texts) + "\n")
    rows = [json.loads(line) for line in scored.output.splitlines()]
    assert [r["text"] for r in rows] == texts and rows[0]["score"] > rows[1]["score"]
    steered = CliRunner().invoke(main, ["generate", "Hi", "-m", str(tiny_gguf), "-c", "256", "-r", "polite", "--gate", "dense", "-n", "4",
                                        "--json"])
    assert steered.exit_code == 0, steered.output
    assert json.loads(steered.stdout)["reward"]["name"].startswith("objective-polite") or "polite" in json.loads(steered.stdout)["reward"]["path"]


@needs_minilm
def test_examples_that_do_not_separate_are_refused() -> None:
    from sia_local.rewards.objectives import fit_objective

    good, bad = _examples()
    mixed = good + bad
    random.Random(0).shuffle(mixed)
    with pytest.raises(ConfigError, match="do not separate"):
        fit_objective("shuffled", good=mixed[:50], bad=mixed[50:], describe="Nothing in particular.")


def test_too_few_repeated_or_unnamed_examples_are_refused(tmp_path: Path) -> None:
    from sia_local.rewards.objectives import fit_objective

    good, bad = _examples()
    with pytest.raises(ConfigError, match="at least 20"):
        fit_objective("few", good=good[:5], bad=bad, describe="x")
    with pytest.raises(ConfigError, match="empty or repeated"):
        fit_objective("dups", good=good[:20] * 2, bad=bad, describe="x")
    with pytest.raises(ConfigError, match="built in"):
        fit_objective("kind", good=good, bad=bad, describe="x")
    with pytest.raises(ConfigError, match="cannot name"):
        fit_objective("../escape", good=good, bad=bad, describe="x")
    result = CliRunner().invoke(main, ["reward", "fit", "x", "--good", str(tmp_path / "missing.txt"), "--bad", str(tmp_path / "m.txt"),
                                       "--describe", "x"])
    assert result.exit_code != 0 and "not found" in result.output


def test_auc_by_hand() -> None:
    from sia_local.rewards.objectives import auc

    assert auc(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 1, 0, 0])) == 1.0
    assert auc(np.array([1.0, 1.0]), np.array([1, 0])) == 0.5


# -- several objectives at one junction ---------------------------------------------------------------------
def _steerer(tiny_gguf: Path, scorer, **config):
    from sia_local.core.config import SteerConfig
    from sia_local.llama import LM
    from sia_local.core.steer import Steerer

    return Steerer(LM(tiny_gguf, n_ctx=256), scorer, SteerConfig(**{"gate": "dense", "max_tokens": 24, **config}))


def test_a_negative_weight_steers_away(tiny_gguf: Path, tiny_reward: Path) -> None:
    """The tiny reward favours the byte 'e': +1 raises it, -1 lowers it, 0 is no objective at all."""
    from sia_local.rewards.mix import load_objectives

    def e_share(weight: float) -> float:
        # the tiny reward counts e's: over the reference answers its spread is ~54, so one 'e' is ~0.2 of it
        s = _steerer(tiny_gguf, load_objectives([(str(tiny_reward), weight)], provider="cpu"), weight=200.0)
        texts = [s.generate("Hi", raw=True, seed=i).text for i in range(6)]
        return sum(t.count("e") for t in texts) / max(1, sum(len(t) for t in texts))

    towards, away = e_share(1.0), e_share(-1.0)
    assert towards > away
    plain = _steerer(tiny_gguf, None, gate="none").generate("Hi", raw=True, seed=3).text
    assert _steerer(tiny_gguf, load_objectives([(str(tiny_reward), 0.0)], provider="cpu")).generate("Hi", raw=True, seed=3).text == plain


@needs_minilm
def test_objectives_on_one_embedder_run_it_once_per_junction(tiny_gguf: Path) -> None:
    from sia_local.rewards.mix import load_objectives
    from sia_local.rewards.objectives import fit_objective

    good, bad = _examples()
    fit_objective("polite", good=good, bad=bad, describe="Answer politely.")
    mix = load_objectives(["kind", "polite:0.5"], provider="cpu")
    steerer = _steerer(tiny_gguf, mix)
    steerer.resolve_strength(steerer.config)  # the mix's junction strength, measured once on the calibration prompts
    before = mix.embedder.runs  # kind's scale was measured at load
    g = steerer.generate("Hi", seed=1, trace=True)
    assert g.stats.reward_calls == g.stats.junctions > 0 and mix.embedder.runs - before == g.stats.reward_calls  # two objectives, one run a junction
    assert set(g.stats.objectives or {}) == {"kind", "polite"} and g.trace and set(g.trace[0].objectives or {}) == {"kind", "polite"}
    # the combined reward is sum_j w_j (r_j - mean_j) / std_j, each on its card's scale
    texts = ["Thank you, that is kind.", "Go away."]
    combined = mix.score_responses("", [], [(t, []) for t in texts])
    parts = mix.last_parts[0]
    by_name = {m.name: m for m in mix.members}
    expected = sum(m.weight * (np.asarray(parts[m.name]) - m.mean) / m.std for m in mix.members)
    np.testing.assert_allclose(combined, expected, atol=1e-9)
    assert by_name["polite"].std > 0 and mix.info().kind == "objectives"
    result = CliRunner().invoke(main, ["generate", "Hi", "-m", str(tiny_gguf), "-c", "256", "-r", "kind", "-r", "polite:0.5", "--gate", "dense",
                                       "-n", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["reward"]["kind"] == "objectives" and set(data["stats"]["objectives"]) == {"kind", "polite"}
    unknown = CliRunner().invoke(main, ["generate", "Hi", "-m", str(tiny_gguf), "-r", "kind", "-r", "nosuch:1", "--gate", "dense", "-n", "2"])
    assert unknown.exit_code != 0 and "nosuch" in unknown.output and "polite" in unknown.output


def test_a_request_a_row_and_chat_choose_their_own_objectives(tiny_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from sia_local.batch import Worker, WorkerSpec, read_rows
    from sia_local.cli.chat import ChatSession
    from sia_local.core.config import SteerConfig
    from sia_local.llama import LM
    from sia_local.runtime import LMSettings
    from sia_local.serve.server import create_app
    from sia_local.core.steer import Steerer

    steerer = Steerer(LM(tiny_gguf, n_ctx=256), None, SteerConfig(gate="none", max_tokens=6))
    client = TestClient(create_app(steerer, model_id="tiny", objective_dirs=[str(tiny_reward)]), base_url="http://127.0.0.1")
    body = {"prompt": "Hi", "sia": {"gate": "dense", "rewards": [{"name": tiny_reward.name, "weight": 2}]}}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["sia"]["junctions"] > 0 and "prefers-e" in r.json()["usage"]["sia"]["objectives"]
    two = client.post("/v1/completions", json={**body, "n": 2})
    assert two.status_code == 200 and len(two.json()["choices"]) == 2  # Best-of-N ranks by the request's mix
    unknown = client.post("/v1/completions", json={"prompt": "Hi", "sia": {"rewards": [{"name": "nosuch"}]}})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_objective" and "kind" in unknown.json()["error"]["message"]
    assert client.post("/v1/completions", json={"prompt": "Hi", "sia": {"rewards": [{"name": "kind", "weight": 1e9}]}}).status_code == 400
    assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).json()["usage"]["sia"]["junctions"] == 0  # the server's own scorer (none) again

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": 1, "prompt": "Hi", "sia": {"gate": "dense", "rewards": [f"{tiny_reward}:1"]}}) + "\n"
                    + json.dumps({"id": 2, "prompt": "Hi", "sia": {"rewards": [{"name": "kind", "weight": "x"}]}}) + "\n")
    worker = Worker(WorkerSpec(LMSettings(model=tiny_gguf, n_ctx=256), None, SteerConfig(gate="none", max_tokens=4)), steerer)
    first, second = (worker.run(row, 0) for row in read_rows(rows))
    assert first["error"] is None and "prefers-e" in first["stats"]["objectives"]
    assert "weight" in second["error"]

    session = ChatSession(steerer.with_scorer(None))
    said = session.command(f"/objective {tiny_reward}:2")
    assert said.startswith("objectives") and session.steerer.config.gate == "entropy"  # asking for objectives means steering
    g = session.ask("Hello", lambda p: None)
    assert g is not None and (g.stats.objectives is not None or g.stats.junctions == 0)


@needs_minilm
def test_built_in_objectives_fit_once_from_shipped_examples() -> None:
    from sia_local.rewards.objectives import find_objective, list_objectives
    from sia_local.rewards.reward import OnnxReward

    notes: list[str] = []
    concise = find_objective("concise", note=notes.append)
    assert concise is not None and find_objective("concise", note=notes.append) == concise and len(notes) == 1
    card = json.loads((concise / "objective.json").read_text())
    assert card["examples"]["good"] >= 150 and card["examples"]["bad"] >= 150 and card["cv"]["mean"] > 0.9
    short, padded = OnnxReward(concise, provider="cpu").score("", ["Restart the router.",
                                                                    "Well, so, basically, if you think about it, you could restart the router, more or less."])
    assert short > padded
    listed = {o["name"]: o for o in list_objectives()}
    assert listed["concise"]["built_in"] and listed["concise"]["cv"] is not None and {"kind", "formal"} <= set(listed)
    # an upgrade that ships other examples refits once: a fit from the old ones would not match the shipped heads
    (concise / "objective.json").write_text(json.dumps({**card, "shipped_examples": "an older version"}))
    assert find_objective("concise", note=notes.append) == concise and "refitting" in notes[-1] and "changed" in notes[-1]
    assert json.loads((concise / "objective.json").read_text())["shipped_examples"] == card["shipped_examples"]
    assert find_objective("concise", note=notes.append) == concise and len(notes) == 2


def test_one_broken_card_does_not_hide_the_others(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from sia_local.rewards.objectives import list_objectives, objectives_dir

    monkeypatch.setenv("SIA_CACHE_DIR", str(tmp_path))
    (objectives_dir() / "broken").mkdir(parents=True)
    (objectives_dir() / "broken" / "objective.json").write_bytes(b"{\xff not json")
    rows = {r["name"]: r for r in list_objectives()}
    assert "kind" in rows and "not a readable objective card" in rows["broken"]["error"]


@needs_minilm
def test_first_uses_race_safely_and_a_local_folder_never_shadows_an_objective(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import threading

    from sia_local.rewards.objectives import find_objective, resolve_objective

    monkeypatch.setenv("SIA_CACHE_DIR", str(tmp_path / "cache"))
    found, errors = [], []

    def use() -> None:
        try:
            found.append(find_objective("concise"))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(found)) == 1 and (found[0] / "objective.json").exists() and (found[0] / "model.onnx").exists()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "concise").mkdir()  # a folder of that name in the working directory
    assert resolve_objective("concise") == found[0] and resolve_objective("./concise") == Path("./concise")


@needs_minilm
def test_a_text_in_both_files_teaches_neither_label_and_scored_repeats_are_cleaned(tmp_path: Path) -> None:
    from sia_local.rewards.objectives import fit_objective

    good, bad = _examples()
    card = fit_objective("both", good=good + bad[:3], bad=bad, describe="Answer politely.", out=tmp_path / "both")
    assert card["examples"] == {"good": 50, "bad": 47, "in_both_dropped": 3}
    texts = [*good, *bad] + good[:5]  # five repeats (under the refusal share): dropped, scores kept aligned
    scores = np.r_[np.ones(50), np.zeros(50), np.ones(5)]
    card = fit_objective("scored", scored=(texts, scores), describe="Answer politely.", out=tmp_path / "scored")
    assert card["examples"] == {"scored": 100} and card["cv"]["metric"] == "corr" and card["cv"]["mean"] > 0.5


def test_nested_cv_is_not_the_best_of_the_grid() -> None:
    """On labels that are noise, the best grid value's AUC is above 0.5 by selection; the nested figure is not."""
    from sia_local.rewards.objectives import _CLASSIFIER, _select, fit_classifier

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 20)), np.r_[np.ones(30), np.zeros(30)]
    fit = fit_classifier(x, y)
    chosen = max(row["auc_mean"] for row in _select(_CLASSIFIER, x, y, 5)[1])
    assert fit.cv_mean < chosen and fit.cv_mean < 0.65


def test_examples_that_are_not_utf8_are_one_line(tmp_path: Path) -> None:
    from sia_local.rewards.objectives import read_texts

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 latin-1\n")
    with pytest.raises(ConfigError, match="bad.txt is not UTF-8 text"):
        read_texts(bad)
    result = CliRunner().invoke(main, ["reward", "fit", "x", "--good", str(bad), "--bad", str(bad), "--describe", "x"])
    assert result.exit_code != 0 and "not UTF-8" in result.output and "Traceback" not in result.output


def test_one_objective_steers_alike_however_it_is_named(tiny_gguf: Path, tiny_reward: Path, tmp_path: Path) -> None:
    """`-r FOLDER`, `-r FOLDER:1`, a request's sia.rewards and a batch row's rewards: the same scale, the same text."""
    from fastapi.testclient import TestClient

    from sia_local.batch import Worker, WorkerSpec, read_rows
    from sia_local.core.config import SteerConfig
    from sia_local.llama import LM
    from sia_local.runtime import LMSettings, ScorerSettings, load_scorer
    from sia_local.serve.server import create_app
    from sia_local.core.steer import Steerer

    config = SteerConfig(gate="dense", weight=200.0, max_tokens=16, seed=5)
    lm = LM(tiny_gguf, n_ctx=256)
    texts = {}
    for spelling, settings in (("-r FOLDER", ScorerSettings(path=tiny_reward, provider="cpu")),
                               ("-r FOLDER:1", ScorerSettings(mix=((str(tiny_reward), 1.0),), provider="cpu"))):
        texts[spelling] = Steerer(lm, load_scorer(settings, lm), config).generate("Hi", raw=True).text
    client = TestClient(create_app(Steerer(lm, None, config.replace(gate="none")), model_id="tiny", objective_dirs=[str(tiny_reward)]),
                        base_url="http://127.0.0.1")
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 16, "seed": 5,
                                             "sia": {"gate": "dense", "weight": 200.0, "rewards": [{"name": tiny_reward.name}]}})
    texts["sia.rewards"] = r.json()["choices"][0]["text"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": 1, "prompt": "Hi", "seed": 5, "sia": {"gate": "dense", "weight": 200.0,
                                                                           "rewards": [str(tiny_reward)]}}) + "\n")
    worker = Worker(WorkerSpec(LMSettings(model=tiny_gguf, n_ctx=256), None, config.replace(gate="none"), raw=True))
    texts["batch row"] = worker.run(read_rows(rows)[0], 0)["text"]
    assert len(set(texts.values())) == 1, texts


def test_an_objective_named_twice_keeps_both_in_the_trace(tiny_reward: Path) -> None:
    from sia_local.rewards.mix import load_objectives

    mix = load_objectives([(str(tiny_reward), 1.0), (str(tiny_reward), -0.5)], provider="cpu")
    assert [m.name for m in mix.members] == ["prefers-e", "prefers-e#2"]
    mix.score_responses("", [], [("eee", []), ("xyz", [])])
    assert set(mix.last_parts[0]) == {"prefers-e", "prefers-e#2"}


@needs_minilm
def test_long_examples_are_fitted_on_the_end_that_is_scored(tmp_path: Path) -> None:
    """Past 128 tokens a junction's text is cut from the left (the end is kept); the fit must see the same end."""
    from sia_local.rewards.objectives import fit_objective

    filler = " ".join(["The meeting notes list the agenda items, the rooms and the times for next week."] * 12)  # > 128 tokens
    good, bad = _examples()
    card = fit_objective("tail", good=[f"{filler} {g}" for g in good], bad=[f"{filler} {b}" for b in bad], describe="Polite endings.",
                         out=tmp_path / "tail")
    assert card["cv"]["mean"] > 0.9  # cut from the right, every example would be the same filler: refused as inseparable


def test_a_reward_folder_at_several_weights_opens_one_session(tiny_reward: Path) -> None:
    """A server's mixes are cached by (names, weights): a folder asked for at a new weight reuses its open session."""
    from sia_local.rewards.mix import MixCache

    cache = MixCache(provider="cpu")
    one, two = cache.get([(str(tiny_reward), 1.0)]), cache.get([(str(tiny_reward), 0.5)])
    assert one is not two and one.members[0].scorer is two.members[0].scorer
    assert one.members[0].weight == 1.0 and two.members[0].weight == 0.5
