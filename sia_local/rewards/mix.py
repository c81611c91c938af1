"""Objectives at a junction, one or several: `-r kind -r polite:0.5 -r rude:-1`, at about the cost of one.

The combined reward of a candidate is sum_j w_j * (r_j - mean_j) / std_j, where mean_j and std_j are objective j's
raw reward over one shipped set of reference answers (`reference_texts`), measured the same way for every objective
(the built-in `kind`, a fitted one, any reward folder) and however it is named (`-r kind`, `-r kind:1`, the default,
`sia.rewards`, a batch row's `rewards`): a weight of 1 adds one reference spread of the objective per unit of
logit, and a negative weight steers away. The
objectives built on the default embedder (the built-in `kind` and everything `sia reward fit` makes)
are linear heads on the same pooled MiniLM embedding, so the embedder runs once per junction and each
head is one dot product: three objectives cost about what one does. Any other reward folder in the
mix runs as its own scorer, on the same rule.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, RewardModelError
from ..llama import file_fingerprint
from .objectives import CARD, resolve_objective
from ..paths import cache_dir, write_atomic
from .reward import OnnxReward, open_session
from ..core.scorer import Junction, Scorer, ScorerInfo
from .sentiment import Embedder, load_head, minilm_files

Progress = Callable[[str], None]
EMBED_BATCH = 64  # texts per onnxruntime run: n x k texts of one step (up to 16 x 64 on the server) never become one huge batch


def parse_objective(text: str) -> tuple[str, float]:
    """"polite:0.5" -> ("polite", 0.5); "kind" -> ("kind", 1.0)."""
    name, sep, weight = str(text).rpartition(":") if ":" in str(text) else (str(text), "", "1")
    try:
        w = float(weight)
    except ValueError:
        raise ConfigError(f"-r {text!r}: the weight after ':' must be a number", "write e.g. -r polite:0.5") from None
    if not np.isfinite(w) or abs(w) > 1000:
        raise ConfigError(f"-r {text!r}: the weight must be a finite number in [-1000, 1000]", "write e.g. -r rude:-1")
    return name, w


class SharedEmbedder:
    """The one embedding every default-embedder objective's head reads: `sentiment.Embedder` cut from the left
    at 128 tokens, as the reward folders are, on a session made like the rewards' (provider, threads, no
    spinning). Loaded on first use; counts its runs (one per junction step, however many objectives share it)."""

    def __init__(self, provider: str = "auto", threads: int | None = None, verbose: bool = False) -> None:
        self.options = (provider, threads, verbose)
        self.embed: Embedder | None = None
        self.provider, self.provider_note = "CPUExecutionProvider", None
        self.runs = 0
        self._ahead: dict[str, np.ndarray] = {}
        self._opening = threading.Lock()  # a mix loading in a worker thread and the slots' thread may both open it first

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        ahead = self._ahead  # one snapshot: the slots' thread swaps it between steps
        if ahead and all(t in ahead for t in texts):  # embedded already, with the other requests' texts of this step
            return np.stack([ahead[t] for t in texts]) if texts else np.zeros((0, 0))
        return self._run(texts)

    def ahead(self, texts: Sequence[str]) -> None:
        """Embed `texts` now, in one run, for the calls that follow (the slots: every request's junction texts of one
        step, whatever objectives they mix); an empty list forgets them."""
        unique = list(dict.fromkeys(texts))
        self._ahead = dict(zip(unique, self._run(unique))) if unique else {}

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        with self._opening:
            if self.embed is None:
                session, self.provider, self.provider_note = open_session(minilm_files()[0], *self.options)
                self.embed = Embedder(keep_end=True, session=session)
        self.runs += 1
        return self.embed(texts, batch=EMBED_BATCH).astype(np.float64)


@dataclass
class Member:
    """One objective of a mix: a head on the shared embedding (w, b), or a scorer of its own."""

    name: str
    weight: float
    mean: float
    std: float
    description: str | None
    w: np.ndarray | None = None
    b: float = 0.0
    scorer: Scorer | None = None
    folder: Path | None = None

    def standardise(self, r: np.ndarray) -> np.ndarray:
        return (r - self.mean) / self.std


REFERENCE_EVERY = 3  # every third of the built-in objectives' example answers (~200 texts): the one reference set


def reference_texts() -> list[str]:
    """The one set of answers every objective's scale is measured on: the built-in objectives' example answers (concise
    and padded, formal and casual; sia_local/data/objectives), every REFERENCE_EVERY-th. Fixed, shipped, the same for all."""
    from .objectives import shipped_examples

    return [text for name in ("concise", "formal") for side in shipped_examples(name) for text in side][::REFERENCE_EVERY]


def reference_scale(key: str, score: Callable[[list[str]], np.ndarray]) -> tuple[float, float]:
    """Mean and spread of an objective's raw reward over `reference_texts()`: the one rule that puts every objective
    on one scale, whatever it is and however it is named, so a weight of 1 means "one reference spread of this
    objective per unit of logit". Kept in the cache under `key` (what identifies the objective's scoring)."""
    texts = reference_texts()
    digest = hashlib.sha256((key + "\n" + "\n".join(texts)).encode()).hexdigest()[:16]
    file = cache_dir() / "scales" / f"{digest}.json"
    try:
        cached = json.loads(file.read_text(encoding="utf-8"))
        return float(cached["mean"]), float(cached["std"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    r = np.asarray(score(texts), dtype=np.float64)
    mean, std = float(r.mean()), float(max(r.std(), 1e-6))
    file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(file, json.dumps({"mean": mean, "std": std, "texts": len(texts), "key": key[:200]}))
    return mean, std


def _head_key(w: np.ndarray, b: float) -> str:
    return "head:" + hashlib.sha256(np.asarray(w, dtype=np.float64).tobytes() + repr(float(b)).encode()).hexdigest()


def member(name: str, weight: float, embed: SharedEmbedder, *, provider: str, threads: int | None, verbose: bool, label: str | None = None,
           progress: Progress | None = None, note: Callable[[str], None] | None = None, rewards: dict[Any, OnnxReward] | None = None) -> Member:
    """The objective `name` (a name from `sia reward list`, or a reward folder) with its weight, on the one scale
    (`reference_scale`): its raw reward standardised over the shipped reference answers. `rewards`: reward folders'
    sessions already open (a server's mixes of one folder at several weights share one)."""
    folder = resolve_objective(name, progress=progress, note=note)
    if folder is None:
        from .objectives import list_objectives

        names = ", ".join(o["name"] for o in list_objectives())
        raise RewardModelError(f"no objective or folder named {name!r}; the objectives here: {names}", "fit one with `sia reward fit NAME`")
    shown = folder.name if folder == Path(name) else name  # a path shows as its folder's name
    head, description = _shared_head(folder)
    if head is not None:  # fitted with `sia reward fit`, or the built-in kind: a head on the shared embedding
        w, b = head
        mean, std = reference_scale(_head_key(w, b), lambda texts: embed(texts) @ w + b)
        return Member(shown, weight, mean, std, description, w, b, folder=folder)
    key = f"folder:{file_fingerprint(folder / 'model.onnx')}:{label}"
    scorer = rewards.get(key) if rewards is not None else None
    if scorer is None:
        scorer = OnnxReward(folder, label=label, provider=provider, threads=threads, verbose=verbose)
        if rewards is not None:
            rewards[key] = scorer
    mean, std = reference_scale(key, lambda texts: scorer.score("", texts))
    return Member(shown, weight, mean, std, scorer.objective, scorer=scorer, folder=folder)


def _shared_head(folder: Path) -> tuple[tuple[np.ndarray, float] | None, str | None]:
    """((w, b), description) when the folder's reward is a linear head on the shared embedding (a fitted objective, or
    the built-in kind), else (None, None)."""
    card_file = folder / CARD
    if card_file.exists():
        card = _read_json(card_file)
        try:
            if card.get("head") is not None:
                return (np.asarray(card["head"]["weights"], dtype=np.float64), float(card["head"]["bias"])), card.get("description")
        except (KeyError, TypeError, ValueError) as exc:
            raise RewardModelError(f"{card_file} is not a complete objective card ({exc})", f"delete {folder} and fit it again") from None
    spec = _read_json(folder / "sia.json") if (folder / "sia.json").exists() else {}
    if spec.get("head", {}).get("name") == load_head()["name"]:  # the built-in kind: the shipped head
        head = load_head()
        return (np.asarray(head["weights"], dtype=np.float64), float(head["bias"])), spec.get("objective")
    return None, None


def _read_json(path: Path) -> dict[str, Any]:
    """A card's JSON object, or one line saying the file is broken."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RewardModelError(f"{path} is not readable JSON ({exc})", f"delete {path.parent} and fit or build it again") from None
    if not isinstance(value, dict):
        raise RewardModelError(f"{path} must hold a JSON object", f"delete {path.parent} and fit or build it again")
    return value


class Objectives:
    """A `Scorer` that scores candidates by a weighted mix of objectives, each on its own scale."""

    lm_state: str | None = None

    def __init__(self, specs: Sequence[tuple[str, float]], *, provider: str = "auto", threads: int | None = None, verbose: bool = False,
                 label: str | None = None, progress: Progress | None = None, note: Callable[[str], None] | None = None,
                 embedder: SharedEmbedder | None = None, rewards: dict[Any, OnnxReward] | None = None) -> None:
        if not specs:
            raise ConfigError("a mix needs at least one objective", "pass -r NAME[:WEIGHT]")
        self.embedder = embedder or SharedEmbedder(provider, threads, verbose)  # `embedder`: one for every mix of a server
        self.members = [member(n, w, self.embedder, provider=provider, threads=threads, verbose=verbose, label=label, progress=progress, note=note,
                               rewards=rewards) for n, w in specs]
        seen: dict[str, int] = {}
        for m in self.members:  # one key per member in the trace and stats: `-r kind -r kind:-0.5` shows both
            seen[m.name] = seen.get(m.name, 0) + 1
            if seen[m.name] > 1:
                m.name = f"{m.name}#{seen[m.name]}"
        self.name = "+".join(f"{m.name}:{m.weight:g}" for m in self.members)
        own = [m.scorer for m in self.members if m.scorer is not None]
        self.provider = self.embedder.provider if any(m.w is not None for m in self.members) or not own else own[0].provider
        self.last_parts: list[dict[str, list[float]]] = []  # per junction of the last call: each objective's raw rewards
        self.chosen: str | None = None  # why runtime steers with these objectives' teacher and not a head, if it was asked

    @property
    def objective(self) -> str | None:
        if len(self.members) == 1 and self.members[0].weight == 1:  # one objective as it is: its own words
            return self.members[0].description
        return "; ".join(f"{m.weight:+g} x {m.name} ({m.description or 'no description'})" for m in self.members if m.weight)

    @property
    def shared(self) -> SharedEmbedder | None:
        """The embedder other mixes may share (`Scorer.shared`): the slots run it once over all their junction texts."""
        return self.embedder if any(m.w is not None for m in self.members) else None

    def _combine(self, texts: list[str], sizes: list[int], prompt: str | list[str]) -> list[np.ndarray]:
        heads = [m for m in self.members if m.w is not None and m.weight]
        emb = self.embedder(texts) if heads else None
        total = np.zeros(len(texts))
        parts: dict[str, np.ndarray] = {}
        for m in self.members:
            if not m.weight:
                continue
            r = emb @ m.w + m.b if m.w is not None and emb is not None else m.scorer.score(prompt, texts)  # type: ignore[union-attr]
            parts[m.name] = r
            total += m.weight * m.standardise(r)
        out, self.last_parts, start = [], [], 0
        for n in sizes:
            out.append(total[start : start + n])
            self.last_parts.append({k: [float(x) for x in v[start : start + n]] for k, v in parts.items()})
            start += n
        return out

    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        texts = [t for j in junctions for t in j.texts()]
        return self._combine(texts, [len(j.candidates) for j in junctions], [j.prompt for j in junctions for _ in j.candidates])

    def score_responses(self, prompt: str, prompt_ids: Sequence[int], responses: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
        return self._combine([text for text, _ in responses], [len(responses)], prompt)[0]

    def info(self) -> ScorerInfo:
        details = {"objectives": [{"name": m.name, "weight": m.weight, "mean": m.mean, "std": m.std, "shared_embedder": m.w is not None}
                                  for m in self.members],
                   "scale": f"each objective's raw reward standardised over {len(reference_texts())} shipped reference answers",
                   "chosen": self.chosen}
        single = self.members[0].folder if len(self.members) == 1 else None  # one objective: where it lives (a head's teacher_path)
        return ScorerInfo(kind="objectives", name=self.name, path=str(single) if single is not None else "", provider=self.provider, provider_note=self.embedder.provider_note,
                          objective=self.objective, details=details)

    def reset(self) -> None:
        for m in self.members:
            if m.scorer is not None:
                m.scorer.reset()


class MixCache:
    """The last few mixes a server or a batch worker was asked for, loaded once each (a request names its
    objectives; loading them again per request would cost seconds)."""

    def __init__(self, size: int = 4, **options: Any) -> None:
        self.size, self.options = size, options  # options: Objectives' (provider, threads, verbose, embedder)
        if "embedder" not in options:  # one embedder for all the mixes: one session, and one run per step in the slots
            options["embedder"] = SharedEmbedder(options.get("provider", "auto"), options.get("threads"), options.get("verbose", False))
        options.setdefault("rewards", {})  # one session per reward folder, whatever weights its mixes give it
        self._mixes: dict[tuple[tuple[str, float], ...], Objectives] = {}
        self._lock = threading.Lock()  # requests load from worker threads: one at a time, each mix once

    def get(self, specs: Sequence[tuple[str, float]]) -> Objectives:
        key = tuple((str(n), float(w)) for n, w in specs)
        with self._lock:
            mix = self._mixes.pop(key, None) or Objectives(key, **self.options)
            self._mixes[key] = mix  # most recently used last
            while len(self._mixes) > self.size:
                self._mixes.pop(next(iter(self._mixes)))
            return mix


def as_specs(value: Any, where: str) -> tuple[tuple[str, float], ...]:
    """A request's or a row's `rewards`: a list of {"name", "weight"} objects or of "name[:weight]" strings."""
    if not isinstance(value, list) or not 1 <= len(value) <= 8:
        raise ConfigError(f"{where} must be a list of 1 to 8 objectives", 'write e.g. [{"name": "kind", "weight": 1}, "polite:0.5"]')
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(parse_objective(item))
        elif isinstance(item, dict) and isinstance(item.get("name"), str) and set(item) <= {"name", "weight"}:
            w = item.get("weight", 1.0)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or abs(w) > 1000:
                raise ConfigError(f"{where}: the weight of {item['name']!r} must be a number in [-1000, 1000]", "fix that weight")
            out.append((item["name"], float(w)))
        else:
            raise ConfigError(f"{where}: {str(item)[:60]!r} is not an objective", 'write {"name": "kind", "weight": 1} or "kind:1"')
    return tuple(out)


def load_objectives(specs: Sequence[str | tuple[str, float]], **kwargs: Any) -> Objectives:
    """The Python front door: `load_objectives(["kind", "polite:0.5"])` or `[("kind", 1), ("polite", 0.5)]`."""
    return Objectives([parse_objective(s) if isinstance(s, str) else (s[0], float(s[1])) for s in specs], **kwargs)
