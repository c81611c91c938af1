"""Does SIA with a distilled value model raise the distillation reward over base sampling, on
prompts the VM was not trained on? Side by side on the same prompts and seeds.

Run: python scripts/study/eval_vm.py VM_DIR [--prompts 20 --tokens 48]
(The VM from `sia vm distill` is trained on the calibration prompts; this uses the bench prompts.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from sia_local import SteerConfig, Steerer, load_default_lm, load_default_reward
from sia_local.bench.judges import VaderJudge
from sia_local.prompts import load_prompts
from sia_local.heads.vm import ValueModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("vm")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    lm = load_default_lm(n_ctx=2048)
    rm = load_default_reward()
    vm = ValueModel(args.vm, lm)
    judge = VaderJudge()
    prompts = load_prompts()[: args.prompts]
    steer_vm = Steerer(lm, vm, SteerConfig(max_tokens=args.tokens, weight=args.weight))
    steer_rm = Steerer(lm, rm, SteerConfig(max_tokens=args.tokens, weight=args.weight))
    arms = {"base": (steer_vm, {"gate": "none"}), "vm sia@0.3": (steer_vm, {"ratio": 0.3}), "vm dense": (steer_vm, {"gate": "dense"}),
            "rm sia@0.3": (steer_rm, {"ratio": 0.3})}
    results = {}
    for name, (steerer, opts) in arms.items():
        rewards, judged, ratios, wall, tokens = [], [], [], 0.0, 0
        for i, p in enumerate(prompts):
            t = time.perf_counter()
            g = steerer.generate(p, seed=i, **opts)
            wall += time.perf_counter() - t
            tokens += g.stats.tokens
            rewards.append(float(rm.score_responses(p, [], [(g.text, [])])[0]))
            judged.append(judge(p, [g.text])[0])
            ratios.append(g.stats.ratio)
        results[name] = {"reward": statistics.fmean(rewards), "reward_se": statistics.stdev(rewards) / len(rewards) ** 0.5,
                         "judge": statistics.fmean(judged), "ratio": statistics.fmean(ratios), "seconds_per_token": wall / max(tokens, 1)}
    base = results["base"]["seconds_per_token"]
    print(f"{'arm':12} {'RM reward':>14} {'VADER':>7} {'ratio':>6} {'cost x base':>11}")
    for name, r in results.items():
        print(f"{name:12} {r['reward']:7.3f} ± {r['reward_se']:.3f} {r['judge']:7.3f} {r['ratio']:6.2f} {r['seconds_per_token'] / base:11.2f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
