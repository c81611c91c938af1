"""Decoding speed alone and beside one busy process: sia's adaptive thread count against fixed thread
counts and llama.cpp's OpenMP wait policies.

llama.cpp's worker threads wait for each other many times per token; when a waiting thread spins and
another program holds the core its partner needs, every step stalls. Each configuration runs in its
own process (the OpenMP runtime reads its settings when it loads), `sia`'s loop with --gate none,
64 tokens, median of 3 after a 64-token warm-up, first alone and then beside
`python -c "while True: pass"`; configurations interleaved over --rounds, medians reported.

    python scripts/bench/bench_contention.py --json scripts/results/contention.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, statistics, sys, time
from sia_local import runtime
from sia_local.core.config import SteerConfig
threads = int(sys.argv[1]) or None
steerer = runtime.load(runtime.LMSettings(n_threads=threads), None, SteerConfig(gate="none", max_tokens=64))
steerer.generate("Once upon a time, in a small village by the sea, there lived", raw=True, seed=99)  # warm-up
runs = []
for seed in range(3):
    g = steerer.generate("Once upon a time, in a small village by the sea, there lived", raw=True, seed=seed)
    runs.append(g.stats.tokens_per_s)
print(json.dumps({"tok_s": statistics.median(runs)}))
"""

CONFIGS = {
    "sia default: adaptive threads": ({}, 0),
    "default (OpenMP's own policy), -t 2": ({}, 2),
    "OMP_WAIT_POLICY=PASSIVE, -t 2": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2),
    "OMP_WAIT_POLICY=ACTIVE, -t 2": ({"OMP_WAIT_POLICY": "ACTIVE"}, 2),
    "GOMP_SPINCOUNT=10000, -t 2": ({"GOMP_SPINCOUNT": "10000"}, 2),
    "default, -t 1": ({}, 1),
}


def measure(env: dict[str, str], threads: int) -> float:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SIA_THREAD_POLICY")}
    full.update(env)  # -t N (threads > 0) is a fixed count; 0 lets sia adapt it
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads)], env=full, capture_output=True, text=True, timeout=600, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["tok_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all configurations (interleaved; medians reported)")
    args = ap.parse_args()
    runs: dict[str, dict[str, list[float]]] = {name: {"alone": [], "busy": []} for name in CONFIGS}
    for r in range(args.rounds):  # interleaved, because a shared VM's speed drifts by 20 % from minute to minute
        for name, (env, threads) in CONFIGS.items():
            runs[name]["alone"].append(measure(env, threads))
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
            try:
                runs[name]["busy"].append(measure(env, threads))
            finally:
                hog.kill()
                hog.wait()
            print(f"round {r + 1}: {name:38} alone {runs[name]['alone'][-1]:6.1f}  busy {runs[name]['busy'][-1]:6.1f}", flush=True)
    result = {}
    for name, rs in runs.items():
        alone, busy = statistics.median(rs["alone"]), statistics.median(rs["busy"])
        result[name] = {"alone_tok_s": alone, "beside_busy_tok_s": busy, "busy_over_alone": busy / alone, "runs": rs}
        print(f"{name:38} alone {alone:6.1f} tok/s   beside a busy process {busy:6.1f} tok/s   ({busy / alone:.2f}x)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
