"""What a control vector's scale does: an objective's judge and the base model's perplexity against the scale.

For each scale, every prompt is answered unsteered with the objective's vector (`--vector NAME:scale`) and the same
seed; the judge is a bag-of-words model on the objective's examples (docs/eval.md), the fluency the base model's
perplexity of the answer (the vector cleared while it is measured: what the model without the vector makes of it).
Paired differences against scale 0, mean ± SE over prompts.

    python scripts/study/vector_scale.py formal --prompts 60 --scales 0.5,1,2,4 --json scripts/results/vector_scale_formal.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sia_local.bench.judges import judges_for
from sia_local.core.config import SteerConfig
from sia_local.prompts import shipped
from sia_local.runtime import LMSettings, build_steerer, load_lm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("objective")
    ap.add_argument("--prompts", type=int, default=60, help="the first N heldout prompts")
    ap.add_argument("--scales", default="0.5,1,2,4")
    ap.add_argument("-n", "--max-tokens", type=int, default=48)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    lm = load_lm(LMSettings(), hidden=True)
    steerer = build_steerer(lm, None, SteerConfig(gate="none", max_tokens=args.max_tokens, logprobs=True))
    judge = judges_for(steerer, args.objective)[0]
    prompts = shipped("heldout")[: args.prompts]

    def run(scale: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
        gens = [steerer.generate(p, seed=i, vector=f"{args.objective}:{scale}" if scale else None) for i, p in enumerate(prompts)]
        texts = [g.text for g in gens]
        lm.use_vector(None)
        ppl = []
        for p, g in zip(prompts, gens):  # the base model's perplexity of the answer, the vector cleared
            ids = lm.render_chat([{"role": "user", "content": p}])[0]
            logits = lm.prefill(ids)
            total = 0.0
            for t in g.token_ids:
                total += float(logits[t] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
                logits = lm.step(t)
            ppl.append(-total / max(1, len(g.token_ids)))
        return np.array(judge("", texts)), np.array(ppl), texts

    base_j, base_p, _ = run(0.0)
    out = {"objective": args.objective, "model": lm.path.name, "prompts": len(prompts), "judge": judge.name, "judge_auc": judge.auc, "scales": {}}
    print(f"| scale | {judge.name}: vector − none (± SE) | base log-perplexity: vector − none (± SE) | an answer |")
    print("|---|---|---|---|")
    for scale in (float(x) for x in args.scales.split(",")):
        j, p, texts = run(scale)
        dj, dp = j - base_j, p - base_p
        se = lambda d: float(d.std(ddof=1) / np.sqrt(len(d)))  # noqa: E731
        out["scales"][str(scale)] = {"judge_diff": float(dj.mean()), "judge_se": se(dj), "log_ppl_diff": float(dp.mean()), "log_ppl_se": se(dp),
                                     "example": texts[1][:200]}
        print(f"| {scale:g} | {dj.mean():+.3f} ± {se(dj):.3f} | {dp.mean():+.3f} ± {se(dp):.3f} | {texts[1][:70]!r} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
