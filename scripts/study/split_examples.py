"""Split a shipped objective's examples into a half to fit an objective on and a half to judge it with.

The fitted-objective evaluation (docs/eval.md): a user's objective is fitted from ~100 examples and judged by a
bag-of-words model on examples it was not fitted on. This writes, from `sia_local/data/objectives/NAME.jsonl`
(shuffled with a fixed seed), FIT good/bad files of `--fit` texts each and JUDGE good/bad files of the rest:

    python scripts/study/split_examples.py formal --fit 50 --out /tmp/register
    sia reward fit register --good /tmp/register/fit_good.txt --bad /tmp/register/fit_bad.txt --describe "Answer in a formal register." --head
    sia eval -r register --good /tmp/register/judge_good.txt --bad /tmp/register/judge_bad.txt --seeds 1 --parallel 4 -o scripts/results/eval_register_smollm2
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("objective", choices=["formal", "concise"])
    ap.add_argument("--fit", type=int, default=50, help="texts of each label to fit on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [json.loads(line) for line in resources.files("sia_local.data").joinpath("objectives", f"{args.objective}.jsonl")
            .read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for label, name in (("good", "good"), ("bad", "bad")):
        texts = [r["text"] for r in rows if r["label"] == label]
        order = rng.permutation(len(texts))
        fit, judge = [texts[i] for i in order[: args.fit]], [texts[i] for i in order[args.fit :]]
        (args.out / f"fit_{name}.txt").write_text("\n".join(fit) + "\n", encoding="utf-8")
        (args.out / f"judge_{name}.txt").write_text("\n".join(judge) + "\n", encoding="utf-8")
        print(f"{label}: {len(fit)} to fit, {len(judge)} to judge")


if __name__ == "__main__":
    main()
