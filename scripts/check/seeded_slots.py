"""Seeds under load: does a seeded request get the same answer among concurrent requests as alone?

N prompts with seeds 10 + i are sent one at a time to a `SlotScheduler` (SmolLM2 by default, temperature 1), then
all N together with unseeded traffic beside them, R rounds; counted equal token for token, per gate and scorer.
Also the aggregate tokens/s of N unseeded requests together (batched: their decodes and scorer calls shared), so
that a layout change can be timed against another tree: run it from both, alternately, alone on the machine.

Run: python scripts/check/seeded_slots.py [-m MODEL.gguf] [--prompts 8] [--tokens 96] [--rounds 3]
     [--arms none/head entropy/head dense/head entropy/teacher] [--out scripts/results/seeded_slots.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sia_local.core.config import SteerConfig
from sia_local.core.slots import SlotScheduler
from sia_local.runtime import LMSettings, ScorerSettings, load

PROMPTS = ["Tell me about Mondays.", "Write a note to a friend.", "Describe rain.", "What is a good breakfast?",
           "Explain how bread rises.", "Tell a story about a lighthouse.", "Plan a picnic for four.", "Give me three tips for sleep."]


def arm(model: str | None, gate: str, scorer: str, n: int, tokens: int, rounds: int, slots: int) -> dict:
    """Equal answers (alone vs together, each round) and unseeded tokens/s for one gate / scorer."""
    steerer = load(LMSettings(model=model, n_ctx=1024), ScorerSettings(prefer=scorer),
                   SteerConfig(ratio=0.2, max_tokens=tokens, gate=gate))
    scheduler = SlotScheduler(steerer.lm, slots, scorer=steerer.scorer, slot_ctx=512)
    asks = (PROMPTS * (n // len(PROMPTS) + 1))[:n]
    try:
        alone = [scheduler.submit(steerer, p, seed=10 + i).result(timeout=600).token_ids for i, p in enumerate(asks)]
        equal = []
        for _ in range(rounds):
            futures = [scheduler.submit(steerer, p, seed=10 + i) for i, p in enumerate(asks)]
            futures += [scheduler.submit(steerer, p) for p in asks[: slots // 2]]  # unseeded traffic beside them
            equal.append(sum(f.result(timeout=600).token_ids == a for f, a in zip(futures, alone)))
        start = time.perf_counter()
        made = sum(len(f.result(timeout=600).token_ids) for f in [scheduler.submit(steerer, p) for p in asks])
        tps = made / (time.perf_counter() - start)
    finally:
        scheduler.close()
    return {"gate": gate, "scorer": scorer, "prompts": n, "tokens": tokens, "equal": equal, "unseeded_tok_s": tps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default=None, help="a GGUF (default: the bundled SmolLM2)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--arms", nargs="+", default=["none/head", "entropy/head", "dense/head", "entropy/teacher"], help="GATE/SCORER")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for spec in args.arms:
        gate, scorer = spec.split("/")
        row = arm(args.model, gate, scorer, args.prompts, args.tokens, args.rounds, args.slots)
        rows.append(row)
        equal = ", ".join(f"{e}/{args.prompts}" for e in row["equal"])
        print(f"{gate:>8} / {scorer:<7} equal to alone: {equal}; {args.prompts} unseeded together: {row['unseeded_tok_s']:.1f} tok/s",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
