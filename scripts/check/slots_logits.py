"""How far the slots' batched logits are from decoding alone: N prompts decoded together in one context
(`BatchContext` as `core/slots.py` makes it) against each prompt alone on the LM's own context, along the
same tokens (the greedy path of the one-alone run). Prints the largest absolute logit difference, and how
often the top-10 candidates or the greedy token differ.

Run: python scripts/check/slots_logits.py [-m MODEL.gguf] [--slots 4] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from sia_local.core.junction import top_k
from sia_local.llama import BatchContext
from sia_local.runtime import LMSettings, load_lm

PROMPTS = ["Write a note to a neighbour.", "Explain how bread rises.", "Tell a story about a lighthouse.", "Plan a picnic for four.",
           "Describe the sea in winter.", "Give me three tips for sleep.", "What is a good breakfast?", "Write two lines about rain."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    lm = load_lm(LMSettings(model=args.model, n_threads=None))
    prompts = [lm.render_chat([{"role": "user", "content": p}])[0] for p in PROMPTS[: args.slots]]
    paths, alone = [], []
    for ids in prompts:  # alone: the greedy path and its logits
        logits = lm.prefill(ids).copy()
        seq, rows = [], [logits]
        for _ in range(args.tokens):
            t = int(np.argmax(logits))
            seq.append(t)
            logits = lm.step(t).copy()
            rows.append(logits)
        paths.append(seq)
        alone.append(rows)
    ctx = BatchContext(lm, args.slots, 0, 0, slot_ctx=lm.n_ctx)
    try:
        out = ctx.step({}, {s: (ids, True) for s, ids in enumerate(prompts)})
        together = [[out[s].copy()] for s in range(args.slots)]
        for i in range(args.tokens):
            out = ctx.step({s: paths[s][i] for s in range(args.slots)})
            for s in range(args.slots):
                together[s].append(out[s].copy())
    finally:
        ctx.close()
    diff = max(float(np.abs(a - b).max()) for s in range(args.slots) for a, b in zip(alone[s], together[s]))
    steps = [(a, b) for s in range(args.slots) for a, b in zip(alone[s], together[s])]
    top_changed = sum(not np.array_equal(top_k(a, 10)[0], top_k(b, 10)[0]) for a, b in steps)
    greedy_changed = sum(int(np.argmax(a)) != int(np.argmax(b)) for a, b in steps)
    scale = float(np.mean([np.std(a) for a, _ in steps]))
    print(json.dumps({"model": lm.path.name, "slots": args.slots, "steps": len(steps), "max_abs_logit_diff": diff, "logit_std": scale,
                      "top10_sets_differ": top_changed, "greedy_token_differs": greedy_changed}, indent=1))


if __name__ == "__main__":
    main()
