"""Write `sia eval`'s default prompts (sia_local/data/eval_prompts.txt): 600 prompts that chose nothing.

    python scripts/data/make_eval_prompts.py --write-package-data

120 situations that appear in no other shipped set (calibration, bench, distill, heldout), each asked 5 ways drawn
from 20 kinds of request: 600 prompts, deterministic. The script refuses a situation that any other shipped prompt
mentions and a prompt that is also one of theirs, so no set used to calibrate tau, distil a head, tune a weight or
pick a default holds one of these prompts or their situations. Nothing may be fitted or chosen on them: they are
for measuring (`sia eval`), and docs/eval.md says which set chose what.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "sia_local" / "data"

SITUATIONS = [
    # home and family
    "a toddler who refuses to wear shoes", "a grandmother learning to video call", "a teenager who wants a later curfew",
    "a family quilt that needs mending", "twins who want separate bedrooms", "a cousin visiting for a whole month",
    "moving a piano up three flights of stairs", "a cat that sleeps on the keyboard", "a dog afraid of thunder",
    "a fridge that hums all night", "a bathroom tile that keeps cracking", "a tree whose roots lift the pavement",
    "a baby monitor that picks up the neighbours' radio", "a shared car between three siblings", "an attic full of old letters",
    # work and study
    "a spreadsheet with ten thousand duplicate rows", "a first week as a night-shift nurse", "a mentor who retires next month",
    "an apprenticeship as an electrician", "a thesis defence scheduled on a holiday", "a conference talk with a broken projector",
    "a warehouse that switches to robots", "a café owner who wants fewer plastic cups", "a translator paid by the word",
    "a team spread over five time zones", "a volunteer shift at a food bank", "a farmer's market stall on a rainy Saturday",
    "a bakery that sells out by nine", "a lab experiment that failed eleven times", "an unpaid internship offer",
    # health and body
    "a sprained ankle before a hiking trip", "a hearing aid that whistles", "a first marathon at fifty",
    "hay fever in the middle of exams", "a new pair of glasses that feel strange", "physiotherapy after a knee operation",
    "cutting down on sugar in coffee", "a blood test result that needs a follow-up", "a night-time cough that keeps the family awake",
    "swimming lessons as an adult", "a standing desk that nobody uses", "a back that aches after gardening",
    # money and things
    "a second-hand bicycle with a squeaky chain", "splitting a restaurant bill among eight people", "a pension statement that makes no sense",
    "a crowdfunding campaign for a community garden", "selling a vintage record collection", "a jar of coins saved for ten years",
    "a rent increase announced by email", "a lottery ticket found in an old coat", "a budget for a first apartment",
    "a warranty claim for a cracked phone screen", "an auction bid that went too high", "a gift card that expires tomorrow",
    # travel and places
    "a night train to a city I have never seen", "a lost passport two days before a flight", "a road trip with a broken radio",
    "a mountain hut with no electricity", "a ferry crossing in rough weather", "a museum that is free on Sundays",
    "a village festival with fireworks", "a hostel dormitory with twelve beds", "a layover of nine hours", "a map that led us the wrong way",
    "a beach covered in seaweed", "a city that bans cars from its centre", "a tour guide who speaks too fast",
    # people and feelings
    "a friend who just became a parent", "an old classmate who got in touch after twenty years", "a neighbour who waters my plants",
    "a retirement party for a strict boss", "a pen pal from another country", "a disagreement about where to spend the holidays",
    "a coworker who hums all day", "a compliment I did not know how to accept", "a promise I could not keep",
    "a surprise party that nearly went wrong", "a stranger who returned my wallet", "an apology that came years late",
    "a best friend moving abroad", "a first date at a bowling alley", "a choir audition", "a chess club looking for members",
    # hobbies and learning
    "knitting a scarf that came out too long", "a sourdough starter that will not rise", "building a birdhouse from scraps",
    "learning to juggle three balls", "a jigsaw puzzle with one piece missing", "a podcast with only four listeners",
    "painting a mural on a garden wall", "a model railway in the basement", "learning the ukulele from videos",
    "a photography walk at sunrise", "a book club that never finishes the book", "growing tomatoes on a balcony",
    "a pottery class where everything cracks in the kiln", "restoring an old wooden boat", "an amateur astronomy night with clouds",
    # the wider world and neutral tasks
    "a town debating a new skate park", "a library that lends tools", "a recycling scheme that confuses everyone",
    "a heatwave in a city without air conditioning", "a river clean-up day", "a school that starts a four-day week",
    "a bridge closed for repairs for a year", "a local election with only one candidate", "a bus route that was cancelled",
    "the history of the paperclip", "how a lighthouse lens works", "why bread goes stale", "how bees find their way home",
    "how a dishwasher cleans without scrubbing", "a kite festival on a windless day", "a street piano in a station",
    "a community fridge outside a church", "why the sky looks orange at sunset", "how to read a train timetable",
    "the rules of cricket for a beginner", "how a vaccine is tested", "how tides are predicted",
]

WAYS = [
    "Write a short message to a friend about {s}.", "What would you say to someone dealing with {s}?",
    "Describe {s} in a few sentences.", "Give me three pieces of advice about {s}.", "Write a diary entry about {s}.",
    "Explain {s} to a ten-year-old.", "Draft an email to a colleague about {s}.", "Tell a very short story about {s}.",
    "What is the best way to handle {s}?", "Write a text message reply to someone who just told me about {s}.",
    "Summarise the good and the bad of {s}.", "Write a social media post about {s}.", "How do you feel about {s}?",
    "Give a quick pep talk to someone facing {s}.", "Write two sentences for a newsletter about {s}.",
    "What should I keep in mind about {s}?", "Write a friendly note to a neighbour about {s}.",
    "Describe {s} as a sports commentator would.", "Write a limerick about {s}.", "Help me plan around {s}.",
]

PER_SITUATION = 5


def others() -> list[str]:
    """Every prompt of the other shipped sets, lower-cased."""
    import json

    texts = []
    for name in ("calibration_prompts.txt", "distill_prompts.txt", "heldout_prompts.txt"):
        texts += (DATA / name).read_text(encoding="utf-8").splitlines()
    texts += [json.loads(line)["prompt"] for line in (DATA / "bench_prompts.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return [t.strip().lower() for t in texts if t.strip()]


def make() -> list[str]:
    seen = others()
    assert len(set(SITUATIONS)) == len(SITUATIONS), "a situation is listed twice"
    clash = [s for s in SITUATIONS if any(s.lower() in t for t in seen)]
    if clash:
        raise SystemExit(f"these situations appear in another shipped set: {clash}")
    rng = random.Random(7)
    prompts = []
    for s in SITUATIONS:
        for way in rng.sample(WAYS, PER_SITUATION):
            prompts.append(way.format(s=s))
    taken = set(seen)
    assert not [p for p in prompts if p.lower() in taken]
    assert len(set(prompts)) == len(prompts)
    return prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=None)
    ap.add_argument("--write-package-data", action="store_true")
    args = ap.parse_args()
    prompts = make()
    out = DATA / "eval_prompts.txt" if args.write_package_data else args.out
    if out is None:
        print("\n".join(prompts))
        return
    out.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    print(f"wrote {len(prompts)} prompts ({len(SITUATIONS)} situations) to {out}")


if __name__ == "__main__":
    main()
