"""How much of the teacher's alignment gain a value head keeps, from two `sia bench` folders.

Both folders hold the same prompts, seeds and arms (base, sia@R...): one steered by the teacher reward
(`sia bench ...`), one by a head (`sia bench ... --vm HEAD`). For each ratio, the gain of an arm is its
`key` (the judge by default) minus base on the same prompt, seeds averaged first; the share kept is
mean head gain / mean teacher gain, with a bootstrap interval that resamples prompts (both folders
together, since they share prompts).

    python scripts/study/head_vs_teacher.py scripts/results/heads2/teacher scripts/results/heads2/branch --json scripts/results/heads2/share.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np


def per_prompt(folder: Path, key: str) -> dict[str, dict[int, float]]:
    """arm -> prompt -> mean of `key` over that prompt's seeds."""
    acc: dict[str, dict[int, list[float]]] = {}
    for line in (folder / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        acc.setdefault(row["arm"], {}).setdefault(row["prompt_index"], []).append(float(row[key]))
    return {arm: {p: statistics.fmean(v) for p, v in by.items()} for arm, by in acc.items()}


def gains(table: dict[str, dict[int, float]], arm: str, prompts: list[int]) -> np.ndarray:
    return np.array([table[arm][p] - table["base"][p] for p in prompts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher", type=Path)
    ap.add_argument("head", type=Path)
    ap.add_argument("--key", default="judge", help="judge or reward (the teacher's score)")
    ap.add_argument("--boot", type=int, default=4000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t, h = per_prompt(args.teacher, args.key), per_prompt(args.head, args.key)
    arms = sorted(a for a in t if a.startswith("sia@") and a in h)
    rng = np.random.default_rng(0)
    out = {}
    print(f"{args.key}: gain over base, mean ± SE over prompts; share = head gain / teacher gain (bootstrap 90 % interval)")
    for arm in [*arms, "pooled"]:
        names = arms if arm == "pooled" else [arm]
        prompts = sorted(set.intersection(*(set(t[a]) & set(h[a]) for a in names)) & set(t["base"]) & set(h["base"]))
        gt = np.mean([gains(t, a, prompts) for a in names], axis=0)
        gh = np.mean([gains(h, a, prompts) for a in names], axis=0)
        idx = rng.integers(0, len(prompts), size=(args.boot, len(prompts)))
        mt, mh = gt[idx].mean(1), gh[idx].mean(1)
        ok = mt > 0
        share = mh[ok] / mt[ok]
        lo, hi = (np.percentile(share, [5, 95]) if ok.mean() > 0.5 else (float("nan"), float("nan")))
        se = lambda g: float(g.std(ddof=1) / np.sqrt(len(g)))  # noqa: E731
        out[arm] = {"prompts": len(prompts), "teacher_gain": float(gt.mean()), "teacher_se": se(gt), "head_gain": float(gh.mean()),
                    "head_se": se(gh), "share": float(gh.mean() / gt.mean()) if gt.mean() else float("nan"),
                    "share_90": [float(lo), float(hi)], "boot_teacher_gain_positive": float(ok.mean())}
        r = out[arm]
        print(f"{arm:8} {r['prompts']:3d} prompts  teacher {r['teacher_gain']:+.3f} ± {r['teacher_se']:.3f}  "
              f"head {r['head_gain']:+.3f} ± {r['head_se']:.3f}  share {r['share']:.0%} [{lo:.0%}, {hi:.0%}]")
    if args.json:
        args.json.write_text(json.dumps({"key": args.key, "teacher": str(args.teacher), "head": str(args.head), "arms": out}, indent=1))


if __name__ == "__main__":
    main()
