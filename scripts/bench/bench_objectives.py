"""What a mix of objectives costs: one objective against three on the same embedder, side by side.

Fits two objectives from templated examples into a temporary cache (polite vs rude, calm vs angry),
then decodes the same prompts with `-r kind` and with `-r kind -r polite:0.5 -r calm:0.5`, dense
(every token a junction, where the scorer's cost shows most) and at --ratio, arms interleaved over
rounds; prints time per token and the ratio three / one.

    python scripts/bench/bench_objectives.py --json scripts/results/objectives_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

TOPICS = ["the report", "the delivery", "the meeting", "your help", "the invoice", "the schedule", "the repair", "the draft", "the booking",
          "the slides", "the refund", "the update", "the parcel", "the review", "the recipe", "the photos", "the list", "the plan",
          "the tickets", "the form", "the budget", "the timetable", "the map", "the feedback", "the contract"]
SETS = {
    "polite": (["Thank you so much for {t}, I really appreciate it.", "Could you please look at {t} when you have a moment? Thanks!"],
               ["Send me {t} already, it is not hard.", "Nobody cares about {t}, stop wasting my time."]),
    "calm": (["No rush at all with {t}; we will sort it out together.", "It is fine, {t} can wait until tomorrow."],
             ["I am furious about {t}, this is a disaster!", "Why is {t} STILL broken?! Unbelievable!"]),
}
PROMPTS = ["My neighbour's dog barks all night.", "The train was cancelled again.", "My friend forgot my birthday.", "Work was stressful today."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    os.environ.setdefault("SIA_CACHE_DIR", tempfile.mkdtemp(prefix="sia-objectives-"))
    from sia_local.core.config import SteerConfig
    from sia_local.rewards.defaults import default_model_path
    from sia_local.llama import LM
    from sia_local.rewards.mix import load_objectives
    from sia_local.rewards.objectives import fit_objective
    from sia_local.core.steer import Steerer

    for name, (good, bad) in SETS.items():
        fit_objective(name, good=[g.format(t=t) for t in TOPICS for g in good], bad=[b.format(t=t) for t in TOPICS for b in bad],
                      describe=f"Be {name}.")
    lm = LM(default_model_path(), n_ctx=1024)
    arms = {"one": load_objectives(["kind"]), "three": load_objectives(["kind", "polite:0.5", "calm:0.5"])}
    steerers = {name: Steerer(lm, scorer, SteerConfig(max_tokens=args.tokens)) for name, scorer in arms.items()}
    for s in steerers.values():
        s.resolve_tau(s.config.updated(ratio=args.ratio))
    times: dict[str, list[float]] = {f"{a}@{g}": [] for a in arms for g in ("dense", str(args.ratio))}
    for r in range(args.rounds):
        for gate in ("dense", str(args.ratio)):
            for name in (("one", "three") if r % 2 == 0 else ("three", "one")):
                extra = {"gate": "dense"} if gate == "dense" else {"ratio": args.ratio}
                for i, prompt in enumerate(PROMPTS):
                    g = steerers[name].generate(prompt, seed=100 * r + i, **extra)
                    times[f"{name}@{gate}"].append((g.stats.seconds - g.stats.prefill_seconds) / max(g.stats.tokens, 1) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"ms_per_token": med, "three_over_one": {g: med[f"three@{g}"] / med[f"one@{g}"] for g in ("dense", str(args.ratio))},
           "tokens": args.tokens, "rounds": args.rounds, "prompts": len(PROMPTS)}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
