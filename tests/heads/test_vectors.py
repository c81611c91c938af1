"""Control vectors: fitted from examples through the layer taps, in llama.cpp's GGUF format, set on every context that
decodes a request (the model's own, Best-of-N's, the slots', which switch only when empty), named by `--vector`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sia_local.core.config import SteerConfig
from sia_local.core.slots import SlotScheduler
from sia_local.errors import ConfigError
from sia_local.heads.vectors import fit_vector, parse_vector, resolver, vector_layers
from sia_local.llama import LM
from sia_local.llama.cvec import ControlVector
from sia_local.runtime import build_steerer
from tiny_models import write_tiny_gguf

GOOD = ["a calm and gentle morning", "warm bread and kind words", "thank you, dear friend", "a quiet, happy evening"]
BAD = ["zzz kkk xxq", "qqq vvv zzk", "xkq zzv qqz", "vvv kkq xxz"]


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("cvec") / "deep.gguf", n_layer=6, n_ctx=1024)


@pytest.fixture(scope="module")
def lm(deep: Path) -> LM:
    return LM(deep, n_ctx=1024, hidden=True)


def test_a_vector_is_the_difference_of_means_and_round_trips_through_llama_cpps_format(lm: LM, tmp_path: Path) -> None:
    vector = fit_vector(lm, GOOD, BAD)
    assert sorted(vector.directions) == vector_layers(lm.n_layer) == [3]
    means = lm.layer_means([lm.tokenize(t) for t in GOOD + BAD], [3])[3]  # each over its tokens but the first
    np.testing.assert_allclose(vector.directions[3], means[:4].mean(0) - means[4:].mean(0), rtol=1e-5, atol=1e-6)
    back = ControlVector.load(vector.save(tmp_path / "v.gguf"))
    np.testing.assert_array_equal(back.directions[3], vector.directions[3])
    from gguf import GGUFReader

    reader = GGUFReader(str(tmp_path / "v.gguf"))  # what llama.cpp's common_control_vector_load reads
    assert [t.name for t in reader.tensors] == ["direction.3"] and "controlvector.layer_count" in reader.fields
    with pytest.raises(ConfigError, match="not a GGUF"):
        (tmp_path / "junk.gguf").write_bytes(b"nope")
        ControlVector.load(tmp_path / "junk.gguf")


def test_a_vector_moves_the_logits_at_no_cost_and_clears(lm: LM, tmp_path: Path) -> None:
    ids = lm.tokenize("Once upon a time")
    plain = lm.prefill(ids).copy()
    vector = fit_vector(lm, GOOD, BAD)
    lm.use_vector(vector, 4.0, "v")
    pushed = lm.prefill(ids).copy()
    assert not np.allclose(plain, pushed)
    lm.use_vector(vector, 0.0, "zero")
    np.testing.assert_allclose(lm.prefill(ids), plain, rtol=1e-4, atol=1e-4)  # scale 0 adds nothing
    lm.use_vector(None)
    np.testing.assert_allclose(lm.prefill(ids), plain, rtol=1e-4, atol=1e-4)  # cleared: the cells made under it were dropped


def test_vector_flag_names_a_file_or_an_objective_with_a_scale(lm: LM, deep: Path, tmp_path: Path) -> None:
    path = fit_vector(lm, GOOD, BAD).save(tmp_path / "gentle.gguf")
    assert parse_vector(f"{path}:2.5") == (str(path), 2.5) and parse_vector("formal") == ("formal", 1.0)
    steerer = build_steerer(lm, None, SteerConfig(gate="none", max_tokens=8, seed=3))
    plain = steerer.generate("Hi").text
    assert steerer.generate("Hi", vector=f"{path}:0").text == plain
    assert steerer.generate("Hi", vector=f"{path}:8").text != plain
    assert steerer.generate("Hi").text == plain  # the next request without one gets the model back
    with pytest.raises(ConfigError, match="kind objective has no example texts"):
        steerer.generate("Hi", vector="kind")
    with pytest.raises(ConfigError, match="a path"):
        resolver(lm, allow_paths=False)(str(path))


def test_slots_switch_vectors_only_when_empty_and_answer_as_alone(lm: LM, tmp_path: Path) -> None:
    path = str(fit_vector(lm, GOOD, BAD).save(tmp_path / "v.gguf"))
    steerer = build_steerer(lm, None, SteerConfig(gate="none", max_tokens=12))
    alone = {v: steerer.generate("Tell me a story", seed=5, vector=v).text for v in (None, f"{path}:6")}
    slots = SlotScheduler(lm, 2)
    try:
        futures = [slots.submit(steerer, "Tell me a story", seed=5, vector=v) for v in (None, f"{path}:6", None)]
        texts = [f.result(timeout=120).text for f in futures]
    finally:
        slots.close()
    assert texts == [alone[None], alone[f"{path}:6"], alone[None]]
