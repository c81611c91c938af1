"""Side-by-side overhead of steering on the default models (or --model / --reward), in one run.

Arms, interleaved round-robin so that machine noise hits them alike:
  llama-cpp   llama-cpp-python's own create_completion (top_k=10, T=1, no other samplers)
  none        sia, --gate none (base top-10 sampling through our loop)
  entropy@R   sia, entropy gate with tau calibrated for ratio R (default 0.2)
  dense       sia, reward at every step (ARGS)
Each arm decodes the same raw prompt for --tokens tokens; tok/s counts prompt + decode wall time.
Reports medians over --repeats and the ratios the project targets:
  none / llama-cpp >= 0.97      entropy wall / dense wall <= 0.25
Run: python scripts/bench_overhead.py [--tokens 128 --repeats 3 --json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from sia_local import LM, OnnxReward, SteerConfig, Steerer
from sia_local.defaults import default_model_path, default_reward_dir

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--reward", default=None)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--reward-provider", default="auto")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()

    lm = LM(args.model or default_model_path(), n_ctx=2048, n_gpu_layers=args.n_gpu_layers)
    reward = OnnxReward(args.reward or default_reward_dir(), provider=args.reward_provider)
    steerer = Steerer(lm, reward, SteerConfig(max_tokens=args.tokens, ratio=args.ratio))
    tau = steerer.resolve_tau(steerer.config)
    llm = lm._llm  # the same llama.cpp model and context, driven by llama-cpp-python's own loop

    def llama_cpp_arm(seed: int) -> dict:
        t = time.perf_counter()
        out = llm.create_completion(PROMPT, max_tokens=args.tokens, temperature=1.0, top_k=10, top_p=1.0, min_p=0.0,
                                    repeat_penalty=1.0, seed=seed)
        wall = time.perf_counter() - t
        return {"tokens": out["usage"]["completion_tokens"], "wall": wall, "reward_calls": 0, "reward_s": 0.0, "ratio": 0.0}

    def sia_arm(gate: str) -> callable:
        def run(seed: int) -> dict:
            llm.reset()  # no prefix reuse advantage over create_completion's own cache handling
            t = time.perf_counter()
            g = steerer.generate(PROMPT, raw=True, gate=gate, seed=seed, tau=tau if gate == "entropy" else None)
            wall = time.perf_counter() - t
            s = g.stats
            return {"tokens": s.tokens, "wall": wall, "reward_calls": s.reward_calls, "reward_s": s.reward_seconds, "ratio": s.ratio}
        return run

    arms = {"llama-cpp": llama_cpp_arm, "none": sia_arm("none"), f"entropy@{args.ratio}": sia_arm("entropy"), "dense": sia_arm("dense")}
    rows: dict[str, list[dict]] = {name: [] for name in arms}
    for rep in range(args.repeats):
        for name, arm in arms.items():
            rows[name].append(arm(1000 + rep))

    summary = {}
    for name, runs in rows.items():
        tps = [r["tokens"] / r["wall"] for r in runs]
        summary[name] = {
            "tok_s": statistics.median(tps),
            "wall_s_per_token": statistics.median(r["wall"] / max(r["tokens"], 1) for r in runs),
            "tokens": statistics.median(r["tokens"] for r in runs),
            "reward_calls": statistics.median(r["reward_calls"] for r in runs),
            "reward_s": statistics.median(r["reward_s"] for r in runs),
            "ratio": statistics.median(r["ratio"] for r in runs),
        }
    base, none, ent, dense = (summary[k] for k in arms)
    ratios = {
        "none_vs_llama_cpp_tok_s": none["tok_s"] / base["tok_s"],
        "entropy_vs_dense_wall_per_token": ent["wall_s_per_token"] / dense["wall_s_per_token"],
        "dense_vs_none_wall_per_token": dense["wall_s_per_token"] / none["wall_s_per_token"],
    }
    print(f"model {lm.path.name}  reward {reward.folder.name} on {reward.provider}  tau {tau:.3f}  "
          f"{args.tokens} tokens x {args.repeats} repeats (medians)")
    print(f"{'arm':14} {'tok/s':>8} {'tokens':>7} {'ratio':>6} {'rm calls':>8} {'rm s':>7}")
    for name, s in summary.items():
        print(f"{name:14} {s['tok_s']:8.1f} {s['tokens']:7.0f} {s['ratio']:6.2f} {s['reward_calls']:8.0f} {s['reward_s']:7.2f}")
    print(f"gate none / llama-cpp-python tok/s: {ratios['none_vs_llama_cpp_tok_s']:.3f}  (target >= 0.97)")
    print(f"entropy@{args.ratio} / dense wall per token: {ratios['entropy_vs_dense_wall_per_token']:.3f}  (target <= 0.25)")
    print(f"dense / none wall per token: {ratios['dense_vs_none_wall_per_token']:.2f}x")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"summary": summary, "ratios": ratios, "tau": tau, "runs": rows, "provider": reward.provider}, f, indent=1)


if __name__ == "__main__":
    main()
