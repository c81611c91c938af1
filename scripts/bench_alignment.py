"""Does steering move the text towards the objective? A small side-by-side check on the default models.

Arms: base (gate none), entropy gate at ratios 0.2 and 0.4, random gate at 0.4 (matched sparsity),
dense. Same prompts and seeds for every arm. Scores: the steering reward on the final response,
and VADER's compound sentiment as an independent judge (the reward was never fitted to VADER).
Run: python scripts/bench_alignment.py [--prompts 12 --seeds 2 --tokens 64]
(`sia bench` will grow out of this; see the Best-of-N / bench issue.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from sia_local import SteerConfig, Steerer, load_default_lm, load_default_reward

PROMPTS = [
    "Describe a rainy afternoon in a small town.", "How do I apologise to my sister?",
    "What is your opinion of modern art?", "Write a product description for a water bottle.",
    "Give advice to a new teacher.", "Tell me a story about a lost cat.", "What do you think of Mondays?",
    "Write a short message to a colleague who is leaving.", "Describe the food at a hospital cafeteria.",
    "My flight was cancelled. What now?", "Write about the last day of summer.", "Review a phone you used for a year.",
    "What happens when you miss a deadline?", "Describe a crowded subway at rush hour.", "Tell me about traffic jams.",
    "Write a note to a neighbour about noise.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    lm, reward = load_default_lm(n_ctx=2048), load_default_reward(provider="cpu")
    steerer = Steerer(lm, reward, SteerConfig(max_tokens=args.tokens, weight=args.weight))
    judge = SentimentIntensityAnalyzer()
    arms = {
        "base": {"gate": "none"},
        "entropy@0.2": {"gate": "entropy", "ratio": 0.2},
        "entropy@0.4": {"gate": "entropy", "ratio": 0.4},
        "random@0.4": {"gate": "random", "ratio": 0.4},
        "dense": {"gate": "dense"},
    }
    for arm in arms.values():
        if arm["gate"] == "entropy":
            arm["tau"] = steerer.resolve_tau(steerer.config.replace(ratio=arm["ratio"]))
    results: dict[str, dict] = {}
    for name, arm in arms.items():
        rows = []
        t0 = time.perf_counter()
        for p in PROMPTS[: args.prompts]:
            for seed in range(args.seeds):
                g = steerer.generate(p, seed=seed, **arm)
                rows.append({"reward": float(reward.score(p, [g.text])[0]), "judge": judge.polarity_scores(g.text)["compound"],
                             "ratio": g.stats.ratio, "tokens": g.stats.tokens})
        wall = time.perf_counter() - t0
        results[name] = {
            "reward": statistics.mean(r["reward"] for r in rows),
            "judge": statistics.mean(r["judge"] for r in rows),
            "ratio": statistics.mean(r["ratio"] for r in rows),
            "seconds_per_token": wall / sum(r["tokens"] for r in rows),
            "n": len(rows),
        }
    base = results["base"]
    print(f"{'arm':12} {'reward':>7} {'VADER':>7} {'ratio':>6} {'cost x base':>11}")
    for name, r in results.items():
        print(f"{name:12} {r['reward']:7.3f} {r['judge']:7.3f} {r['ratio']:6.2f} {r['seconds_per_token'] / base['seconds_per_token']:11.2f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
