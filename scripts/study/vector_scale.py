"""What a control vector's scale does: an objective's judge and the base model's perplexity against the scale.

For each scale, every prompt is answered unsteered with the objective's vector (`--vector NAME:scale`) and the same
seed; the judges are the objective's (`sia eval`'s: for `formal` informal markers, the F-score and a bag-of-words
model on its examples; docs/eval.md), the fluency the base model's
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
    judges = judges_for(steerer, args.objective)  # the objective's independent judges first, then its bag-of-words judge
    prompts = shipped("heldout")[: args.prompts]

    def run(scale: float) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
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
        return {j.name: np.array(j("", texts), dtype=float) for j in judges}, np.array(ppl), texts

    base_j, base_p, _ = run(0.0)
    out = {"objective": args.objective, "model": lm.path.name, "prompts": len(prompts),
           "judges": [{"name": j.name, "auc": getattr(j, "auc", None), "better": "lower" if getattr(j, "lower_is_better", False) else "higher"}
                      for j in judges], "scales": {}}
    se = lambda d: float(d.std(ddof=1) / np.sqrt(len(d)))  # noqa: E731
    print("| scale | " + " | ".join(f"{j.name}: vector − none (± SE)" for j in judges) + " | base log-perplexity: vector − none (± SE) | an answer |")
    print("|---" * (len(judges) + 3) + "|")
    for scale in (float(x) for x in args.scales.split(",")):
        j, p, texts = run(scale)
        dj, dp = {name: j[name] - base_j[name] for name in j}, p - base_p
        out["scales"][str(scale)] = {"judges": {name: {"diff": float(d.mean()), "se": se(d)} for name, d in dj.items()},
                                     "log_ppl_diff": float(dp.mean()), "log_ppl_se": se(dp), "example": texts[1][:200]}
        cells = " | ".join(f"{d.mean():+.3f} ± {se(d):.3f}" for d in dj.values())
        print(f"| {scale:g} | {cells} | {dp.mean():+.3f} ± {se(dp):.3f} | {texts[1][:70]!r} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
