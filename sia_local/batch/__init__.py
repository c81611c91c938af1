"""`sia batch`: steer many prompts, resumable, here, on supervised worker processes or on Ray actors.

Every row becomes one output row (the row format and the worker: `worker.py`; where rows run when
they leave this process: `pool.py`), appended and flushed as it finishes; a rerun skips the ids
already written, so a run cut short by Ctrl-C, a crash or a lost machine resumes without losing or
duplicating a row (a half-written last line is cut off and redone). A row's seed is its own `seed`,
else the run's seed + its line number, so results do not depend on which worker ran it.

May import: errors, paths, runtime, llama, core, rewards.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..core.config import SteerConfig
from ..errors import ConfigError
from ..llama import physical_cores
from ..paths import write_atomic
from .pool import MAX_TRIES, run_on_ray, run_processes
from ..runtime import LMSettings, ScorerSettings, load_lm
from .worker import Row, Worker, WorkerSpec, error_row, finished_ids, parse_json_row, read_rows, row_key

__all__ = ["MAX_TRIES", "Row", "Summary", "Worker", "WorkerSpec", "as_rows", "default_spec", "error_row", "finished_ids", "prepare", "read_rows",
           "run", "run_file", "split_threads"]


def split_threads(spec: WorkerSpec, workers: int, cores: int | None = None) -> WorkerSpec:
    """Give each of `workers` workers its share of the cores (unless threads were set explicitly)."""
    share = max(1, (cores or physical_cores()) // workers)
    lm = spec.lm if spec.lm.n_threads else LMSettings(**{**asdict(spec.lm), "n_threads": share})
    scorer = spec.scorer
    if scorer is not None and not scorer.threads:
        scorer = ScorerSettings(**{**asdict(scorer), "threads": share})
    return replace(spec, lm=lm, scorer=scorer)


def run(rows: Iterable[Row | str | dict[str, Any]], spec: WorkerSpec | None = None, *, workers: int = 1, ray_address: str | None = None,
        use_ray: bool = False, ray_runtime_env: dict[str, Any] | None = None, ordered: bool = False, base_seed: int = 0, parallel: int | None = None,
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
    `parallel` (or the spec's): rows decoded together in slots of one context, per worker (`core/slots.py`);
    Ray actors take one row at a time.
    """
    todo = as_rows(rows)
    if spec is None:
        spec = prepare(default_spec(model, reward, **settings))
    elif model is not None or reward is not None or settings:
        raise ConfigError("pass either a WorkerSpec or model/reward/settings, not both", "drop the spec or the keywords")
    if parallel is not None:
        spec = replace(spec, parallel=parallel)
    if not todo:
        return iter(())
    if here is not None and here.spec.parallel != spec.parallel:  # the worker at hand takes this run's slots
        here.close()
        here.spec = replace(here.spec, parallel=spec.parallel)
    if here is not None and workers <= 1 and not use_ray:
        results: Iterator[dict[str, Any]] = here.run_slots(todo, base_seed) if spec.parallel > 1 else (here.run(row, base_seed) for row in todo)
    elif use_ray:
        results = run_on_ray(todo, split_threads(spec, workers), workers=workers, address=ray_address, runtime_env=ray_runtime_env,
                             base_seed=base_seed)
    elif workers <= 1:
        results = _run_here(todo, spec, base_seed)
    else:
        results = run_processes(todo, split_threads(spec, workers), workers, base_seed, on_dispatch)
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
            out.append(parse_json_row(json.dumps(item, default=str), n, Path("<rows>")))
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
        from ..rewards.defaults import default_reward_dir

        default_reward_dir(progress=(lambda msg: progress(0, 0, msg)) if progress else None, note=note)
    if spec.config.needs_tau():
        from ..core.calibrate import tau_for_ratio

        lm = load_lm(spec.lm)
        tau_for_ratio(lm, spec.config.ratio or 0.0, top_k=spec.config.top_k, progress=progress)
        del lm
    return spec


def _run_here(rows: Sequence[Row], spec: WorkerSpec, base_seed: int) -> Iterator[dict[str, Any]]:
    worker = Worker(spec)
    try:
        if spec.parallel > 1:
            yield from worker.run_slots(rows, base_seed)
        else:
            for row in rows:
                yield worker.run(row, base_seed)
    finally:
        worker.close()


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
    todo = [r for r in rows if row_key(r.id) not in done]
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
    write_atomic(out, "".join(line + "\n" for line in kept))  # an interrupted rewrite loses no row


