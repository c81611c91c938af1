"""Write the distillation prompts and the held-out evaluation prompts (sia_local/data).

    python scripts/data/make_distill_prompts.py -o prompts.txt --heldout heldout.txt     # or --write-package-data

Distillation: ~240 situations from many parts of life (work, family, health, money, travel, school,
hobbies, neighbours, technology, neutral tasks), each asked 5 ways drawn from 24 kinds of request
(a message, advice, a story, a plan, an explanation, a review, a poem, ...) and 12 registers (to a
child, formally, in two sentences, as a list, ...): ~1,200 prompts, no two alike, no situation with
more than 5. Held out: 70 other situations asked in 10 other ways, one prompt each, for evaluation
only: no code fits or chooses anything on them (but the heads' spread scaling was adopted after
looking at their figures: docs/value-heads.md). Deterministic; the script refuses a prompt that is also a
bench or calibration prompt, and a held-out situation that appears in the distillation set.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "sia_local" / "data"

SITUATIONS = [
    # annoyances and setbacks
    "a landlord who has not fixed the heating for three weeks", "a friend who cancelled our plans at the last minute",
    "a parcel that arrived broken", "a bus that was forty minutes late", "a colleague who took credit for my work",
    "a neighbour who parks across my driveway", "a noisy party upstairs on a weeknight", "a restaurant that lost our booking",
    "a job interview that went badly", "a rejected grant application", "a sibling who borrowed money and never paid it back",
    "a long queue at the post office", "a flight that was cancelled", "a teacher who marked my essay unfairly",
    "a phone that broke the day after the warranty ended", "a group project where nobody else does any work",
    "a customer who shouted at me at work", "a gym that raised its prices again", "a bad haircut before a wedding",
    "a laptop that crashed before I saved my thesis", "waiting all day for a repair person who never came",
    "a new manager who changes every plan", "a friend who always arrives late", "losing my keys on a cold night",
    "a slow internet connection during an important call", "a garden ruined by a storm", "being left out of a group chat",
    "a hotel room that smelled of smoke", "a parking ticket I think was unfair", "a washing machine that flooded the kitchen",
    "a bank that froze my card while I was abroad", "a dentist appointment that was moved three times",
    "a coffee spilled over my notes before a presentation", "a roommate who never washes the dishes",
    "a car that will not start on a frosty morning", "a subscription I cannot manage to cancel", "a wedding invitation I forgot to answer",
    "a cake that collapsed in the oven", "a referee who made a terrible decision", "an online order that never arrived",
    "a power cut during dinner", "a leaking roof in the middle of winter", "a printer that jams every single time",
    "a lost suitcase at the airport", "a noisy building site next to my office", "a rude comment on my photo",
    # sad, tense or tender moments
    "a pet that is getting old", "moving to a city where I know nobody", "a friend moving to another country",
    "my grandmother going into a care home", "a long-distance relationship", "the last day at a job I loved",
    "a child starting school for the first time", "a father who does not say much", "an argument with my best friend",
    "a missed chance to say goodbye", "feeling tired all the time", "my team losing the final match",
    "a diagnosis that worried the whole family", "a first night in hospital", "a friend who is going through a divorce",
    "a neighbour who lives alone and rarely goes out", "failing my driving test for the second time", "a house that is too quiet since the kids left",
    "a promotion that went to someone else", "an apology I owe my sister", "a wallet returned by a stranger",
    "a colleague who is retiring after thirty years", "a cousin who has not spoken to us in years", "being nervous before a big exam",
    "a birthday nobody remembered", "a plant I have kept alive for ten years", "finding an old letter from my grandfather",
    "a friend who helped me move house", "a toddler who will not sleep", "a teenager who stopped talking to us",
    # work and money
    "asking my boss for a raise", "a tight budget at the end of the month", "starting a small bakery", "writing my first invoice",
    "a team meeting that went on far too long", "a new colleague who seems lonely", "negotiating the price of a used car",
    "saving for a first flat", "a side project that earns nothing yet", "a difficult conversation with a supplier",
    "working from home with two children", "a job offer in another town", "a performance review next week",
    "splitting the bill after a group dinner", "an unexpected tax bill", "volunteering at a food bank",
    "training a new intern", "a deadline that moved forward by a week", "choosing between two job offers",
    "a shop that is losing customers", "a client who pays months late", "asking for a day off at short notice",
    # health and everyday life
    "starting to run again after an injury", "cooking for a friend with many allergies", "trying to drink less coffee",
    "a back that hurts after long days at the desk", "learning to sleep without a phone in the bedroom", "a walk in the rain without an umbrella",
    "a weekly visit to the farmers market", "cleaning out the garage", "a quiet Sunday afternoon", "learning to bake bread",
    "starting a vegetable garden", "the first snow of the year", "a long walk by the river", "a picnic that got rained off",
    "a cat that brings mice into the house", "a dog that is afraid of fireworks", "painting the living room",
    "a library book that is three months overdue", "a neighbourhood clean-up day", "a street festival in summer",
    "the smell of a bakery early in the morning", "a broken bicycle chain on the way to work", "a night without electricity in a storm",
    "a sunrise seen from a train", "teaching my father to use a smartphone", "a old song on the radio",
    # travel and places
    "a train journey through the mountains", "a weekend in a small fishing village", "getting lost in a foreign city",
    "a camping trip where it rained all week", "a night ferry to an island", "a first visit to a big museum",
    "a road trip with a broken air conditioner", "a hostel with a very loud dormitory", "a tour guide who made history fun",
    "a missed connection at a busy station", "a market in a town where I do not speak the language", "coming home after a year abroad",
    # school, learning and hobbies
    "learning to play the guitar at forty", "a chess club for beginners", "a science fair project that failed",
    "a book club that never reads the book", "learning a language with an app", "a pottery class", "a choir concert",
    "a first marathon", "knitting a scarf for a friend", "a photography walk in the city", "an amateur play opening night",
    "a school trip to the coast", "a student who is struggling with maths", "writing a first short story", "a history essay due tomorrow",
    "a dance class with a patient teacher", "a model railway in the attic", "birdwatching at dawn", "a pub quiz we lost by one point",
    "a jigsaw puzzle with a missing piece", "a football team of eight-year-olds", "fixing an old radio",
    # technology and community
    "a password I keep forgetting", "a video call with grandparents", "a smart speaker that misunderstands everything",
    "a website that keeps logging me out", "an app update that moved every button", "a group chat with too many messages",
    "a town council meeting about a new park", "a petition to save the local library", "a charity run for the hospital",
    "a new bike lane on our street", "a community garden on an empty lot", "a lost cat poster in the neighbourhood",
    "a repair cafe that fixes old toasters", "a bus route that is being cut", "a new family moving in next door",
    "a school that needs volunteers", "a local shop closing after fifty years", "a free concert in the park",
    # neutral tasks
    "how bread rises", "why the sky is blue", "how a bicycle gear works", "planning a week of simple dinners",
    "packing for a three-day hike", "choosing a first houseplant", "the rules of chess for a beginner", "how to fold a fitted sheet",
    "the history of the postal service", "how bees make honey", "organising a small birthday party", "a packing list for a beach holiday",
    "how a library catalogue works", "the water cycle", "keeping a kitchen tidy", "how to write a thank-you note",
    "how trains stay on the tracks", "the difference between weather and climate", "how to start a compost heap",
    "the life of a lighthouse keeper", "how a refrigerator keeps food cold", "what makes a good team captain",
    "how to read a bus timetable", "the story behind a city's oldest bridge", "tips for a first camping trip",
    "how to care for a goldfish", "what a museum curator does", "how clocks were made before electricity",
    "making a simple tomato soup", "how to plan a reading list for the summer", "the way a river shapes a valley",
    "how a recycling centre sorts waste", "the job of an air traffic controller", "how to repair a puncture",
    "choosing a board game for a family evening", "how hot air balloons fly", "the seasons in a forest",
    "how to write a good shopping list", "what a night shift nurse does", "the history of the umbrella",
    "how tea is grown", "how to prepare for a long flight", "the way ants build a nest", "what happens at a flower show",
]

ASKS = [
    "Write a short message about {s}.", "How should I deal with {s}?", "Describe {s}.", "What do you think about {s}?",
    "Tell a very short story about {s}.", "Write a reply to a friend who wrote to me about {s}.", "Give me tips about {s}.",
    "Write a diary entry about {s}.", "Explain {s}.", "Write a short poem about {s}.", "Write a social media post about {s}.",
    "Write an email to my manager about {s}.", "Write a review of {s}.", "What would you say to someone facing {s}?",
    "Make a small plan for {s}.", "Write the opening of a speech about {s}.", "List the good and bad sides of {s}.",
    "Write a text message to my mum about {s}.", "Write a note for a neighbour about {s}.", "Summarise, in your own words, {s}.",
    "Write a letter to a local newspaper about {s}.", "Give me a pep talk about {s}.", "Write a news-style paragraph about {s}.",
    "Help me put into words how I feel about {s}.",
]

REGISTERS = [
    "", " Keep it to two sentences.", " Use simple words a child would understand.", " Be formal.", " Keep it casual.",
    " Write it as a short list.", " Make it funny.", " Be honest and direct.", " Use no more than fifty words.", " Make it warm.",
    " Write it for a teenager.", " Be brief.",
]

HELDOUT_SITUATIONS = [
    "a lighthouse that is being turned into a hotel", "a neighbour's rooster that crows at four in the morning", "a broken escalator at the station",
    "a goat that escaped from the city farm", "a violin lesson that went wrong", "a surprise visit from an old school friend",
    "a sandcastle competition", "a night bus full of football fans", "a lost glove on a park bench", "a jam jar that will not open",
    "a hailstorm in the middle of June", "a queue for concert tickets that started at dawn", "a tailor who shortened my trousers too much",
    "a harbour at low tide", "a kite stuck in a tree", "a sleepover with six excited children", "a snow day when school is closed",
    "a café that only sells soup", "a cathedral choir rehearsal", "a ferry cancelled by fog", "a stall selling second-hand records",
    "a pumpkin that won first prize", "a tram driver who sings", "a hike to a mountain hut", "a village that shares one tractor",
    "an old typewriter found in the attic", "a crossword I cannot finish", "a homemade robot that only spins in circles",
    "a family recipe nobody wrote down", "a power bank that died on a long hike", "a clock tower that stopped at noon",
    "a swimming pool closing for repairs", "a fox that visits the garden every night", "a mural painted on the school wall",
    "a wrong number that led to a long chat", "a neighbour learning the trumpet", "a bookshop cat", "a village fete in the rain",
    "a sailing lesson on a windy day", "a snowman that lasted a week", "a missing sock mystery", "a school reunion after twenty years",
    "a marathon runner who finished last", "a bakery that gives away bread at closing time", "a bridge closed for a month",
    "a cancelled school play", "an elevator stuck between floors", "a cheese festival", "a hospital volunteer who plays the piano",
    "a town that lost its only cinema", "a first day as a lifeguard", "a heat wave in a flat with no fan", "a broken-down ice cream van",
    "a treasure hunt for a birthday", "a cat that sleeps in the laundry basket", "a choir that sings in a car park",
    "a delayed pizza delivery on a Friday night", "a grandmother's first email", "a tree planted for a newborn",
    "a river swim in autumn", "a secondhand wedding dress", "a ferris wheel stuck at the top", "a class hamster on holiday at our house",
    "a boat trip to see seals", "a shop assistant who remembered my name", "a forgotten umbrella on the train",
    "a garden gnome that went missing", "a tired nurse at the end of a shift", "a street musician in the snow", "a bike ride to the coast",
]

HELDOUT_ASKS = [
    "Could you write a few lines about {s}?", "I want to hear your thoughts on {s}.", "Share a brief anecdote about {s}.",
    "Say something about {s}.", "Put together a short note on {s}.", "In a few sentences, talk about {s}.",
    "Write a postcard about {s}.", "Compose a quick update about {s} for my friends.", "Sketch a scene about {s}.",
    "Tell me about {s}.",
]


def distill_prompts() -> list[str]:
    rng = random.Random(0)
    prompts = []
    for s in SITUATIONS:
        asks = rng.sample(ASKS, 5)
        for a in asks:
            prompts.append(_cap(a.format(s=s) + rng.choice(REGISTERS)))
    rng.shuffle(prompts)
    return prompts


def heldout_prompts() -> list[str]:
    rng = random.Random(1)
    return [_cap(rng.choice(HELDOUT_ASKS).format(s=s)) for s in HELDOUT_SITUATIONS]


def _cap(p: str) -> str:
    return p[0].upper() + p[1:]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write the distillation prompts and the held-out evaluation prompts.",
                                     epilog="Writes only where told: -o FILE [--heldout FILE], or --write-package-data for the shipped sets.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--out", type=Path, help="write the distillation prompts here")
    where.add_argument("--write-package-data", action="store_true", help=f"replace {DATA / 'distill_prompts.txt'} and heldout_prompts.txt")
    parser.add_argument("--heldout", type=Path, help="write the held-out prompts here (with -o)")
    args = parser.parse_args()
    out = DATA / "distill_prompts.txt" if args.write_package_data else args.out
    held_out_file = DATA / "heldout_prompts.txt" if args.write_package_data else args.heldout
    taken = {json.loads(line)["prompt"].strip().lower() for line in (DATA / "bench_prompts.jsonl").read_text().splitlines() if line.strip()}
    taken |= {line.strip().lower() for line in (DATA / "calibration_prompts.txt").read_text().splitlines() if line.strip()}
    prompts, held = distill_prompts(), heldout_prompts()
    clash = [p for p in prompts + held if p.lower() in taken]
    if clash:
        raise SystemExit(f"these prompts are also bench or calibration prompts: {clash}")
    shared = [s for s in HELDOUT_SITUATIONS if any(s in p for p in prompts)]
    if shared or len(set(SITUATIONS)) != len(SITUATIONS):
        raise SystemExit(f"held-out situations also in the distillation set, or repeated situations: {shared}")
    out.write_text("\n".join(prompts) + "\n")
    print(f"wrote {len(prompts)} prompts ({len(SITUATIONS)} situations) to {out}")
    if held_out_file is not None:
        held_out_file.write_text("\n".join(held) + "\n")
        print(f"wrote {len(held)} held-out prompts to {held_out_file}")


if __name__ == "__main__":
    main()
