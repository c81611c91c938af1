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

Judges (`judges.py`): the sentiment lexicons for `kind`; for an objective fitted from examples, a bag-of-words judge on
examples the user gives (`--good` / `--bad`: best the half not used to fit the reward); informal markers and the
formality F-score for `formal`, lexical density for `concise`. A judge where lower is better says so (`lower_is_better`,
a down arrow in the table).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.junction import DEFAULT_GATE
from ..core.steer import Steerer
from ..errors import ConfigError
from .grid import Arm, Judge, distinct_n, objective_prompt_of, paired, run_grid, select_arms

Z95 = 1.96
DEFAULT_SEEDS = 2


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
                        "judges": [{"name": j.name, "auc": getattr(j, "auc", None), "data": getattr(j, "data", None),
                                    "better": "lower" if getattr(j, "lower_is_better", False) else "higher"} for j in judges]},
              "arms": {}, "comparisons": {}}
    if result.summary.get("cost_note"):  # the cost column compares timings taken in different runs: say so beside it
        report["cost_note"] = result.summary["cost_note"]
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
    names = [j["name"] for j in report["setup"]["judges"]]
    judges = [j["name"] + (" (lower is better)" if j.get("better") == "lower" else "") for j in report["setup"]["judges"]]
    metrics = [f"judge:{j}" for j in names] + ["log_perplexity", "distinct_2"]
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
                     + " | ".join(num(v.get(f"judge:{j}")) for j in names) + f" | {num(v['log_perplexity'])} | {num(v['distinct_2'])} |")
    if report.get("cost_note"):
        lines += ["", f"cost × base: {report['cost_note']}"]
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
