"""What a weight of 1 means: the reward spreads a junction's k candidates as much as the model's own logits do.

s = z + w·r moves the draw by how much r differs *between the k candidates of a junction*, not by r's scale over
whole answers. Two objectives on one scale over reference answers can differ four-fold there (on SmolLM2 the shipped
`formal` head spreads its candidates 0.09, `kind` 0.38, the model's own top-k logits 0.86 nats), so at one weight
`kind` changed 31 % of junction picks and `formal` 9 %, and `formal` did not move its judge. So each scorer is
measured once per model and k: the calibration prompts decoded at the default ratio with the reward scored but not
applied (weight 0), giving the root-mean-square over junctions of the reward's standard deviation among the k
candidates (per unit of mix weight) and of the model's own top-k logits'. The steering loop then uses
s = z + w · m · r with m = JUNCTION_SPREAD x logit spread / reward spread, so a weight means the same for every
objective on a model. Cached beside tau; `--strength reference` keeps the raw scale (each objective standardised
over shipped reference answers, `rewards/mix.py`). JUNCTION_SPREAD was chosen from an effect / fluency curve on
the heldout and bench prompts (docs/eval.md, `scripts/study/strength_curve.py`): the largest spread tried at which no
built-in objective's answers became less likely under the base model (log-perplexity within 2 SE of unsteered).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import ContextLengthError
from ..paths import cache_dir, write_atomic
from .calibrate import TOKENS_PER_PROMPT, calibration_prompts
from .config import SteerConfig

if TYPE_CHECKING:
    from .steer import Steerer

STRENGTH_VERSION = 1
JUNCTION_SPREAD = 1.0  # weight 1: the reward spreads the candidates as much as the model's own top-k logits do (the curve: docs/eval.md)
MEASURE_RATIO = 0.2  # junctions measured where the default gate puts them, whatever gate a request uses
MIN_JUNCTIONS = 20  # fewer (a model that stops at once): not measured, weight means the raw scale
MULTIPLIER_RANGE = (0.01, 100.0)  # a reward that hardly varies among candidates is not blown up into noise


@dataclass(frozen=True)
class Strength:
    """One scorer's measured strength on one model and k."""

    multiplier: float  # m in s = z + w·m·r (1.0 when not measured)
    reward_spread: float  # RMS over junctions of std(r) among the k candidates, per unit of mix weight
    logit_spread: float  # RMS over junctions of std(z) among the k candidates (nats)
    junctions: int
    change_rate: float | None  # expected share of junction picks the reward changes at weight 1, T = 1 (shared uniform)
    seconds: float = 0.0  # what measuring cost (0 when read from the cache)
    note: str | None = None  # why the multiplier is 1 or clamped, when it is


def measure(steerer: "Steerer", top_k: int, progress: Callable[[int, int], None] | None = None) -> tuple[Strength, dict[str, Any]]:
    """Decode the calibration prompts with `steerer`'s scorer scored and not applied; the strength, and the junctions'
    base log-probabilities and rewards (per unit of mix weight) it was derived from."""
    cfg = SteerConfig(gate="entropy", ratio=MEASURE_RATIO, top_k=top_k, weight=0.0, max_tokens=TOKENS_PER_PROMPT, trace=True,
                      logprobs=True, strength="reference")  # logprobs: the candidates' log p at full precision
    probe = steerer.with_scorer(steerer.scorer)
    probe.config = cfg
    start = time.perf_counter()
    logp: list[list[float]] = []
    rewards: list[list[float]] = []
    prompts = calibration_prompts()
    complete = True  # every prompt decoded to its length or its end: what a cache entry must be (not a tiny context's share)
    unit = mix_weight(steerer.scorer)
    for i, prompt in enumerate(prompts):
        try:
            g = probe.generate(prompt, seed=i, raw=not steerer.lm.has_chat_template)  # as calibration decodes them
        except ContextLengthError:
            complete = False
            continue  # a context smaller than this prompt (a tiny --ctx-size): measured on the prompts that fit
        complete = complete and g.stats.finish_reason != "context"
        for info in g.trace or ():
            if info.junction and info.rewards is not None and info.top_logprobs is not None:
                logp.append([round(float(v), 5) for v in info.top_logprobs])  # over the vocabulary: a constant off the k's own, same spread
                rewards.append([round(float(v) / unit, 5) for v in info.rewards])
        if progress:
            progress(i + 1, len(prompts))
    data = {"logp": logp, "rewards": rewards, "complete": complete}
    return strength_from(logp, rewards, time.perf_counter() - start), data


def strength_from(logp: list[list[float]], rewards: list[list[float]], seconds: float = 0.0) -> Strength:
    """The multiplier that makes a weight of 1 spread the candidates JUNCTION_SPREAD x as much as the logits do, from the
    junctions' base log-probabilities (z up to a constant) and rewards."""
    r = float(np.sqrt(np.mean([np.var(x) for x in rewards]))) if rewards else 0.0
    z = float(np.sqrt(np.mean([np.var(x) for x in logp]))) if logp else 0.0
    n = len(rewards)
    if n < MIN_JUNCTIONS or r <= 0.0 or z <= 0.0:
        why = f"only {n} junctions on the calibration prompts" if n < MIN_JUNCTIONS else "the reward does not vary among the candidates"
        return Strength(1.0, r, z, n, None, seconds, f"not measured ({why}): weights are on the raw scale")
    m = JUNCTION_SPREAD * z / r
    lo, hi = MULTIPLIER_RANGE
    note = f"clamped from {m:.3g}: the reward barely varies among the candidates" if not lo <= m <= hi else None
    m = float(min(max(m, lo), hi))
    rate = float(np.mean([change_probability(np.asarray(a), np.asarray(a) + m * np.asarray(b)) for a, b in zip(logp, rewards)]))
    return Strength(m, r, z, n, rate, seconds, note)


def change_probability(base: np.ndarray, steered: np.ndarray) -> float:
    """The chance that the steered draw picks another candidate than the base draw when both invert one uniform (as the
    loop does, `junction.pick`), T = 1: 1 - the overlap of each candidate's two CDF intervals."""
    p, q = np.exp(base - base.max()), np.exp(steered - steered.max())
    cp, cq = np.cumsum(p / p.sum()), np.cumsum(q / q.sum())
    lo = np.maximum(np.concatenate([[0.0], cp[:-1]]), np.concatenate([[0.0], cq[:-1]]))
    return float(1.0 - np.clip(np.minimum(cp, cq) - lo, 0.0, None).sum())


def mix_weight(scorer: Any) -> float:
    """The total |weight| inside a scorer that mixes objectives (1 for one objective as it is): measured spreads are per
    unit of it, so `-r formal:2` still steers twice as hard as `-r formal`."""
    weights = [w for _, w in getattr(scorer, "heads", ())] or [m.weight for m in getattr(scorer, "members", ())]
    total = float(sum(abs(w) for w in weights))
    return total if total > 0 else 1.0


def scorer_key(scorer: Any) -> str:
    """What identifies a scorer's scoring: its name and details, and the size and time of the files of every folder they
    name (an objective fitted again under the same name is measured again)."""
    info = scorer.info()
    parts: list[Any] = [info.kind, info.name, info.path, info.details]
    for text in _strings(info.details) + [info.path]:
        p = Path(text)
        if text and p.is_absolute() and p.exists():
            files = sorted(p.iterdir()) if p.is_dir() else [p]
            parts += [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return json.dumps(parts, sort_keys=True, default=str)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def cached(steerer: "Steerer", top_k: int, progress: Callable[[int, int], None] | None = None) -> Strength:
    """The scorer's strength on this model and k: from the cache, or measured once and kept (with the junctions it came
    from, so a new JUNCTION_SPREAD needs no new decoding)."""
    file = _file(steerer, top_k)
    try:
        kept = json.loads(file.read_text(encoding="utf-8"))
        return strength_from(kept["logp"], kept["rewards"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not measured yet, or a damaged entry: measured again
    found, data = measure(steerer, top_k, progress)
    if not data["complete"]:
        return found  # measured in a context too small for the calibration prompts: for this steerer only, never cached
    file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(file, json.dumps({"model": str(steerer.lm.path), "top_k": top_k, "scorer": steerer.scorer.info().name,
                                   "key": scorer_key(steerer.scorer)[:400], "seconds": round(found.seconds, 2), **data}))
    return found


def measured() -> list[dict[str, Any]]:
    """Every strength in the cache, for `sia info`: model, k, scorer, multiplier, expected change rate at weight 1."""
    out = []
    for file in sorted((cache_dir() / "calibration").glob("*-strength-*.json")):
        try:
            kept = json.loads(file.read_text(encoding="utf-8"))
            s = strength_from(kept["logp"], kept["rewards"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append({"model": Path(kept["model"]).name, "top_k": kept["top_k"], "scorer": kept["scorer"], "multiplier": round(s.multiplier, 3),
                    "change_rate_at_weight_1": None if s.change_rate is None else round(s.change_rate, 3), "junctions": s.junctions,
                    "note": s.note})
    return out


def is_measured(steerer: "Steerer", top_k: int) -> bool:
    return _file(steerer, top_k).exists()


def _file(steerer: "Steerer", top_k: int) -> Path:
    key = json.dumps([STRENGTH_VERSION, MEASURE_RATIO, steerer.lm.fingerprint(), top_k, scorer_key(steerer.scorer),
                      calibration_prompts(), TOKENS_PER_PROMPT])
    return cache_dir() / "calibration" / f"{steerer.lm.path.stem}-strength-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
