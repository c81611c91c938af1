"""Where a k-branch decode's time goes: branching itself, the transformer over k tokens, the output rows.

Side by side at one context (raw llama.cpp batches on the LM's own context, medians): one token; k
tokens of one sequence with one output row and with k; k branches (k sequences over the prefix's
cells, all at one position) with one output row, with k, and with embeddings on (what `LM.branch`
does: llama.cpp then computes an output row for every token). In units of the one-token step.
Run alone on the machine.

    python scripts/bench/bench_branch_anatomy.py --k 10 --context 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

from sia_local.rewards.defaults import default_model_path
from sia_local.core.junction import top_k
from sia_local.llama import LM

TEXT = "The old lighthouse keeper climbed the stairs every evening, counting the steps and listening to the sea. " * 60


def main() -> None:
    import llama_cpp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", type=Path, default=None)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("-t", "--threads", type=int, default=None)
    args = ap.parse_args()
    k = args.k
    lm = LM(args.model or default_model_path(), n_ctx=args.context + 64, n_threads=args.threads, hidden=True, flash_attn="off")
    ids = lm.tokenize(TEXT, add_special=False)[: args.context]
    ctx, context = lm.context_pointer, lm.llama._ctx
    batch = llama_cpp.llama_batch_init(max(k, 1), 0, 1)
    n = len(ids)
    cand = [int(c) for c in top_k(lm.prefill(ids), k)[0]]

    def clear() -> None:  # back to the prefix: sequence 0 holds ids, no branches
        for s in range(1, k + 1):
            context.kv_cache_seq_rm(s, -1, -1)
        context.kv_cache_seq_rm(0, n, -1)

    def with_branches() -> None:
        clear()
        for s in range(1, k + 1):
            context.kv_cache_seq_cp(0, s, -1, -1)

    def decode(tokens: list[int], seqs: list[int], positions: list[int], outputs: int, embeddings: bool = False) -> Callable[[], None]:
        def run() -> None:
            for i, (t, s, p) in enumerate(zip(tokens, seqs, positions)):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, p, 1, int(i >= len(tokens) - outputs)
                batch.seq_id[i][0] = s
            batch.n_tokens = len(tokens)
            llama_cpp.llama_set_embeddings(ctx, embeddings)
            try:
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
            finally:
                llama_cpp.llama_set_embeddings(ctx, False)
        return run

    def median_ms(fn: Callable[[], None], before: Callable[[], None]) -> float:
        runs = []
        for _ in range(args.repeats):
            before()
            t = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - t) * 1e3)
        return statistics.median(runs)

    chunk = (cand, [0] * k, list(range(n, n + k)))
    branches = (cand, list(range(1, k + 1)), [n] * k)
    rows = {
        "one token": median_ms(decode(cand[:1], [0], [n], 1), clear),
        f"{k} tokens of one sequence, 1 output row": median_ms(decode(*chunk, 1), clear),
        f"{k} tokens of one sequence, {k} output rows": median_ms(decode(*chunk, k), clear),
        f"{k} branches, 1 output row": median_ms(decode(*branches, 1), with_branches),
        f"{k} branches, {k} output rows": median_ms(decode(*branches, k), with_branches),
        f"{k} branches, embeddings on (LM.branch)": median_ms(decode(*branches, 1, True), with_branches),
    }
    step = rows["one token"]
    print(f"{lm.path.name}, {n} tokens of context, {lm.n_threads} threads, medians of {args.repeats}")
    for name, ms in rows.items():
        print(f"{name:44s} {ms:7.2f} ms = {ms / step:5.2f} steps")
    llama_cpp.llama_batch_free(batch)


if __name__ == "__main__":
    main()
