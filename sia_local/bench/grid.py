"""`sia bench`: the alignment-efficiency trade-off, measured on your model and reward model.

`run_grid` decodes every prompt under every arm (base, SIA at several ratios, random gating at the
ratios SIA realised, first-N, dense, Best-of-N, Best-of-N + SIA), scores each response with the
steering reward and an independent judge, and writes results.jsonl (one row per prompt x arm x
seed; a rerun skips the rows already there), summary.json and PNG plots. `speed` is the
side-by-side speed table.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.calibrate import REPORT_RATIOS
from ..errors import ConfigError
from ..core.junction import gate_names
from ..batch import Row, Worker, WorkerSpec
from ..batch import run as batch_run
from ..runtime import LMSettings
from ..core.scorer import Scorer
from ..core.steer import Steerer
from .judges import Judge
from .plots import write_plots


@dataclass(frozen=True)
class Arm:
    """One decoding configuration of the grid."""

    name: str
    gate: str = "none"
    ratio: float | None = None  # entropy: tau calibrated for it; random: the gate's probability
    first_n: int | None = None
    best_of: int = 1
    match: str | None = None  # random arms: take the ratio SIA realised in this arm
    prompted: bool = False  # the objective's description goes in as a system message (the prompt baseline)
    fixed: bool = False  # entropy arms: the tau calibrated for `ratio`, kept fixed (the paper's rule, no online control)
    vectored: bool = False  # the run's control vector (`vector`, `vector+sia@R`): added to the model for this arm

    def changes(self, tau: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"gate": self.gate}
        if self.ratio is not None:
            out["ratio"] = self.ratio  # SteerConfig.updated: a ratio clears tau
        if self.fixed:
            out["tau"] = tau  # given with the ratio, tau wins and the gate keeps it fixed
        if self.first_n is not None:
            out["first_n"] = self.first_n
        return out


def default_arms(max_tokens: int, ratios: Sequence[float] = REPORT_RATIOS, best_of: Sequence[int] = (2, 4, 8)) -> list[Arm]:
    arms = [Arm("base")]
    arms += [Arm(f"sia@{r:g}", "entropy", ratio=r) for r in ratios]
    arms += [Arm(f"random@{r:g}", "random", match=f"sia@{r:g}") for r in ratios]
    arms += [Arm(f"first-{round(r * max_tokens)}", "first-n", first_n=round(r * max_tokens)) for r in ratios[:2]]
    arms.append(Arm("dense", "dense"))
    arms += [Arm(f"bon-{n}", "none", best_of=n) for n in best_of]
    if best_of:
        arms.append(Arm(f"bon-{best_of[len(best_of) // 2]}+sia@{ratios[0]:g}", "entropy", ratio=ratios[0], best_of=best_of[len(best_of) // 2]))
    return arms


def select_arms(names: Sequence[str], max_tokens: int) -> list[Arm]:
    """Arms by name: any of `default_arms`; `sia@R`, `random@R`, `tau@R`, `prompt`, `prompt+sia@R` for any ratio R (the
    prompt arms put the objective's description in as a system message: would asking have done the same?; `tau@R`
    is the paper's fixed threshold, the tau calibrated for R without the online ratio control, and `random-tau@R`
    random gating at the ratio `tau@R` realised); `GATE@R` for any registered gate at ratio R (`value@0.2`) and `random-GATE@R`
    random gating at the ratio it realised; or any registered gate's name (that gate with the run's settings)."""
    grid = {a.name: a for a in default_arms(max_tokens)}
    out = []
    for name in names:
        prompted, _, rest = name.partition("+") if name.startswith("prompt+") else ("", "", name)
        kind, _, ratio_text = rest.partition("@")
        ratio = _ratio(ratio_text, name) if ratio_text else None
        if name == "prompt":
            out.append(Arm("prompt", "none", prompted=True))
        elif name == "vector":
            out.append(Arm("vector", "none", vectored=True))
        elif name.startswith("vector+") and "@" in name and _gate_of(name[7:].partition("@")[0]):
            out.append(Arm(name, _gate_of(name[7:].partition("@")[0]), ratio=_ratio(name.partition("@")[2], name), vectored=True))
        elif name in grid and not prompted:
            out.append(grid[name])
        elif kind == "sia" and ratio is not None:
            out.append(Arm(name, "entropy", ratio=ratio, prompted=bool(prompted)))
        elif kind == "random" and ratio is not None and not prompted:
            out.append(Arm(name, "random", match=f"sia@{ratio:g}"))
        elif kind == "tau" and ratio is not None and not prompted:
            out.append(Arm(name, "entropy", ratio=ratio, fixed=True))
        elif kind == "random-tau" and ratio is not None and not prompted:
            out.append(Arm(name, "random", match=f"tau@{ratio:g}"))
        elif kind in gate_names() and kind != "random" and ratio is not None:  # random@R is matched to SIA (above), never a plain probability
            out.append(Arm(name, kind, ratio=ratio, prompted=bool(prompted)))
        elif kind.startswith("random-") and kind[7:] in gate_names() and ratio is not None and not prompted:
            out.append(Arm(name, "random", match=f"{kind[7:]}@{ratio:g}"))
        elif name in gate_names():
            out.append(Arm(name, name))
        else:
            raise ConfigError(f"unknown arm {name!r}", f"choose from {', '.join(grid)}, prompt, prompt+sia@R, vector, vector+sia@R, sia@R, random@R, tau@R, random-tau@R, GATE@R, random-GATE@R or a gate "
                                                       f"({', '.join(gate_names())})")
    return out


def _gate_of(kind: str) -> str | None:
    """The gate an arm's name means: `sia` is the paper's entropy gate, else a registered gate's name."""
    return "entropy" if kind == "sia" else kind if kind in gate_names() else None


def _ratio(text: str, name: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise ConfigError(f"arm {name!r}: {text!r} is not a ratio", "write e.g. sia@0.25") from None
    if not 0 < r <= 1:
        raise ConfigError(f"arm {name!r}: the ratio must be in (0, 1]", "write e.g. sia@0.25")
    return r


def objective_prompt_of(scorer: Any) -> str | None:
    """What a system prompt asking for the scorer's objective would say: a fitted objective's --describe line,
    the built-in kind's, a mix's descriptions (positive weights), else None (pass --objective-prompt)."""
    from ..rewards.objectives import BUILT_IN_PROMPTS, CARD

    members = getattr(scorer, "members", None)
    if members is not None:
        return " ".join(t for t in (BUILT_IN_PROMPTS.get(m.name) or m.description for m in members if m.weight > 0) if t) or None
    folder = getattr(scorer, "folder", None)
    if folder is not None and (folder / CARD).exists():
        return json.loads((folder / CARD).read_text()).get("description")
    objective = getattr(scorer, "objective", None) or ""
    if objective.startswith("positive, kind tone"):
        return BUILT_IN_PROMPTS["kind"]
    return objective or None  # a head's objective is its objective's --describe line, written as what a system prompt asks for


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams over whitespace words (a diversity measure)."""
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class GridResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def run_grid(
    steerer: Steerer,
    judge: Judge,
    prompts: Sequence[str],
    arms: Sequence[Arm],
    out_dir: Path,
    *,
    seeds: Sequence[int] = (0,),
    progress: Callable[[int, int, str], None] | None = None,
    plots: bool = True,
    teacher: Scorer | None = None,
    worker_spec: WorkerSpec | None = None,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
    objective_prompt: str | None = None,
    raw: bool = False,
    parallel: int | None = None,
    vector: str | None = None,
) -> GridResult:
    """Run (or resume) the grid; write results.jsonl, summary.json and plots into `out_dir`.

    Prompt arms (`prompt`, `prompt+sia@R`) send `objective_prompt` (default: `objective_prompt(scorer)`)
    as a system message: the honest baseline for "would asking have done the same?".

    Each row's sampler seed is derived from (seed, prompt index), so random gates draw differently
    per prompt; a random arm takes, per prompt and seed, the ratio its SIA arm realised there. The
    `reward` column is the `teacher`'s score (default: the steering scorer), so a value head can be
    judged by the reward model it was distilled from. Wall time excludes the log-probabilities
    computed for the KL and perplexity columns. Rows are decoded by `batch` workers: this process by
    default, or `workers` processes / Ray actors made from `worker_spec` (the settings that load the
    same model and scorer); the teacher and the judge score here. `parallel`: rows decoded together in slots of each
    worker, seeded rows too (their answers then reproduce up to batched rounding, `core/slots.py`). `vector`: the
    control vector (`NAME[:scale]`) the vector arms add.
    """
    if any(a.vectored for a in arms) and not vector:
        raise ConfigError("the vector arms need a control vector", "pass --vector NAME[:scale] (an objective fitted from examples has one)")
    assert steerer.scorer is not None
    teacher = teacher or steerer.scorer
    run_id = uuid.uuid4().hex[:8]
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "results.jsonl"
    rows = _read_rows(results_file)
    done = {(r["arm"], r["prompt_index"], r["seed"]) for r in rows}
    base_cfg = steerer.config.replace(trace=True, logprobs=True)
    taus = {a.name: steerer.resolve_tau(base_cfg.updated(ratio=a.ratio)) for a in arms if a.gate == "entropy" and a.ratio is not None}
    total = len(arms) * len(prompts) * len(seeds)
    count = len(done)
    raw = raw or not steerer.lm.has_chat_template  # plain-text completion: asked for, or a GGUF without a chat template
    if any(a.prompted for a in arms):
        objective_prompt = objective_prompt or objective_prompt_of(steerer.scorer)
        if raw:
            raise ConfigError("a raw completion (no chat template) has no system message for the prompt arms to use",
                              "drop the prompt arms, or drop --raw (a GGUF without a template: pass --chat-format NAME)")
        if not objective_prompt:
            raise ConfigError("the prompt arms need a description of the objective", "pass --objective-prompt \"Answer politely.\"")
    here = Worker(WorkerSpec(LMSettings(), None, steerer.config, raw=raw), steerer)
    spec = replace(worker_spec, raw=raw) if worker_spec is not None else None
    with results_file.open("a", encoding="utf-8") as out:
        for phase in ([a for a in arms if a.match is None], [a for a in arms if a.match is not None]):  # random arms follow SIA's
            jobs: dict[str, tuple[Arm, int, int, dict[str, Any]]] = {}
            todo: list[Row] = []
            for arm in phase:
                matched = {(r["prompt_index"], r["seed"]): r["ratio"] for r in rows if r["arm"] == arm.match}
                if arm.match is not None and not matched:
                    raise ConfigError(f"arm {arm.name} matches {arm.match}, which has no rows", "include that arm in the grid")
                for i, prompt in enumerate(prompts):
                    for seed in seeds:
                        if (arm.name, i, seed) in done:
                            continue
                        changes = arm.changes(taus.get(arm.name))  # a fresh copy per row: a matched row may change the gate
                        if arm.vectored:
                            changes["vector"] = vector
                        if arm.match is not None:
                            realised = matched.get((i, seed), float(np.mean(list(matched.values()))))
                            if realised > 0:
                                changes["ratio"] = realised
                            else:  # SIA steered nothing here (e.g. an answer that ended at once): nor does the matched arm
                                changes = {**{k: v for k, v in changes.items() if k != "ratio"}, "gate": "none"}
                        key = f"{arm.name}|{i}|{seed}"
                        jobs[key] = (arm, i, seed, changes)
                        todo.append(Row(len(todo) + 1, key, prompt, best_of=arm.best_of, detail=True, system=objective_prompt if arm.prompted else None,
                                        changes={**changes, "seed": row_seed(seed, i), "trace": True, "logprobs": True},
                                        exact=False if parallel and parallel > 1 else None))
            results = batch_run(todo, spec or here.spec, workers=workers, use_ray=use_ray, ray_address=ray_address,
                                here=None if spec is not None and (workers > 1 or use_ray) else here, parallel=parallel)
            for result in results:
                arm, i, seed, changes = jobs[result["id"]]
                row = _bench_row(steerer, judge, teacher, arm, changes, prompts[i], i, seed, result)
                row["run"] = run_id
                rows.append(row)
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                count += 1
                if progress:
                    progress(count, total, arm.name)
    summary = summarise(rows, arms, taus)
    summary["setup"] = _setup(steerer, judge, prompts, seeds)
    summary["setup"]["raw"] = raw
    if any(a.prompted for a in arms):
        summary["setup"]["objective_prompt"] = objective_prompt
    summary["setup"]["teacher"] = getattr(teacher, "name", None)
    runs = sorted({r.get("run", "?") for r in rows})
    if len(runs) > 1:
        summary["cost_note"] = f"rows come from {len(runs)} runs: wall-time columns mix timings taken at different moments"
    files = [results_file, out_dir / "summary.json"]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if plots:
        files += write_plots(rows, summary, out_dir)
    return GridResult(rows, summary, files)


def row_seed(seed: int, prompt_index: int) -> int:
    """The sampler seed of one (seed, prompt) row: distinct per prompt, the same for every arm."""
    return seed * 1_000_003 + prompt_index


def _bench_row(steerer: Steerer, judge: Judge, teacher: Scorer, arm: Arm, changes: dict[str, Any], prompt: str, i: int, seed: int,
               result: dict[str, Any]) -> dict[str, Any]:
    """One results.jsonl row from a worker's result: the teacher's reward and the judge are computed here."""
    if result.get("error"):
        raise ConfigError(f"arm {arm.name}, prompt {i}: {result['error']}", "fix the arm's settings")
    s, detail = result["stats"], result["detail"]
    row: dict[str, Any] = {
        "arm": arm.name, "prompt_index": i, "seed": seed, "gate": s["gate"], "best_of": arm.best_of,
        "tau": s["tau"], "ratio_target": changes.get("ratio"), "text": result["text"], "tokens": s["tokens"],
        "ratio": s["ratio"], "junctions": s["junctions"], "changed": s["changed"], "strength": s.get("strength"),
        "wall_seconds": detail["wall_seconds"],
        "reward": _final_reward(steerer, teacher, prompt, result["text"], detail["token_ids"]), "judge": judge(prompt, [result["text"]])[0],
        "kl_per_token": s["kl_per_token"], "finish_reason": result["finish_reason"],
        # the base model's perplexity of the answer: read during the decode, except under a control vector, whose
        # decode saw the vector's logits (rescored here with it cleared)
        "perplexity": base_perplexity(steerer, prompt, detail["token_ids"]) if arm.vectored else s["perplexity"],
        "generated_tokens": detail["generated_tokens"], "reward_calls": detail["reward_calls"],
    }
    if "samples" in result:
        row["bon_scores"] = [c["score"] for c in result["samples"]]
    if arm.name == "base" and detail.get("entropies") is not None:
        row["entropies"] = detail["entropies"]
    return row


def base_perplexity(steerer: Steerer, prompt: str, token_ids: Sequence[int]) -> float | None:
    """exp(- mean log p) of `token_ids` after `prompt` (chat-templated) under the model itself, no control vector set."""
    if not token_ids:
        return None
    lm = steerer.lm
    lm.use_vector(None)
    ids = lm.render_chat([{"role": "user", "content": prompt}])[0] if lm.has_chat_template else lm.tokenize(prompt)
    logits = lm.prefill(ids)
    total = 0.0
    for i, token in enumerate(token_ids):
        top = float(logits.max())
        total += float(logits[token]) - top - float(np.log(np.exp(logits - top).sum()))
        if i + 1 < len(token_ids):
            logits = lm.step(int(token))
    return float(np.exp(-total / len(token_ids)))


def _final_reward(steerer: Steerer, teacher: Scorer, prompt: str, text: str, token_ids: list[int]) -> float:
    prompt_ids = steerer.lm.render_chat([{"role": "user", "content": prompt}])[0] if steerer.lm.has_chat_template else steerer.lm.tokenize(prompt)
    return float(teacher.score_responses(prompt, prompt_ids, [(text, token_ids)])[0])


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a row cut short by an interrupted run is redone
    return rows


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return m, se


def _prompt_mean_se(rows: Sequence[dict[str, Any]], key: str) -> tuple[float, float]:
    """Mean of `key` and its standard error with prompts as the unit: seeds of one prompt are averaged
    first, since they share the prompt and are not independent samples."""
    per_prompt: dict[int, list[float]] = {}
    for r in rows:
        per_prompt.setdefault(r["prompt_index"], []).append(r[key])
    return _mean_se([statistics.fmean(v) for v in per_prompt.values()])


def paired(rows: Sequence[dict[str, Any]], arm: str, other: str, key: str) -> dict[str, float] | None:
    """arm − other on `key` over the (prompt, seed) pairs both have: mean difference, its standard error
    over prompts, and the share of prompts where `arm` is ahead. None when they share no pair."""
    a = {(r["prompt_index"], r["seed"]): r[key] for r in rows if r["arm"] == arm}
    b = {(r["prompt_index"], r["seed"]): r[key] for r in rows if r["arm"] == other}
    both = sorted(set(a) & set(b))
    if not both:
        return None
    per_prompt: dict[int, list[float]] = {}
    for pair in both:
        per_prompt.setdefault(pair[0], []).append(a[pair] - b[pair])
    diffs = [statistics.fmean(v) for v in per_prompt.values()]
    mean, se = _mean_se(diffs)
    return {"mean_diff": mean, "se": se, "prompts": len(diffs), "pairs": len(both), "prompts_ahead": sum(d > 0 for d in diffs) / len(diffs)}


def summarise(rows: Sequence[dict[str, Any]], arms: Sequence[Arm], taus: dict[str, float]) -> dict[str, Any]:
    """Per-arm means (standard errors over prompts), cost relative to base, the Pareto front of judge vs
    cost, and paired differences of each SIA arm against the random arm matched to its realised ratio."""
    by_arm: dict[str, dict[str, Any]] = {}
    for arm in arms:
        rs = [r for r in rows if r["arm"] == arm.name]
        if not rs:
            continue
        out_tokens = sum(r["tokens"] for r in rs) or 1
        reward, reward_se = _prompt_mean_se(rs, "reward")
        judge, judge_se = _prompt_mean_se(rs, "judge")
        logppl = [math.log(r["perplexity"]) * r["tokens"] for r in rs if r.get("perplexity")]
        by_arm[arm.name] = {
            "n": len(rs), "gate": arm.gate, "best_of": arm.best_of, "tau": taus.get(arm.name),
            "reward": reward, "reward_se": reward_se, "judge": judge, "judge_se": judge_se,
            "ratio": statistics.fmean(r["ratio"] for r in rs),
            "reward_calls_per_token": sum(r["reward_calls"] for r in rs) / out_tokens,
            "seconds_per_token": sum(r["wall_seconds"] for r in rs) / out_tokens,
            "tokens_per_s": sum(r["generated_tokens"] for r in rs) / sum(r["wall_seconds"] for r in rs),
            "kl_per_token": statistics.fmean(r["kl_per_token"] for r in rs),
            "perplexity": math.exp(sum(logppl) / sum(r["tokens"] for r in rs if r.get("perplexity"))) if logppl else None,
            "distinct_1": distinct_n([r["text"] for r in rs], 1), "distinct_2": distinct_n([r["text"] for r in rs], 2),
            "mean_length": statistics.fmean(r["tokens"] for r in rs),
        }
    if "base" in by_arm:
        for v in by_arm.values():
            v["cost_vs_base"] = v["seconds_per_token"] / by_arm["base"]["seconds_per_token"]
    front = [name for name, v in sorted(by_arm.items(), key=lambda item: item[1]["seconds_per_token"])  # cheapest first
             if not any(o["judge"] >= v["judge"] and o["seconds_per_token"] <= v["seconds_per_token"] and
                        (o["judge"] > v["judge"] or o["seconds_per_token"] < v["seconds_per_token"]) for o in by_arm.values())]
    pairs = [(arm.match, arm.name) for arm in arms if arm.match is not None]  # SIA vs random gating at the ratio SIA realised
    for arm in arms:  # the fixed tau against the controlled gate at the same target ratio
        if arm.fixed and arm.ratio is not None:
            pairs.append((f"sia@{arm.ratio:g}", arm.name))
    if "prompt" in by_arm:  # the prompt baseline: asking vs nothing, steering vs asking, asking + steering vs asking
        pairs += [("prompt", "base")] + [(a.name, "prompt") for a in arms if a.gate == "entropy" and a.best_of == 1]
    comparisons = {f"{a} vs {b}": {key: paired(rows, a, b, key) for key in ("judge", "reward")}
                   for a, b in pairs if a in by_arm and b in by_arm}
    return {"arms": by_arm, "pareto_front": front, "paired": comparisons}


def _setup(steerer: Steerer, judge: Judge, prompts: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    from ..info import version_of

    cfg = steerer.config
    return {
        "model": str(steerer.lm.path), "reward": getattr(steerer.scorer, "name", None), "reward_provider": getattr(steerer.scorer, "provider", None),
        "judge": judge.name, "prompts": len(prompts), "seeds": list(seeds), "top_k": cfg.top_k, "weight": cfg.weight,
        "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "machine": platform.platform(), "processor": platform.processor(),
        "python": platform.python_version(), "versions": {p: version_of(p) for p in ("sia-local", "llama-cpp-python", "onnxruntime-gpu", "onnxruntime", "numpy")},
        "n_threads": steerer.lm.n_threads, "n_gpu_layers": steerer.lm.n_gpu_layers,
    }


def markdown_table(summary: dict[str, Any]) -> str:
    head = "| arm | reward | judge | realised ratio | reward calls/token | cost × base | KL/token | perplexity | distinct-2 | length |\n|---|---|---|---|---|---|---|---|---|---|"
    lines = [head]
    for name, v in summary["arms"].items():
        ppl = f"{v['perplexity']:.2f}" if v.get("perplexity") else "–"
        lines.append(f"| {name} | {v['reward']:.2f} ± {v['reward_se']:.2f} | {v['judge']:.3f} ± {v['judge_se']:.3f} | {v['ratio']:.2f} | "
                     f"{v['reward_calls_per_token']:.2f} | {v.get('cost_vs_base', float('nan')):.2f} | {v['kl_per_token']:.3f} | {ppl} | "
                     f"{v['distinct_2']:.3f} | {v['mean_length']:.0f} |")
    return "\n".join(lines)


