"""`sia eval`: does steering move answers towards *your* objective, on prompts that chose nothing, by judges that are not
the reward?

It is `sia bench`'s grid underneath (`grid.run_grid`: rows decoded by `sia batch` workers, resumable, paired per
prompt and seed) with what a user needs to trust an answer instead of a cost grid: the shipped `eval` prompts (600,
situations no other set mentions) or the user's; the arms a user would compare -- base, a system prompt asking for
the objective, SIA at the ratio, random gating at the ratio SIA realised, dense steering, and prompt + SIA; at least
two seeds; several judges, none of them the steering reward; fluency (the base model's perplexity of the answer,
distinct-2); and for every comparison the paired difference with its 95 % interval (1.96 SE over prompts, seeds
averaged within a prompt first), as a table, JSON and a plot.

With a control vector (`--vector NAME[:scale]`, or the objective's own when it has one) the arms `vector` and
`vector + SIA` join: the cheap alternative a user would reach for, and the two together.

Judges: for a positive tone (`kind`), the sentiment lexicons that are installed (VADER, TextBlob, AFINN: the
`judges` extra); for an objective fitted from examples, a bag-of-words judge fitted on examples the user gives
(`--good` / `--bad`: best the half not used to fit the reward, so the judge shares neither features nor data with
it); for the built-in `concise` and `formal`, a bag-of-words judge on their shipped examples (the reward's own
data, other features: said in the output).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.junction import DEFAULT_GATE
from ..core.steer import Steerer
from ..errors import ConfigError, MissingPackageError
from .grid import Arm, Judge, VaderJudge, distinct_n, objective_prompt_of, paired, run_grid, select_arms

Z95 = 1.96
DEFAULT_SEEDS = 2


class TextBlobJudge:
    """TextBlob's pattern-lexicon polarity (-1 .. 1)."""

    name = "textblob"

    def __init__(self) -> None:
        try:
            from textblob import TextBlob
        except ImportError:
            raise MissingPackageError("the TextBlob judge needs the textblob package", 'pip install "sia-local[judges]"') from None
        self._blob = TextBlob

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]:
        return [float(self._blob(t).sentiment.polarity) for t in texts]


class AfinnJudge:
    """AFINN's word valences (-5 .. 5), summed and divided by the words: a long answer is not kinder for its length."""

    name = "afinn"

    def __init__(self) -> None:
        try:
            from afinn import Afinn
        except ImportError:
            raise MissingPackageError("the AFINN judge needs the afinn package", 'pip install "sia-local[judges]"') from None
        self._afinn = Afinn()

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]:
        return [float(self._afinn.score(t)) / max(1, len(t.split())) for t in texts]


_WORD = re.compile(r"[a-z']+")


def _grams(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class BowJudge:
    """A bag-of-words judge of an objective from good and bad examples: a logistic model on word and word-pair
    frequencies (a vocabulary of those seen at least twice), its C chosen and its AUC reported by nested
    cross-validation. Its features share nothing with the reward's sentence embedding; `data` says whether its
    examples are the reward's own."""

    def __init__(self, good: Sequence[str], bad: Sequence[str], *, name: str = "bow", data: str = "") -> None:
        from ..rewards.objectives import MIN_PER_SIDE, fit_classifier

        if min(len(good), len(bad)) < MIN_PER_SIDE:
            raise ConfigError(f"the bag-of-words judge has {len(good)} good and {len(bad)} bad examples; it needs {MIN_PER_SIDE} of each",
                              "pass more examples with --good / --bad")
        counts = Counter(g for t in [*good, *bad] for g in set(_grams(t)))
        self.vocab = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= 2))}
        raw = self._features([*good, *bad])
        # standardised columns: word frequencies are hundredths, so without this the chosen penalty shrinks every
        # weight towards 0 and the judge's scores differ by ten-thousandths (its ranking intact, its scale unreadable)
        self.mean, self.std = raw.mean(axis=0), raw.std(axis=0) + 1e-9
        x = (raw - self.mean) / self.std
        y = np.r_[np.ones(len(good)), np.zeros(len(bad))]
        self.fit = fit_classifier(x, y)
        self.name, self.data = name, data
        self.auc = self.fit.cv_mean

    def _features(self, texts: Sequence[str]) -> np.ndarray:
        x = np.zeros((len(texts), len(self.vocab)))
        for row, text in enumerate(texts):
            grams = _grams(text)
            for g in grams:
                col = self.vocab.get(g)
                if col is not None:
                    x[row, col] += 1.0
            x[row] /= max(1, len(grams))
        return x

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]:
        """The log-odds that each text is a good example (standardised word and word-pair frequencies)."""
        return [float(v) for v in ((self._features(texts) - self.mean) / self.std) @ self.fit.w + self.fit.b]


def tone_judges() -> list[Judge]:
    """The sentiment lexicons that are installed (at least one, else one line saying what to install)."""
    judges: list[Judge] = []
    for make in (VaderJudge, TextBlobJudge, AfinnJudge):
        try:
            judges.append(make())
        except (ConfigError, MissingPackageError):
            continue
    if not judges:
        raise MissingPackageError("judging a positive tone needs a sentiment lexicon (VADER, TextBlob or AFINN)", 'pip install "sia-local[judges]"')
    return judges


def judges_for(steerer: Steerer, objective: str | None, good: Sequence[str] = (), bad: Sequence[str] = ()) -> list[Judge]:
    """The independent judges of `objective` (the name the user steers with): the user's examples make a bag-of-words
    judge; `kind` gets the lexicons; `concise` / `formal` a bag-of-words judge on their shipped examples."""
    if good or bad:
        return [BowJudge(good, bad, name=f"bow:{objective or 'objective'}", data="your examples")]
    name = (objective or "kind").split(":")[0]
    if name == "kind" or "positive, kind tone" in (getattr(steerer.scorer, "objective", None) or ""):
        return tone_judges()
    if name in ("concise", "formal"):
        from importlib import resources

        rows = [json.loads(line) for line in resources.files("sia_local.data").joinpath("objectives", f"{name}.jsonl").read_text(
            encoding="utf-8").splitlines() if line.strip()]
        return [BowJudge([r["text"] for r in rows if r["label"] == "good"], [r["text"] for r in rows if r["label"] == "bad"], name=f"bow:{name}",
                         data="the reward's own examples (other features)")]
    raise ConfigError(f"no independent judge is known for the objective {name!r}", "pass --good FILE --bad FILE (examples the reward was not "
                      "fitted on) for a bag-of-words judge, or --judge DIR (a reward folder)")


def steered_arm(ratio: float) -> str:
    """The arm of the default gate at ratio R: `sia@R` (the paper's entropy gate) or `GATE@R`."""
    return f"sia@{ratio:g}" if DEFAULT_GATE == "entropy" else f"{DEFAULT_GATE}@{ratio:g}"


def eval_arms(ratio: float, names: Sequence[str] | None = None, max_tokens: int = 48, *, vector: bool = False) -> list[Arm]:
    """base, prompt, the default gate at R, random gating at the ratio it realised, dense, prompt + the gate, and with a
    control vector vector and vector + the gate; or the named ones."""
    sia = steered_arm(ratio)
    default = ["base", "prompt", sia, chance_arm(sia), "dense", f"prompt+{sia}"]
    return select_arms(list(names) if names else default + (["vector", f"vector+{sia}"] if vector else []), max_tokens)


def comparisons(arms: Sequence[Arm], ratio: float) -> list[tuple[str, str]]:
    """The paired comparisons a user asks about, among the arms that ran."""
    names = {a.name for a in arms}
    sia = steered_arm(ratio)
    rnd, both, vec = chance_arm(sia), f"prompt+{sia}", f"vector+{sia}"
    wanted = [(sia, "base"), ("prompt", "base"), (sia, "prompt"), (both, "prompt"), (sia, rnd), ("dense", "base"), (both, "base"),
              ("vector", "base"), (sia, "vector"), (vec, "vector")]
    gates = sorted(n for n in names if "@" in n and not n.startswith(("random", "prompt", "vector")))  # the gate study: each gate at each ratio
    wanted += [pair for n in gates for pair in ((n, "base"), (n, chance_arm(n)), (n, sia), (n, f"sia@{ratio:g}"))]
    return list(dict.fromkeys((a, b) for a, b in wanted if a in names and b in names and a != b))


def chance_arm(arm: str) -> str:
    """The random arm at the ratio `arm` realised: random@R for sia@R, random-GATE@R for GATE@R."""
    kind, _, ratio = arm.partition("@")
    return f"random@{ratio}" if kind == "sia" else f"random-{kind}@{ratio}"


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    report: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def evaluate(steerer: Steerer, prompts: Sequence[str], arms: Sequence[Arm], judges: Sequence[Judge], out_dir: Path, *, ratio: float,
             seeds: Sequence[int] = tuple(range(DEFAULT_SEEDS)), objective_prompt: str | None = None,
             progress: Callable[[int, int, str], None] | None = None, **grid: Any) -> EvalResult:
    """Run (or resume) the arms over the prompts and seeds, judge every answer with every judge, and write eval.json,
    eval.md and eval.png beside the grid's results.jsonl and summary.json. `grid`: run_grid's worker settings."""
    if not judges:
        raise ConfigError("sia eval needs at least one judge", "pass --good/--bad or install the judges extra")
    if any(a.prompted for a in arms):
        objective_prompt = objective_prompt or objective_prompt_of(steerer.scorer)
    result = run_grid(steerer, judges[0], prompts, arms, out_dir, seeds=seeds, progress=progress, plots=False, objective_prompt=objective_prompt,
                      **grid)
    asked = {a.name for a in arms}  # a folder may hold more (other seeds, arms, prompts): the report is of what was asked
    rows = [r for r in result.rows if r["seed"] in seeds and r["prompt_index"] < len(prompts) and r["arm"] in asked]
    by_key: dict[str, list[float]] = {}
    for judge in judges:  # every judge scores every answer (lexicons and a linear model: seconds for thousands)
        scores = judge(prompts[0] if prompts else "", [r["text"] for r in rows])
        for r, s in zip(rows, scores):
            r[f"judge:{judge.name}"] = s
        by_key[judge.name] = scores
    for r in rows:
        r["log_perplexity"] = math.log(r["perplexity"]) if r.get("perplexity") else None
        r["distinct_2"] = distinct_n([r["text"]], 2) if len(r["text"].split()) > 2 else None
    metrics = [f"judge:{j.name}" for j in judges] + ["log_perplexity", "distinct_2"]
    report = {"setup": {**result.summary.get("setup", {}), "seeds": list(seeds), "objective_prompt": objective_prompt,
                        "judges": [{"name": j.name, "auc": getattr(j, "auc", None), "data": getattr(j, "data", None)} for j in judges]},
              "arms": {}, "comparisons": {}}
    for arm in arms:
        rs = [r for r in rows if r["arm"] == arm.name]
        if not rs:
            continue
        junctions = sum(r["junctions"] for r in rs)
        cost = result.summary["arms"].get(arm.name, {}).get("cost_vs_base")
        tokens = sum(r["tokens"] for r in rs)
        report["arms"][arm.name] = {"rows": len(rs), "ratio": float(np.mean([r["ratio"] for r in rs])),
                                    "scored": sum(r.get("reward_calls", 0) for r in rs) / tokens if tokens else 0.0,  # steps scored a token
                                    "change_rate": sum(r["changed"] for r in rs) / junctions if junctions else None, "cost_vs_base": cost,
                                    **{m: _mean([r.get(m) for r in rs]) for m in metrics}}
    for a, b in comparisons(arms, ratio):
        cell = {}
        for m in metrics:
            d = paired([r for r in rows if r.get(m) is not None], a, b, m)
            if d is not None:
                d["ci95"] = [d["mean_diff"] - Z95 * d["se"], d["mean_diff"] + Z95 * d["se"]]
                d["clear"] = abs(d["mean_diff"]) > 2 * d["se"]
            cell[m] = d
        report["comparisons"][f"{a} vs {b}"] = cell
    files = [out_dir / "results.jsonl", out_dir / "summary.json", out_dir / "eval.json", out_dir / "eval.md"]
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1))
    (out_dir / "eval.md").write_text(markdown(report) + "\n")
    try:
        files.append(plot(report, out_dir / "eval.png"))
    except ImportError:
        pass  # the table and the JSON stand without matplotlib
    return EvalResult(rows, report, files)


def _mean(values: Sequence[Any]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _cell(d: dict[str, Any] | None, digits: int = 3) -> str:
    if d is None:
        return "–"
    lo, hi = d["ci95"]
    return f"{d['mean_diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]" + (" **" if d["clear"] else "")


def markdown(report: dict[str, Any]) -> str:
    """The comparisons × judges table (paired differences, 95 % intervals; ** = more than 2 SE from 0), then the arms."""
    judges = [j["name"] for j in report["setup"]["judges"]]
    metrics = [f"judge:{j}" for j in judges] + ["log_perplexity", "distinct_2"]
    head = "| comparison | " + " | ".join(judges) + " | base log-perplexity | distinct-2 | prompts |"
    lines = [head, "|" + "---|" * (len(metrics) + 2)]
    for name, cell in report["comparisons"].items():
        n = next((d["prompts"] for d in cell.values() if d), 0)
        lines.append(f"| {name} | " + " | ".join(_cell(cell.get(m)) for m in metrics) + f" | {n} |")
    lines += ["", "| arm | rows | realised ratio | scored a token | change rate | cost × base | " + " | ".join(judges) + " | log-perplexity | distinct-2 |",
              "|" + "---|" * (len(judges) + 8)]
    for name, v in report["arms"].items():
        def num(x: Any, fmt: str = ".3f") -> str:
            return "–" if x is None else format(x, fmt)
        lines.append(f"| {name} | {v['rows']} | {v['ratio']:.2f} | {num(v.get('scored'), '.2f')} | {num(v['change_rate'], '.2f')} | {num(v['cost_vs_base'], '.2f')} | "
                     + " | ".join(num(v.get(f"judge:{j}")) for j in judges) + f" | {num(v['log_perplexity'])} | {num(v['distinct_2'])} |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    """One panel per judge: each comparison's paired difference with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [f"judge:{j['name']}" for j in report["setup"]["judges"]] + ["log_perplexity"]
    names = list(report["comparisons"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 0.5 * len(names) + 1.5), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for i, name in enumerate(names):
            d = report["comparisons"][name].get(m)
            if d is None:
                continue
            lo, hi = d["ci95"]
            ax.errorbar(d["mean_diff"], i, xerr=[[d["mean_diff"] - lo], [hi - d["mean_diff"]]], fmt="o", capsize=3,
                        color="tab:green" if d["clear"] else "tab:gray")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(m.replace("judge:", ""), fontsize=9)
    axes[0][0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle("paired differences, 95 % intervals (green: > 2 SE)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
