"""Wiring: from settings to a ready `Steerer`, in one place.

The CLI, chat, the server, bench, `sia batch` and the package's public loaders all load through these
functions, so "which model, which scorer, calibrated when" has one answer:

    lm = load_lm(LMSettings(model="~/models/qwen3.gguf"))
    scorer = load_scorer(ScorerSettings(path=Path("rm/")), lm)     # a reward folder or a value-model folder
    steerer = build_steerer(lm, scorer, SteerConfig(ratio=0.3))     # tau calibrated here, with progress

Nothing here knows about click or HTTP: progress and notes go to callbacks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .core.config import SteerConfig
from .errors import PromptError, RewardModelError
from .llama import DEFAULT_N_CTX, LM
from .core.scorer import Scorer
from .core.steer import Steerer

Progress = Callable[[int, int, str], None]  # (done, total, what); total 0 = unknown
SCORER_CHOICES = ("auto", "head", "teacher")  # ScorerSettings.prefer, --scorer
Note = Callable[[str], None]


@dataclass(frozen=True)
class LMSettings:
    """How to load the GGUF model (llama.cpp's names).

    model: a .gguf path or a model name from a local store (`sia models`); None = the default SmolLM2.
    """

    model: str | os.PathLike[str] | None = None
    n_ctx: int = DEFAULT_N_CTX
    n_threads: int | None = None
    n_gpu_layers: int = 0
    chat_format: str | None = None
    verbose: bool = False
    flash_attn: str = "auto"
    hidden: bool = False  # with hidden states and branch sequences (value heads on the LM); `load` adds it when the scorer needs it


@dataclass(frozen=True)
class ScorerSettings:
    """How to load the steering signal.

    path: a reward folder (model.onnx + tokenizer.json), a value-model folder (model.onnx + vm.json) or
    a head folder, recognised by its files, or an objective's name; None = the built-in objective kind
    (positive tone). mix: several objectives (name or folder, weight) scored together at each junction
    (`mix.py`), instead of `path`. prefer: for named objectives, "auto" steers with the objective's head
    on this model when there is one (`heads/store.py`: shipped or distilled here) and with its teacher
    (the MiniLM reward) otherwise; "head" insists on a head; "teacher" always takes the teacher.
    label: for classifier rewards. provider: onnxruntime provider (auto, cpu, cuda, ...). threads:
    onnxruntime threads.
    """

    path: str | os.PathLike[str] | None = None
    mix: tuple[tuple[str, float], ...] = ()
    prefer: str = "auto"
    label: str | None = None
    provider: str = "auto"
    threads: int | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.prefer not in SCORER_CHOICES:
            raise RewardModelError(f"scorer {self.prefer!r} is not one of {', '.join(SCORER_CHOICES)}", "pass --scorer auto, head or teacher")


def model_path(settings: LMSettings) -> Path:
    """The GGUF `settings` names: a path, a local store name, or the default SmolLM2."""
    from .rewards.defaults import default_model_path
    from .llama.models import resolve_model

    return resolve_model(settings.model) if settings.model else default_model_path()


def load_lm(settings: LMSettings = LMSettings(), *, hidden: bool = False) -> LM:
    """The language model: a path, a local store name, or the default SmolLM2. `hidden`: with hidden
    states and branch sequences, as value heads on the LM need (see `needs_hidden`)."""
    path = model_path(settings)
    return LM(path, n_ctx=settings.n_ctx, n_threads=settings.n_threads, n_gpu_layers=settings.n_gpu_layers,
              chat_format=settings.chat_format, verbose=settings.verbose, flash_attn=settings.flash_attn, hidden=hidden or settings.hidden)


def needs_hidden(scorer: ScorerSettings | None, model: Path | None = None) -> bool:
    """Whether this scorer runs inside the LM (a head folder, or a named objective with a head for `model`), so the LM
    must be loaded with `hidden`."""
    if scorer is None:
        return False
    if model is not None and choose_heads(scorer, model).heads:
        return True
    if scorer.mix or scorer.path is None or not Path(scorer.path).exists():
        return False  # the default objective or a named one without a head (a reward); a missing folder is load_scorer's to report
    return scorer_kind(Path(scorer.path)) == "lm-head"


@dataclass(frozen=True)
class HeadChoice:
    """Which heads steer a named objective (or mix) on a model, with their weights; none: the teacher. `why` in words."""

    heads: tuple[tuple[Path, float], ...]
    why: str
    fallback: str | None = None  # when a head was wanted and none steers: what to run to make one


def objective_names(settings: ScorerSettings) -> list[tuple[str, float]] | None:
    """The named objectives the settings steer by, with weights; None when a folder or value model is named."""
    from .heads.store import objective_key

    specs = list(settings.mix) if settings.mix else [("kind" if settings.path is None else str(settings.path), 1.0)]
    return specs if all(objective_key(name) is not None for name, _ in specs) else None


def choose_heads(settings: ScorerSettings, model: Path) -> HeadChoice:
    """The heads that steer these objectives on `model` (`settings.prefer`): all of them have one, or none steers."""
    from .heads.store import find_head, how_to_distil

    names = objective_names(settings)
    if names is None:
        return HeadChoice((), "a reward or value-model folder was named")
    if settings.prefer == "teacher":
        return HeadChoice((), "--scorer teacher")
    found = [(find_head(name, model), name, weight) for name, weight in names]
    missing = [(lookup, name) for lookup, name, _ in found if lookup.folder is None]
    if not missing:
        return HeadChoice(tuple((lookup.folder, weight) for lookup, _, weight in found if lookup.folder is not None),
                          "; ".join(lookup.why for lookup, _, _ in found))
    lookup, name = missing[0]
    return HeadChoice((), lookup.why, how_to_distil(name, model))


def resolve_scorer_path(path: str | os.PathLike[str], *, progress: Callable[[str], None] | None = None, note: Note | None = None) -> Path:
    """A named objective (`kind`, or one fitted with `sia reward fit NAME`) first, else the folder as given: a folder
    called like an objective in the working directory does not shadow it (write ./kind for the folder)."""
    from .rewards.objectives import resolve_objective

    found = resolve_objective(str(path), progress=progress, note=note)
    return found if found is not None else Path(path)


def scorer_kind(folder: Path) -> str:
    """"lm-head" (head.json), "value-model" (vm.json + model.onnx), "reward" (model.onnx), or an error naming the folder."""
    from .heads.head import head_file

    if head_file(folder) is not None:
        return "lm-head"
    if (folder / "vm.json").exists():
        return "value-model"
    if folder.is_file() and folder.suffix == ".onnx" or (folder / "model.onnx").exists():
        return "reward"
    if not folder.exists():
        raise RewardModelError(f"reward folder not found, and no objective is named so: {folder}",
                               "pass a folder holding model.onnx and tokenizer.json, or an objective name (`sia reward list`)")
    raise RewardModelError(f"{folder} has no model.onnx", "pass a reward folder (sia reward export/build) or a value-model folder (sia vm distill)")


def load_scorer(settings: ScorerSettings, lm: LM | None = None, *, progress: Progress | None = None, note: Note | None = None) -> Scorer:
    """A reward model or a value model, by what the folder holds; None path = the default reward (built once)."""
    from .rewards.defaults import default_reward_dir
    from .heads.vm import ValueModel

    say = (lambda msg: progress(0, 0, msg)) if progress else None
    chosen = None  # why the teacher steers a named objective, when a head was looked for
    if lm is not None and settings.prefer != "teacher" and objective_names(settings) is not None:
        choice = choose_heads(settings, lm.path)
        if choice.heads and lm.hidden:
            return _load_heads(choice, settings, lm, note)
        chosen = choice.why if not choice.heads else f"{lm.path.name} was loaded without hidden states, which its head needs"
        if settings.prefer == "head":
            raise RewardModelError(f"--scorer head: {chosen}", choice.fallback or "load the LM with hidden=True (runtime.load does)")
        if note is not None:
            note(f"steering with the teacher (MiniLM): {chosen}" + (f"; a head is about 2x faster: {choice.fallback}" if choice.fallback else ""))
    elif settings.prefer == "head" and objective_names(settings) is not None:
        raise RewardModelError("--scorer head: no model was given to find the objective's head for", "load the LM first (runtime.load does)")
    if settings.mix:
        from .rewards.mix import Objectives

        mixed = Objectives(settings.mix, label=settings.label, provider=settings.provider, threads=settings.threads, verbose=settings.verbose,
                           progress=say, note=note)
        mixed.chosen = chosen
        return mixed
    if settings.path is None:
        folder = default_reward_dir(progress=say, note=note)
    else:
        folder = resolve_scorer_path(settings.path, progress=say, note=note)
    scorer: Scorer
    kind = scorer_kind(folder)
    if kind == "lm-head":
        from .heads.head import load_head

        if lm is None:
            raise RewardModelError(f"{folder} is a value head on the LM", "load the LM first (runtime.load_lm(..., hidden=True))")
        head = load_head(folder, lm)
        head.teacher = teacher_loader(head.card, settings)
        scorer = head
    elif kind == "value-model":
        scorer = ValueModel(folder, lm, provider=settings.provider, threads=settings.threads, verbose=settings.verbose)
    else:  # a reward: an objective of one, on the scale every objective has, however it was named (mix.py)
        from .rewards.mix import Objectives

        spec = "kind" if settings.path is None else str(settings.path)
        objectives = Objectives([(spec, 1.0)], label=settings.label, provider=settings.provider, threads=settings.threads,
                                verbose=settings.verbose, progress=say, note=note)
        objectives.chosen = chosen
        scorer = objectives
    info = scorer.info()
    if info.provider_note and note is not None:
        note(info.provider_note)
    return scorer


def _load_heads(choice: HeadChoice, settings: ScorerSettings, lm: LM, note: Note | None) -> Scorer:
    """The chosen heads as one scorer; the objectives themselves (their teacher) rank whole answers."""
    from .heads.head import load_head
    from .heads.mix import HeadMix

    teacher = replace(settings, prefer="teacher")
    heads = [load_head(folder, lm) for folder, _ in choice.heads]
    for head in heads:
        if head.note and note is not None:
            note(head.note)
    scorer: Scorer
    if len(heads) == 1 and choice.heads[0][1] == 1.0:
        scorer = heads[0]
    else:
        scorer = HeadMix([(head, weight) for head, (_, weight) in zip(heads, choice.heads)], lm)
    scorer.teacher = lambda: load_scorer(teacher)  # type: ignore[attr-defined]
    scorer.chosen = choice.why  # type: ignore[attr-defined]
    return scorer


def teacher_loader(card: dict, settings: ScorerSettings) -> Callable[[], Scorer] | None:
    """A loader of the reward a head was distilled from (its card's `teacher_path`, or the default reward when the
    card names it), for ranking whole answers; None when it is not on this machine."""
    from .rewards.defaults import REWARD_NAME

    path = card.get("teacher_path")
    if path and Path(path).exists():
        return lambda: load_scorer(ScorerSettings(path=path, provider=settings.provider, threads=settings.threads, verbose=settings.verbose))
    if str(card.get("teacher", "")).startswith(REWARD_NAME):
        return lambda: load_scorer(ScorerSettings(provider=settings.provider, threads=settings.threads, verbose=settings.verbose))
    return None


def build_steerer(lm: LM, scorer: Scorer | None, config: SteerConfig, *, progress: Progress | None = None,
                  announce: Note | None = None) -> Steerer:
    """A Steerer whose tau is resolved now (with progress), so no answer starts with a calibration."""
    from .heads.vectors import resolver

    steerer = Steerer(lm, scorer, config, announce=announce)
    steerer.vectors = resolver(lm, progress=announce)  # --vector NAME[:scale]: an objective's control vector, or a .gguf
    steerer.config_for()  # a steering gate without a scorer fails here, not at the first answer
    if config.needs_tau():
        tick = (lambda done, total: progress(done, total, "calibrating tau (once per model)")) if progress else None
        steerer.resolve_tau(config, progress=tick)
    return steerer


def load(lm_settings: LMSettings = LMSettings(), scorer_settings: ScorerSettings | None = ScorerSettings(),
         config: SteerConfig = SteerConfig(), *, progress: Progress | None = None, note: Note | None = None, chat: bool = False) -> Steerer:
    """LM + scorer + steerer in one call; `scorer_settings=None` loads no scorer (only `--gate none` then).
    `chat`: prompts will go through the chat template, so a GGUF without one is refused now, before any
    reward build or calibration."""
    lm = load_lm(lm_settings, hidden=needs_hidden(scorer_settings, model_path(lm_settings)) or config.vector is not None)
    if chat and not lm.has_chat_template:
        raise PromptError(f"{lm.path.name} has no chat template", "pass --raw to send the prompt as plain text, or --chat-format NAME (e.g. chatml)")
    scorer = load_scorer(scorer_settings, lm, progress=progress, note=note) if scorer_settings is not None else None
    return build_steerer(lm, scorer, config, progress=progress, announce=note)
