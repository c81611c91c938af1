"""The caller's sampling fields act on the full-vocabulary logits before SIA's top-k (never on the k after it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sia_local.core.config import SteerConfig
from sia_local.core.penalties import LogitProcessor
from sia_local.core.sequence import SequenceState
from sia_local.errors import ConfigError


def _state(lm, prompt_ids: list[int], **cfg) -> SequenceState:
    return SequenceState(lm, SteerConfig(gate="none", top_k=10, max_tokens=100, **cfg), None, 0, prompt_ids, [])


def _logits(lm, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 3.0, lm.n_vocab).astype(np.float32)


def test_a_penalty_changes_which_k_are_candidates_and_leaves_the_others_alone(tiny_lm) -> None:
    logits = _logits(tiny_lm)
    order = np.argsort(-logits)
    repeated = [int(order[0]), int(order[3])]  # two of the raw top 10, seen in the prompt
    plain, penalised = _state(tiny_lm, [1, 2]), _state(tiny_lm, [1, *repeated], repeat_penalty=10.0)
    plain.propose(logits)
    penalised.propose(logits)
    assert set(repeated) <= set(plain._cand.tolist())
    assert not set(repeated) & set(penalised._cand.tolist())  # pushed out of the k before the top-k ...
    assert {int(order[10]), int(order[11])} <= set(penalised._cand.tolist())  # ... so the 11th and 12th are scored instead
    untouched = [c for c in penalised._cand.tolist() if c not in repeated]
    assert np.array_equal(penalised._z, logits[untouched])  # and the other candidates keep their logits exactly
    assert penalised._h != plain._h  # the entropy (so the gate) sees the penalised set


def test_penalties_follow_llama_cpps_formula(tiny_lm) -> None:
    logits = _logits(tiny_lm, 1)
    history = [5, 5, 5, 9, 9, 12]
    cfg = SteerConfig(repeat_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.25, repeat_last_n=5)
    out = LogitProcessor(cfg, tiny_lm.n_vocab).apply(logits, history)
    want = logits.copy()
    for token, count in {5: 2, 9: 2, 12: 1}.items():  # the last 5 tokens only
        z = want[token]
        want[token] = (z / 1.3 if z > 0 else z * 1.3) - 0.5 * count - 0.25
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert LogitProcessor(SteerConfig(), tiny_lm.n_vocab).apply(logits, history) is logits  # nothing asked: no copy


def test_bias_min_p_and_the_callers_top_k(tiny_lm) -> None:
    logits = _logits(tiny_lm, 2)
    order = np.argsort(-logits)
    low = int(order[200])
    s = _state(tiny_lm, [1], logit_bias={str(int(order[0])): -100, str(low): 100})
    s.propose(logits)
    assert int(order[0]) not in s._cand.tolist() and int(s._cand[0]) == low  # a ban, and a bias that makes a candidate
    s = _state(tiny_lm, [1], min_p=0.5)
    s.propose(logits)
    p = np.exp(logits[s._cand] - logits.max())
    assert (p >= 0.5).all() and len(s._cand) == min(10, int((np.exp(logits - logits.max()) >= 0.5).sum()))
    s = _state(tiny_lm, [1], sample_top_k=3)
    s.propose(logits)
    assert s._cand.tolist() == order[:3].tolist() and s.cfg.top_k == 10  # the caller's truncation; SIA's k is unchanged
    s = _state(tiny_lm, [1], sample_top_k=40)
    s.propose(logits)
    assert len(s._cand) == 10


def test_bad_sampling_fields_are_one_line(tiny_lm) -> None:
    for bad in ({"logit_bias": {"x": 1}}, {"logit_bias": {"3": 1000}}, {"logit_bias": 5}, {"repeat_penalty": 0.0}, {"min_p": 1.5}):
        with pytest.raises(ConfigError):
            SteerConfig().updated(**bad)
    assert SteerConfig(logit_bias={"7": -1, 3: 2.5}).logit_bias == ((3, 2.5), (7, -1.0))
    assert SteerConfig(logit_bias=("7=-1",)).logit_bias == ((7, -1.0),)  # the CLI's ID=BIAS


def test_every_shell_takes_them(tiny_gguf: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sia_local.batch import read_rows
    from sia_local.cli import main

    out = CliRunner().invoke(main, ["generate", "Hi", "-m", str(tiny_gguf), "--gate", "none", "-n", "4", "--repeat-penalty", "1.3",
                                    "--frequency-penalty", "0.5", "--min-p", "0.05", "--sample-top-k", "5", "--logit-bias", "3=-100", "--json"])
    assert out.exit_code == 0, out.output
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": 1, "prompt": "Hi", "repeat_penalty": 1.3, "top_k": 5, "logit_bias": {"3": -100},
                                "presence_penalty": 0.5}) + "\n")
    row = read_rows(rows)[0]
    assert row.error is None and row.changes["sample_top_k"] == 5 and row.changes["repeat_penalty"] == 1.3
    assert SteerConfig().updated(**row.changes).logit_bias == ((3, -100.0),)
