"""How many distillation prompts a junction head needs: Kendall tau on one fixed test set against the prompt budget.

    sia vm distill -o /tmp/h600 --limit 600          # record once on the largest budget (here: ~10 min)
    python scripts/study/head_budget.py /tmp/h600 --budgets 100,150,300,450,600 --json scripts/results/head_budget.json
    python scripts/study/head_budget.py /tmp/h600 --budgets 100,200,600 --write /tmp/budget   # + each budget's head, to judge with sia bench --vm

The prompts are split by situation once, on the full set; every budget n fits on the train / validation
junctions of the first n prompts only (the shipped prompts are shuffled, so the first n are a random
subset) and is scored on all the test junctions, so the budgets are compared on the same held-out
situations. The layer is chosen per budget as `sia vm distill` chooses it (the smallest tapped layer
within 10 % of the best validation tau).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sia_local.fit import fit_junction_head, split_by_situation
from sia_local.heads import junction_data
from sia_local.heads.head import rms_rows
from sia_local.prompts import load_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a `sia vm distill` output folder (with junctions/)")
    ap.add_argument("--budgets", default="100,150,300,450,600")
    ap.add_argument("--tolerance", type=float, default=0.1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--write", type=Path, default=None, help="also write each budget's head as a head folder DIR/pN (for `sia bench --vm`)")
    args = ap.parse_args()
    run = json.loads((args.folder / "junctions" / "run.json").read_text())
    n_prompts = int(run["n_prompts"])
    prompts = load_prompts(None, default="distill")[:n_prompts]
    parts = split_by_situation(prompts, int(run["seed"]))
    rewards, _, _, owner = junction_data.load(args.folder / "junctions", n_prompts)
    layers = [*run["layers"], None]  # None: the final state
    feats = [junction_data.load_layer(args.folder / "junctions", n_prompts, i).astype(np.float32) for i in range(len(layers))]
    feats = [rms_rows(f) if x is not None else f for f, x in zip(feats, layers)]
    rows = []
    for n in [int(b) for b in args.budgets.split(",")]:
        split = parts[owner].copy()
        split[(owner >= n) & (split != "test")] = "unused"
        fits = {x: fit_junction_head(f, rewards.astype(np.float64), split) for f, x in zip(feats, layers)}
        early = [x for x in layers if x is not None]
        top = max(fits[x]["val"]["kendall"] for x in layers)
        chosen = next((x for x in early if fits[x]["val"]["kendall"] >= (1 - args.tolerance) * top), max(early, key=lambda x: fits[x]["val"]["kendall"]))
        row = {"prompts": n, "train_junctions": int((split == "train").sum()), "val_junctions": int((split == "val").sum()),
               "test_junctions": int((split == "test").sum()), "layer": chosen, "test_kendall": fits[chosen]["test"]["kendall"],
               "test_corr": fits[chosen]["test"]["corr"], "test_same_top": fits[chosen]["test"]["same_top"],
               "final_state_test_kendall": fits[None]["test"]["kendall"],
               "by_layer_test_kendall": {str(x): fits[x]["test"]["kendall"] for x in early}}
        rows.append(row)
        if args.write is not None:
            out = args.write / f"p{n}"
            out.mkdir(parents=True, exist_ok=True)
            card = json.loads((args.folder / "head.json").read_text())
            card.update({"default": "layer", "layer": {**card["layer"], "layer": chosen}, "prompts": n, "budget_of": str(args.folder)})
            (out / "head.json").write_text(json.dumps(card, indent=1))
            np.savez(out / "layer.npz", w=fits[chosen]["w"], b=np.float32(fits[chosen]["b"]), layer=np.int32(chosen))
            np.savez(out / "branch.npz", w=fits[None]["w"], b=np.float32(fits[None]["b"]))
        print(f"{n:5d} prompts, {row['train_junctions']:5d} train junctions: layer {chosen} test tau {row['test_kendall']:.3f} "
              f"(corr {row['test_corr']:.3f}, same top {row['test_same_top']:.2f}); final state {row['final_state_test_kendall']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"folder": str(args.folder), "run": {k: v for k, v in run.items() if k != "prompts"}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
