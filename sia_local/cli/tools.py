"""The tool commands: calibrate, bench (and bench speed), reward (export, check, build, fit, list, score); `vm` is in vm.py."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..core.config import setting_default
from ..heads.store import BUDGET_PROMPTS
from ..runtime import LMSettings
from .vm import head_summary
from .options import Steering, fail_cleanly, float_list, int_list, load_steerer, model_options, need, note, progress, reward_label_option, steer_options

if TYPE_CHECKING:
    from ..core.scorer import Scorer


@click.command()
@model_options
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=setting_default("top_k"), show_default=True)
@click.option("--temperature", "--temp", type=click.FloatRange(min=0.0), default=setting_default("temperature"), show_default=True)
@click.option("--ratio", "ratios", type=click.FloatRange(0.0, 1.0), multiple=True, help="Ratios to report [default: 0.2 0.4 0.6 0.8].")
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def calibrate(lm: LMSettings, top_k: int, temperature: float, ratios: tuple[float, ...], as_json: bool) -> None:
    """Decode the calibration prompts unsteered and print tau for each target ratio (cached per model)."""
    import numpy as np

    from ..core.calibrate import REPORT_RATIOS, entropy_profile, tau_from_entropies
    from ..runtime import load_lm

    model = load_lm(lm)
    with progress("decoding calibration prompts") as tick:
        h = entropy_profile(model, top_k=top_k, temperature=temperature, progress=tick)
    rows = [{"ratio": r, "tau": tau_from_entropies(h, r)} for r in (ratios or REPORT_RATIOS)]
    if as_json:
        click.echo(json.dumps({"model": str(model.path), "top_k": top_k, "temperature": temperature, "steps": len(h), "taus": rows}))
        return
    click.echo(f"{model.path.name}: {len(h)} steps, entropy mean {np.mean(h):.3f} nats (max ln k = {np.log(top_k):.3f})")
    for row in rows:
        click.echo(f"  ratio {row['ratio']:.2f} -> tau {row['tau']:.4f}")


@click.group(invoke_without_command=True)
@model_options
@steer_options
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None, help="JSONL ({\"prompt\": ...}) or text file [default: the 50 shipped prompts].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N prompts.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Samples per prompt and arm (seeds 0..N-1).")
@click.option("--judge", type=click.Path(path_type=Path), default=None, help="Reward folder to judge with [default: VADER sentiment].")
@click.option("--arms", default=None, help="Comma-separated arms to run: grid names (base, sia@0.2, random@0.2, dense, bon-4, ...), tau@R (the tau "
                                           "calibrated for R, fixed), random-tau@R (random at the ratio tau@R realised), GATE@R and random-GATE@R for any gate (value@0.2), "
                                           "prompt and prompt+sia@R (the objective asked for in a system message), or any gate name [default: the whole grid].")
@click.option("--objective-prompt", default=None, help="The system message of the prompt arms [default: the objective's own description].")
@click.option("--raw", is_flag=True, help="Plain-text completions of the prompts, without the chat template (no system message exists then).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Decode rows in N worker processes (as sia batch does).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, help="Decode rows on Ray actors (--ray alone: a local Ray; or an address).")
@click.pass_context
@fail_cleanly
def bench(ctx: click.Context, lm: LMSettings, steering: Steering, prompts_file: Path | None, limit: int | None, seeds: int, judge: Path | None,
          arms: str | None, objective_prompt: str | None, raw: bool, out_dir: Path, workers: int, ray_address: str | None) -> None:
    """Measure alignment vs cost over a grid of arms; writes results.jsonl, summary.json and plots.

    \b
    sia bench --limit 10 -n 64 -o bench-out      # a smoke test: base, SIA@0.2..0.8, random gating, first-N, dense, BoN-2/4/8, BoN+SIA
    sia bench --seeds 2 -n 64                    # all 50 prompts x 2 seeds: enough to compare arms
    sia bench --seeds 2 --arms base,prompt,sia@0.25,prompt+sia@0.25,random@0.25   # would asking have done the same?
    sia bench speed                              # the side-by-side speed table
    Rerunning the same command resumes: finished rows are skipped.
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = (lm, steering)
        return
    from ..bench.grid import default_arms, markdown_table, run_grid, select_arms
    from ..bench.judges import RewardJudge, VaderJudge
    from ..prompts import load_prompts
    from ..rewards.reward import OnnxReward
    from ..runtime import load_scorer

    need("matplotlib", "sia bench draws its plots with matplotlib", 'pip install "sia-local[bench]"')  # before the work, not after it
    if judge is None:
        need("vaderSentiment", "sia bench's default judge is VADER", 'pip install "sia-local[bench]" (or pass --judge DIR)')
    steerer = load_steerer(lm, steering, need_scorer=True)
    config = steerer.config
    prompts = load_prompts(prompts_file)[:limit]
    grid = select_arms([a.strip() for a in arms.split(",") if a.strip()], config.max_tokens) if arms else default_arms(config.max_tokens)
    the_judge = RewardJudge(OnnxReward(judge, provider=steering.reward.provider)) if judge else VaderJudge()
    teacher = load_scorer(replace(steering.reward, prefer="teacher"), steerer.lm, note=note) if steering.scorer != steering.reward else None  # --vm steers; --reward scores
    spec = None
    if workers > 1 or ray_address:
        from ..batch import WorkerSpec

        spec = WorkerSpec(lm, steering.scorer, config)
    with progress("benchmark", "rows") as tick:
        result = run_grid(steerer, the_judge, prompts, grid, out_dir, seeds=range(seeds), teacher=teacher, worker_spec=spec,
                          workers=max(workers, 2 if ray_address and workers == 1 else workers), use_ray=ray_address is not None,
                          ray_address=None if ray_address in (None, "local") else ray_address, objective_prompt=objective_prompt, raw=raw,
                          progress=lambda d, t, name: tick(d, t, f"bench: {name}"))
    click.echo(markdown_table(result.summary))
    click.echo(f"Pareto front (judge vs cost, cheapest first): {', '.join(result.summary['pareto_front'])}")
    for pair, by_key in result.summary.get("paired", {}).items():
        parts = [f"{key} {d['mean_diff']:+.3f} ± {d['se']:.3f}{' (clear: > 2 SE)' if abs(d['mean_diff']) > 2 * d['se'] else ''} "
                 f"(ahead on {d['prompts_ahead']:.0%} of {d['prompts']} prompts)" for key, d in by_key.items() if d]
        click.echo(f"paired, {pair}: " + "; ".join(parts))
    if len(prompts) < 50 or seeds < 2:
        click.echo(f"note: {len(prompts)} prompts x {seeds} seed(s) is a smoke test: differences within 2 SE are not evidence; "
                   "use >= 50 prompts x 2 seeds (--seeds 2) to compare arms", err=True)
    click.echo("wrote " + ", ".join(str(f) for f in result.files), err=True)


@click.command("eval")
@model_options
@steer_options
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="JSONL ({\"prompt\": ...}) or text file [default: the 600 shipped eval prompts, which chose nothing].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N prompts.")
@click.option("--seeds", type=click.IntRange(min=1), default=2, show_default=True, help="Samples per prompt and arm (seeds 0..N-1).")
@click.option("--arms", default=None, help="Comma-separated arms (as sia bench names them) [default: base, prompt, the default gate at R and random "
                                           "gating at the ratio it realised, dense, prompt + that gate, at the run's --ratio].")
@click.option("--good", "good_file", type=click.Path(path_type=Path), default=None,
              help="Good examples (one a line) for a bag-of-words judge: best those the objective was not fitted on.")
@click.option("--bad", "bad_file", type=click.Path(path_type=Path), default=None, help="Bad examples for that judge.")
@click.option("--judge", type=click.Path(path_type=Path), default=None, help="Also judge with this reward folder (never the steering reward).")
@click.option("--judges", "judge_names", default=None, help="Also judge with these, comma-separated: vader, textblob, afinn, informal, f-score, density "
                                                            "[default: the objective's own judges].")
@click.option("--objective-prompt", default=None, help="The system message of the prompt arms [default: the objective's own description].")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("eval-out"), show_default=True)
@click.option("--parallel", type=click.IntRange(min=1), default=None, help="Rows decoded together in slots (seeded rows too: answers up to batched rounding).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Decode rows in N worker processes (as sia batch does).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, help="Decode rows on Ray actors (--ray alone: a local Ray; or an address).")
@fail_cleanly
def eval_command(lm: LMSettings, steering: Steering, prompts_file: Path | None, limit: int | None, seeds: int, arms: str | None, good_file: Path | None,
                 bad_file: Path | None, judge: Path | None, judge_names: str | None, objective_prompt: str | None, out_dir: Path,
                 parallel: int | None, workers: int, ray_address: str | None) -> None:
    """Does steering move answers towards your objective? Paired differences with 95 % intervals, by judges that are not the reward.

    \b
    sia eval                                   # kind on the default model: 600 eval prompts x 2 seeds x 6 arms (long: --limit for a look)
    sia eval -r register --good b_good.txt --bad b_bad.txt --limit 100   # your objective, judged on examples it was not fitted on
    Writes eval.md (the table), eval.json, eval.png and the rows (results.jsonl); rerunning the same command resumes.
    """
    from ..bench.eval import evaluate, eval_arms
    from ..bench.judges import BowJudge, Judge, RewardJudge, judges_for, named_judges
    from ..errors import SiaError
    from ..prompts import load_prompts
    from ..rewards.objectives import read_texts
    from ..rewards.reward import OnnxReward

    if (good_file is None) != (bad_file is None):
        raise click.UsageError("--good and --bad go together")
    steerer = load_steerer(lm, steering, need_scorer=True)
    config = steerer.config
    ratio = config.ratio if config.ratio is not None else float(setting_default("ratio"))
    prompts = load_prompts(prompts_file, default="eval")[:limit]
    names = [a.strip() for a in arms.split(",") if a.strip()] if arms else None
    objective = next(iter(steering.reward.mix), (None,))[0] if steering.reward.mix else (str(steering.reward.path) if steering.reward.path else "kind")
    vector = config.vector  # --vector: the vector arms' (every other arm runs without one)
    if vector is None and objective and "/" not in objective:
        try:  # the objective's own vector, when it has one for this model (made from its examples)
            steerer.vector_for(config.replace(vector=objective))
            vector = objective
        except SiaError as exc:
            note(f"no vector arms: {exc.message}")
    steerer.config = config.replace(vector=None)
    good = read_texts(good_file) if good_file else []
    bad = read_texts(bad_file) if bad_file else []
    extra: list[Judge] = [RewardJudge(OnnxReward(judge, provider=steering.reward.provider))] if judge is not None else []
    extra += named_judges([n.strip() for n in judge_names.split(",") if n.strip()] if judge_names else [])
    try:
        judges = judges_for(steerer, Path(objective).name if objective else None, good, bad)
    except SiaError:
        if not extra:  # --judge DIR or --judges alone are judges too
            raise
        judges = []
    judges = list({j.name: j for j in [*judges, *extra]}.values())  # a judge named twice judges once
    for j in judges:
        if isinstance(j, BowJudge):
            note(f"judge {j.name}: bag-of-words on {j.data}, nested cross-validated AUC {j.auc:.2f}")
    spec = None
    if workers > 1 or ray_address:
        from ..batch import WorkerSpec

        spec = WorkerSpec(lm, steering.scorer, steerer.config)
    with progress("eval", "rows") as tick:
        result = evaluate(steerer, prompts, eval_arms(ratio, names, config.max_tokens, vector=vector is not None), judges, out_dir, ratio=ratio,
                          seeds=tuple(range(seeds)), vector=vector,
                          objective_prompt=objective_prompt, progress=lambda d, t, name: tick(d, t, f"eval: {name}"), worker_spec=spec,
                          workers=max(workers, 2 if ray_address and workers == 1 else workers), use_ray=ray_address is not None,
                          ray_address=None if ray_address in (None, "local") else ray_address, parallel=parallel)
    click.echo((out_dir / "eval.md").read_text(encoding="utf-8"))
    if len(prompts) < 500 or seeds < 2:
        click.echo(f"note: {len(prompts)} prompts x {seeds} seed(s): differences of a few hundredths need >= 500 prompts x 2 seeds to show "
                   "(docs/eval.md)", err=True)
    click.echo("wrote " + ", ".join(str(f) for f in result.files), err=True)


@bench.command("speed")
@click.option("--tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--best-of", "best_of", type=click.IntRange(min=2), default=8, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the full result as JSON.")
@click.option("--head", "head_dir", type=click.Path(path_type=Path), default=None,
              help="A head folder (sia vm distill): adds its heads (layer, branch, prefix: those it has) at the ratio and dense.")
@click.option("--head-k", "head_ks", default="", metavar="K[,K...]",
              help="Also run the branch heads with these candidate counts (e.g. 5): a junction decodes k tokens.")
@click.option("--head-min-prob", "head_min_probs", default="", metavar="EPS[,EPS...]",
              help="Also run the branch heads with --min-prob EPS: only candidates with base probability >= EPS x the top one's are decoded.")
@click.pass_obj
@fail_cleanly
def bench_speed(settings: tuple[LMSettings, Steering], tokens: int, repeats: int, best_of: int, json_out: Path | None, head_dir: Path | None,
                head_ks: str, head_min_probs: str) -> None:
    """Side-by-side speed: llama-cpp-python vs gate none vs entropy@ratio vs dense, BoN batched vs sequential, and value heads.

    \b
    sia bench speed
    sia bench speed --head head-smollm2            # + head-branch / head-prefix at the ratio and dense
    sia bench speed --head head-smollm2 --head-k 5 # + the branch heads with 5 candidates
    sia bench speed --head head-smollm2 --head-min-prob 0.05   # + the branch heads scoring only candidates with p >= 0.05 p1
    """
    from ..bench.speed import speed

    lm, steering = settings
    steerer = load_steerer(replace(lm, hidden=head_dir is not None), steering, need_scorer=True)
    heads: "dict[str, Scorer] | None" = None
    if head_dir is not None:
        from ..heads.head import LayerHead, load_head

        heads = {}
        for kind in ("layer", "branch", "prefix"):
            if (head_dir / f"{kind}.npz").exists():
                head = load_head(head_dir / f"{kind}.npz", steerer.lm)
                heads[f"head-layer{head.layer}" if isinstance(head, LayerHead) else f"head-{kind}"] = head
    ratio = steerer.config.ratio if steerer.config.ratio is not None else setting_default("ratio")
    with progress("speed") as tick:
        result = speed(steerer, tokens=tokens, repeats=repeats, ratio=ratio, best_of=best_of, heads=heads,
                       head_ks=int_list(head_ks, "--head-k"), head_min_probs=float_list(head_min_probs, "--head-min-prob"),
                       progress=lambda d, t, n: tick(d, t, f"speed: {n}"))
    click.echo(f"{Path(result['model']).name}, reward on {result['reward_provider']}, tau {result['tau']:.3f}, {tokens} tokens x {repeats} repeats (medians)")
    click.echo(f"{'arm':22} {'tok/s':>8} {'tokens':>7} {'ratio':>6} {'rm calls':>8} {'rm s':>7}")
    for name, v in result["table"].items():
        click.echo(f"{name:22} {v['tok_s']:8.1f} {v['tokens']:7.0f} {v['ratio']:6.2f} {v['reward_calls']:8.0f} {v['reward_seconds']:7.2f}")
    r = result["ratios"]
    click.echo(f"gate none / llama-cpp-python tok/s      {r['none_vs_llama_cpp_tok_s']:.3f}")
    click.echo(f"entropy@{ratio:g} / dense time per token     {r['entropy_vs_dense_time']:.3f}")
    click.echo(f"dense / none time per token             {r['dense_vs_none_time']:.2f}")
    click.echo(f"BoN-{best_of} batched / sequential tok/s      {r['bon_batched_vs_sequential_tok_s']:.2f}")
    for key, value in r.items():
        if key.endswith("_vs_none_time") and key.startswith("head"):
            click.echo(f"{key.replace('_vs_none_time', ''):24} / none time per token  {value:.2f}")
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))


@click.group()
def reward() -> None:
    """Reward models: export from Hugging Face, check a folder, build offline ones."""


@reward.command("export")
@click.argument("src")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--int8", is_flag=True, help="Quantise the weights to int8 (onnxruntime dynamic quantisation) and measure rank agreement.")
@click.option("--task", type=click.Choice(["auto", "sequence-classification"]), default="auto", show_default=True)
@click.option("--opset", type=click.IntRange(min=14), default=18, show_default=True)
@click.option("--atol", type=float, default=2e-3, show_default=True, help="Largest |torch - onnx| accepted on the validation texts.")
@click.option("--label", default=None, help="For classifiers: the label whose log-probability is the reward (stored in sia.json).")
@click.option("--input", "input_mode", type=click.Choice(["response", "prompt+response", "pair", "chat"]), default=None,
              help="What the model reads [default: chat for decoder RMs with a chat template, pair for encoders with segment ids].")
@fail_cleanly
def reward_export(src: str, out: Path, int8: bool, task: str, opset: int, atol: float, label: str | None, input_mode: str | None) -> None:
    """Export a Hugging Face sequence classifier / reward model (local folder or hub id) to a validated reward folder.

    \b
    sia reward export ./Skywork-Reward-V2-Qwen3-0.6B rm-skywork --int8
    sia reward export ./distilbert-sst2 rm-sst2 --label POSITIVE --input response
    """
    from ..rewards.export import export_reward

    with progress("exporting") as tick:
        report = export_reward(src, out, int8=int8, task=task, opset=opset, atol=atol, label=label, input_mode=input_mode,
                               progress=lambda msg: tick(0, 0, msg))
    click.echo(json.dumps(dataclasses.asdict(report), indent=1))
    click.echo(f"wrote {out} (fp32 max |torch - onnx| = {report.fp32_max_abs_diff:.2e}"
               + (f", int8 Kendall tau over k=10 candidates = {report.int8_kendall_tau:.3f})" if report.int8 else ")"), err=True)


@reward.command("check")
@click.argument("folder", type=click.Path(path_type=Path))
@reward_label_option
@click.option("--reward-provider", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def reward_check(folder: Path, reward_label: str | None, reward_provider: str, as_json: bool) -> None:
    """Load a reward folder, show its inputs, outputs, labels and provider, score sample texts, time a junction."""
    from ..rewards.rewardkit import check

    result = check(folder, provider=reward_provider, label=reward_label)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    info = result["info"]
    click.echo(f"{folder}: inputs {', '.join(info['inputs'])} -> {info['output']} ({info['n_labels']} label(s)"
               + (f", reward = log p({info['label']})" if info["label"] else ", reward = the raw score") + ")")
    click.echo(f"provider {info['provider']}" + (f" ({info['provider_note']})" if info["provider_note"] else "")
               + f"; input {info['input_mode']}; max length {info['max_length']}")
    if info.get("objective"):
        click.echo(f"objective: {info['objective']}")
    for text, score in result["scores"].items():
        click.echo(f"  {score:8.3f}  {text}")
    for n, ms in result["ms_per_junction"].items():
        cut = f" (cut to {info['max_length']})" if int(n) > info["max_length"] else ""
        click.echo(f"  junction (k={result['k']}) at {n:>3} tokens: {ms:.1f} ms{cut}")


@reward.command("build")
@click.argument("kind", type=click.Choice(["default", "attribute"]))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Folder to write [default: the user cache, for `default`].")
@click.option("--positive", multiple=True, help="attribute: a description of the wanted text (repeatable).")
@click.option("--negative", multiple=True, help="attribute: a description of the unwanted text (repeatable).")
@fail_cleanly
def reward_build(kind: str, out: Path | None, positive: tuple[str, ...], negative: tuple[str, ...]) -> None:
    """Build a reward model offline from installed packages.

    \b
    sia reward build default                       # the positive-tone model `sia generate` uses by default
    sia reward build attribute -o rm-polite --positive "polite, warm and respectful" --negative "rude, dismissive, insulting"
    """
    from ..rewards.defaults import default_reward_dir

    with progress(f"building {kind}") as tick:
        say = lambda m: tick(0, 0, m)  # noqa: E731
        if kind == "default" and out is None:
            notes: list[str] = []
            folder = default_reward_dir(progress=say, note=notes.append)
            click.echo(f"{'wrote' if notes else 'up to date:'} {folder}; try: sia reward check {folder}")
            return
        if kind == "default":
            from ..rewards.sentiment import build_reward_folder, load_head

            folder = build_reward_folder(out, load_head(), progress=say) if out else default_reward_dir(progress=say)
        else:
            if out is None:
                raise click.UsageError("attribute rewards need --out DIR")
            from ..rewards.rewardkit import build_attribute

            folder = build_attribute(out, positive, negative, progress=say)
    click.echo(f"wrote {folder}; try: sia reward check {folder}")


@reward.command("fit")
@click.argument("name")
@click.option("--good", type=click.Path(path_type=Path), default=None, help="Texts like the ones you want (one a line, or JSONL with \"text\").")
@click.option("--bad", type=click.Path(path_type=Path), default=None, help="Texts like the ones you do not want.")
@click.option("--scored", type=click.Path(path_type=Path), default=None, help="Instead of --good/--bad: JSONL with \"text\" and \"score\" (a regression).")
@click.option("--describe", required=True, help="One line saying what the objective wants (what a system prompt would ask for).")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Write the folder here [default: the named objectives in the cache].")
@click.option("--head", "with_head", is_flag=True,
              help="Then distil its junction head for the model (-m; a few minutes): -r NAME on that model steers with it.")
@click.option("--head-prompts", type=click.IntRange(min=4), default=BUDGET_PROMPTS, show_default=True,
              help="Distillation prompts for --head (Kendall tau with the teacher vs prompts: docs/value-heads.md).")
@click.option("--vector/--no-vector", "with_vector", default=True, show_default=True,
              help="Also write its control vector for the model (-m): --vector NAME[:scale] then adds it at no cost per token.")
@model_options
@fail_cleanly
def reward_fit(name: str, good: Path | None, bad: Path | None, scored: Path | None, describe: str, out: Path | None, with_head: bool,
               head_prompts: int, with_vector: bool, lm: LMSettings) -> None:
    """Make an objective from examples: embed them (MiniLM), fit a head with cross-validation, keep it by NAME.

    \b
    sia reward fit polite --good polite.txt --bad rude.txt --describe "Answer politely."
    sia reward fit polite --good polite.txt --bad rude.txt --describe "Answer politely." --head   # and its head for the default model
    sia generate "..." -r polite                        # steer with it by name (its head, when there is one for the model)
    sia reward score polite my-texts.txt                # how it scores your own texts
    """
    import numpy as np

    from ..rewards.objectives import fit_objective, read_scored, read_texts

    if with_head and out is not None:
        raise click.UsageError("--head needs a named objective: drop -o (the objective is kept by NAME)")

    if scored is None and (good is None or bad is None):
        raise click.UsageError("give --good FILE and --bad FILE, or --scored FILE")
    with progress(f"fitting {name}") as tick:
        say = lambda m: tick(0, 0, m)  # noqa: E731
        if scored is not None:
            texts, scores = read_scored(scored)
            card = fit_objective(name, scored=(texts, scores), describe=describe, out=out, progress=say)
            middle = float(np.median(scores))
            good_texts, bad_texts = [t for t, v in zip(texts, scores) if v > middle], [t for t, v in zip(texts, scores) if v <= middle]
        else:
            assert good is not None and bad is not None
            good_texts, bad_texts = read_texts(good), read_texts(bad)
            card = fit_objective(name, good=good_texts, bad=bad_texts, describe=describe, out=out, progress=say)
    cv = card["cv"]
    sizes = ", ".join(f"{v} {k}" for k, v in card["examples"].items() if k != "in_both_dropped")
    dropped = card["examples"].get("in_both_dropped")
    sizes += f" ({dropped} texts in both files dropped)" if dropped else ""
    click.echo(f"{name}: {sizes}; nested cross-validated {cv['metric'].upper()} {cv['mean']:.3f} ± {cv['std']:.3f} over {cv['folds']} folds; "
               f"reward mean {card['reward']['mean']:.2f}, spread {card['reward']['std']:.2f}; fitted in {card['fit_seconds']:.1f} s")
    model = None
    if with_vector and out is None:  # a named objective: its vector for the model, found by name (--vector NAME)
        from ..heads.vectors import write_objective_vector
        from ..runtime import load_lm

        model = load_lm(replace(lm, hidden=True))
        with progress(f"control vector of {name} for {model.path.name}") as tick:
            path = write_objective_vector(name, model, good_texts, bad_texts, progress=lambda m: tick(0, 0, m))
        click.echo(f"control vector: {path} (add it with --vector {name}[:scale])")
    if with_head:
        from ..heads.store import distil_for
        from ..runtime import load_lm

        model = model or load_lm(replace(lm, hidden=True))
        with progress(f"distilling the head of {name} for {model.path.name}") as tick:
            folder, head_card = distil_for(name, model, limit=head_prompts, progress=lambda d, t, what: tick(d, t, what), note=note)
        click.echo(head_summary(head_card, folder))
    click.echo(f"steer with it: sia generate \"...\" -r {out or name}", err=True)


@reward.command("list")
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def reward_list(as_json: bool) -> None:
    """The objectives `-r NAME` accepts: the built-in ones and those made with `sia reward fit`."""
    from ..rewards.objectives import list_objectives

    found = list_objectives()
    if as_json:
        click.echo(json.dumps(found, indent=1))
        return
    for o in found:
        cv = f"CV {o['cv']['metric'].upper()} {o['cv']['mean']:.2f}" if o["cv"] else "built in"
        click.echo(f"{o['name']:16} {cv:16} {o['created'] or '':16} {o['description']}")


@reward.command("score")
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path), required=False)
@fail_cleanly
def reward_score(name: str, file: Path | None) -> None:
    """Score texts with an objective or reward folder: one JSON line per text with its `score` (FILE, or stdin).

    \b
    sia reward score polite my-texts.txt
    echo "Thanks a lot!" | sia reward score kind
    """
    import sys

    from ..rewards.objectives import read_texts
    from ..rewards.reward import OnnxReward
    from ..runtime import resolve_scorer_path

    texts = read_texts(file) if file is not None else [line.strip() for line in sys.stdin.read().splitlines()]
    texts = [t for t in texts if t]
    rm = OnnxReward(resolve_scorer_path(name, note=note), provider="cpu")
    for start in range(0, len(texts), 64):
        chunk = texts[start : start + 64]
        for text, score in zip(chunk, rm.score("", chunk)):
            click.echo(json.dumps({"text": text, "score": round(float(score), 4)}, ensure_ascii=False))


COMMANDS = (calibrate, bench, eval_command, reward)
