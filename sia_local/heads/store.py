"""Which head steers an objective on a model: the user's distilled heads first, then the heads shipped in the package.

A junction head is a few kilobytes and costs a fraction of a branch decode, where the objective's
MiniLM teacher costs a text embedding of k candidates at every junction. So a named objective on a
model that has a head for it is steered by the head, unless the user asks for the teacher. A head
belongs to one model (its card's fingerprint) and to one objective as it was fitted (the card's
`objective_key`): a refitted objective makes its old heads stale, and they are not used.

Heads live in two places, searched in this order:
- the cache: `heads/NAME-FINGERPRINT/` (`sia reward fit NAME --head`, `sia vm distill -r NAME`);
- the package: `sia_local/data/heads/*/` (made by `scripts/data/make_shipped_heads.py`, with its command in the card).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..llama import file_fingerprint
from ..paths import cache_dir

if TYPE_CHECKING:
    from ..llama import LM

BUDGET_PROMPTS = 200  # prompts a head for a user's objective is distilled on (~4 min on 2 cores; docs/value-heads.md: Kendall tau vs prompts)


def shipped_root() -> Path:
    return Path(str(resources.files("sia_local.data").joinpath("heads")))


def user_root() -> Path:
    return cache_dir() / "heads"


def user_head_dir(objective: str, model: Path) -> Path:
    """Where `sia vm distill -r NAME` (and `sia reward fit NAME --head`) keep the head of `objective` for `model`."""
    return user_root() / f"{objective}-{file_fingerprint(model)}"


def objective_key(name: str) -> str | None:
    """What identifies an objective as fitted, so that a head distilled from it is used only while it is unchanged:
    the shipped data of a built-in one (its fit is the same wherever it runs), the fitted weights of a user's one;
    None for a name that is no objective."""
    from ..rewards.objectives import BUILT_IN, CARD, NAME, objectives_dir, shipped_digest

    if not NAME.fullmatch(name):
        return None
    if name == "kind":
        return f"built-in:{name}:" + hashlib.sha256(resources.files("sia_local.data").joinpath("sentiment_head.json").read_bytes()).hexdigest()[:16]
    if name in BUILT_IN:
        return f"built-in:{name}:" + shipped_digest(name)
    card = objectives_dir() / name / CARD
    try:
        head = json.loads(card.read_text(encoding="utf-8"))["head"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return f"fitted:{name}:" + hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Lookup:
    """The head found for (objective, model), or None, and why, in words (`sia info`, `--json`, notes)."""

    folder: Path | None
    why: str


def _cards(roots: list[Path]) -> list[tuple[Path, dict]]:
    out = []
    for root in roots:
        for card_file in sorted(root.glob("*/head.json")) if root.is_dir() else []:
            try:
                card = json.loads(card_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a broken user head is never picked; `sia vm distill` rewrites it
            if isinstance(card, dict):
                out.append((card_file.parent, card))
    return out


def find_head(objective: str, model: Path) -> Lookup:
    """The head of the named `objective` for the GGUF `model` (fingerprints checked), the user's before the shipped."""
    key = objective_key(objective)
    if key is None:
        return Lookup(None, f"{objective!r} is not a named objective")
    try:
        fingerprint = file_fingerprint(model)
    except OSError:  # a missing or unreadable GGUF: the model's loader says so in its own words
        return Lookup(None, f"{model} cannot be read")
    stale = None
    for folder, card in _cards([user_root(), shipped_root()]):
        if card.get("backbone_fingerprint") != fingerprint or card.get("objective_name") != objective:
            continue
        if card.get("objective_key") != key:
            stale = folder
            continue
        where = "shipped" if folder.parent == shipped_root() else "distilled here"
        layer = card.get("layer", {}).get("layer")
        return Lookup(folder, f"the {where} head of {objective} for {model.name}" + (f" (early exit at layer {layer})" if layer is not None else ""))
    if stale is not None:
        return Lookup(None, f"the head in {stale} was distilled before {objective} was refitted")
    return Lookup(None, f"no head of {objective} for {model.name}")


def how_to_distil(objective: str, model: Path) -> str:
    return f"sia vm distill -r {objective} -m {model} (about 4 minutes on 2 cores for a small model)"


def identity_of(objective: str, model: Path, limit: int, seed: int) -> dict[str, str] | None:
    """What a head's card says about the objective it was distilled from (so `find_head` finds it), and how it was
    made; None when `objective` names no objective."""
    key = objective_key(objective)
    if key is None:
        return None
    return {"objective_name": objective, "objective_key": key, "made_with": f"sia vm distill -r {objective} -m {model.name} --limit {limit} --seed {seed}"}


def distil_for(objective: str, lm: "LM", *, limit: int = BUDGET_PROMPTS, seed: int = 0, fresh: bool = False,
               progress: Callable[[int, int, str], None] | None = None, note: Callable[[str], None] | None = None) -> tuple[Path, dict]:
    """Distil the junction head of the named `objective` for `lm` (loaded with hidden states) into the cache, where
    `find_head` finds it: the first `limit` shipped distillation prompts, the objective on its reference scale as the
    teacher. Resumable (the junctions are kept as they are recorded); returns (folder, card)."""
    from ..errors import ConfigError
    from ..prompts import load_prompts
    from ..rewards.mix import Objectives
    from .distill import distill_head

    identity = identity_of(objective, lm.path, limit, seed)
    if identity is None:
        raise ConfigError(f"{objective!r} is not a named objective", "fit it first with `sia reward fit NAME` (`sia reward list` shows the names)")
    teacher = Objectives([(objective, 1.0)], note=note)
    out = user_head_dir(objective, lm.path)
    card = distill_head(lm, teacher, load_prompts(None, default="distill")[:limit], out, samples_per_prompt=0, seed=seed, fresh=fresh,
                        progress=progress, identity=identity)
    return out, card
