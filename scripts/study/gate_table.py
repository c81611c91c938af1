"""The gate study's table from `sia bench` folders: each arm's judge and reward gain over base and over its matched
random arm, paired per prompt (seeds averaged first), standard errors over prompts.

    sia bench --seeds 3 -n 48 --arms base,sia@0.25,tau@0.25,random@0.25,random-tau@0.25 -o gate-head
    sia bench --seeds 3 -n 48 --arms base,sia@0.25,tau@0.25,random@0.25,random-tau@0.25 --scorer teacher -o gate-teacher
    python scripts/study/gate_table.py head=gate-head teacher=gate-teacher --json scripts/results/gate_study.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sia_local.bench.grid import paired

MATCH = {"sia@0.25": "random@0.25", "tau@0.25": "random-tau@0.25"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=FOLDER")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = {}
    print("| scorer | arm | realised ratio | judge gain over base | over matched random | reward gain over base | over matched random |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.runs:
        label, _, folder = spec.partition("=")
        rows = [json.loads(line) for line in (Path(folder) / "results.jsonl").read_text().splitlines() if line.strip()]
        summary = json.loads((Path(folder) / "summary.json").read_text())
        out[label] = {}
        for arm, v in summary["arms"].items():
            if arm == "base":
                continue
            cell = {"ratio": v["ratio"], "n": v["n"]}
            for key in ("judge", "reward"):
                cell[f"{key}_vs_base"] = paired(rows, arm, "base", key)
                cell[f"{key}_vs_random"] = paired(rows, arm, MATCH[arm], key) if arm in MATCH else None
            out[label][arm] = cell

            def fmt(d: dict | None) -> str:
                return "–" if d is None else f"{d['mean_diff']:+.3f} ± {d['se']:.3f}"

            print(f"| {label} | {arm} | {v['ratio']:.2f} | {fmt(cell['judge_vs_base'])} | {fmt(cell['judge_vs_random'])} | "
                  f"{fmt(cell['reward_vs_base'])} | {fmt(cell['reward_vs_random'])} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
