"""What a junction costs by model size: synthetic Q4_K_M llamas of ~0.5B, ~1B and ~3B, side by side.

Timing does not depend on the weights' values, so each model is the test suite's random-weight llama
builder (`tests/tiny_models.write_tiny_gguf`, F16) quantised with llama.cpp's own
`llama_model_quantize` to Q4_K_M, built once into --workdir (the F16 file is deleted after). Disk: the
F16 file while quantising (~1 / 2.2 / 6.2 GB), then ~0.3 / 0.5 / 1.8 GB; time: ~0.5 / 1 / 4 minutes here.

For each model and context (64 / 512 / 2,048 tokens): the one-token step (ms); a k = 5 and k = 10
branch decode (the branch head, in steps, and what it adds to the step it replaces); early-exit
branches stopped after 1/4 and 1/2 of the layers (what they add); the default MiniLM reward's junction
(10 candidate texts) in steps; the prefix head's work (µs). Then what SIA costs per token against
gate none, from those: SIA@0.2 = 1 + 0.2 x extra, dense = 1 + extra (the loop's own cost is ~1 %,
`scripts/bench/bench_loop_overhead.py`). With a CUDA or Metal build, `-ngl 99` gives the GPU row (early exit
needs the CPU: on a GPU the taps are off and the full branch is reported).

    python scripts/bench/bench_junction_sizes.py --json scripts/results/junction_sizes.json
    python scripts/bench/bench_junction_sizes.py --sizes 1b --contexts 64,512 -ngl 99
Run it alone on the machine: llama.cpp's threads spin, any other busy process distorts the numbers.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SIZES = {  # name: builder arguments (a llama with grouped-query attention and a 32k vocabulary)
    "0.5b": {"n_embd": 1280, "n_layer": 24, "n_head": 20, "n_head_kv": 4, "n_ff": 3584},  # n_ff a multiple of 256: k-quants
    "1b": {"n_embd": 2048, "n_layer": 16, "n_head": 32, "n_head_kv": 8, "n_ff": 5632},
    "3b": {"n_embd": 3072, "n_layer": 28, "n_head": 24, "n_head_kv": 8, "n_ff": 8192},
}
TEXT = ("The old lighthouse keeper climbed the stairs every evening, counting the steps and listening to the sea. "
        "He kept a notebook of ships, storms and the birds that rested on the rail, and wrote to his sister each week. ")


def build(name: str, workdir: Path) -> Path:
    """The synthetic Q4_K_M model `name` in `workdir`, built when missing."""
    import llama_cpp

    out = workdir / f"synthetic-{name}-q4_k_m.gguf"
    if out.exists():
        return out
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from tiny_models import write_tiny_gguf

    workdir.mkdir(parents=True, exist_ok=True)
    f16 = workdir / f"synthetic-{name}-f16.gguf"
    started = time.perf_counter()
    write_tiny_gguf(f16, n_ctx=4096, pad_vocab_to=32000, dtype=np.float16, **SIZES[name])
    from sia_local.llama.compat import _install_log_callback

    _install_log_callback(False)  # llama.cpp's log through the package's handler: quantising is quiet

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 2
    tmp = out.with_suffix(".part")
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize failed for {f16}")
    tmp.rename(out)
    f16.unlink()
    print(f"built {out} ({out.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def reward_junction_ms(repeats: int) -> float | None:
    """Median ms of the default reward (MiniLM) scoring one junction's 10 candidate texts of a 40-token answer."""
    from sia_local.rewards.defaults import default_reward_dir
    from sia_local.rewards.reward import OnnxReward
    from sia_local.core.scorer import Junction

    try:
        reward = OnnxReward(default_reward_dir())
    except Exception as exc:  # the default reward is an installed package; without it the column is empty
        print(f"no default reward here ({exc}); skipping its column", file=sys.stderr)
        return None
    answer = "I am sorry to hear about the broken heating, that sounds really hard in this weather and you deserve"
    texts = [answer + w for w in (" better", " a", " help", " an", " some", " warmth", " to", " more", " it", " the")]
    j = Junction("My landlord has not fixed the heating.", [], [], np.arange(10), lambda: texts)
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        reward.score_junctions([j])
        runs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(runs)


def main() -> None:
    from sia_local.heads.head import junction_cost
    from sia_local.llama import LM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Builds the models once into --workdir; writes only --json.")
    ap.add_argument("--sizes", default="0.5b,1b,3b", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--contexts", default="64,512,2048")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "sia-local" / "synthetic")
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    contexts = [int(x) for x in args.contexts.split(",")]
    reward_ms = reward_junction_ms(args.repeats)
    result: dict = {"machine": platform.platform(), "processor": platform.processor(), "n_gpu_layers": args.n_gpu_layers,
                    "reward_junction_ms": reward_ms, "models": {}}
    for name in args.sizes.split(","):
        path = build(name, args.workdir)
        lm = LM(path, n_ctx=max(contexts) + 64, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers, hidden=True)
        ids = lm.tokenize(TEXT * 300, add_special=False)
        exits = sorted({max(0, round(f * lm.n_layer) - 1) for f in (0.25, 0.5)})
        rows = junction_cost(lm, ids, contexts, (5, 10), repeats=args.repeats, exit_layers=exits)
        for n, row in rows.items():
            step = row["step_ms"]
            row["reward_junction_in_steps"] = reward_ms / step if reward_ms else None
            per_token = {"branch k=10": row["k10"]["extra_steps"], "branch k=5": row["k5"]["extra_steps"]}
            per_token.update({f"exit@{x + 1}/{lm.n_layer} k=10": row["k10"][f"exit{x}"]["extra_steps"] for x in exits if f"exit{x}" in row["k10"]})
            if reward_ms:
                per_token["MiniLM reward"] = reward_ms / step
            row["per_token_vs_none"] = {k: {"sia@0.2": 1 + 0.2 * v, "dense": 1 + v} for k, v in per_token.items()}
            print(f"{name} @ {n}: step {step:.1f} ms; k=5 {row['k5']['branch_in_steps']:.2f} / k=10 {row['k10']['branch_in_steps']:.2f} steps; "
                  + ", ".join(f"{k} adds {v:.2f}" for k, v in per_token.items()) + f"; prefix head {row['prefix_head_ms_k10'] * 1e3:.0f} µs", flush=True)
        result["models"][name] = {"file": str(path), "bytes": path.stat().st_size, "n_layer": lm.n_layer, "n_embd": lm.n_embd,
                                  "exit_layers": exits, "contexts": rows}
        del lm
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
