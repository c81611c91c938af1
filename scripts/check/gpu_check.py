"""GPU check for a machine with an NVIDIA card: llama.cpp CUDA offload and onnxruntime providers.

Builds a ~1B-parameter random-weight llama (F16) with the test builder, then decodes the same prompt
with all layers on the CPU and all on the GPU, side by side, through sia's loop (gate none, entropy,
dense with the tiny reward), and what a junction of a value head on the LM costs there (one k-branch
decode in one-token steps, k = 5 and 10, at 64 and 512 tokens of context). Also reports which
onnxruntime providers really load.
With --taps (the early exit on a GPU build): for n_gpu_layers 0 and -1, a layer head's taps read layer
L's states (k = 10 and 40 candidates: 40 rows make the scheduler offload matrix products even at 0),
compared between the two; a junction's cost in one-token steps (early exit at L vs a full k-branch
decode); per-token speed of SIA@0.2 and dense with a (random-weight) layer head against gate none; and
Best-of-4 with the head (40 rows in one tapped decode).
Run (after installing a CUDA build of llama-cpp-python):  python scripts/check/gpu_check.py [--out FILE] [--taps]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from tiny_models import write_reward_folder, write_tiny_gguf  # noqa: E402

from sia_local import LM, OnnxReward, SteerConfig, Steerer  # noqa: E402
from sia_local.core.calibrate import tau_from_entropies  # noqa: E402
from sia_local.heads.head import junction_cost  # noqa: E402
from sia_local.info import loadable_providers  # noqa: E402
from sia_local.llama import gpu_offload_supported, system_info  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--embd", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000, help="pad the byte-level vocabulary to this size (0 = 265 tokens)")
    ap.add_argument("--dir", default=None, help="where to write the synthetic model [default: a temp dir]")
    ap.add_argument("--gguf", default=None, help="use this GGUF instead of building a synthetic one (e.g. SmolLM2)")
    ap.add_argument("--taps", action="store_true", help="check the layer taps (early exit) on this build instead of the decode arms")
    args = ap.parse_args()
    report: dict = {"gpu_offload_supported": gpu_offload_supported(), "llama_system_info": system_info(),
                    "onnx_providers": loadable_providers()}
    print(json.dumps(report, indent=1), flush=True)
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp())
    tmp.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    import numpy as np

    print("building the synthetic model" if not args.gguf else f"using {args.gguf}", flush=True)
    gguf = Path(args.gguf) if args.gguf else write_tiny_gguf(tmp / "synthetic-f16.gguf", n_embd=args.embd, n_layer=args.layers, n_head=16, n_ff=args.embd * 11 // 4, n_ctx=2048,
                           pad_vocab_to=args.vocab, dtype=np.float16, logit_scale=0.05)
    print("model written", flush=True)
    report["synthetic_model"] = {"n_embd": args.embd, "n_layer": args.layers, "n_vocab": max(args.vocab, 265), "file_gb": round(gguf.stat().st_size / 1e9, 2), "build_s": round(time.perf_counter() - t, 1)}
    reward_dir = write_reward_folder(tmp / "rm")
    reward = OnnxReward(reward_dir, provider="auto")
    report["reward_provider"] = reward.provider
    report["reward_provider_note"] = reward.provider_note
    if args.taps:
        report["taps"] = taps_check(gguf, reward, tmp, args.tokens)
        print(json.dumps(report, indent=1), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
        return
    arms = {}
    for ngl in (-1, 0):  # GPU first: its numbers survive if the CPU arm fails
        print(f"loading with n_gpu_layers={ngl}", flush=True)
        lm = LM(gguf, n_ctx=2048, n_gpu_layers=ngl)
        s = Steerer(lm, reward, SteerConfig(max_tokens=args.tokens, seed=0, trace=True))
        warm = s.generate(PROMPT, raw=True, gate="none", seed=1)  # warm-up (CUDA kernels, graphs); its entropies set tau
        tau = tau_from_entropies(np.array([t.entropy for t in warm.trace or []]), 0.3)
        s.config = s.config.replace(tau=tau)
        for gate in ("none", "entropy", "dense"):
            g = s.generate(PROMPT, raw=True, gate=gate)
            st = g.stats
            arms[f"ngl={ngl} gate={gate}"] = {"tokens": st.tokens, "tok_s": round(st.tokens_per_s, 1), "prefill_s": round(st.prefill_seconds, 3),
                                             "ratio": round(st.ratio, 2), "reward_calls": st.reward_calls, "reward_s": round(st.reward_seconds, 3)}
            print(f"ngl={ngl:2d} gate={gate:8s} {st.tokens} tok {st.tokens_per_s:8.1f} tok/s  prefill {st.prefill_seconds:.3f}s "
                  f"ratio {st.ratio:.2f} reward {st.reward_seconds:.3f}s", flush=True)
        del s, lm
        print(f"value-head junction cost with n_gpu_layers={ngl}", flush=True)
        lm = LM(gguf, n_ctx=2048, n_gpu_layers=ngl, hidden=True)
        ids = lm.tokenize(PROMPT * 80, add_special=False)
        cost = junction_cost(lm, ids, [64, 512], (5, 10), repeats=9, progress=lambda m: print(f"  {m}", flush=True))
        report.setdefault("junction_cost_in_steps", {})[f"ngl={ngl}"] = {
            n: {"step_ms": round(r["step_ms"], 2), **{f"k{k}": round(r[f"k{k}"]["branch_in_steps"], 2) for k in (5, 10)}} for n, r in cost.items()}
        del lm
        if args.out:
            Path(args.out).write_text(json.dumps({**report, "arms": arms}, indent=1))
    report["arms"] = arms
    cpu, gpu = arms["ngl=0 gate=none"]["tok_s"], arms["ngl=-1 gate=none"]["tok_s"]
    report["gpu_vs_cpu_decode"] = round(gpu / cpu, 2) if cpu else None
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


def write_layer_head(folder: Path, lm: LM, layer: int) -> Path:
    """A layer-head folder with random weights (timing and plumbing only; `sia vm distill` fits real ones)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "layer.npz", w=rng.normal(size=lm.n_embd).astype(np.float32), b=np.float32(0.0), layer=np.int64(layer))
    np.savez(folder / "branch.npz", w=rng.normal(size=lm.n_embd).astype(np.float32) / lm.n_embd, b=np.float32(0.0))
    card = {"kind": "lm-head", "default": "layer", "backbone": lm.path.name, "n_embd": lm.n_embd, "n_vocab": lm.n_vocab,
            "vocab_sample": lm.vocab_sample(), "teacher": "tiny", "objective": "timing only", "samples": 0}
    (folder / "head.json").write_text(json.dumps(card))
    return folder


def taps_check(gguf: Path, reward: OnnxReward, tmp: Path, tokens: int) -> dict:
    """The early exit on this build: states, cost in steps, per-token speed, Best-of-4; for n_gpu_layers 0 and -1."""
    import statistics

    import numpy as np

    from sia_local.heads.head import load_head
    from sia_local.core.junction import top_k
    from sia_local.core.search import best_of_n

    out: dict = {}
    states: dict = {}
    for ngl in (0, -1):
        key = f"ngl={ngl}"
        lm = LM(gguf, n_ctx=2048, n_gpu_layers=ngl, hidden=True)
        layer = max(1, lm.n_layer // 4)
        row: dict = {"early_exit": lm.early_exit, "layer": layer, "n_layer": lm.n_layer}
        print(key, lm.early_exit, flush=True)
        prefix = lm.tokenize(PROMPT * 20, add_special=False)[:400]
        top = [int(c) for c in top_k(lm.prefill(prefix), 40)[0]]
        cand = fixed = [int(c) for c in np.linspace(5, lm.n_vocab - 10, 40)]  # the same candidates on both (top-k differs in the last bits)
        states[ngl] = {k: lm.branch_layers(fixed[:k], [layer])[layer] for k in (10, 40)}  # 40 rows: offloaded even at 0
        row["final_states"] = lm.branch_layers(fixed[:10], [layer], final=True)[lm.n_layer]  # no tap: how far CPU and GPU differ anyway
        cand = top
        row["states_finite"] = bool(all(np.isfinite(v).all() for v in states[ngl].values()))

        def median_ms(fn, repeats: int = 15) -> float:
            runs = []
            for _ in range(repeats):
                lm.prefill(prefix)
                t = time.perf_counter()
                fn()
                runs.append((time.perf_counter() - t) * 1e3)
            return statistics.median(runs)

        step = median_ms(lambda: lm.step(cand[0]))
        early = median_ms(lambda: lm.branch_layers(cand[:10], [layer]))
        full = median_ms(lambda: lm.branch(cand[:10]))
        row.update({"step_ms": round(step, 3), "k10_early_exit_ms": round(early, 3), "k10_full_branch_ms": round(full, 3),
                    "k10_early_exit_in_steps": round(early / step, 2), "k10_full_branch_in_steps": round(full / step, 2)})
        head = load_head(write_layer_head(tmp / f"head{ngl}", lm, layer), lm)
        head.teacher = lambda: reward
        row["head"] = head.info().details.get("early_exit")
        steerer = Steerer(lm, head, SteerConfig(max_tokens=tokens, seed=0, trace=True))
        warm = steerer.generate(PROMPT, raw=True, gate="none", seed=1)
        tau = tau_from_entropies(np.array([t.entropy for t in warm.trace or []]), 0.2)
        speed = {}
        for arm, change in (("none", {"gate": "none"}), ("sia@0.2", {"gate": "entropy", "tau": tau}), ("dense", {"gate": "dense"}),
                            ("none_again", {"gate": "none"})):
            g = steerer.generate(PROMPT, raw=True, **change)
            speed[arm] = {"tok_s": round(g.stats.tokens_per_s, 1), "ratio": round(g.stats.ratio, 2), "tokens": g.stats.tokens}
        base = (speed["none"]["tok_s"] + speed["none_again"]["tok_s"]) / 2
        for arm in ("sia@0.2", "dense"):
            speed[arm]["cost_per_token_vs_none"] = round(base / speed[arm]["tok_s"], 2) if speed[arm]["tok_s"] else None
        row["speed"] = speed
        bon = best_of_n(steerer, PROMPT, 4, raw=True, gate="dense", max_tokens=8)  # 4 x 10 rows in one tapped decode
        row["best_of_4"] = {"tokens": bon.stats.tokens, "ranked_by": bon.ranked_by, "decode_calls": bon.stats.decode_calls}
        finals = row.pop("final_states")
        states[ngl]["final"] = finals
        print(json.dumps({key: row}), flush=True)
        out[key] = row
        del steerer, head, lm
    for k in (10, 40, "final"):  # tapped states at 0 and -1 layers offloaded, beside the untapped final states' own difference
        a, b = states[0][k], states[-1][k]
        out[f"states_{k}_max_rel_diff_ngl0_vs_gpu"] = float(np.abs(a - b).max() / (np.abs(a).max() + 1e-9))
    return out


if __name__ == "__main__":
    main()
