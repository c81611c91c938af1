"""`sia bench speed`: the side-by-side speed table -- our loop against llama-cpp-python's, and what steering costs.

Arms run interleaved (round-robin over repeats) so that drift on a shared machine hits them alike;
medians are reported, and ratios only within one run.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

from ..core.scorer import Scorer
from ..core.search import best_of_n
from ..core.steer import Generation, Steerer


# -- speed -------------------------------------------------------------------------------------
SPEED_PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def speed(steerer: Steerer, *, tokens: int = 128, repeats: int = 3, ratio: float = 0.2, best_of: int = 8,
          heads: dict[str, Scorer] | None = None, head_ks: Sequence[int] = (), head_min_probs: Sequence[float] = (),
          progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Side by side, interleaved: llama-cpp-python's create_completion, gate none, entropy@ratio, dense,
    and Best-of-N batched vs N sequential runs; with `heads` ({name: scorer on the same LM}), each head at
    entropy@ratio and dense too, and branch heads also with each k of `head_ks` candidates (a junction
    costs a k-token decode; tau is calibrated for that k) and with each `head_min_probs` (--min-prob: fewer
    candidates decoded). Returns medians and the ratios the project tracks."""
    lm = steerer.lm
    llm = lm.llama  # the same model and context, driven by llama-cpp-python's own loop
    tau = steerer.resolve_tau(steerer.config.updated(ratio=ratio))

    def llama_cpp(seed: int) -> dict[str, float]:
        lm.use_all_threads()  # llama-cpp-python's loop is not governed: give it every thread, not what the last arm left
        llm.reset()  # both arms prefill the prompt (create_completion would otherwise reuse it from our last arm)
        t = time.perf_counter()
        out: Any = llm.create_completion(SPEED_PROMPT, max_tokens=tokens, temperature=1.0, top_k=steerer.config.top_k, top_p=1.0,
                                    min_p=0.0, repeat_penalty=1.0, seed=seed)
        return {"tokens": out["usage"]["completion_tokens"], "wall": time.perf_counter() - t, "reward_calls": 0, "reward_s": 0.0, "ratio": 0.0,
                "scored": 0.0}

    def sia(gate: str, scorer: Scorer | None = None, k: int | None = None, min_prob: float | None = None) -> Callable[[int], dict[str, float]]:
        """An arm of our loop; `scorer` replaces the steerer's own (a value head on the same LM); `k` candidates instead of
        top_k; `min_prob`: score only the candidates that can matter."""
        config = (steerer.config if k is None else steerer.config.updated(top_k=k)).updated(min_prob=min_prob)
        runner = steerer if scorer is None and k is None else Steerer(lm, scorer if scorer is not None else steerer.scorer, config)
        arm_tau = tau if k is None else steerer.resolve_tau(config.updated(ratio=ratio))  # calibrated before any timing

        def run(seed: int) -> dict[str, float]:
            llm.reset()  # same start as the llama-cpp-python arm: an empty context
            t = time.perf_counter()
            g = runner.generate(SPEED_PROMPT, raw=True, gate=gate, seed=seed, tau=arm_tau if gate == "entropy" else None, max_tokens=tokens)
            s = g.stats
            return {"tokens": s.tokens, "wall": time.perf_counter() - t, "reward_calls": s.reward_calls, "reward_s": s.reward_seconds, "ratio": s.ratio,
                    "scored": s.candidates_scored / s.reward_calls if s.reward_calls else 0.0}
        return run

    def bon_batched(seed: int) -> dict[str, float]:
        t = time.perf_counter()
        r = best_of_n(steerer, SPEED_PROMPT, best_of, raw=True, gate="none", seed=seed, max_tokens=tokens)
        return {"tokens": r.stats.tokens, "wall": time.perf_counter() - t, "reward_calls": r.stats.reward_calls, "reward_s": r.stats.reward_seconds, "ratio": 0.0,
                "scored": 0.0}

    def bon_sequential(seed: int) -> dict[str, float]:
        t = time.perf_counter()
        gens: list[Generation] = []
        for i in range(best_of):
            llm.reset()
            gens.append(steerer.generate(SPEED_PROMPT, raw=True, gate="none", seed=seed + i, max_tokens=tokens))
        assert steerer.scorer is not None
        steerer.scorer.score_responses(SPEED_PROMPT, steerer.lm.tokenize(SPEED_PROMPT), [(g.text, g.token_ids) for g in gens])
        return {"tokens": sum(g.stats.tokens for g in gens), "wall": time.perf_counter() - t, "reward_calls": 0, "reward_s": 0.0, "ratio": 0.0,
                "scored": 0.0}

    arms = {"llama-cpp-python": llama_cpp, "none": sia("none"), f"entropy@{ratio:g}": sia("entropy"), "dense": sia("dense"),
            f"bon-{best_of} batched": bon_batched, f"bon-{best_of} sequential": bon_sequential}
    head_arms = []
    for name, head in (heads or {}).items():
        for k in [None, *(k for k in head_ks if k != steerer.config.top_k and getattr(head, "lm_state", None) == "branches")]:
            label = name if k is None else f"{name} k{k}"
            arms[f"{label}@{ratio:g}"] = sia("entropy", head, k)
            arms[f"{label} dense"] = sia("dense", head, k)
            head_arms += [f"{label}@{ratio:g}", f"{label} dense"]
        for eps in head_min_probs if getattr(head, "lm_state", None) == "branches" else ():
            label = f"{name} minp{eps:g}"
            arms[f"{label}@{ratio:g}"] = sia("entropy", head, None, eps)
            arms[f"{label} dense"] = sia("dense", head, None, eps)
            head_arms += [f"{label}@{ratio:g}", f"{label} dense"]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in arms}
    total, done = repeats * len(arms), 0
    for rep in range(repeats):
        for name, fn in arms.items():
            runs[name].append(fn(1000 + 17 * rep))
            done += 1
            if progress:
                progress(done, total, name)
    table = {}
    for name, rs in runs.items():
        table[name] = {
            "tok_s": statistics.median(r["tokens"] / r["wall"] for r in rs),
            "seconds_per_token": statistics.median(r["wall"] / max(r["tokens"], 1) for r in rs),
            "tokens": statistics.median(r["tokens"] for r in rs),
            "ratio": statistics.median(r["ratio"] for r in rs),
            "reward_calls": statistics.median(r["reward_calls"] for r in rs),
            "reward_seconds": statistics.median(r["reward_s"] for r in rs),
            "candidates_per_junction": statistics.median(r["scored"] for r in rs),
        }
    e = f"entropy@{ratio:g}"
    ratios = {
        "none_vs_llama_cpp_tok_s": table["none"]["tok_s"] / table["llama-cpp-python"]["tok_s"],
        "entropy_vs_dense_time": table[e]["seconds_per_token"] / table["dense"]["seconds_per_token"],
        "dense_vs_none_time": table["dense"]["seconds_per_token"] / table["none"]["seconds_per_token"],
        "bon_batched_vs_sequential_tok_s": table[f"bon-{best_of} batched"]["tok_s"] / table[f"bon-{best_of} sequential"]["tok_s"],
        f"{e}_vs_none_time": table[e]["seconds_per_token"] / table["none"]["seconds_per_token"],
    }
    for arm in head_arms:
        ratios[f"{arm}_vs_none_time"] = table[arm]["seconds_per_token"] / table["none"]["seconds_per_token"]
    return {"tau": tau, "tokens": tokens, "repeats": repeats, "table": table, "ratios": ratios, "runs": runs,
            "model": str(lm.path), "reward_provider": getattr(steerer.scorer, "provider", None)}
