"""Control vectors from an objective's examples: the cheap alternative a user would reach for, and a free complement.

`fit_vector` is the difference-of-means recipe (contrastive activation addition; llama.cpp's `cvector-generator
--method mean` computes the same means): decode each good and each bad example alone, average the middle layer's
output over its tokens, and take mean(good) - mean(bad) there, so that at scale 1 the residual stream at that layer
moves by one good-minus-bad difference. Applied with llama.cpp's control-vector adapter it costs nothing per token
(`llama/cvec.py`). One layer, because a difference added at every layer compounds down the residual stream (on
SmolLM2 a sixteenth of it at each of 16 middle layers, twice over, already broke the text).

A vector belongs to one model and one objective as fitted, like a head (`store.py`): kept in the cache as
`vectors/NAME-FINGERPRINT.gguf` (llama.cpp's format) beside a card with the objective's key. `sia reward fit NAME`
writes it for the model; the built-in `concise` and `formal` get theirs from their shipped examples on first use;
`kind` has no example texts (its reward is fitted on word valences), so it has no vector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..llama import file_fingerprint
from ..llama.cvec import ControlVector
from ..paths import cache_dir

if TYPE_CHECKING:
    from ..llama import LM

MAX_EXAMPLE_TOKENS = 256
METHOD = "difference of means of the middle layer's output, the first position left out"  # a kept vector of another is made again


def vector_layers(n_layer: int) -> list[int]:
    """The layer a vector acts on: the middle one (llama.cpp's numbering: the output of layer il, 1 <= il <= n_layer - 2)."""
    return [max(1, n_layer // 2)] if n_layer >= 3 else []


def fit_vector(lm: "LM", good: Sequence[str], bad: Sequence[str], *, progress: Callable[[str], None] | None = None) -> ControlVector:
    """mean(good) - mean(bad) of the middle layer's output, over each example's tokens."""
    if min(len(good), len(bad)) < 2:
        raise ConfigError("a control vector needs at least 2 good and 2 bad examples", "add examples")
    layers = vector_layers(lm.n_layer)
    if not layers:
        raise ConfigError(f"{lm.path.name} has {lm.n_layer} layers: too few for a control vector (its middle layer must not be the last)",
                          "use a deeper model")
    if progress:
        progress(f"control vector: {len(good) + len(bad)} examples through {len(layers)} layers of {lm.path.name}")
    tokens = [lm.tokenize(t)[:MAX_EXAMPLE_TOKENS] for t in [*good, *bad]]
    means = lm.layer_means(tokens, layers)
    n = len(good)
    directions = {il: (means[il][:n].mean(axis=0) - means[il][n:].mean(axis=0)).astype(np.float32) for il in layers}
    return ControlVector(directions, model_hint=str(lm.metadata.get("general.architecture", "")))


def vector_root() -> Path:
    return cache_dir() / "vectors"


def vector_file(objective: str, model: Path) -> Path:
    return vector_root() / f"{objective}-{file_fingerprint(model)}.gguf"


def write_objective_vector(objective: str, lm: "LM", good: Sequence[str], bad: Sequence[str],
                           progress: Callable[[str], None] | None = None) -> Path:
    """Fit and keep `objective`'s vector for `lm` (with its card: the objective's key, the layers, the examples)."""
    from .store import objective_key

    vector = fit_vector(lm, good, bad, progress=progress)
    path = vector.save(vector_file(objective, lm.path))
    card = {"objective": objective, "objective_key": objective_key(objective), "model": lm.path.name, "layers": sorted(vector.directions),
            "examples": {"good": len(good), "bad": len(bad)}, "method": METHOD}
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return path


def objective_vector(objective: str, lm: "LM", progress: Callable[[str], None] | None = None) -> ControlVector:
    """`objective`'s vector for `lm`: kept in the cache while the objective is unchanged, made now for the built-in
    `concise` and `formal`; otherwise one line saying how to make it."""
    from ..rewards.objectives import shipped_examples
    from .store import objective_key

    path = vector_file(objective, lm.path)
    card = path.with_suffix(".json")
    if path.exists() and card.exists():
        try:
            kept = json.loads(card.read_text())
            if kept["objective_key"] == objective_key(objective) and kept.get("method") == METHOD:
                return ControlVector.load(path)
        except (OSError, ValueError, KeyError):
            pass  # a damaged card: made again below when it can be
    if objective in ("concise", "formal"):
        write_objective_vector(objective, lm, *shipped_examples(objective), progress)
        return ControlVector.load(path)
    if objective == "kind":
        raise ConfigError("the built-in kind objective has no example texts to make a control vector from",
                          "fit one from examples: sia reward fit NAME --good F --bad F --describe ... (it writes NAME's vector)")
    raise ConfigError(f"no control vector of {objective!r} for {lm.path.name}",
                      f"refit it on this model: sia reward fit {objective} --good F --bad F --describe ... -m {lm.path.name}")


def parse_vector(spec: str) -> tuple[str, float]:
    """`NAME[:scale]` or `PATH.gguf[:scale]` -> (name or path, scale)."""
    name, sep, scale = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not sep:
        return spec, 1.0
    try:
        return name, float(scale)
    except ValueError:
        return spec, 1.0  # a colon that is part of a path (C:\\...)


def resolver(lm: "LM", *, allow_paths: bool = True, progress: Callable[[str], None] | None = None) -> Callable[[str], tuple[ControlVector, float, tuple[str, float]]]:
    """What a Steerer calls for `--vector NAME[:scale]`: the vector, its scale and a key (name, scale) for the contexts
    it is set on. `allow_paths`: a .gguf path is read too (the CLI; a server's requests name objectives only)."""
    cache: dict[str, ControlVector] = {}

    def resolve(spec: str) -> tuple[ControlVector, float, tuple[str, float]]:
        name, scale = parse_vector(spec)
        if name not in cache:
            if name.endswith(".gguf") or "/" in name or "\\" in name:
                if not allow_paths:
                    raise ConfigError(f"sia.vector {name[:60]!r} is a path; a request names an objective's vector",
                                      "name the objective (sia.vector \"formal:1.5\")", api_hint="name the objective, e.g. \"formal:1.5\"")
                cache[name] = ControlVector.load(Path(name))
            else:
                cache[name] = objective_vector(name, lm, progress)
        return cache[name], scale, (name, scale)

    return resolve
