"""Does an answer realise the ratio it asked for? Per answer, over its first tokens, and over 64-token windows.

Generates answers to bench prompts (the calibration never saw them) with the default model and reward
at each --ratio, with the online ratio control (`--ratio`) and with the calibrated tau held fixed, and
reports the realised junction share of each answer over its first 32 tokens and over all of it. One
more prompt asks for code (long near-certain stretches): its answer's junction share in every
64-token window after the first 64 tokens shows whether the control winds up.

    python scripts/bench/bench_ratio_control.py --json scripts/results/ratio_control.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

CODE_PROMPT = "Write a Python function that parses a CSV file of dates and amounts, with a docstring and three unit tests, in one code block."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.2,0.3,0.4")
    parser.add_argument("--prompts", type=int, default=8, help="bench prompts, from the end of the shipped set")
    parser.add_argument("-n", "--tokens", type=int, default=128)
    parser.add_argument("--code-tokens", type=int, default=320)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np

    from sia_local.prompts import load_prompts
    from sia_local.core.config import SteerConfig
    from sia_local.runtime import load

    steerer = load(config=SteerConfig(max_tokens=args.tokens))
    prompts = load_prompts()[-args.prompts:]
    out: dict[str, dict] = {}
    for ratio in (float(r) for r in args.ratios.split(",")):
        tau = steerer.resolve_tau(steerer.config.updated(ratio=ratio))
        row: dict[str, list] = {"controlled": [], "controlled_first32": [], "controlled_tokens": [], "fixed_tau": [], "fixed_tau_first32": []}
        for i, prompt in enumerate(prompts):
            for name, extra in (("controlled", {"ratio": ratio}), ("fixed_tau", {"tau": tau})):
                g = steerer.generate(prompt, seed=i, trace=True, **extra)
                hits = [t.junction for t in g.trace or []]
                row[name].append(round(float(np.mean(hits)) if hits else 0.0, 3))
                row[f"{name}_first32"].append(round(float(np.mean(hits[:32])) if hits else 0.0, 3))
                if name == "controlled":
                    row["controlled_tokens"].append(len(hits))
        code = steerer.generate(CODE_PROMPT, seed=0, ratio=ratio, trace=True, max_tokens=args.code_tokens)
        hits = np.array([t.junction for t in code.trace or []], dtype=float)
        certain = np.array([t.entropy < 0.08 for t in code.trace or []], dtype=float)
        windows = np.convolve(hits[64:], np.ones(64), "valid") / 64 if len(hits) >= 128 else np.array([])
        row_summary = {"tau": tau, **row, "code": {"tokens": len(hits), "near_certain_share": round(float(certain.mean()), 3) if len(hits) else None,
                                                   "ratio": round(float(hits.mean()), 3) if len(hits) else None,
                                                   "window64_min": round(float(windows.min()), 3) if len(windows) else None,
                                                   "window64_max": round(float(windows.max()), 3) if len(windows) else None}}
        out[str(ratio)] = row_summary
        print(f"ratio {ratio}: controlled {min(row['controlled']):.3f}-{max(row['controlled']):.3f} "
              f"(median {statistics.median(row['controlled']):.3f}; first 32 tokens median {statistics.median(row['controlled_first32']):.3f}), "
              f"fixed tau {min(row['fixed_tau']):.3f}-{max(row['fixed_tau']):.3f}; code answer {row_summary['code']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
