"""Which tokens each gate steers, on the same text: the ratio control vs the paper's fixed tau vs chance.

    sia bench --seeds 3 -n 48 --arms base,sia@0.25,tau@0.25,random@0.25 -o bench-gate   # any run with a base arm
    python scripts/study/gate_overlap.py bench-gate --ratio 0.25 --json scripts/results/gate_overlap.json

On the base arm's unsteered answers (their per-step top-k entropies are in results.jsonl), the gates are
run offline over the same entropy sequences, so they choose among the same tokens: the fixed tau
calibrated for the ratio (H >= tau), the bounded ratio control started at that tau (`ControlledEntropyGate`:
tau_t moves with the junction surplus, within [certain_entropy(k), 0.98 ln k)), and random gating at the
control's realised ratio. Reported: the realised ratio of each, the Jaccard overlap of their junction
sets, the mean entropy of the steps each picks, and how often the control's floor (the p1 > 0.99 rule)
was what kept a step from being a junction.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from sia_local.core.junction import ControlledEntropyGate, certain_entropy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    summary = json.loads((args.folder / "summary.json").read_text())
    tau = next(v["tau"] for name, v in summary["arms"].items() if name == f"sia@{args.ratio:g}")
    rows = [json.loads(line) for line in (args.folder / "results.jsonl").read_text().splitlines() if line.strip()]
    base = [r for r in rows if r["arm"] == "base" and r.get("entropies")]
    floor = certain_entropy(args.k)
    stats: dict[str, list[float]] = {k: [] for k in ("fixed_ratio", "control_ratio", "random_ratio", "jaccard_control_fixed",
                                                     "jaccard_control_random", "jaccard_fixed_random", "h_fixed", "h_control", "h_random", "h_all")}
    floor_held = floor_steps = 0
    rng = np.random.default_rng(0)
    for r in base:
        h = np.asarray(r["entropies"], dtype=np.float64)
        fixed = h >= tau
        gate = ControlledEntropyGate(tau, args.ratio, k=args.k)
        control = np.zeros(len(h), dtype=bool)
        for i, x in enumerate(h):
            raw = gate.tau + gate.gain * gate.error  # the threshold without its bounds
            floor_steps += int(raw < floor)  # the floor is in force at this step
            floor_held += int(raw <= x < floor)  # a step the unbounded control would have steered and the p1 > 0.99 rule kept
            control[i] = gate(i, float(x))
        random = rng.random(len(h)) < (control.mean() if len(h) else 0.0)
        for name, sel in (("fixed", fixed), ("control", control), ("random", random)):
            stats[f"{name}_ratio"].append(float(sel.mean()) if len(h) else 0.0)
            if sel.any():
                stats[f"h_{name}"].append(float(h[sel].mean()))
        stats["h_all"].append(float(h.mean()) if len(h) else 0.0)
        for a, b, key in ((control, fixed, "jaccard_control_fixed"), (control, random, "jaccard_control_random"), (fixed, random, "jaccard_fixed_random")):
            union = (a | b).sum()
            if union:
                stats[key].append(float((a & b).sum() / union))
    result = {"folder": str(args.folder), "ratio": args.ratio, "tau": tau, "answers": len(base), "certain_entropy_floor": floor,
              **{k: statistics.fmean(v) for k, v in stats.items() if v},
              "steps_with_the_floor_in_force": floor_steps, "steps_the_floor_kept_unsteered": floor_held, "steps": int(sum(len(r["entropies"]) for r in base))}
    for k, v in result.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
