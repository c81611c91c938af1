"""What the layer taps' eval callback costs a decode: Python on every graph node (before: the callback llama.cpp
held was Python's) against the C callback that forwards to Python only during tapped decodes (now), with a value
head loaded; gate none and SIA@0.2, each alone and beside a busy second Python thread (a server's event loop, a
user's own thread: every node's callback must take the GIL from it). Arms alternate within each round; medians.

Run: python scripts/bench/bench_taps_callback.py [-m MODEL.gguf --head HEAD_DIR] [--tokens 96] [--rounds 5] [-ngl -1] [--out F]
Feeds: docs/benchmarks.md, "The taps' callback".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

PROMPTS = ["Write a short note to a neighbour whose dog barks at night.", "Tell me about Mondays.", "Describe rain in a city.",
           "Give me three tips for sleeping well."]


def _load(mode: str, model: str | None, head: str | None, ngl: int, threads: int):
    from sia_local.core.config import SteerConfig
    from sia_local.runtime import LMSettings, ScorerSettings, load

    os.environ["SIA_TAPS_SHIM"] = "off" if mode == "python" else "on"
    try:
        steerer = load(LMSettings(model=model, n_gpu_layers=ngl, n_threads=threads), ScorerSettings(path=head, prefer="head"), SteerConfig(seed=1),
                       note=lambda m: None)
    finally:
        os.environ.pop("SIA_TAPS_SHIM", None)
    taps = steerer.lm.taps
    assert taps is not None and taps.shim == (mode == "c"), f"{mode}: the taps are {'C' if taps and taps.shim else 'Python or off'}"
    return steerer


def _busy(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(1000):
            x += i  # pure Python: holds the GIL except at switch intervals


def _tps(steerer, tokens: int, gate: str, busy: bool) -> float:
    stop = threading.Event()
    worker = threading.Thread(target=_busy, args=(stop,), daemon=True) if busy else None
    if worker:
        worker.start()
    try:
        done, t = 0, time.perf_counter()
        for i, p in enumerate(PROMPTS):
            g = steerer.generate(p, gate=gate, ratio=0.2, seed=10 + i, max_tokens=tokens)
            done += g.stats.tokens
        return done / (time.perf_counter() - t)
    finally:
        stop.set()
        if worker:
            worker.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default=None, help="a GGUF (default: the bundled SmolLM2, with its shipped head)")
    ap.add_argument("--head", default=None, help="a head folder for a model without a shipped one")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads, fixed (no governor); 1 leaves the busy thread a core of "
                    "its own on 2 cores, so what is measured is the GIL, not two programs on one core")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    steerers = {mode: _load(mode, args.model, args.head, args.n_gpu_layers, args.threads) for mode in ("python", "c")}
    arms = [(gate, busy) for gate in ("none", "entropy") for busy in (False, True)]
    runs: dict[str, list[float]] = {}
    for mode, s in steerers.items():  # warm-up: tau calibration, first graphs
        _tps(s, 8, "entropy", False)
    for r in range(args.rounds):
        for gate, busy in arms:
            for mode in (("python", "c") if r % 2 == 0 else ("c", "python")):
                runs.setdefault(f"{mode}|{gate}|{busy}", []).append(_tps(steerers[mode], args.tokens, gate, busy))
    table = []
    for gate, busy in arms:
        before, now = statistics.median(runs[f"python|{gate}|{busy}"]), statistics.median(runs[f"c|{gate}|{busy}"])
        row = {"gate": "SIA@0.2" if gate == "entropy" else "none", "busy_thread": busy, "python_callback_tps": round(before, 1),
               "c_callback_tps": round(now, 1), "speedup": round(now / before, 3)}
        table.append(row)
        print(f"{row['gate']:8s} busy thread={str(busy):5s}  Python on every node {before:7.1f} tok/s   C callback {now:7.1f} tok/s   x{now / before:.2f}",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model or "SmolLM2-135M-Instruct Q4_1 (bundled)", "head": args.head, "tokens": args.tokens,
                                        "rounds": args.rounds, "n_gpu_layers": args.n_gpu_layers, "threads": args.threads, "table": table, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
