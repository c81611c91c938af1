"""Write the example sets of the built-in objectives `concise` and `formal` (sia_local/data/objectives/).

concise: the same answers said directly (good) and padded with filler, hedging and repetition (bad).
formal: requests, replies and notices in a formal register (good) and in a casual, slangy one (bad).
Each good text has a bad twin with the same content, so the head learns the register or the padding,
not the topic. Deterministic; hand-written pieces combined, >= 150 examples a side.

    python scripts/data/make_objective_examples.py -o examples/        # or --write-package-data
"""

from __future__ import annotations

import argparse
import itertools
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

REQUESTS = [
    ("send me the report", "forward the report"), ("call me back", "return my call"), ("check the numbers", "review the figures"),
    ("fix the heating", "arrange the repair of the heating"), ("come to the meeting", "attend the meeting"),
    ("tell me what you think", "share your assessment"), ("let me know about the dates", "confirm the dates"),
    ("pay the bill", "settle the outstanding invoice"), ("sign the form", "sign the enclosed form"), ("move the delivery", "reschedule the delivery"),
    ("send the photos", "send the photographs"), ("answer the email", "respond to the correspondence"), ("book a room", "reserve a room"),
    ("explain the delay", "account for the delay"), ("update the plan", "revise the plan"), ("look at my draft", "review my draft"),
    ("cancel the order", "cancel the order"), ("give me a refund", "issue a refund"), ("share the slides", "circulate the slides"),
    ("help with the move", "assist with the relocation"), ("check the contract", "examine the contract"), ("lend me the book", "lend me the volume"),
    ("send the tickets", "forward the tickets"), ("fix the website", "resolve the issue with the website"), ("bring the keys", "deliver the keys"),
]
FORMAL = [
    "Dear colleague, I would be grateful if you could {f} at your earliest convenience. Kind regards.",
    "I am writing to ask whether you would be able to {f} by the end of the week. Thank you in advance.",
    "Please let me know whether it would be possible to {f}. I look forward to your reply.",
    "We would appreciate it if you could {f}. Should you have any questions, please do not hesitate to contact us.",
    "Further to our conversation, I should be grateful if you would {f}. Yours sincerely.",
    "Would you kindly {f}? Please accept my thanks for your assistance.",
    "I regret to inform you that we are unable to proceed until you {f}. Thank you for your understanding.",
]
CASUAL = [
    "hey can u {c} lol, thx",
    "yo just {c} asap ok?? cheers m8",
    "gonna need u to {c} like rn tbh",
    "so like can ya {c}? kinda urgent haha",
    "dude pls {c}, ugh this is soooo annoying",
    "k so {c} when u get a sec, np if not lol",
    "omg {c} already!!! seriously",
]


def concise() -> tuple[list[str], list[str]]:
    good, bad = [], []
    for i, a in enumerate(ANSWERS):
        for j in range(3):
            good.append(DIRECT[(i + j) % len(DIRECT)].format(A=a, a=a[0].lower() + a[1:]))
            bad.append(PADDING[(i + j) % len(PADDING)].format(a=a[0].lower() + a[1:]))
    return good, bad


def formal() -> tuple[list[str], list[str]]:
    good, bad = [], []
    for (c, f), (ft, ct) in itertools.product(REQUESTS, zip(FORMAL, CASUAL)):
        good.append(ft.format(f=f))
        bad.append(ct.format(c=c))
    rng = random.Random(0)
    rng.shuffle(good)
    rng.shuffle(bad)
    return good[:160], bad[:160]


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
