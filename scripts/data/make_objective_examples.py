"""Write the example sets of the built-in objectives `concise` and `formal` (sia_local/data/objectives/).

concise: the same answers said directly (good) and padded with filler, hedging and repetition (bad).
formal: answers (advice and facts) in a formal register (good) and said casually, with slang (bad).
Each good text has a bad twin with the same content, so the head learns the register or the padding,
not the topic. Deterministic; hand-written pieces combined, >= 150 examples a side.

    python scripts/data/make_objective_examples.py -o examples/        # or --write-package-data
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "sia_local" / "data" / "objectives"

ANSWERS = [
    "Drink a glass of water and rest for ten minutes", "The train leaves at half past eight from platform two",
    "Restart the router and wait a minute before you reconnect", "Add a pinch of salt to bring out the sweetness",
    "Write the date at the top and sign at the bottom", "Water the tomatoes in the morning, not at night",
    "Back up your files before you install the update", "Ask your landlord in writing and keep a copy",
    "Take the second left after the bakery", "Soak the beans overnight and cook them for an hour",
    "Send a short apology and offer to make it right", "Put the receipt in the envelope with the parcel",
    "Stretch for five minutes before you run", "Charge the battery fully before the first use",
    "Call the bank and ask them to block the card", "Keep the lid on so the soup stays warm",
    "Use a soft cloth and a little vinegar on the glass", "Check the tyre pressure once a month",
    "Book the table for seven and confirm by phone", "Turn the oven to 180 degrees and bake for twenty minutes",
    "Leave a note with your number on the windscreen", "Read the first chapter tonight and the rest at the weekend",
    "Label each box with the room it belongs to", "Say thank you and ask what you can do next time",
    "Switch off the lights when you leave the room", "Print two copies and bring your passport",
    "Measure twice and cut once", "Reply before Friday so they can plan the meeting",
    "Open the window for ten minutes every morning", "Pay the invoice by bank transfer and quote the number",
    "Feed the cat at eight and at six", "Cover the seedlings if frost is forecast",
    "Bring an umbrella, rain is expected after noon", "Save the file as a PDF before you send it",
    "Tell your manager today rather than next week", "Wash the rice until the water runs clear",
    "Unplug the heater before you clean it", "Walk for twenty minutes after dinner",
    "Write down three things that went well today", "Put the keys in the bowl by the door",
    "Arrive ten minutes early for the interview", "Keep the receipt for the warranty",
    "Cut the onions under cold water", "Set two alarms if you must not oversleep",
    "Ask the pharmacist before you mix the two medicines", "Fold the letter in three to fit the envelope",
    "Lower the saddle until your heel reaches the pedal", "Rinse the brush before the paint dries",
    "Sit near the front so you can hear", "Check the expiry date before you buy it",
]
PADDING = [
    "Well, so, basically, if you really think about it, and I mean this in the broadest possible sense, {a}, or at least that is more or less how I would put it, if that makes sense.",
    "Okay, so, first of all, it is a really good question, and there are lots of ways to look at it, but I suppose, all things considered, {a}, I think, probably, more or less, you know?",
    "Um, right, so, as I was saying, and I might be repeating myself here a little bit, {a}, which, again, is basically what I said, just to be clear, I hope that helps somehow.",
]
DIRECT = ["{A}.", "{A}. That is all you need.", "Short answer: {a}."]

# formal: the same answer content said in a formal register (f) and casually (c). Answers, not letters: what a
# model writes when asked a question is what the objective scores at junctions (the first set, formal letters vs
# slangy requests, taught politeness formulas, and a formal system prompt out-formalised it; docs/eval.md).
ADVICE = [  # (casual, formal) verb phrases
    ("grab some water and chill for a bit", "drink a glass of water and rest for several minutes"),
    ("turn the router off and on again", "restart the router and allow a minute before reconnecting"),
    ("back up your stuff before the update", "back up your files before installing the update"),
    ("text your landlord and keep screenshots", "notify your landlord in writing and retain a copy"),
    ("soak the beans overnight and cook 'em for like an hour", "soak the beans overnight and simmer them for approximately one hour"),
    ("say sorry and offer to fix it", "offer a sincere apology and propose a remedy"),
    ("stretch a bit before you run", "stretch for several minutes before running"),
    ("call your bank and get them to block the card", "contact your bank and request that the card be blocked"),
    ("check your tyres every month or so", "inspect the tyre pressure at monthly intervals"),
    ("book a table for seven and call to double-check", "reserve a table for seven o'clock and confirm the booking by telephone"),
    ("make a budget and stick to it", "prepare a budget and adhere to it consistently"),
    ("talk to your boss today, don't wait", "inform your manager today rather than postponing the conversation"),
    ("rinse the rice till the water's clear", "rinse the rice until the water runs clear"),
    ("ask the pharmacist before mixing your meds", "consult a pharmacist before combining the two medications"),
    ("show up ten minutes early for the interview", "arrive ten minutes before the scheduled interview"),
    ("hang on to the receipt in case it breaks", "retain the receipt for the duration of the warranty"),
    ("get some sleep and have another go tomorrow", "obtain adequate rest and resume the task the following day"),
    ("jot down what's bugging you", "record your concerns in writing"),
    ("go for a walk after dinner", "take a short walk after the evening meal"),
    ("google the error message", "search for the exact error message in the documentation"),
    ("chop the big job into little bits", "divide the task into smaller, manageable components"),
    ("read the instructions first, seriously", "read the instructions carefully before beginning"),
    ("practise a little bit every day", "practise for a short period each day"),
    ("ask your teacher if you get stuck", "seek the guidance of your teacher when difficulties arise"),
    ("save it as a PDF before you send it", "convert the document to PDF format prior to sending it"),
]
FACTS = [  # (casual, formal) clauses
    ("plants basically eat sunlight to make food", "plants produce their nutrients from sunlight through photosynthesis"),
    ("the sky looks blue 'cause the air scatters blue light more", "the sky appears blue because the atmosphere scatters shorter wavelengths more strongly"),
    ("working out is great for your mood", "regular physical exercise has a considerable positive effect on mood"),
    ("the Romans built tons of roads", "the Roman Empire constructed an extensive network of roads"),
    ("your heart pumps blood all over your body", "the heart circulates blood throughout the body"),
    ("saving a bit every month really adds up", "modest monthly savings accumulate substantially over time"),
    ("cats sleep a crazy amount", "domestic cats sleep for a considerable proportion of the day"),
    ("coffee wakes you up 'cause of the caffeine", "coffee increases alertness owing to its caffeine content"),
    ("the moon's what makes the tides happen", "the tides are caused principally by the gravitational influence of the moon"),
    ("learning a language takes ages", "the acquisition of a new language requires a substantial period of study"),
    ("too much sugar wrecks your teeth", "excessive sugar consumption is detrimental to dental health"),
    ("the internet's just loads of computers talking to each other", "the internet is a global network of interconnected computers"),
    ("water boils at a hundred degrees", "water boils at one hundred degrees Celsius at sea level"),
    ("reading before bed helps you chill out", "reading before sleep is conducive to relaxation"),
    ("bees are super important for crops", "bees play an essential role in the pollination of crops"),
    ("a good CV's short and clear", "an effective curriculum vitae is concise and clearly structured"),
    ("sleep helps your brain hang on to stuff", "sleep contributes significantly to the consolidation of memory"),
    ("rain happens when clouds get too heavy", "precipitation occurs when the droplets in a cloud become too heavy to remain suspended"),
    ("Shakespeare wrote a ton of plays", "William Shakespeare was the author of numerous plays"),
    ("recycling cuts down on trash", "recycling reduces the volume of waste sent to landfill"),
    ("kids pick up languages super fast", "children acquire languages with remarkable speed"),
    ("the economy's kinda slow right now", "economic growth is currently modest"),
    ("stress can totally mess with your sleep", "stress may adversely affect the quality of sleep"),
    ("electric cars are way quieter", "electric vehicles operate considerably more quietly"),
    ("you can't really tell the weather far ahead", "accurate weather forecasts are not possible over long periods"),
]
FORMAL_ADVICE = [
    "It is advisable to {f}.",
    "The recommended approach is to {f}. This is generally the most reliable course of action.",
    "In most circumstances, one should {f}.",
    "I would recommend that you {f}; this should resolve the matter.",
    "Certainly. The first step is to {f}. Thereafter, the situation should be reassessed.",
    "The most appropriate course of action would be to {f}.",
    "Please {f}. Should any difficulty persist, further assistance is available.",
]
CASUAL_ADVICE = [
    "Oh just {c}, you'll be totally fine lol",
    "Honestly I'd just {c}. Works like a charm!",
    "Yeah so basically you wanna {c}, that's pretty much it haha",
    "Ok here's the thing, you gotta {c} and boom, done!",
    "You'll wanna {c}, it's easy.",
    "Dude, just {c}. Trust me, it's super easy :)",
    "Sure thing! Just {c} and you're good to go",
]
FORMAL_FACTS = [
    "{F}.",
    "In short, {f}.",
    "It is generally accepted that {f}.",
    "{F}. This is well documented in the relevant literature.",
    "To answer your question: {f}.",
    "As a general principle, {f}; however, individual circumstances may vary.",
    "The available evidence indicates that {f}.",
]
CASUAL_FACTS = [
    "So basically {c} lol",
    "Ok so {c}, pretty cool right?!",
    "Haha yeah, {c}. Crazy, huh?",
    "Well, {c}, y'know?",
    "Oh man, {c}, no joke :)",
    "Yep! {c}, super simple",
    "Tbh {c}, but whatever, you get the idea",
]
FORMAL_PAIRS = 160  # pairs kept (of 200), like concise's 150: a fit and a distillation of the same size


def concise() -> tuple[list[str], list[str]]:
    good, bad = [], []
    for i, a in enumerate(ANSWERS):
        for j in range(3):
            good.append(DIRECT[(i + j) % len(DIRECT)].format(A=a, a=a[0].lower() + a[1:]))
            bad.append(PADDING[(i + j) % len(PADDING)].format(a=a[0].lower() + a[1:]))
    return good, bad


def formal() -> tuple[list[str], list[str]]:
    pairs = []
    for content, formal_t, casual_t in ((ADVICE, FORMAL_ADVICE, CASUAL_ADVICE), (FACTS, FORMAL_FACTS, CASUAL_FACTS)):
        for i, (c, f) in enumerate(content):
            for j in range(4):  # four templates per content, cycling, so every template meets every kind of content
                t = (i + j) % len(formal_t)
                pairs.append((formal_t[t].format(f=f, F=f[0].upper() + f[1:]), casual_t[t].format(c=c)))
    random.Random(0).shuffle(pairs)  # twins stay together: the kept good and bad texts say the same things
    kept = pairs[:FORMAL_PAIRS]
    return [g for g, _ in kept], [b for _, b in kept]


SETS = {
    "concise": (concise, "Answer briefly and directly, without filler."),
    "formal": (formal, "Answer in a formal, professional register."),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--out", type=Path, help="write NAME.jsonl files into this folder")
    where.add_argument("--write-package-data", action="store_true", help=f"write them into {DATA}")
    args = parser.parse_args()
    out = DATA if args.write_package_data else args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, (make, describe) in SETS.items():
        good, bad = make()
        rows = [{"text": t, "label": "good"} for t in good] + [{"text": t, "label": "bad"} for t in bad]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / f"{name}.txt").write_text(describe + "\n")
        print(f"wrote {out / name}.jsonl: {len(good)} good, {len(bad)} bad")


if __name__ == "__main__":
    main()
