"""Is the teacher's ranking of a junction's candidates stable once the text goes on? And the head's?

    python scripts/study/teacher_stability.py --prompts 40 --horizons 1,4 --json scripts/results/teacher_stability.json
    python scripts/study/teacher_stability.py --head sia_local/data/heads/smollm2-135m-kind    # the head against the same later scores

The LM decodes held-out prompts as SIA would (entropy gate at --ratio, weight 0: its own text); at each
junction the teacher (the objective on its reference scale) scores the k texts "answer so far +
candidate". Each candidate's text is then continued greedily by h more tokens and scored again. The
mean Kendall tau per junction between the ranking now and the ranking h tokens later says how much of
the teacher's junction signal survives the next tokens: a tau near 0 means its scores of partial text
are mostly noise that the next token undoes. With --head, the head's ranking (at the junction) is
compared with the teacher's later rankings too.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sia_local.core.config import SteerConfig
from sia_local.core.scorer import Junction
from sia_local.core.steer import Steerer
from sia_local.fit import kendall
from sia_local.heads import junction_data
from sia_local.prompts import load_prompts
from sia_local.runtime import LMSettings, ScorerSettings, load_lm, load_scorer


class Recorder(junction_data.Recorder):
    """Scores junctions with the teacher and keeps what is needed to continue each candidate afterwards (no layer states)."""

    lm_state: str | None = None

    def __init__(self, lm: Any, teacher: Any) -> None:
        super().__init__(lm, teacher, [])
        self.kept: list[dict[str, Any]] = []

    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        out = self.teacher.score_junctions(junctions)
        for j, r in zip(junctions, out):
            self.kept.append({"prompt": j.prompt, "prompt_ids": list(j.prompt_ids), "ids": list(j.response_ids),
                              "candidates": [int(c) for c in j.candidates], "now": np.asarray(r, dtype=np.float64)})
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=40, help="the first N held-out prompts")
    ap.add_argument("--horizons", default="1,4")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--head", type=Path, default=None, help="a head folder: its rankings at the junctions are compared too")
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    horizons = [int(h) for h in args.horizons.split(",")]
    lm = load_lm(LMSettings(model=args.model), hidden=args.head is not None)
    teacher = load_scorer(ScorerSettings(prefer="teacher"), lm)
    head = None
    if args.head is not None:
        from sia_local.heads.head import load_head

        head = load_head(args.head, lm)
    recorder = Recorder(lm, teacher)
    steerer = Steerer(lm, recorder, SteerConfig(gate="entropy", ratio=args.ratio, weight=0.0, max_tokens=args.tokens), announce=lambda m: None)
    prompts = load_prompts(None, default="heldout")[: args.prompts]
    taus: dict[str, list[float]] = {f"teacher_now_vs_{h}": [] for h in horizons}
    same_top: dict[str, list[float]] = {f"teacher_now_vs_{h}": [] for h in horizons}
    if head is not None:
        taus.update({"head_vs_teacher_now": [], **{f"head_vs_teacher_{h}": [] for h in horizons}})
        same_top.update({"head_vs_teacher_now": [], **{f"head_vs_teacher_{h}": [] for h in horizons}})
    for i, prompt in enumerate(prompts):
        recorder.kept = []
        steerer.generate(prompt, seed=i)
        for row in recorder.kept:
            context = row["prompt_ids"] + row["ids"]
            head_values = None
            if head is not None:
                lm.prefill(context)
                head_values = head.value(lm.branch_layers(row["candidates"], [head.layer])[head.layer])  # type: ignore[attr-defined]
                for name, ref in (("head_vs_teacher_now", row["now"]),):
                    taus[name].append(kendall(head_values, ref))
                    same_top[name].append(float(np.argmax(head_values) == np.argmax(ref)))
            later: dict[int, list[str]] = {h: [] for h in horizons}
            for c in row["candidates"]:
                seq = [*row["ids"], c]
                for step in range(1, max(horizons) + 1):
                    logits = lm.prefill([*row["prompt_ids"], *seq])
                    seq.append(int(np.argmax(logits)))
                    if step in later:
                        later[step].append(b"".join(lm.piece(t) for t in seq).decode("utf-8", "ignore"))
            for h in horizons:
                scores = np.asarray(teacher.score_responses(row["prompt"], [], [(t, []) for t in later[h]]), dtype=np.float64)
                taus[f"teacher_now_vs_{h}"].append(kendall(row["now"], scores))
                same_top[f"teacher_now_vs_{h}"].append(float(np.argmax(row["now"]) == np.argmax(scores)))
                if head_values is not None:
                    taus[f"head_vs_teacher_{h}"].append(kendall(head_values, scores))
                    same_top[f"head_vs_teacher_{h}"].append(float(np.argmax(head_values) == np.argmax(scores)))
        print(f"\rprompt {i + 1}/{len(prompts)}: " + ", ".join(f"{k} {statistics.fmean(v):.3f}" for k, v in taus.items() if v), end="", flush=True)
    print()
    result = {"model": str(lm.path), "teacher": teacher.name, "head": str(args.head) if args.head else None, "prompts": len(prompts),
              "ratio": args.ratio, "tokens": args.tokens,
              "kendall": {k: {"mean": statistics.fmean(v), "se": statistics.stdev(v) / len(v) ** 0.5, "junctions": len(v)} for k, v in taus.items() if v},
              "same_top": {k: statistics.fmean(v) for k, v in same_top.items() if v}}
    for k, v in result["kendall"].items():
        print(f"{k}: Kendall tau {v['mean']:.3f} ± {v['se']:.3f} over {v['junctions']} junctions; same top {result['same_top'][k]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
