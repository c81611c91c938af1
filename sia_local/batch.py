"""`sia batch`: steer a whole prompt file, resumable, on local worker processes or Ray actors (`ray` is optional).

Input rows are JSONL (`{"id": ..., "prompt": ...}` or `{"id": ..., "messages": [...]}`, optional
`sia` settings with the server's field names, `max_tokens`, `seed`, `temperature`, `top_p`, `stop`,
`system`) or plain text (one prompt a line, id = line number). Every row becomes one output row,
appended and flushed as it finishes; a rerun skips the ids already written, so a run cut short by
Ctrl-C, a crash or a lost machine resumes without losing or duplicating a row (a half-written last
line is cut off and redone). A row that cannot run (empty prompt, over the context, an unknown
setting) becomes an error row with the one-line message, and the run goes on.

Every worker (in-process, a local process, or a Ray actor) is the same `Worker`: it loads the model
and scorer once through `runtime` and turns rows into results. A row's seed is its own `seed`, else
the run's seed + its line number, so results do not depend on which worker ran it.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .config import SteerConfig, request_changes, settings
from .errors import ConfigError, MissingPackageError, SiaError
from .llama import physical_cores
from .runtime import LMSettings, ScorerSettings, build_steerer, load_lm, load_scorer, needs_hidden
from .steer import Steerer

ROW_OPTIONS = tuple(name for name, s in settings() if s.api == "openai")  # OpenAI-named fields a row may set, as the server takes them


@dataclass
class Row:
    """One input row. `error` is set when the line itself is unusable (it is then written as an error row)."""

    line: int  # 1-based line number in the input
    id: Any
    prompt: str | list[dict[str, str]] | None = None
    system: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)  # SteerConfig changes from the row
    error: str | None = None
    best_of: int | None = None  # Best-of-N for this row (None: the run's --best-of)
    detail: bool = False  # also return token ids, per-token entropies and the search's cost (sia bench uses these)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to load its model once and answer rows; picklable (sent to processes and actors)."""

    lm: LMSettings
    scorer: ScorerSettings | None
    config: SteerConfig
    best_of: int = 1
    raw: bool = False
    system: str | None = None
    verbose: bool = False  # a row's unexpected error also logs its traceback to stderr


def read_rows(path: str | os.PathLike[str]) -> list[Row]:
    """Rows of a JSONL or text file; malformed lines become error rows naming their line number."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"input file not found: {p}" if not p.exists() else f"{p} is not a file", "pass a JSONL or text file of prompts")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not UTF-8 text (byte {exc.start}: {exc.reason})", "save it as UTF-8, e.g. iconv -t UTF-8") from None
    jsonl = p.suffix in (".jsonl", ".json") or any(line.lstrip().startswith("{") for line in lines[:5] if line.strip())
    rows: list[Row] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rows.append(_parse_json_row(line, n, p) if jsonl else Row(n, n, line.strip()))
    seen: set[str] = set()
    for row in rows:
        key = _key(row.id)
        if key in seen and row.error is None:
            row.error = f"{p}:{row.line}: id {row.id!r} appears twice in the input; ids must be unique"
        seen.add(key)
    return rows


def _parse_json_row(line: str, n: int, path: Path) -> Row:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        return Row(n, n, error=f"{path}:{n} is not valid JSON ({exc.msg}); fix that line")
    if not isinstance(data, dict):
        return Row(n, n, error=f"{path}:{n} must be a JSON object with \"prompt\" or \"messages\"")
    row = Row(n, data.get("id", n))
    if "messages" in data:
        messages = data["messages"]
        if not isinstance(messages, list) or not all(_is_message(m) for m in messages):
            row.error = f"{path}:{n}: \"messages\" must be a list of {{\"role\": string, \"content\": string}} objects"
            return row
        row.prompt = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    elif "prompt" in data:
        if not isinstance(data["prompt"], str):
            row.error = f"{path}:{n}: \"prompt\" must be a string, got {type(data['prompt']).__name__}"
            return row
        row.prompt = data["prompt"]
    else:
        row.error = f"{path}:{n} has neither \"prompt\" nor \"messages\""
        return row
    if data.get("system") is not None and not isinstance(data["system"], str):
        row.error = f"{path}:{n}: \"system\" must be a string, got {type(data['system']).__name__}"
        return row
    row.system = data.get("system")
    sia = data.get("sia") or {}
    api_names = {name for name, s in settings() if s.api == "sia"}
    unknown = sorted(set(sia) - api_names) if isinstance(sia, dict) else ["(not an object)"]
    extra = sorted(set(data) - {"id", "prompt", "messages", "system", "sia", *ROW_OPTIONS})
    if unknown or extra:
        bad = [f"sia.{k}" for k in unknown] + extra
        row.error = f"{path}:{n}: unknown setting {', '.join(bad)}; use {', '.join(sorted(api_names))} in \"sia\", or {', '.join(ROW_OPTIONS)}"
        return row
    row.changes = request_changes(data, sia)
    try:  # every type and range, checked now by SteerConfig itself (the same checks as the CLI and the server)
        SteerConfig().updated(**row.changes)
    except ConfigError as exc:
        row.error = f"{path}:{n}: {exc.message}"
    except (TypeError, ValueError) as exc:
        row.error = f"{path}:{n}: a setting has the wrong type ({exc})"
    return row


def _is_message(m: Any) -> bool:
    return isinstance(m, dict) and isinstance(m.get("role"), str) and (m.get("content") is None or isinstance(m.get("content"), str))


def _key(row_id: Any) -> str:
    return json.dumps(row_id, sort_keys=True)


def finished_ids(out: str | os.PathLike[str]) -> set[str]:
    """Ids already in OUT (as JSON keys). A last line cut off mid-write is removed, so its row runs again."""
    p = Path(out)
    if not p.exists():
        return set()
    data = p.read_bytes()
    keep = data.rfind(b"\n") + 1 if not data.endswith(b"\n") else len(data)
    done: set[str] = set()
    lines = data[:keep].splitlines()
    good = 0
    for i, line in enumerate(lines):
        try:
            done.add(_key(json.loads(line)["id"]))
            good += len(line) + 1
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            if i == len(lines) - 1:  # a torn last line that happens to end in a newline
                break
            raise ConfigError(f"{p}:{i + 1} is not a result row", "pass another --output file, or fix that line") from None
    if good < len(data):
        with p.open("r+b") as f:
            f.truncate(good)
    return done


class Worker:
    """Loads the model and scorer once (or wraps a steerer already loaded); turns rows into result rows (errors included)."""

    def __init__(self, spec: WorkerSpec, steerer: Steerer | None = None) -> None:
        self.spec = spec
        if steerer is None:
            lm = load_lm(spec.lm, hidden=needs_hidden(spec.scorer))
            scorer = load_scorer(spec.scorer, lm) if spec.scorer is not None else None
            steerer = build_steerer(lm, scorer, spec.config, announce=lambda message: None)
        self.steerer = steerer

    def run(self, row: Row, base_seed: int) -> dict[str, Any]:
        out: dict[str, Any] = {"id": row.id, "line": row.line}
        if row.error is not None:
            return error_row(row, row.error)
        from .search import best_of_n

        changes = {"seed": base_seed + row.line, **row.changes}
        system = row.system or self.spec.system
        best_of = row.best_of or self.spec.best_of
        try:
            assert row.prompt is not None
            t = time.perf_counter()
            if best_of > 1:
                result = best_of_n(self.steerer, row.prompt, best_of, system=system, raw=self.spec.raw, **changes)
                generation = result.best
                out["samples"] = result.samples()
                out["best_index"] = result.best_index
                extra = {"generated_tokens": result.stats.tokens, "reward_calls": result.stats.reward_calls}
                logprob_seconds = sum(c.generation.stats.logprob_seconds for c in result.candidates)
            else:
                generation = self.steerer.generate(row.prompt, system=system, raw=self.spec.raw, **changes)
                extra = {"generated_tokens": generation.stats.tokens, "reward_calls": generation.stats.reward_calls}
                logprob_seconds = generation.stats.logprob_seconds
            if row.detail:
                out["detail"] = {"token_ids": generation.token_ids, "wall_seconds": time.perf_counter() - t - logprob_seconds, **extra,
                                 "entropies": [round(x.entropy, 4) for x in generation.trace] if generation.trace is not None else None}
        except SiaError as exc:
            return error_row(row, str(exc))
        except Exception as exc:  # never let one row stop the batch: it becomes an error row, the run goes on
            if self.spec.verbose:
                import traceback

                traceback.print_exc()
            return error_row(row, f"line {row.line}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}")
        s = generation.stats
        stats = {k: v for k, v in asdict(s).items() if k not in ("finish_reason",)}
        return {**out, "text": generation.text, "finish_reason": s.finish_reason, "stats": stats, "error": None}


def error_row(row: Row, message: str) -> dict[str, Any]:
    """A row that could not run: the same keys as a result row, with `error` set and nothing generated."""
    return {"id": row.id, "line": row.line, "text": None, "finish_reason": "error", "stats": None, "error": message}


# -- running -----------------------------------------------------------------------------------------
MAX_TRIES = 3  # a row whose worker (process or Ray actor) died this many times becomes an error row


def split_threads(spec: WorkerSpec, workers: int, cores: int | None = None) -> WorkerSpec:
    """Give each of `workers` workers its share of the cores (unless threads were set explicitly)."""
    share = max(1, (cores or physical_cores()) // workers)
    lm = spec.lm if spec.lm.n_threads else LMSettings(**{**asdict(spec.lm), "n_threads": share})
    scorer = spec.scorer
    if scorer is not None and not scorer.threads:
        scorer = ScorerSettings(**{**asdict(scorer), "threads": share})
    return replace(spec, lm=lm, scorer=scorer)


def run(rows: Iterable[Row | str | dict[str, Any]], spec: WorkerSpec | None = None, *, workers: int = 1, ray_address: str | None = None,
        use_ray: bool = False, ray_runtime_env: dict[str, Any] | None = None, ordered: bool = False, base_seed: int = 0,
        here: Worker | None = None, on_dispatch: Callable[[int, Row], None] | None = None, model: str | os.PathLike[str] | None = None,
        reward: str | os.PathLike[str] | None = None, **settings: Any) -> Iterator[dict[str, Any]]:
    """Result rows for `rows`, as they finish (input order with `ordered`).

    The front door: `run(["Write a note.", {"id": "b", "prompt": "Hi", "max_tokens": 32}], ratio=0.3,
    workers=2)` -- prompts as strings or row dicts (the JSONL row format), `model` / `reward` as for
    `-m` / `-r` (default: the bundled ones), any `SteerConfig` setting as a keyword; the default reward
    is built and tau calibrated once, here, before workers start. Or pass `Row`s and a `WorkerSpec`.
    Worker processes are started with "spawn": in a script, call this under `if __name__ == "__main__":`.

    workers=1 without Ray runs in this process (on `here` when given, else a new Worker); more start
    supervised worker processes, each loading the model once; `use_ray` runs `workers` Ray actors
    instead. A row whose worker dies is retried on a fresh one (MAX_TRIES deaths: an error row).
    """
    todo = as_rows(rows)
    if spec is None:
        spec = prepare(default_spec(model, reward, **settings))
    elif model is not None or reward is not None or settings:
        raise ConfigError("pass either a WorkerSpec or model/reward/settings, not both", "drop the spec or the keywords")
    if not todo:
        return iter(())
    if here is not None and workers <= 1 and not use_ray:
        results: Iterator[dict[str, Any]] = (here.run(row, base_seed) for row in todo)
    elif use_ray:
        results = run_on_ray(todo, split_threads(spec, workers), workers=workers, address=ray_address, runtime_env=ray_runtime_env,
                             base_seed=base_seed)
    elif workers <= 1:
        results = _run_here(todo, spec, base_seed)
    else:
        results = _run_processes(todo, split_threads(spec, workers), workers, base_seed, on_dispatch)
    return _in_input_order(results, todo) if ordered else results


def as_rows(items: Iterable[Row | str | dict[str, Any]]) -> list[Row]:
    """Rows from `Row`s, prompt strings or row dicts (a bad dict becomes an error row, as a bad JSONL line does)."""
    out: list[Row] = []
    for n, item in enumerate(items, 1):
        if isinstance(item, Row):
            out.append(item)
        elif isinstance(item, str):
            out.append(Row(n, n, item))
        else:
            out.append(_parse_json_row(json.dumps(item, default=str), n, Path("<rows>")))
    return out


def default_spec(model: str | os.PathLike[str] | None = None, reward: str | os.PathLike[str] | None = None, *, best_of: int = 1,
                 raw: bool = False, system: str | None = None, **settings: Any) -> WorkerSpec:
    """A WorkerSpec from plain keywords: the model and reward as `-m` / `-r` take them, any SteerConfig setting."""
    config = SteerConfig().updated(**settings)
    scorer = ScorerSettings(path=Path(reward) if reward is not None else None) if (config.steers() or best_of > 1) else None
    return WorkerSpec(LMSettings(model=model), scorer, config, best_of=best_of, raw=raw, system=system)


def prepare(spec: WorkerSpec, progress: Callable[..., None] | None = None, note: Callable[[str], None] | None = None) -> WorkerSpec:
    """Do once, before workers start, what each would otherwise race to do: build the default reward and calibrate tau."""
    if spec.scorer is not None and spec.scorer.path is None:
        from .defaults import default_reward_dir

        default_reward_dir(progress=(lambda msg: progress(0, 0, msg)) if progress else None, note=note)
    if spec.config.needs_tau():
        from .calibrate import tau_for_ratio

        lm = load_lm(spec.lm)
        tau_for_ratio(lm, spec.config.ratio or 0.0, top_k=spec.config.top_k, progress=progress)
        del lm
    return spec


def _run_here(rows: Sequence[Row], spec: WorkerSpec, base_seed: int) -> Iterator[dict[str, Any]]:
    worker = Worker(spec)
    for row in rows:
        yield worker.run(row, base_seed)


def _run_processes(rows: Sequence[Row], spec: WorkerSpec, workers: int, base_seed: int,
                   on_dispatch: Callable[[int, Row], None] | None = None) -> Iterator[dict[str, Any]]:
    """Rows on `workers` supervised worker processes, one row in flight per worker.

    Unlike a `multiprocessing.Pool` (which restarts a worker whose start-up fails without end, and
    waits forever for the row of a worker that died), the parent watches every worker: a worker that
    cannot load its model or scorer ends the run with its one-line reason; a worker that dies mid-row
    (out of memory, an abort inside llama.cpp, a kill) is replaced and its row retried, and after
    MAX_TRIES deaths the row becomes an error row (`worker died: ...`) and the run goes on.
    `on_dispatch(pid, row)` is called just before a row is handed to a worker.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")  # llama.cpp and onnxruntime hold threads: never fork them
    pending: deque[tuple[Row, int]] = deque((row, 0) for row in rows)
    procs: dict[Any, tuple[Any, Any]] = {}  # parent's connection -> (process, the (row, tries) in flight or None)
    ready: set[Any] = set()
    start_deaths = 0

    def start() -> None:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(spec, child), daemon=True, name="sia-batch-worker")
        proc.start()
        child.close()
        procs[parent] = (proc, None)

    def dispatch(conn: Any) -> None:
        row, tries = pending.popleft()
        proc, _ = procs[conn]
        procs[conn] = (proc, (row, tries))
        if on_dispatch is not None:
            on_dispatch(proc.pid, row)
        try:
            conn.send((row, base_seed))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            pass  # it died already: its sentinel says so next

    try:
        for _ in range(min(workers, len(rows))):
            start()
        while pending or any(job is not None for _, job in procs.values()):
            for conn in [c for c in procs if c in ready and procs[c][1] is None]:
                if pending:
                    dispatch(conn)
            watch = {**{c: c for c in procs}, **{procs[c][0].sentinel: c for c in procs}}
            for signalled in wait(list(watch)):
                conn = watch[signalled]
                if conn not in procs:
                    continue
                proc, job = procs[conn]
                message = _receive(conn)
                if message is not None and message is not _GONE and message[0] == "ready":
                    ready.add(conn)
                elif message is not None and message[0] == "failed":
                    raise SiaError(f"a batch worker could not start: {message[1]}", "check --model and --reward")
                elif message is not None and message[0] == "result":
                    procs[conn] = (proc, None)
                    yield message[1]
                elif message is _GONE or signalled == proc.sentinel:
                    proc.join(timeout=5)
                    del procs[conn]
                    was_ready = conn in ready
                    ready.discard(conn)
                    conn.close()
                    cause = _exit_cause(proc.exitcode)
                    if job is None and not was_ready:  # died while loading, before it could say why
                        start_deaths += 1
                        if start_deaths >= MAX_TRIES:
                            raise SiaError(f"batch workers died {start_deaths} times while loading the model ({cause})",
                                           "run `sia generate` with the same --model / --reward to see why; from Python, call "
                                           "batch.run under `if __name__ == \"__main__\":` (workers are spawned and import your script)")
                    else:
                        row, tries = job
                        if tries + 1 >= MAX_TRIES:
                            yield error_row(row, f"line {row.line}: worker died: {MAX_TRIES} workers died on this row ({cause})")
                        else:
                            pending.appendleft((row, tries + 1))
                    if pending or any(j is not None for _, j in procs.values()):
                        start()
    finally:
        for conn, (proc, _) in procs.items():
            try:
                conn.send(None)
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                pass
        for conn, (proc, _) in procs.items():
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            conn.close()


_GONE = ("gone",)  # what `_receive` says when the worker's end of the pipe has closed


def _receive(conn: Any) -> Any:
    """The worker's next message; None when there is none yet; `_GONE` when its end of the pipe is closed (it died)."""
    try:
        if conn.poll():
            return conn.recv()
    except (EOFError, ConnectionResetError, OSError):
        return _GONE
    return None


def _exit_cause(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _worker_main(spec: WorkerSpec, conn: Any) -> None:
    """A worker process: load once, say so (or say why not), then answer rows until told to stop."""
    try:
        worker = Worker(spec)
    except BaseException as exc:  # noqa: BLE001 - whatever stops the load is the run's one-line reason
        conn.send(("failed", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))
        return
    conn.send(("ready",))
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return
        conn.send(("result", worker.run(*job)))


def _in_input_order(results: Iterable[dict[str, Any]], rows: Sequence[Row]) -> Iterator[dict[str, Any]]:
    order = [r.line for r in rows]  # by line number: ids may repeat (the repeats are error rows)
    held: dict[int, dict[str, Any]] = {}
    next_index = 0
    for result in results:
        held[result["line"]] = result
        while next_index < len(order) and order[next_index] in held:
            yield held.pop(order[next_index])
            next_index += 1


@dataclass
class Summary:
    rows: int = 0
    failed: int = 0
    skipped: int = 0  # already in OUT
    stored_errors: int = 0  # of those, rows that are errors (`--retry-errors` runs them again)


def run_file(input_path: str | os.PathLike[str], output: str | os.PathLike[str], spec: WorkerSpec, *, workers: int = 1,
             use_ray: bool = False, ray_address: str | None = None, ray_runtime_env: dict[str, Any] | None = None, ordered: bool = False,
             base_seed: int = 0, retry_errors: bool = False,
             progress: Callable[[int, int], None] | None = None) -> Summary:
    """Steer every row of INPUT not yet in OUTPUT, appending results to OUTPUT (flushed per row)."""
    rows = read_rows(input_path)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if retry_errors and out.exists():
        _drop_error_rows(out)
    done = finished_ids(out)
    todo = [r for r in rows if _key(r.id) not in done]
    stored = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] if done else []
    summary = Summary(skipped=len(rows) - len(todo), stored_errors=sum(r.get("error") is not None for r in stored))
    if progress:
        progress(0, len(todo))
    with out.open("a", encoding="utf-8") as f:
        for result in run(todo, spec, workers=workers, use_ray=use_ray, ray_address=ray_address, ray_runtime_env=ray_runtime_env,
                          ordered=ordered, base_seed=base_seed):
            f.write(json.dumps(result, ensure_ascii=False) + "\n")
            f.flush()
            summary.rows += 1
            summary.failed += result.get("error") is not None
            if progress:
                progress(summary.rows, len(todo))
    return summary


def _drop_error_rows(out: Path) -> None:
    finished_ids(out)  # first mend a torn last line
    kept = [line for line in out.read_text(encoding="utf-8").splitlines() if json.loads(line).get("error") is None]
    tmp = out.with_name(out.name + ".tmp")  # whole or not at all: an interrupted rewrite loses no row
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, out)


# -- Ray: the same Workers as actors, on this machine or a cluster ------------------------------------
# Each actor loads the model and scorer once (the model path must exist on every node, or come with
# --ray-runtime-env). Rows go to idle actors one at a time; results stream back to the driver, which
# alone writes the output. An actor that dies (a lost node, ray.kill) has its row retried on a fresh one.
NAMESPACE = "sia-batch"


def run_on_ray(rows: Sequence[Row], spec: WorkerSpec, *, workers: int, address: str | None = None,
               runtime_env: dict[str, Any] | None = None, base_seed: int = 0) -> Iterator[dict[str, Any]]:
    """Result rows as they finish, from `workers` Ray actors (named sia-batch-0.. in namespace sia-batch)."""
    try:
        import ray
    except ImportError:
        raise MissingPackageError("--ray needs Ray", 'pip install "sia-local[ray]" (or pip install ray)') from None
    started_here = False
    if not ray.is_initialized():
        import logging

        quiet = logging.WARNING if spec.verbose else logging.ERROR  # Ray's own start-up chatter stays out of the user's terminal unless -v
        logging.getLogger("ray").setLevel(quiet)
        kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": spec.verbose, "include_dashboard": False, "logging_level": quiet}
        if address and address != "local":
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = os.cpu_count() or 1
        if runtime_env:
            kwargs["runtime_env"] = runtime_env
        ray.init(**kwargs)
        started_here = True
    cpus = spec.lm.n_threads or 1
    actor_class = ray.remote(num_cpus=cpus, max_restarts=0)(Worker)
    made = 0

    def new_actor() -> Any:
        nonlocal made
        actor = actor_class.options(name=f"sia-batch-{made}", namespace=NAMESPACE).remote(spec)
        made += 1
        return actor

    actors = [new_actor() for _ in range(min(workers, len(rows)))]
    try:
        try:
            ray.get([a.__ray_ready__.remote() for a in actors])  # a model that does not load fails here, once
        except ray.exceptions.RayActorError as exc:
            raise SiaError(f"a Ray actor could not load the model: {_cause(exc)}", "check --model / --reward on every node") from None
        pending: deque[tuple[Row, int]] = deque((row, 0) for row in rows)
        in_flight: dict[Any, tuple[int, Row, int]] = {}
        idle = list(range(len(actors)))
        while pending or in_flight:
            while idle and pending:
                slot = idle.pop()
                row, tries = pending.popleft()
                in_flight[actors[slot].run.remote(row, base_seed)] = (slot, row, tries)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            slot, row, tries = in_flight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                actors[slot] = new_actor()  # replace the dead actor; its row goes back to the front of the queue
                if tries + 1 >= MAX_TRIES:
                    result = error_row(row, f"line {row.line}: worker died: {MAX_TRIES} Ray actors died on this row ({_cause(exc)})")
                else:
                    pending.appendleft((row, tries + 1))
                    idle.append(slot)
                    continue
            except ray.exceptions.RayTaskError as exc:
                result = error_row(row, f"line {row.line}: {_cause(exc)}")
            idle.append(slot)
            yield result
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _cause(exc: BaseException) -> str:
    text = str(getattr(exc, "cause", None) or exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
