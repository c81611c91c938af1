"""Make the junction heads shipped in the package (sia_local/data/heads/), reproducibly.

    python scripts/data/make_shipped_heads.py                                   # every bundled model x built-in objective
    python scripts/data/make_shipped_heads.py --model gemma3-270m --objective formal --limit 300

Each head is `sia vm distill -r OBJECTIVE -m MODEL --limit N --seed S` (the teacher: the objective on its
reference scale; junctions recorded on the first N shipped distillation prompts), written into a work
folder (resumable) and then copied into the package: head.json (the card, with this command and the
seed), layer.npz (the early-exit head) and branch.npz (the final-state head, for builds without layer
taps). A few kilobytes each; `runtime` picks them by the model's fingerprint and the objective's key.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from sia_local.heads.distill import distill_head
from sia_local.heads.store import BUDGET_PROMPTS, identity_of, shipped_root
from sia_local.prompts import load_prompts
from sia_local.rewards.mix import Objectives
from sia_local.runtime import LMSettings, load_lm

MODELS = {"smollm2-135m": None, "gemma3-270m": "gemma3-270m:q4_k_m"}  # slug -> --model (None: the default SmolLM2)
OBJECTIVES = ("kind", "concise", "formal")
KEEP = ("layer.npz", "branch.npz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(MODELS), action="append", help="[default: all]")
    ap.add_argument("--objective", choices=OBJECTIVES, action="append", help="[default: all]")
    ap.add_argument("--limit", type=int, default=BUDGET_PROMPTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("shipped-heads-work"), help="where the junctions are recorded (resumable)")
    args = ap.parse_args()
    prompts = load_prompts(None, default="distill")[: args.limit]
    for slug in args.model or list(MODELS):
        lm = load_lm(LMSettings(model=MODELS[slug]), hidden=True)
        for objective in args.objective or list(OBJECTIVES):
            started = time.perf_counter()
            identity = identity_of(objective, lm.path, len(prompts), args.seed)
            assert identity is not None
            identity["made_with"] = (f"python scripts/data/make_shipped_heads.py --model {slug} --objective {objective} --limit {args.limit} "
                                     f"--seed {args.seed}  (= {identity['made_with']})")
            work = args.work / f"{slug}-{objective}"
            card = distill_head(lm, Objectives([(objective, 1.0)]), prompts, work, samples_per_prompt=0, seed=args.seed, identity=identity,
                                progress=lambda d, t, what: print(f"\r{slug} {objective}: {what} {d}/{t}", end="", flush=True))
            card.get("split", {}).pop("parts", None)
            card["teacher_path"] = None  # the objective itself ranks whole answers, by name, on the user's machine
            out = shipped_root() / f"{slug}-{objective}"
            out.mkdir(parents=True, exist_ok=True)
            for name in KEEP:
                shutil.copyfile(work / name, out / name)
            (out / "head.json").write_text(json.dumps(card, indent=1))
            pick = next(row for row in card["layers"] if row["layer"] == card["layer"]["layer"])
            print(f"\n{out}: layer {pick['layer']}, test Kendall tau {pick['test']['kendall']:.3f} on {pick['test']['junctions']} junctions, "
                  f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
