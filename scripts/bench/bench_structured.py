"""Structured output under steering, measured: how many answers parse and validate against a JSON schema, with and
without the grammar, unsteered (gate none) and with SIA at a ratio of 0.25; and what the grammar costs per token.

Runs the default model and objective on N prompts that ask, in words, for a JSON object with the schema's fields.
Arms are interleaved prompt by prompt (so drift hits all alike). Prints a table and writes JSON with --out.
    python scripts/bench/bench_structured.py [--prompts 50] [--tokens 192] [--out scripts/results/structured.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SCHEMA = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 60},
                                           "mood": {"type": "string", "enum": ["happy", "sad", "calm", "tense"]},
                                           "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                                           "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4}},
          "required": ["title", "mood", "rating", "tags"]}  # bounded, so a constrained answer can always finish within --tokens
TOPICS = ["a rainy Monday", "a new neighbour", "a lost umbrella", "a delayed train", "a birthday party", "a job interview", "a broken phone",
          "a walk in the park", "a noisy café", "a first snow", "a late parcel", "a football match", "a cooking failure", "a museum visit",
          "a long queue", "a quiet library", "a surprise gift", "a flat tyre", "a school play", "a power cut", "a lost cat", "a summer storm",
          "a new bicycle", "a moving day", "a dentist visit"]
ASKS = ["Reply only with a JSON object with the fields title, mood (happy, sad, calm or tense), rating (an integer) and tags (a list of strings) about {}.",
        "Give a JSON object describing {}: title, mood (one of happy, sad, calm, tense), rating as an integer, and tags as an array of strings."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import jsonschema

    from sia_local import SteerConfig, load_default_lm, load_default_reward
    from sia_local.llama.grammar import schema_grammar
    from sia_local.runtime import build_steerer

    prompts = [ASKS[i % 2].format(TOPICS[i % len(TOPICS)]) for i in range(args.prompts)]
    steerer = build_steerer(load_default_lm(), load_default_reward(), SteerConfig(max_tokens=args.tokens, ratio=0.25))
    grammar = schema_grammar(SCHEMA, "SCHEMA")
    arms = {f"{gate} {'grammar' if g else 'free'}": {"gate": gate, "grammar": g} for gate in ("none", "entropy") for g in (None, grammar)}
    rows = {name: {"valid": 0, "parsed": 0, "cut_at_max_tokens": 0, "tokens": 0, "seconds": 0.0, "junctions": 0} for name in arms}
    for i, prompt in enumerate(prompts):
        for name, change in arms.items():
            t = time.perf_counter()
            g = steerer.generate(prompt, seed=i, **change)
            row = rows[name]
            row["seconds"] += time.perf_counter() - t
            row["tokens"] += g.stats.tokens
            row["junctions"] += g.stats.junctions
            row["cut_at_max_tokens"] += g.stats.finish_reason == "length"
            try:
                value = json.loads(g.text)
                row["parsed"] += 1
                jsonschema.validate(value, SCHEMA)
                row["valid"] += 1
            except (ValueError, jsonschema.ValidationError):
                pass
        print(f"{i + 1}/{len(prompts)}", flush=True)
    report = {"prompts": len(prompts), "max_tokens": args.tokens, "schema": SCHEMA, "arms": {}}
    for name, row in rows.items():
        report["arms"][name] = {**row, "valid_share": row["valid"] / len(prompts), "parsed_share": row["parsed"] / len(prompts),
                                "ms_per_token": 1000 * row["seconds"] / max(row["tokens"], 1), "ratio": row["junctions"] / max(row["tokens"], 1)}
    for gate in ("none", "entropy"):
        free, constrained = report["arms"][f"{gate} free"], report["arms"][f"{gate} grammar"]
        report[f"grammar_cost_per_token_{gate}"] = constrained["ms_per_token"] / free["ms_per_token"]
    print(f"{'arm':18} {'valid':>6} {'parsed':>7} {'cut':>4} {'ms/token':>9} {'ratio':>6}")
    for name, row in report["arms"].items():
        print(f"{name:18} {row['valid_share']:6.0%} {row['parsed_share']:7.0%} {row['cut_at_max_tokens']:4d} {row['ms_per_token']:9.2f} {row['ratio']:6.2f}")
    print({k: round(v, 3) for k, v in report.items() if k.startswith("grammar_cost")})
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
