"""Why a k-branch junction costs more at 512 tokens of context than at 64, and which context layout flattens it.

On one model (default: the synthetic ~1B Q4_K_M of `bench_junction_sizes.py`), side by side at each
context length: a plain one-token step, a k = 10 branch decode and an early-exit branch (half the
layers), for context layouts llama.cpp offers: flash attention on / off; the number of sequences the
context is made for (`n_seq_max`: 64, what llama-cpp-python gives an embeddings context, vs k + 1);
one KV buffer shared by all sequences (`kv_unified`) or one per sequence. Medians of --repeats,
layouts interleaved round by round so drift hits them alike. Run alone on the machine.

    python scripts/bench/bench_context_layout.py --json scripts/results/context_layout.json
    python scripts/bench/bench_context_layout.py --model path/to/model.gguf --contexts 64,512,2048
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

TEXT = ("The old lighthouse keeper climbed the stairs every evening, counting the steps and listening to the sea. "
        "He kept a notebook of ships, storms and the birds that rested on the rail, and wrote to his sister each week. ")
LAYOUTS = {  # name: (flash attention type: 1 on / 0 off, n_seq_max, kv_unified)
    "fa on, 64 seq, unified": (1, 64, True),
    "fa off, 64 seq, unified": (0, 64, True),
    "fa on, 11 seq, unified": (1, 11, True),
    "fa on, 11 seq, per-sequence": (1, 11, False),
}


def main() -> None:
    import numpy as np

    from sia_local.core.junction import top_k
    from sia_local.llama import LM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Writes only --json.")
    ap.add_argument("--model", type=Path, default=Path.home() / ".cache" / "sia-local" / "synthetic" / "synthetic-1b-q4_k_m.gguf",
                    help="a GGUF [default: the synthetic 1B; build it with scripts/bench/bench_junction_sizes.py --sizes 1b]")
    ap.add_argument("--contexts", default="64,512")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.model.exists():
        raise SystemExit(f"{args.model} does not exist: build it with `python scripts/bench/bench_junction_sizes.py --sizes 1b` or pass --model")
    contexts = [int(x) for x in args.contexts.split(",")]
    lms = {}
    for name, (fa, n_seq, unified) in LAYOUTS.items():
        lm = LM(args.model, n_ctx=max(contexts) + 64, n_threads=args.threads, hidden=True)
        per_sequence = {} if unified else {"n_ctx": (max(contexts) + 64) * n_seq}  # each sequence gets n_ctx / n_seq_max cells
        lm._install_taps(flash_attn_type=fa, n_seq_max=n_seq, kv_unified=unified, **per_sequence)
        lms[name] = lm
    ids = next(iter(lms.values())).tokenize(TEXT * 300, add_special=False)
    times: dict = {name: {n: {"step": [], "k10": [], "exit": []} for n in contexts} for name in lms}

    def timed(fn, before) -> float:
        before()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    for _ in range(args.rounds):
        for name, lm in lms.items():
            exit_layer = lm.n_layer // 2 - 1
            for n in contexts:
                prefix = ids[:n]
                token = int(np.argmax(lm.prefill(prefix)))
                cand = [int(c) for c in top_k(lm.logits(), 10)[0]]
                for _ in range(args.repeats):
                    times[name][n]["step"].append(timed(lambda: lm.step(token), lambda: lm.prefill(prefix)))
                    times[name][n]["k10"].append(timed(lambda: lm.branch(cand), lambda: lm.prefill(prefix)))
                    times[name][n]["exit"].append(timed(lambda: lm.branch_layers(cand, [exit_layer]), lambda: lm.prefill(prefix)))
    out: dict = {"model": str(args.model), "threads": args.threads, "layouts": {}}
    for name in lms:
        rows = {}
        for n in contexts:
            med = {k: statistics.median(v) for k, v in times[name][n].items()}
            rows[str(n)] = {"step_ms": med["step"], "k10_ms": med["k10"], "k10_in_steps": med["k10"] / med["step"],
                            "exit_half_ms": med["exit"], "exit_half_in_steps": med["exit"] / med["step"]}
            print(f"{name} @ {n}: step {med['step']:.1f} ms, k=10 {med['k10']:.1f} ms = {med['k10'] / med['step']:.2f} steps, "
                  f"early exit at half {med['exit']:.1f} ms = {med['exit'] / med['step']:.2f} steps", flush=True)
        out["layouts"][name] = rows
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
