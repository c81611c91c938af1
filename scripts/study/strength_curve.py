"""The effect / fluency curve that chose the default strength (`core/strength.py`'s JUNCTION_SPREAD).

For each objective, on the tuning prompts (heldout + bench: never the eval set), every prompt is answered with one
seed by: the base model; a system prompt asking for the objective; SIA (entropy gate, ratio 0.2, shipped head) at
each weight on the junction scale (`--strength junction`: weight w spreads a junction's candidates
w x JUNCTION_SPREAD x as much as the model's logits); and SIA at weight 1 on the raw reference scale
(`--strength reference`, the scale before this study). Reported per arm, paired against base (mean ± SE over
prompts): the objective's independent judge (VADER for kind, a bag-of-words model on the shipped examples for
concise / formal), the base model's log-perplexity of the answer, the share of repeated word 3-grams, and the change
rate (changed / junction picks).

    python scripts/study/strength_curve.py --objectives kind,formal,concise --weights 0.5,1,2 --json scripts/results/strength_curve.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from sia_local.bench.judges import judges_for
from sia_local.bench.grid import objective_prompt_of
from sia_local.core.config import SteerConfig
from sia_local.core.strength import JUNCTION_SPREAD
from sia_local.prompts import shipped
from sia_local.runtime import LMSettings, ScorerSettings, load


def repeated_3grams(text: str) -> float:
    """Share of word 3-grams that occurred earlier in the same answer (degenerate loops score high)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objectives", default="kind,formal,concise")
    ap.add_argument("--weights", default="0.5,1,2")
    ap.add_argument("--prompts", type=int, default=120, help="the first N of heldout + bench")
    ap.add_argument("--model", default=None)
    ap.add_argument("-n", "--max-tokens", type=int, default=48)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    prompts = (shipped("heldout") + shipped("bench"))[: args.prompts]
    weights = [float(w) for w in args.weights.split(",")]
    base_cfg = SteerConfig(max_tokens=args.max_tokens, logprobs=True)
    out: dict = {"model": None, "prompts": len(prompts), "set": "heldout + bench", "junction_spread": JUNCTION_SPREAD, "objectives": {}}
    base_rows: list[dict] | None = None

    def run(steerer, **changes) -> list[dict]:
        rows = []
        start = time.perf_counter()
        system = changes.pop("system", None)
        for i, p in enumerate(prompts):
            g = steerer.generate(p, seed=1000 + i, system=system, **changes)
            s = g.stats
            rows.append({"text": g.text, "log_ppl": float(np.log(s.perplexity)) if s.perplexity else None, "rep3": repeated_3grams(g.text),
                         "junctions": s.junctions, "changed": s.changed, "strength": s.strength})
        print(f"  {len(rows)} answers in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        return rows

    for objective in args.objectives.split(","):
        steerer = load(LMSettings(model=args.model), ScorerSettings(path=objective), base_cfg)
        out["model"] = steerer.lm.path.name
        judge = judges_for(steerer, objective)[0]
        if base_rows is None:
            base_rows = run(steerer, gate="none")
        arms = {"prompt": run(steerer, gate="none", system=objective_prompt_of(steerer.scorer))}
        arms["reference w=1"] = run(steerer, strength="reference", weight=1.0)
        for w in weights:
            arms[f"junction w={w:g}"] = run(steerer, strength="junction", weight=w)
        base_j = np.array(judge("", [r["text"] for r in base_rows]))
        res: dict = {"judge": judge.name, "arms": {}}
        print(f"\n{objective} ({judge.name}), {len(prompts)} prompts, 1 seed, {steerer.lm.path.name}")
        print("| arm | strength m | spread / logits | change rate | judge − base (± SE) | of prompt's | log-ppl − base (± SE) | repeated 3-grams |")
        print("|---|---|---|---|---|---|---|---|")
        prompt_gain = None
        junction_m = next(r["strength"] for r in arms[f"junction w={weights[0]:g}"] if r["strength"] is not None)
        for name, rows in arms.items():
            dj = np.array(judge("", [r["text"] for r in rows])) - base_j
            dp = np.array([(r["log_ppl"] or 0) - (b["log_ppl"] or 0) for r, b in zip(rows, base_rows)])
            se = lambda d: float(d.std(ddof=1) / np.sqrt(len(d)))  # noqa: E731
            junctions = sum(r["junctions"] for r in rows)
            rate = sum(r["changed"] for r in rows) / junctions if junctions else None
            m = next((r["strength"] for r in rows if r["strength"] is not None), None)
            w = float(name.split("=")[1]) if "=" in name else None
            # how far the reward spreads a junction's candidates, as a share of the model's own logit spread
            rel = w * JUNCTION_SPREAD if name.startswith("junction") else JUNCTION_SPREAD / junction_m if name.startswith("reference") else None
            if name == "prompt":
                prompt_gain = float(dj.mean())
            share = float(dj.mean()) / prompt_gain if prompt_gain and name != "prompt" else None
            rep = float(np.mean([r["rep3"] for r in rows]))
            res["arms"][name] = {"judge_diff": float(dj.mean()), "judge_se": se(dj), "log_ppl_diff": float(dp.mean()), "log_ppl_se": se(dp),
                                 "rep3": rep, "change_rate": rate, "strength": m, "spread_vs_logits": rel, "share_of_prompt": share}
            print(f"| {name} | {f'{m:.2f}' if m is not None else '—'} | {f'{rel:.2f}' if rel is not None else '—'} | "
                  f"{f'{rate:.0%}' if rate is not None else '—'} | {dj.mean():+.3f} ± {se(dj):.3f} | {f'{share:.0%}' if share is not None else '—'} | "
                  f"{dp.mean():+.3f} ± {se(dp):.3f} | {rep:.3f} |", flush=True)
        res["base_rep3"] = float(np.mean([r["rep3"] for r in base_rows]))
        out["objectives"][objective] = res
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
