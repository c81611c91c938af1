"""What a repetition penalty does under steering, with penalties where they belong (before SIA's top-k).

For each prompt and repeat_penalty in {1.0, 1.1, 1.3}: an unsteered answer and a steered one (the defaults: SmolLM2,
the kind head, the entropy gate at ratio 0.2), the same seed. Reports per penalty: the realised junction ratio, the
change rate (junctions where the reward changed the token), VADER's gain of steering over base (paired per prompt,
mean ± SE), and repetition (the share of an answer's token 3-grams that repeat an earlier one; distinct-2).

    python scripts/study/penalty_effect.py --prompts 120 -n 64 --json scripts/results/penalty_effect.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sia_local import load
from sia_local.bench.judges import VaderJudge
from sia_local.prompts import shipped


def repeated_trigrams(ids: list[int]) -> float:
    grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    seen: set = set()
    again = 0
    for g in grams:
        again += g in seen
        seen.add(g)
    return again / len(grams) if grams else 0.0


def distinct2(ids: list[int]) -> float:
    grams = [tuple(ids[i:i + 2]) for i in range(len(ids) - 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=120, help="the first N of the heldout then the bench prompts")
    ap.add_argument("-n", "--max-tokens", type=int, default=64)
    ap.add_argument("--penalties", default="1.0,1.1,1.3")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    prompts = (shipped("heldout") + shipped("bench"))[: args.prompts]
    steerer = load()
    judge = VaderJudge()
    out: dict = {"model": steerer.lm.path.name, "scorer": getattr(steerer.scorer, "name", None), "prompts": len(prompts),
                 "max_tokens": args.max_tokens, "sets": "heldout then bench (sia_local/data)", "penalties": {}}
    print("| repeat_penalty | realised ratio | changed / junction | VADER: SIA − base | repeated 3-grams base → SIA | distinct-2 base → SIA |")
    print("|---|---|---|---|---|---|")
    for p in (float(x) for x in args.penalties.split(",")):
        t0 = time.perf_counter()
        rows = []
        for i, prompt in enumerate(prompts):
            base = steerer.generate(prompt, gate="none", repeat_penalty=p, max_tokens=args.max_tokens, seed=1000 + i)
            sia = steerer.generate(prompt, repeat_penalty=p, max_tokens=args.max_tokens, seed=1000 + i)
            vb, vs = judge(prompt, [base.text, sia.text])
            rows.append({"judge_diff": vs - vb, "ratio": sia.stats.ratio, "junctions": sia.stats.junctions, "changed": sia.stats.changed,
                         "rep_base": repeated_trigrams(base.token_ids), "rep_sia": repeated_trigrams(sia.token_ids),
                         "d2_base": distinct2(base.token_ids), "d2_sia": distinct2(sia.token_ids)})
        gain = mean_se([r["judge_diff"] for r in rows])
        cell = {"ratio": float(np.mean([r["ratio"] for r in rows])),
                "change_rate": sum(r["changed"] for r in rows) / max(1, sum(r["junctions"] for r in rows)),
                "vader_gain": {"mean": gain[0], "se": gain[1]},
                "repeated_trigrams": {"base": mean_se([r["rep_base"] for r in rows]), "sia": mean_se([r["rep_sia"] for r in rows])},
                "distinct2": {"base": mean_se([r["d2_base"] for r in rows]), "sia": mean_se([r["d2_sia"] for r in rows])},
                "seconds": time.perf_counter() - t0}
        out["penalties"][str(p)] = cell
        rb, rs = cell["repeated_trigrams"]["base"], cell["repeated_trigrams"]["sia"]
        db, ds = cell["distinct2"]["base"], cell["distinct2"]["sia"]
        print(f"| {p} | {cell['ratio']:.3f} | {cell['change_rate']:.3f} | {gain[0]:+.3f} ± {gain[1]:.3f} | {rb[0]:.3f} → {rs[0]:.3f} | "
              f"{db[0]:.3f} → {ds[0]:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
