"""Write sia_local/data/distill_prompts.txt: on-policy distillation prompts, disjoint from the bench and calibration sets.

    python scripts/make_distill_prompts.py -o prompts.txt            # or --write-package-data

Situations (everyday annoyances, sad or tense moments, neutral tasks) crossed with the ways people ask
(a message to write, advice, a description, an opinion, a story, a reply). Deterministic; rerun after
editing the lists. The script refuses to write a prompt that is also a bench or calibration prompt.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "sia_local" / "data"

SITUATIONS = [
    "a landlord who has not fixed the heating for three weeks", "a friend who cancelled our plans at the last minute",
    "a parcel that arrived broken", "a bus that was forty minutes late", "a colleague who took credit for my work",
    "a neighbour who parks across my driveway", "a noisy party upstairs on a weeknight", "a restaurant that lost our booking",
    "my team losing the final match", "a job interview that went badly", "a rejected grant application",
    "a sibling who borrowed money and never paid it back", "a long queue at the post office", "a flight that was cancelled",
    "a teacher who marked my essay unfairly", "a phone that broke the day after the warranty ended",
    "moving to a city where I know nobody", "a pet that is getting old", "a rainy holiday at the seaside",
    "a group project where nobody else does any work", "a customer who shouted at me at work", "a gym that raised its prices again",
    "a bad haircut before a wedding", "a laptop that crashed before I saved my thesis", "waiting all day for a repair person who never came",
    "a new manager who changes every plan", "a friend who always arrives late", "losing my keys on a cold night",
    "a slow internet connection during an important call", "a garden ruined by a storm", "being left out of a group chat",
    "a delayed train on the first day of a new job", "a hotel room that smelled of smoke", "a quiet Sunday afternoon",
    "learning to bake bread", "starting a vegetable garden", "the first snow of the year", "a long walk by the river",
]

ASKS = [
    "Write a short message about {s}.", "How should I deal with {s}?", "Describe {s} in a few sentences.",
    "What do you think about {s}?", "Tell a very short story about {s}.", "Write a reply to a friend who is upset about {s}.",
    "Give me three tips for coping with {s}.", "Write a diary entry about {s}.",
]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write the distillation prompts (situations x ways of asking).",
                                     epilog="Writes only where told: -o FILE, or --write-package-data for the shipped set.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--out", type=Path, help="write the prompts here")
    where.add_argument("--write-package-data", action="store_true", help=f"replace {DATA / 'distill_prompts.txt'}")
    args = parser.parse_args()
    out = DATA / "distill_prompts.txt" if args.write_package_data else args.out
    taken = {json.loads(line)["prompt"].strip().lower() for line in (DATA / "bench_prompts.jsonl").read_text().splitlines() if line.strip()}
    taken |= {line.strip().lower() for line in (DATA / "calibration_prompts.txt").read_text().splitlines() if line.strip()}
    prompts = [a.format(s=s) for s, a in itertools.product(SITUATIONS, ASKS)]
    prompts = [p[0].upper() + p[1:] for p in prompts]
    random.Random(0).shuffle(prompts)
    clash = [p for p in prompts if p.lower() in taken]
    if clash:
        raise SystemExit(f"these prompts are also bench or calibration prompts: {clash}")
    out.write_text("\n".join(prompts) + "\n")
    print(f"wrote {len(prompts)} prompts to {out}")


if __name__ == "__main__":
    main()
