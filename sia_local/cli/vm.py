"""`sia vm`: value models and heads on the LM -- distil (a head per objective and model), export, latency."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError
from ..heads.store import BUDGET_PROMPTS
from ..runtime import LMSettings
from .options import fail_cleanly, int_list, model_options, note, progress, reward_label_option


@click.group()
def vm() -> None:
    """Token-level value models: on-policy distillation from your GGUF, cached scoring, latency."""


@vm.command("distill")
@model_options
@click.option("-r", "--reward", default=None, help="The teacher: an objective's name (`sia reward list`) or a sequence reward folder [default: kind, the built-in positive tone].")
@reward_label_option
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="JSONL or text prompts [default: the shipped distillation prompts, disjoint from the bench's and the held-out set].")
@click.option("--samples-per-prompt", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also sample this many answers per prompt for the paper's final-reward regression and the prefix head (0: junctions only).")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=48, show_default=True, help="Tokens per sample (--samples-per-prompt).")
@click.option("--junction-tokens", type=click.IntRange(min=1), default=32, show_default=True, help="Tokens decoded per prompt while recording junctions.")
@click.option("--junction-ratio", type=click.FloatRange(0.01, 1.0), default=0.25, show_default=True, help="Share of junction steps while recording.")
@click.option("--layer", type=click.IntRange(min=0), default=None, help="Write the early-exit head at this tapped layer [default: the smallest within --layer-tolerance of the best].")
@click.option("--layer-tolerance", type=click.FloatRange(0.0, 1.0), default=0.1, show_default=True,
              help="How much lower (relative) than the best validation Kendall tau the chosen layer's may be.")
@click.option("--limit", type=click.IntRange(min=4), default=None,
              help=f"Use only the first N prompts [default: {BUDGET_PROMPTS} of the shipped ones, a few minutes on 2 cores; all of a --prompts file].")
@click.option("--rank", type=click.IntRange(min=1), default=4, show_default=True, help="Rank of the prefix head's bilinear term.")
@click.option("--onnx", "onnx_graph", is_flag=True, help="Write an ONNX value model (the GGUF's transformer as a graph; Llama architecture only) instead of heads on the LM.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder to write [default, for a named objective: the cache, where `-r NAME` on this model finds the head].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fresh", is_flag=True, help="Start over: delete the data sampled in OUT by an earlier run (else it is resumed, with the same settings only).")
@fail_cleanly
def vm_distill(lm: LMSettings, reward: str | None, reward_label: str | None, prompts_file: Path | None, samples_per_prompt: int, max_tokens: int,
               junction_tokens: int, junction_ratio: float, layer: int | None, layer_tolerance: float,
               limit: int | None, rank: int, onnx_graph: bool, out_dir: Path | None, seed: int, fresh: bool) -> None:
    """Distil a value head from your GGUF: record the teacher's rewards at on-policy junctions, fit heads on the LM's layers.

    \b
    sia vm distill -r polite                          # the head of your objective for the default model: -r polite then uses it
    sia vm distill -o head-smollm2 --limit 1100       # the default teacher on all 1,100 prompts (~20 min), into a folder
    sia generate "..." --vm head-smollm2 --ratio 0.2   # a folder's default head (early exit at the layer the card names, or the branch head)
    sia generate "..." --vm head-smollm2/branch.npz    # the final-state head (full k-branch decode at a junction)
    sia vm distill -o head2 --samples-per-prompt 2     # also the paper's final-reward regression and the prefix head (no decode)
    Rerunning resumes: recorded junctions (OUT/junctions/) and samples (OUT/data.jsonl) are kept with the settings
    they were made with (run.json); other settings are refused, --fresh starts over.
    """
    from ..heads.store import identity_of, user_head_dir
    from ..prompts import load_prompts
    from ..runtime import ScorerSettings, load_lm, load_scorer

    prompts = load_prompts(prompts_file, default="distill")
    limit = limit or (BUDGET_PROMPTS if prompts_file is None else None)
    prompts = prompts[:limit] if limit else prompts
    model = load_lm(replace(lm, hidden=not onnx_graph))
    objective = "kind" if reward is None else reward
    identity = None if onnx_graph or samples_per_prompt else identity_of(objective, model.path, len(prompts), seed)
    if out_dir is None:
        if identity is None:
            raise click.UsageError("pass -o OUT: only a junction head of a named objective (-r NAME) has a place of its own")
        out_dir = user_head_dir(objective, model.path)
    teacher = load_scorer(ScorerSettings(path=reward, label=reward_label, verbose=lm.verbose, prefer="teacher"), model, note=note)
    with progress("distilling") as tick:
        if onnx_graph:
            from ..heads.vm_distill import distill

            card = distill(model, teacher, prompts, out_dir, samples_per_prompt=samples_per_prompt, max_tokens=max_tokens, seed=seed, fresh=fresh,
                           progress=lambda d, t, what: tick(d, t, what))
            click.echo(f"wrote {out_dir}: {card['samples']} samples from {card['prompts']} prompts, alpha {card['alpha']:g} (x feature variance), "
                       f"corr(V, R) = {card['test_corr_V_R']:.3f} on {card['test_prompts']} test prompts of unseen situations")
        else:
            from ..heads.distill import distill_head

            card = distill_head(model, teacher, prompts, out_dir, samples_per_prompt=samples_per_prompt, max_tokens=max_tokens, rank=rank,
                                seed=seed, fresh=fresh, progress=lambda d, t, what: tick(d, t, what), junction_ratio=junction_ratio,
                                junction_tokens=junction_tokens, layer=layer, layer_tolerance=layer_tolerance, identity=identity)
            click.echo(head_summary(card, out_dir))
    if identity is not None and out_dir == user_head_dir(objective, model.path):
        click.echo(f"steer with it: sia generate \"...\" -m {model.path} -r {objective}   (found by name; --scorer teacher for the teacher)", err=True)
    else:
        click.echo(f"steer with it: sia generate \"...\" -m {model.path} --vm {out_dir}", err=True)


def head_summary(card: dict[str, Any], out_dir: Path) -> str:
    """What `sia vm distill` says when it is done: the data, the held-out agreement with the teacher, the default head."""
    said = [f"wrote {out_dir} in {card['seconds']['total']:.0f} s from {card['prompts']} prompts"]
    if card.get("samples"):
        v = card["test"]
        said.append(f"{card['samples']} samples: branch head ({v['branch']['objective']} objective) corr(V, R) per position "
                    f"{v['branch']['per_position_corr']:.3f} on {card['split']['test']} test prompts; prefix head Kendall tau vs the branch head "
                    f"{v['prefix']['kendall_tau_vs_branch_at_junctions']:.3f}")
    if "layers" in card:
        pick = next(row for row in card["layers"] if row["layer"] == card["layer"]["layer"])
        final = card["final_state_head"]["test"]
        said.append(f"{card['junctions']['count']} junctions; on {pick['test']['junctions']} test junctions of unseen situations, Kendall tau with "
                    f"the teacher: layer {pick['layer']}/{card['layer']['n_layer']} {pick['test']['kendall']:.3f}, final state {final['kendall']:.3f}")
    said.append(f"default head: {card['default']}" + (f" (layer {card['layer']['layer']})" if card["default"] == "layer" else ""))
    return "; ".join(said)


@vm.command("export")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--head", "head_file", type=click.Path(path_type=Path), default=None, help=".npz with the value head's `weight` and `bias`.")
@click.option("--atol", type=float, default=1e-3, show_default=True)
@fail_cleanly
def vm_export(src: Path, out: Path, head_file: Path | None, atol: float) -> None:
    """A Hugging Face Llama-style causal LM + value head -> a cached ONNX value-model folder (needs the export extra)."""
    from ..heads.vm_distill import export_hf

    card = export_hf(src, out, head_file=head_file, atol=atol)
    click.echo(f"wrote {out}: max |torch - onnx| hidden = {card['torch_max_abs_diff']:.2e}, "
               f"max |cached - uncached| = {card['cached_vs_uncached_max_abs_diff']:.2e}")


@vm.command("latency")
@model_options
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--lengths", default="64,256,512,1024", show_default=True)
@click.option("--uncached-up-to", type=int, default=512, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
@fail_cleanly
def vm_latency(lm: LMSettings, folder: Path, lengths: str, uncached_up_to: int, json_out: Path | None) -> None:
    """Junction latency (k=10) of a value model at several context lengths, cached vs uncached; for a
    head folder, a junction's cost in plain decode steps (k = 5 and 10 branches, the early exit at its
    layer head's layer, the prefix head)."""
    import numpy as np

    from ..heads.head import head_file, junction_cost
    from ..runtime import load_lm
    from ..heads.vm import ValueModel, junction_latency

    sizes = int_list(lengths, "--lengths")
    if head_file(folder) is not None:
        model = load_lm(replace(lm, hidden=True))
        if max(sizes) + 1 >= model.n_ctx:
            raise ConfigError(f"--lengths up to {max(sizes)} do not fit the context of {model.n_ctx}", "raise --ctx-size or lower --lengths")
        from ..prompts import shipped

        text = " ".join(shipped("bench")) * 50
        exits = [int(np.load(folder / "layer.npz")["layer"])] if (folder / "layer.npz").exists() and model.taps is not None else []
        with progress("timing junctions") as tick:
            cost = junction_cost(model, model.tokenize(text, add_special=False), sizes, exit_layers=exits, progress=lambda m: tick(0, 0, m))
        exit_label = f"exit@{exits[0] + 1}/{model.n_layer} adds" if exits else ""
        click.echo(f"junctions here: {model.early_exit}")
        click.echo(f"{'context':>8} {'step ms':>8} {'k=5 steps':>10} {'k=10 steps':>11} {exit_label:>18} {'prefix head ms':>15}")
        for n, row in cost.items():
            early = f"{row['k10'][f'exit{exits[0]}']['extra_steps']:18.2f}" if exits else f"{'':>18}"
            click.echo(f"{n:>8} {row['step_ms']:8.1f} {row['k5']['branch_in_steps']:10.1f} {row['k10']['branch_in_steps']:11.1f} {early} "
                       f"{row['prefix_head_ms_k10']:15.3f}")
        if json_out:
            json_out.write_text(json.dumps({"early_exit": model.early_exit, "by_context": cost}, indent=1))
        return
    model = load_lm(lm)
    value_model = ValueModel(folder, model, verbose=lm.verbose)
    with progress("timing junctions") as tick:
        table = junction_latency(value_model, sizes, uncached_up_to=uncached_up_to, progress=lambda m: tick(0, 0, m))
    click.echo(f"{'context':>8} {'cached ms':>10} {'uncached ms':>12} {'speed-up':>9}")
    for n, row in table.items():
        u, c = row["uncached_ms"], row["cached_ms"]
        assert c is not None
        click.echo(f"{n:>8} {c:10.1f} " + (f"{u:12.1f} {u / c:9.1f}" if u else f"{'-':>12} {'-':>9}"))
    if json_out:
        json_out.write_text(json.dumps(table, indent=1))


COMMANDS = (vm,)
