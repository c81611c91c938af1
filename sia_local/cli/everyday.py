"""The everyday commands: generate, chat, serve, batch, models, info."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..core.config import MAX_TOP_K
from ..runtime import LMSettings
from .options import Steering, fail_cleanly, load_steerer, model_options, note, progress, steer_options


@click.command()
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
@click.option("--html", "html_file", type=click.Path(path_type=Path), default=None,
              help="Also write one self-contained page showing where the answer was steered (junctions, candidates).")
@click.option("--compare", is_flag=True, help="With --html: the unsteered answer (same seed) beside the steered one.")
@fail_cleanly
def generate(prompt: str, lm: LMSettings, steering: Steering, system: str | None, raw: bool, stream: bool, as_json: bool, trace: bool,
             best_of: int, html_file: Path | None, compare: bool) -> None:
    """Generate a steered response to PROMPT.

    \b
    sia generate "Tell me about your day."
    sia generate "Tell me about your day." --ratio 0.4 --seed 1
    sia generate "Hello" -m model.gguf -r my-reward/ --reward-label positive --json
    """
    if trace and not as_json:
        raise click.UsageError("--trace adds the per-token trace to the --json output; pass --json too")
    if compare and html_file is None:
        raise click.UsageError("--compare shows the two answers in the --html page; pass --html FILE too")
    if html_file is not None and best_of > 1:
        raise click.UsageError("--html shows one answer's tokens; it does not go with --best-of")
    steerer = load_steerer(lm, steering, need_scorer=best_of > 1, chat=not raw, trace=(trace or html_file is not None) or None)
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
        raise SystemExit(130) from None  # an interrupted answer is not a finished one: `sia generate ... && next` stops
    generation = s.generation
    assert generation is not None
    if html_file is not None:
        _write_page(html_file, steerer, prompt, generation, system=system, raw=raw, compare=compare)
    if as_json:
        payload = {"model": str(steerer.lm.path), "reward": scorer_summary(steerer), **generation.to_dict()}
        click.echo(json.dumps(payload, ensure_ascii=False, indent=1))
        return
    click.echo(generation.text if not live else "")
    click.echo(f"[{generation.stats.summary()}]", err=True)


def _write_page(path: Path, steerer: Any, prompt: str, generation: Any, *, system: str | None, raw: bool, compare: bool) -> None:
    """The answer (and with `compare` the unsteered one, same seed) as one self-contained page."""
    from ..serve.openai_api import token_tracer
    from ..serve.page import render_page

    trace = token_tracer(steerer.lm.piece)
    answers = []
    if compare:
        base = steerer.generate(prompt, system=system, raw=raw, gate="none", seed=generation.stats.seed, trace=True)
        answers.append({"title": "unsteered (same seed)", "tokens": [trace(t) for t in base.trace or []], "stats": base.stats.summary()})
    answers.append({"title": f"steered ({generation.stats.gate})", "tokens": [trace(t) for t in generation.trace or []],
                    "stats": generation.stats.summary()})
    path.write_text(render_page(prompt, answers), encoding="utf-8")
    note(f"wrote {path}")


def _best_of(steerer: Any, prompt: str, n: int, *, system: str | None, raw: bool, as_json: bool) -> None:
    from ..core.search import best_of_n

    with progress(f"decoding {n} samples") as tick:
        done = [0]

        def on_piece(i: int, piece: Any) -> None:
            done[0] += 1
            tick(done[0], n * steerer.config.max_tokens)

        result = best_of_n(steerer, prompt, n, system=system, raw=raw, on_piece=on_piece)
    if as_json:
        payload = {"model": str(steerer.lm.path), "reward": scorer_summary(steerer), **result.to_dict()}
        click.echo(json.dumps(payload, ensure_ascii=False, indent=1))
        return
    click.echo(result.best.text)
    st = result.stats
    scores = ", ".join(f"{c.score:.2f}" for c in result.candidates)
    click.echo(f"[best of {n}: #{result.best_index} (scores {scores}); {st.tokens} tokens in {st.seconds:.2f}s = {st.tokens_per_s:.1f} tok/s, "
               f"{st.decode_calls} decode calls, reward {st.reward_seconds:.2f}s]", err=True)


def scorer_summary(steerer: Any) -> dict[str, Any] | None:
    """The loaded scorer's facts for --json output."""
    return None if steerer.scorer is None else dataclasses.asdict(steerer.scorer.info())


@click.command()
@model_options
@steer_options
@click.option("-s", "--system", default=None, help="System message.")
@click.option("--highlight", is_flag=True, help="Colour junction tokens: green where the reward changed the token, yellow where not.")
@fail_cleanly
def chat(lm: LMSettings, steering: Steering, system: str | None, highlight: bool) -> None:
    """Chat in the terminal with streaming, history and slash commands (/help).

    \b
    sia chat --highlight
    sia chat -m model.gguf -r reward/ --ratio 0.3 -s "You are a kind assistant."
    """
    from .chat import ChatSession, repl

    repl(ChatSession(load_steerer(lm, steering, chat=True), system), highlight=highlight)


@click.command()
@model_options
@steer_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (use 0.0.0.0 to serve other machines).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--parallel", "-np", "parallel", type=click.IntRange(min=1), default=None,
              help="Slots: requests decoded together in one context, their junctions scored together [default: what the KV budget holds, at most 4].")
@click.option("--max-queue", default=8, show_default=True, type=click.IntRange(min=0), help="Requests that may wait for a slot; more get 503.")
@click.option("--api-key", default=None, envvar="SIA_API_KEY", help="Require `Authorization: Bearer KEY` on /v1/*.")
@click.option("--max-tokens-limit", type=click.IntRange(min=1), default=None,
              help="Largest max_tokens a request may ask; more gets a 400 [default: 4096 or the context size, whichever is larger].")
@click.option("--allowed-origin", "--allow-origin", "allow_origins", multiple=True,
              help="A browser origin (e.g. http://localhost:3000) whose pages may use the API, with CORS headers (repeatable); none by default.")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="Another name this server is reached by, accepted in the Host header (repeatable; '*' = any). Loopback names always are.")
@click.option("--objective-dir", "objective_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A folder of reward folders (or one reward folder) that requests may name in sia.rewards, by folder name (repeatable).")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a request may hold the model; then it stops and the client gets a 504 (or an error chunk).")
@click.option("--max-top-k", type=click.IntRange(1, MAX_TOP_K), default=None,
              help=f"Largest sia.top_k a request may ask; more gets a 400 [default: {MAX_TOP_K}].")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=None,
              help="KV budget in tokens: a Best-of-N's n x (prompt + max_tokens), and --parallel x the context [default: what a quarter of free memory holds].")
@click.option("--exact-seeds/--batch-seeds", default=True, show_default=True,
              help="A request with a seed decodes in calls of its own, so its answer does not depend on other requests; "
                   "--batch-seeds batches it with them (more tokens/s, answers up to batched rounding).")
@click.option("--strict-model", is_flag=True,
              help="Refuse (404) a request whose `model` is not this server's id [default: any name is answered by the model served, as llama.cpp's server does].")
@fail_cleanly
def serve(lm: LMSettings, steering: Steering, host: str, port: int, **limits: Any) -> None:
    """OpenAI-compatible server: /v1/chat/completions, /v1/completions, /v1/models, /health.

    \b
    sia serve --port 8000
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}], "sia": {"ratio": 0.3}}'
    """
    from ..serve.server import ServerSettings, serve as run_server

    settings = ServerSettings(**{**limits, "allow_origins": list(limits["allow_origins"]) or None, "allowed_hosts": list(limits["allowed_hosts"]) or None,
                                 "objective_dirs": [str(d) for d in limits["objective_dirs"]] or None})
    steerer = load_steerer(lm, steering)
    model_id = steerer.lm.path.stem
    run_server(steerer, model_id=model_id, host=host, port=port, settings=settings, announce=lambda line: click.echo(line, err=True))


@click.command()
@click.argument("input_file", metavar="IN", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True, help="JSONL results; rerunning resumes it.")
@model_options
@steer_options
@click.option("-s", "--system", default=None, help="System message for rows that have none.")
@click.option("--raw", is_flag=True, help="Send prompts as plain text, without the chat template.")
@click.option("--best-of", "best_of", type=click.IntRange(min=1), default=1, show_default=True, help="Best-of-N per row (all samples in the output).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (or Ray actors), each with its share of the cores [default: 1 here, 2 with --ray].")
@click.option("--parallel", "-np", "parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rows decoded together in slots of one context, per worker (their junctions scored together).")
@click.option("--ordered", is_flag=True, help="Write rows in input order (default: as they finish).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="Run the workers as Ray actors: --ray alone starts a local Ray; --ray auto / ADDRESS joins a cluster.")
@click.option("--ray-runtime-env", default=None, help="Ray runtime_env as JSON (e.g. to ship files to the nodes).")
@click.option("--retry-errors", is_flag=True, help="Run again the rows that ended in an error.")
@fail_cleanly
def batch(input_file: Path, output: Path, lm: LMSettings, steering: Steering, system: str | None, raw: bool, best_of: int, workers: int | None,
          parallel: int, ordered: bool, ray_address: str | None, ray_runtime_env: str | None, retry_errors: bool) -> None:
    """Steer every prompt of a JSONL or text file; results appended to OUT as they finish, resumable.

    \b
    sia batch prompts.jsonl -o answers.jsonl --ratio 0.3
    sia batch prompts.txt -o answers.jsonl --parallel 4 --ordered    # 4 rows decoded together
    sia batch prompts.txt -o answers.jsonl --workers 2 --ordered
    sia batch prompts.jsonl -o answers.jsonl --ray auto          # on a Ray cluster (ray start --head / --address)
    Rows: {"id": ..., "prompt": ...} or {"id": ..., "messages": [...]}, optional "sia": {...} (the server's names),
    "max_tokens", "seed", "temperature", "top_p", "stop", "system". A row's seed is its own, else --seed (0) + its line number.
    The exit code is the number of error rows in OUT, new or stored (at most 100).
    """
    from ..batch import WorkerSpec, prepare, run_file

    config = steering.config
    if output.is_dir():
        raise click.UsageError(f"-o {output} is a directory; pass a file path such as {output / 'answers.jsonl'}")
    try:
        env = json.loads(ray_runtime_env) if ray_runtime_env else None
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--ray-runtime-env is not valid JSON ({exc.msg} at character {exc.pos}); pass an object such as '{{\"working_dir\": \".\"}}'")
    if env is not None and not isinstance(env, dict):
        raise click.UsageError("--ray-runtime-env must be a JSON object such as '{\"working_dir\": \".\"}'")
    spec = WorkerSpec(lm, steering.scorer if (config.steers() or best_of > 1) else None, config.replace(seed=None),
                      best_of=best_of, raw=raw, system=system, verbose=lm.verbose, parallel=parallel)
    with progress("calibrating tau (once per model)") as tick:
        prepare(spec, progress=tick, note=note)  # the default reward built and tau calibrated once, here, before workers race to
    with progress("batch", "rows") as tick:
        summary = run_file(input_file, output, spec, workers=workers or (2 if ray_address else 1), use_ray=ray_address is not None,
                           ray_address=None if ray_address in (None, "local") else ray_address, ray_runtime_env=env, ordered=ordered,
                           base_seed=config.seed or 0, retry_errors=retry_errors, progress=tick)
    stored = f", {summary.stored_errors} of them errors: --retry-errors runs those again" if summary.stored_errors else ""
    click.echo(f"{summary.rows} rows written to {output} ({summary.failed} failed, {summary.skipped} already there{stored})", err=True)
    if summary.failed or summary.stored_errors:
        sys.exit(min(summary.failed + summary.stored_errors, 100))


@click.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """GGUF models already on this machine (Ollama, LM Studio, Hugging Face cache, installed model packages); pass a name to -m.

    \b
    sia models
    sia generate "Hi" -m llama3.2:3b          # a name from the list (or a unique part of one)
    sia generate "Hi" -m gemma3 --raw         # the Gemma 3 270M package (its GGUF has no chat template)
    Nothing is downloaded: only these folders are read.
    """
    from ..llama.models import find_models, search_roots

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


@click.command()
@model_options
@click.option("-r", "--reward", "objectives", multiple=True, help="The objective(s) to say the scorer of [default: kind].")
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def info(lm: LMSettings, objectives: tuple[str, ...], as_json: bool) -> None:
    """Versions, GPU offload, onnxruntime providers that really load, where the default models are, and which scorer steers.

    \b
    sia info                              # the default model and objective
    sia info -m gemma3-270m -r formal     # which scorer `sia generate -m gemma3-270m -r formal` would steer with, and why
    """
    from ..errors import SiaError
    from ..info import collect
    from ..rewards.mix import parse_objective
    from ..runtime import ScorerSettings, choose_heads, model_path

    facts = collect()
    try:
        mix = tuple(parse_objective(o) for o in objectives)
        settings = ScorerSettings(path=mix[0][0] if len(mix) == 1 and mix[0][1] == 1 else None, mix=mix if len(mix) > 1 or (mix and mix[0][1] != 1) else ())
        choice = choose_heads(settings, model_path(lm))
        facts["scorer (auto)"] = (f"head: {choice.why}" if choice.heads else f"teacher (MiniLM): {choice.why}"
                                  + (f"; make a head: {choice.fallback}" if choice.fallback else ""))
    except SiaError as exc:
        facts["scorer (auto)"] = f"unknown: {exc}"
    if as_json:
        click.echo(json.dumps(facts, indent=1))
        return
    for key, value in facts.items():
        click.echo(f"{key:22} {value}")


COMMANDS = (generate, chat, serve, batch, models, info)
