"""Objectives a user makes from examples: `sia reward fit NAME --good F --bad F` (or `--scored F`), kept by name.

An objective is a reward folder in the same layout as the built-in one (MiniLM + mean pooling + a
linear head as one ONNX graph, so `sia reward check` and every shell load it like any reward) plus a
card, `objective.json`: its name, a one-line description (what a system prompt would ask for), the
example counts, the cross-validated quality with its spread over folds, the embedder's fingerprint,
and the reward's mean and spread over the examples (so weights of different objectives compare).

Good/bad examples fit a logistic head (the reward is its logit); scored examples fit a ridge head.
The regularisation is chosen by k-fold cross-validation; a fit whose examples do not separate is
refused rather than written. Fitted objectives live in the user's cache under `objectives/NAME`;
the built-in "kind" is the default positive-tone reward.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..fit import corr, ridge
from ..paths import build_lock, cache_dir
from ..prompts import read_utf8

MIN_PER_SIDE = 20
MAX_BAD_SHARE = 0.1  # duplicate or empty examples beyond this share of a file are refused
MIN_AUC = 0.65
MIN_CORR = 0.3
C_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)  # inverse L2 strength of the logistic head
ALPHA_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge alpha (x the mean feature variance) for scored examples
BUILT_IN = {"kind": "a positive, kind tone (the default objective)",
            "concise": "direct and to the point, not padded (fitted on first use from sia_local/data/objectives/concise.jsonl)",
            "formal": "a formal, professional register, not casual or slangy (fitted on first use from sia_local/data/objectives/formal.jsonl)"}
BUILT_IN_PROMPTS = {"kind": "Answer in a warm, kind and positive tone."}  # what a system prompt asking for it says (`sia bench`'s prompt arms)
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,40}")
CARD = "objective.json"


def objectives_dir() -> Path:
    return cache_dir() / "objectives"


def read_texts(path: Path) -> list[str]:
    """Texts of a file: one per line, or JSONL objects with "text"."""
    if not path.is_file():
        raise ConfigError(f"examples file not found: {path}", "pass a text file (one example a line) or JSONL with \"text\"")
    texts = []
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if line.lstrip().startswith("{"):
            try:
                texts.append(str(json.loads(line)["text"]).strip())
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{path}:{n} is not a JSON object with \"text\"", "fix that line") from None
        else:
            texts.append(line.strip())
    return texts


def read_scored(path: Path) -> tuple[list[str], np.ndarray]:
    """(texts, scores) of a JSONL file of {"text": ..., "score": number}."""
    texts, scores = [], []
    for n, line in enumerate(read_utf8(path).splitlines() if path.is_file() else [], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts.append(str(row["text"]).strip())
            scores.append(float(row["score"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}:{n} is not a JSON object with \"text\" and a numeric \"score\"", "fix that line") from None
    if not path.is_file():
        raise ConfigError(f"scored examples file not found: {path}", "pass JSONL with \"text\" and \"score\"")
    return texts, np.asarray(scores, dtype=np.float64)


def clean(texts: Sequence[str], where: str) -> list[str]:
    """The distinct non-empty texts; refuses a file whose duplicates and empties pass MAX_BAD_SHARE."""
    return [texts[i] for i in clean_indices(texts, where)]


def clean_indices(texts: Sequence[str], where: str) -> list[int]:
    """Where the first copy of each distinct non-empty text stands (case-insensitive); refuses a file whose duplicates
    and empties pass MAX_BAD_SHARE."""
    kept, seen = [], set()
    for i, t in enumerate(texts):
        if t and t.lower() not in seen:
            seen.add(t.lower())
            kept.append(i)
    if len(texts) and (len(texts) - len(kept)) / len(texts) > MAX_BAD_SHARE:
        raise ConfigError(f"{where}: {len(texts) - len(kept)} of {len(texts)} examples are empty or repeated",
                          "give distinct examples, one per line")
    return kept


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random good example outscores a random bad one (ties half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def logistic(x: np.ndarray, y: np.ndarray, c: float, iters: int = 30) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (penalty |w|² / (2 c n)) by Newton's method; returns (w, b)."""
    n, d = x.shape
    xb = np.c_[x, np.ones(n)]
    w = np.zeros(d + 1)
    reg = np.eye(d + 1) / (c * n)
    reg[-1, -1] = 0.0  # the bias is not penalised
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) / n + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb / n + reg
        step = np.linalg.solve(hess + 1e-9 * np.eye(d + 1), grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def folds_of(n: int, k: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """A fold number per example; with labels, each fold gets its share of both classes."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=int)
    groups = [np.flatnonzero(labels == v) for v in (0, 1)] if labels is not None else [np.arange(n)]
    for idx in groups:
        idx = rng.permutation(idx)
        out[idx] = np.arange(len(idx)) % k
    return out


@dataclass
class Fit:
    w: np.ndarray
    b: float
    kind: str  # "classifier" (good/bad) or "regression" (scored)
    cv_metric: str  # "auc" or "corr"
    cv_mean: float  # nested: each outer fold's head was chosen and fitted without that fold
    cv_std: float
    choice: float  # C or alpha, chosen by cross-validation on all examples
    curve: list[dict[str, float]]  # the selection curve on all examples (optimistic: what chose `choice`)


@dataclass(frozen=True)
class _Family:
    """A head family: its regularisation grid, how to fit one, and how to score held-out examples (higher is better)."""

    kind: str
    metric: str
    param: str
    grid: tuple[float, ...]
    fit: Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, float]]
    score: Callable[[np.ndarray, np.ndarray], float]
    stratify: bool


_CLASSIFIER = _Family("classifier", "auc", "C", C_GRID, lambda x, y, c: logistic(x, y, c), auc, True)
_REGRESSION = _Family("regression", "corr", "alpha", ALPHA_GRID, lambda x, y, a: ridge(x, y, a, relative=True), corr, False)


def _select(family: _Family, x: np.ndarray, y: np.ndarray, k: int) -> tuple[float, list[dict[str, float]]]:
    """The grid value with the best k-fold score on (x, y), and the curve it was chosen from."""
    folds = folds_of(len(y), k, y if family.stratify else None)
    curve, best = [], (-np.inf, family.grid[0])
    for value in family.grid:
        scores = [family.score(x[folds == f] @ w + b, y[folds == f]) for f in range(k)
                  for w, b in [family.fit(x[folds != f], y[folds != f], value)]]
        mean = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
        curve.append({family.param: value, f"{family.metric}_mean": mean, f"{family.metric}_std": float(np.nanstd(scores))})
        if np.isfinite(mean) and mean > best[0]:
            best = (mean, value)
    return best[1], curve


def _fit(family: _Family, x: np.ndarray, y: np.ndarray, k: int = 5) -> Fit:
    """Nested cross-validation: in each outer fold the grid value is chosen on the other folds alone (inner k-fold),
    fitted there and scored on the fold, so the reported figure was not chosen on the data it scores. The head
    itself is chosen and fitted on all examples."""
    outer = folds_of(len(y), k, y if family.stratify else None, seed=1)
    nested = []
    for f in range(k):
        train = outer != f
        value, _ = _select(family, x[train], y[train], k)
        w, b = family.fit(x[train], y[train], value)
        nested.append(family.score(x[~train] @ w + b, y[~train]))
    finite = [v for v in nested if np.isfinite(v)] or [float("nan")]
    choice, curve = _select(family, x, y, k)
    w, b = family.fit(x, y, choice)
    return Fit(w, b, family.kind, family.metric, float(np.mean(finite)), float(np.std(finite)), choice, curve)


def fit_classifier(x: np.ndarray, y: np.ndarray, k: int = 5) -> Fit:
    """Logistic head, C chosen by k-fold AUC; the reported AUC is nested."""
    return _fit(_CLASSIFIER, x, y, k)


def fit_regression(x: np.ndarray, y: np.ndarray, k: int = 5) -> Fit:
    """Ridge head, alpha chosen by k-fold correlation; the reported correlation is nested."""
    return _fit(_REGRESSION, x, y, k)


def embedder_fingerprint() -> str:
    from .sentiment import minilm_files

    model, _ = minilm_files()
    h = hashlib.sha256(str(model.stat().st_size).encode())
    with model.open("rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def fit_objective(name: str, *, good: Sequence[str] = (), bad: Sequence[str] = (), scored: tuple[Sequence[str], np.ndarray] | None = None,
                  describe: str, out: Path | None = None, progress: Callable[[str], None] | None = None, built_in: bool = False,
                  card_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit an objective from examples and write it (default: the named objectives folder); returns its card."""
    from .sentiment import Embedder, build_reward_folder

    if not NAME.fullmatch(name) or (name in BUILT_IN and not built_in):
        raise ConfigError(f"{name!r} cannot name an objective" + (" (it is built in)" if name in BUILT_IN else ""),
                          "use lowercase letters, digits, - and _, and a name that is not built in")
    if not describe.strip():
        raise ConfigError("an objective needs a one-line description", "pass --describe \"Answer politely.\" (a system prompt would say it)")
    started = time.perf_counter()
    conflicts = 0
    if scored is not None:
        keep = clean_indices(list(scored[0]), "--scored")
        texts, targets = [str(scored[0][i]) for i in keep], np.asarray(scored[1], dtype=np.float64)[keep]
        if len(texts) < 2 * MIN_PER_SIDE:
            raise ConfigError(f"{len(texts)} scored examples; at least {2 * MIN_PER_SIDE} are needed", "add more examples")
    else:
        good, bad = clean(good, "--good"), clean(bad, "--bad")
        both = {t.lower() for t in good} & {t.lower() for t in bad}  # one text cannot teach both labels: it leaves both sides
        conflicts = len(both)
        good, bad = [t for t in good if t.lower() not in both], [t for t in bad if t.lower() not in both]
        if len(good) < MIN_PER_SIDE or len(bad) < MIN_PER_SIDE:
            raise ConfigError(f"{len(good)} good and {len(bad)} bad examples" + (f" ({conflicts} in both files were dropped)" if conflicts else "")
                              + f"; at least {MIN_PER_SIDE} of each are needed", "add more examples")
        texts, targets = [*good, *bad], np.r_[np.ones(len(good)), np.zeros(len(bad))]
    if progress:
        progress(f"embedding {len(texts)} examples")
    x = Embedder(keep_end=True)(texts).astype(np.float64)  # cut from the left at 128 tokens, as a junction's text is scored
    if progress:
        progress("cross-validating the head")
    fit = fit_regression(x, targets) if scored is not None else fit_classifier(x, targets)
    if fit.cv_metric == "auc" and fit.cv_mean < MIN_AUC:
        raise ConfigError(f"these examples do not separate: cross-validated AUC {fit.cv_mean:.2f} (< {MIN_AUC})",
                          "add more examples or make the good and bad ones clearer")
    if fit.cv_metric == "corr" and fit.cv_mean < MIN_CORR:
        raise ConfigError(f"the scores are not predictable from the texts: cross-validated correlation {fit.cv_mean:.2f} (< {MIN_CORR})",
                          "add more examples or check the scores")
    rewards = x @ fit.w + fit.b
    card = {"name": name, "description": describe.strip(), "kind": fit.kind,
            "examples": {"good": int(targets.sum()), "bad": int(len(targets) - targets.sum()), "in_both_dropped": conflicts}
            if scored is None else {"scored": len(texts)},
            "cv": {"metric": fit.cv_metric, "folds": 5, "nested": True, "mean": fit.cv_mean, "std": fit.cv_std, "chosen": fit.choice,
                   "curve": fit.curve},
            "embedder": {"name": "all-MiniLM-L6-v2 int8, mean pooling, L2 norm", "fingerprint": embedder_fingerprint()},
            "reward": {"mean": float(rewards.mean()), "std": float(rewards.std())}, "created": time.strftime("%Y-%m-%d %H:%M"),
            "fit_seconds": time.perf_counter() - started,
            "head": {"weights": [float(v) for v in fit.w], "bias": float(fit.b)}, **(card_extra or {})}  # the head: mixes share the embedder
    folder = out or objectives_dir() / name
    head = {"name": f"objective-{name}", "weights": [float(v) for v in fit.w], "bias": float(fit.b), "fitted_on": f"{len(texts)} examples"}
    build_reward_folder(folder, head, progress=progress, objective=card["description"], extra={CARD: json.dumps(card, indent=1)})
    return card


def find_objective(name: str, *, progress: Callable[[str], None] | None = None, note: Callable[[str], None] | None = None) -> Path | None:
    """The folder of a named objective (built-in or fitted), or None when no objective has that name."""
    if name == "kind":
        from .defaults import default_reward_dir

        return default_reward_dir(progress=progress, note=note)
    if name in BUILT_IN:  # fitted once from the shipped examples, like the default reward is built once
        folder = objectives_dir() / name
        if _fitted_from(folder) != shipped_digest(name):  # not fitted yet, or fitted from examples an upgrade replaced
            with build_lock(f"objective-{name}"):  # one fit; concurrent first uses wait for it
                if _fitted_from(folder) != shipped_digest(name):
                    again = (folder / CARD).exists()
                    if note:
                        note(f"{'refitting' if again else 'fitting'} the built-in objective {name} from its shipped examples into {folder}"
                             + (" (they changed with this version)" if again else " (once, a few seconds)"))
                    built_in_examples(name, progress=progress)
        return folder
    folder = objectives_dir() / name
    return folder if NAME.fullmatch(name) and (folder / CARD).exists() else None


def resolve_objective(spec: str, *, progress: Callable[[str], None] | None = None, note: Callable[[str], None] | None = None) -> Path | None:
    """What `-r SPEC` names: an objective first (so a folder called `kind` in the working directory never shadows
    the objective; write ./kind for the folder), else an existing folder; None when neither."""
    folder = find_objective(spec, progress=progress, note=note) if NAME.fullmatch(spec) else None
    if folder is None and Path(spec).exists():
        folder = Path(spec)
    return folder


def request_objectives(dirs: Sequence[Path] = ()) -> dict[str, Path | None]:
    """What a server request may name in `sia.rewards`: every named objective (None: resolved by name when loaded) and
    each reward folder inside the folders given at start-up (`--objective-dir`), by its folder name. Nothing else:
    a request never names a path."""
    allowed: dict[str, Path | None] = {}
    for d in dirs:
        d = Path(d)
        for folder in [d, *sorted(p for p in d.iterdir() if p.is_dir())] if d.is_dir() else []:
            if NAME.fullmatch(folder.name) and (folder / "model.onnx").exists():
                allowed.setdefault(folder.name, folder.resolve())
    for row in list_objectives():
        allowed[row["name"]] = None
    return allowed


def _shipped_file(name: str) -> Any:
    from importlib import resources

    return resources.files("sia_local.data").joinpath("objectives", name)


def shipped_examples(name: str) -> tuple[list[str], list[str]]:
    """A built-in objective's shipped examples (sia_local/data/objectives/NAME.jsonl): the good texts and the bad."""
    lines = _shipped_file(f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [r["text"] for r in rows if r["label"] == "good"], [r["text"] for r in rows if r["label"] != "good"]


@cache
def shipped_digest(name: str) -> str:
    """What identifies a built-in objective's shipped examples: a fit, a head or a vector made from others is stale."""
    return hashlib.sha256(_shipped_file(f"{name}.jsonl").read_bytes()).hexdigest()[:16]


def _fitted_from(folder: Path) -> str | None:
    """Which shipped examples a built-in objective's fit came from (None: not fitted, or fitted before this was kept)."""
    try:
        return str(json.loads((folder / CARD).read_text(encoding="utf-8")).get("shipped_examples") or "") or None
    except (OSError, ValueError, AttributeError):
        return None


def built_in_examples(name: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit the built-in objective `name` from sia_local/data/objectives/NAME.jsonl (+ NAME.txt, its description)."""
    good, bad = shipped_examples(name)
    return fit_objective(name, good=good, bad=bad,
                         describe=_shipped_file(f"{name}.txt").read_text(encoding="utf-8").strip(), progress=progress, built_in=True,
                         card_extra={"shipped_examples": shipped_digest(name)})


def list_objectives() -> list[dict[str, Any]]:
    """Every objective by name: the built-in ones, then the fitted ones (name, description, CV figure, date)."""
    out: dict[str, dict[str, Any]] = {n: {"name": n, "description": d, "cv": None, "created": None, "built_in": True} for n, d in BUILT_IN.items()}
    root = objectives_dir()
    for card_file in sorted(root.glob(f"*/{CARD}")) if root.exists() else []:
        try:
            card = json.loads(card_file.read_text(encoding="utf-8"))
            row = {"name": str(card["name"]), "description": str(card["description"]), "cv": card["cv"], "created": card.get("created")}
        except (OSError, ValueError, KeyError, TypeError) as exc:  # one broken card must not hide the others (or break the page)
            name = card_file.parent.name
            out[name] = {"name": name, "description": None, "cv": None, "created": None, "built_in": name in BUILT_IN,
                         "error": f"{card_file} is not a readable objective card ({exc}); delete {card_file.parent} and fit it again"}
            continue
        out[row["name"]] = {**row, "built_in": row["name"] in BUILT_IN}  # a built-in one fitted already shows its CV figure
    return list(out.values())
