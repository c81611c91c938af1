"""GPU check for a machine with an NVIDIA card: llama.cpp CUDA offload and onnxruntime providers.

Builds a ~1B-parameter random-weight llama (F16) with the test builder, then decodes the same prompt
with all layers on the CPU and all on the GPU, side by side, through sia's loop (gate none, entropy,
dense with the tiny reward), and what a junction of a value head on the LM costs there (one k-branch
decode in one-token steps, k = 5 and 10, at 64 and 512 tokens of context). Also reports which
onnxruntime providers really load.
Run (after installing a CUDA build of llama-cpp-python):  python scripts/gpu_check.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_models import write_reward_folder, write_tiny_gguf  # noqa: E402

from sia_local import LM, OnnxReward, SteerConfig, Steerer  # noqa: E402
from sia_local.calibrate import tau_from_entropies  # noqa: E402
from sia_local.head import junction_cost  # noqa: E402
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


if __name__ == "__main__":
    main()
