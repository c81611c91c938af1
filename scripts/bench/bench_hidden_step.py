"""Does loading the LM with hidden states and layer taps (value heads) slow plain decode steps? Side by side, interleaved.

Loads the same GGUF three times: plain; with hidden states and layer taps as value heads load it (the
taps' eval callback is switched off between tapped decodes); and the same with the callback left on
for every step (the fallback where llama.cpp's parameter cannot be found: a Python call per graph node).
Times one-token steps at several context lengths, rotating which LM goes first each round (so drift
on a shared machine hits all alike). Prints medians and the ratios; --json writes them.

    python scripts/bench/bench_hidden_step.py --json scripts/results/hidden_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default=None, help="GGUF file [default: the bundled SmolLM2-135M]")
    parser.add_argument("--contexts", default="64,512,1536", help="context lengths, comma-separated")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=24, help="steps timed per round")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from sia_local.rewards.defaults import default_model_path
    from sia_local.llama import LM

    path = Path(args.model) if args.model else default_model_path()
    contexts = [int(x) for x in args.contexts.split(",")]
    n_ctx = max(contexts) + args.steps + 8
    lms = {"plain": LM(path, n_ctx=n_ctx, n_threads=args.threads), "hidden": LM(path, n_ctx=n_ctx, n_threads=args.threads, hidden=True),
           "taps always on": LM(path, n_ctx=n_ctx, n_threads=args.threads, hidden=True)}
    always = lms["taps always on"].taps
    if always is not None:
        always.always_on()
    ids = lms["plain"].tokenize("The quick brown fox jumps over the lazy dog. " * (n_ctx // 8))
    out: dict[str, dict[str, float]] = {}
    for n in contexts:
        times: dict[str, list[float]] = {name: [] for name in lms}
        for r in range(args.rounds):
            names = list(lms)
            for name in names[r % len(names):] + names[: r % len(names)]:
                lm = lms[name]
                lm.prefill(ids[:n])
                t = time.perf_counter()
                for j in range(args.steps):
                    lm.step(ids[n + j])
                times[name].append((time.perf_counter() - t) / args.steps * 1e3)
        med = {name: statistics.median(v) for name, v in times.items()}
        out[str(n)] = {"step_ms_plain": med["plain"], "step_ms_hidden": med["hidden"], "hidden_over_plain": med["hidden"] / med["plain"],
                       "step_ms_taps_always_on": med["taps always on"], "always_on_over_plain": med["taps always on"] / med["plain"]}
        print(f"{n:5d} tokens: plain {med['plain']:.2f} ms, hidden + taps (switched) {med['hidden']:.2f} ms, ratio {med['hidden'] / med['plain']:.3f}; "
              f"callback always on {med['taps always on']:.2f} ms, ratio {med['taps always on'] / med['plain']:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": path.name, "threads": args.threads, "rounds": args.rounds, "contexts": out}, indent=1))


if __name__ == "__main__":
    main()
