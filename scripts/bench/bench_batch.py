"""Rows per second of `sia batch`: 1 local worker vs 2 local workers vs 2 Ray actors (local Ray), side by side.

The same rows (the shipped bench prompts, twice over with other ids, so 100 rows) and the same
steering settings for each arm; model loading is included in the wall time, as a user would see it.
Run alone on the machine.

    python scripts/bench/bench_batch.py --rows 100 --tokens 48 --json scripts/results/batch.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sia_local.batch import WorkerSpec, run_file
from sia_local.prompts import load_prompts
from sia_local.core.config import SteerConfig
from sia_local.runtime import LMSettings, ScorerSettings, load_lm, load_scorer
from sia_local.core.calibrate import tau_for_ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    prompts = load_prompts()
    rows = [{"id": f"r{i}", "prompt": prompts[i % len(prompts)]} for i in range(args.rows)]
    work = Path(tempfile.mkdtemp())
    infile = work / "in.jsonl"
    infile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lm = load_lm(LMSettings())
    load_scorer(ScorerSettings(), lm)  # build the default reward once
    tau_for_ratio(lm, args.ratio)  # calibrate once: workers find it in the cache
    del lm
    spec = WorkerSpec(LMSettings(), ScorerSettings(), SteerConfig(ratio=args.ratio, max_tokens=args.tokens))
    arms = {"1 local worker": {"workers": 1}, "2 local workers": {"workers": 2}, "2 Ray actors": {"workers": 2, "use_ray": True}}
    result: dict = {"rows": args.rows, "tokens": args.tokens, "ratio": args.ratio, "arms": {}}
    for name, kw in arms.items():
        out = work / f"{name.replace(' ', '-')}.jsonl"
        t = time.perf_counter()
        summary = run_file(infile, out, spec, **kw)
        wall = time.perf_counter() - t
        tokens = sum(json.loads(line)["stats"]["tokens"] for line in out.read_text().splitlines())
        result["arms"][name] = {"seconds": wall, "rows_per_s": summary.rows / wall, "tokens": tokens, "failed": summary.failed}
        print(f"{name:16} {wall:7.1f} s  {summary.rows / wall:.3f} rows/s  {tokens} tokens  {summary.failed} failed", flush=True)
    a = result["arms"]
    result["ray_overhead_vs_local_2"] = a["2 Ray actors"]["seconds"] / a["2 local workers"]["seconds"] - 1
    print(f"Ray vs 2 local workers: {100 * result['ray_overhead_vs_local_2']:+.1f} % wall time")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
