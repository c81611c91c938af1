"""The gate study's table from `sia eval` folders: per model (or objective) and gate, the realised ratio, the steps
scored a token, the change rate, the cost, and each judge's paired gain over base and over random gating at the
ratio that gate realised (`random@R` for `sia@R`, `random-GATE@R` for `GATE@R`), 95 % intervals; ** > 2 SE.

    sia eval --seeds 2 -n 48 --parallel 4 --arms base,sia@0.2,random@0.2,tau@0.2,random-tau@0.2,value@0.2,random-value@0.2 -o gate-smollm2
    sia eval -m gemma3-270m:q4_k_m --seeds 2 -n 48 --parallel 4 --arms base,sia@0.2,random@0.2,value@0.2,random-value@0.2 -o gate-gemma
    python scripts/study/gate_study.py SmolLM2=gate-smollm2 "Gemma 3=gate-gemma" --json scripts/results/gate_study_eval.json

With `--plot FILE`: the effect / cost curve, each gate's first-judge gain over base against the steps it scored per
token (what a junction costs), one line per gate over the ratios the folders hold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sia_local.bench.eval import chance_arm


def cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    return f"{d['mean_diff']:+.3f} ± {1.96 * d['se']:.3f}" + ("**" if abs(d["mean_diff"]) > 2 * d["se"] else "")


def table(runs: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    lines, out = [], {}
    judges = sorted({j["name"] for report in runs.values() for j in report["setup"]["judges"]},
                    key=lambda n: ["vader", "textblob", "afinn"].index(n) if n in ("vader", "textblob", "afinn") else 9)
    lines.append("| run | gate arm | prompts × seeds | ratio | scored a token | change rate | cost × base | "
                 + " | ".join(f"{j} − base | {j} − random" for j in judges) + " | log-ppl − base |")
    lines.append("|" + "---|" * (7 + 2 * len(judges) + 1))
    for label, report in runs.items():
        comps, arms = report["comparisons"], report["arms"]
        out[label] = {}
        for arm in arms:
            if arm == "base" or arm.startswith("random") or "@" not in arm or arm.startswith(("prompt", "vector")):
                continue
            rnd = chance_arm(arm)
            vs_base, vs_random = comps.get(f"{arm} vs base", {}), comps.get(f"{arm} vs {rnd}", {})
            a = arms[arm]
            row = {"arm": arm, "matched": rnd if rnd in arms else None, **{k: a.get(k) for k in ("rows", "ratio", "scored", "change_rate", "cost_vs_base")},
                   "vs_base": vs_base, "vs_random": vs_random}
            out[label][arm] = row
            n = next((d["prompts"] for d in vs_base.values() if d), 0)
            seeds = len(report["setup"].get("seeds", []))

            def num(x: Any, fmt: str = ".2f") -> str:
                return "–" if x is None else format(x, fmt)
            lines.append(f"| {label} | {arm} | {n} × {seeds} | {num(a.get('ratio'))} | {num(a.get('scored'))} | {num(a.get('change_rate'))} | "
                         f"{num(a.get('cost_vs_base'))} | " + " | ".join(f"{cell(vs_base.get('judge:' + j))} | {cell(vs_random.get('judge:' + j))}" for j in judges)
                         + f" | {cell(vs_base.get('log_perplexity'))} |")
    return lines, out


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False)
    for ax, (label, report) in zip(axes[0], runs.items()):
        judge = "judge:" + report["setup"]["judges"][0]["name"]
        lines: dict[str, list[tuple[float, float, float, str]]] = {}
        for arm, a in report["arms"].items():
            d = report["comparisons"].get(f"{arm} vs base", {}).get(judge)
            if d is None or arm.startswith(("prompt", "vector")):
                continue
            kind = arm.partition("@")[0]
            lines.setdefault(kind, []).append((a.get("scored") or 0.0, d["mean_diff"], 1.96 * d["se"], arm))
        for kind, points in sorted(lines.items()):
            points.sort()
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3, label=kind)
            for x, y, _, arm in points:
                ax.annotate(arm.partition("@")[2], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("steps scored per token (the reward's cost)")
        ax.set_ylabel(f"{judge.removeprefix('judge:')} gain over base (95 %)")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=FOLDER (a `sia eval` output folder)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="the effect / cost curve (PNG)")
    args = ap.parse_args()
    runs = {}
    for spec in args.runs:
        label, _, folder = spec.partition("=")
        runs[label] = json.loads((Path(folder) / "eval.json").read_text())
    lines, out = table(runs)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
