"""One batch row and the worker that answers it: the row format of `sia batch`, and `Worker`.

Input rows are JSONL (`{"id": ..., "prompt": ...}` or `{"id": ..., "messages": [...]}`, optional
`sia` settings with the server's field names, the OpenAI fields `max_tokens`, `seed`, `temperature`,
`top_p`, `stop`, and `system`) or plain text (one prompt a line, id = line number). Every setting is
checked when the row is read, by SteerConfig itself. Every worker (in-process, a worker process or a
Ray actor) is the same `Worker`: it loads the model and scorer once through `runtime` and turns each
row into exactly one result row -- an error row, with the same keys, for anything that goes wrong.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..core.config import SteerConfig, request_changes, settings
from ..errors import ConfigError, SiaError
from ..runtime import LMSettings, ScorerSettings, build_steerer, load_lm, load_scorer, model_path, needs_hidden
from ..rewards.mix import MixCache, as_specs
from ..core.search import BestOfN
from ..core.slots import SlotScheduler
from ..core.steer import Steerer


ROW_OPTIONS = (*(s.wire or name for name, s in settings() if s.api == "openai"), "response_format")  # OpenAI-named fields a row may set, as the server takes them


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
    mix: tuple[tuple[str, float], ...] | None = None  # the row's own objectives ("sia": {"rewards": [...]}), else the run's scorer
    exact: bool | None = None  # decoded in calls of its own (None: when the row names its seed; `sia eval --parallel` batches seeded rows)


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
    parallel: int = 1  # rows decoded together in one context per worker (slots)


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
        rows.append(parse_json_row(line, n, p) if jsonl else Row(n, n, line.strip()))
    seen: set[str] = set()
    for row in rows:
        key = row_key(row.id)
        if key in seen and row.error is None:
            row.error = f"{p}:{row.line}: id {row.id!r} appears twice in the input; ids must be unique"
        seen.add(key)
    return rows


def parse_json_row(line: str, n: int, path: Path) -> Row:
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
    if isinstance(sia, dict) and "rewards" in sia:
        try:
            row.mix = as_specs(sia["rewards"], f"{path}:{n}: sia.rewards")
        except ConfigError as exc:
            row.error = exc.message
            return row
        sia = {k: v for k, v in sia.items() if k != "rewards"}
    api_names = {name for name, s in settings() if s.api == "sia"}
    unknown = sorted(set(sia) - api_names) if isinstance(sia, dict) else ["(not an object)"]
    extra = sorted(set(data) - {"id", "prompt", "messages", "system", "sia", *ROW_OPTIONS})
    if unknown or extra:
        bad = [f"sia.{k}" for k in unknown] + extra
        row.error = f"{path}:{n}: unknown setting {', '.join(bad)}; use {', '.join(sorted(api_names))} or rewards in \"sia\", or {', '.join(ROW_OPTIONS)}"
        return row
    try:  # every type and range, checked now by SteerConfig itself (the same checks as the CLI and the server)
        row.changes = request_changes(data, sia)  # a response_format becomes its grammar here (a bad schema: this row's error)
        SteerConfig().updated(**row.changes)
    except ConfigError as exc:
        row.error = f"{path}:{n}: {exc.message}"
    except (TypeError, ValueError) as exc:
        row.error = f"{path}:{n}: a setting has the wrong type ({exc})"
    return row


def _is_message(m: Any) -> bool:
    return isinstance(m, dict) and isinstance(m.get("role"), str) and (m.get("content") is None or isinstance(m.get("content"), str))


def row_key(row_id: Any) -> str:
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
            done.add(row_key(json.loads(line)["id"]))
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
            lm = load_lm(spec.lm, hidden=needs_hidden(spec.scorer, model_path(spec.lm)))
            scorer = load_scorer(spec.scorer, lm) if spec.scorer is not None else None
            steerer = build_steerer(lm, scorer, spec.config, announce=lambda message: None)
        self.steerer = steerer
        scorer = spec.scorer
        # rows' own objectives, on this worker's share of the cores and its provider (`batch.split_threads`)
        self.mixes = MixCache(provider=scorer.provider, threads=scorer.threads, verbose=scorer.verbose) if scorer is not None else MixCache()
        self.slots: SlotScheduler | None = None  # rows as slots (spec.parallel > 1), made on first use
        self._slots_lock = threading.Lock()

    def run(self, row: Row, base_seed: int) -> dict[str, Any]:
        """One row, decoded alone (Best-of-N in its own batched context)."""
        if row.error is not None:
            return error_row(row, row.error)
        from ..core.search import best_of_n

        def decode() -> Any:
            steerer, prompt, best_of, options = self._request(row, base_seed)
            return best_of_n(steerer, prompt, best_of, **options) if best_of > 1 else steerer.generate(prompt, **options)

        return self._answer(row, decode, time.perf_counter())

    def submit(self, row: Row, base_seed: int, done: Callable[[dict[str, Any]], None]) -> None:
        """Queue a row in this worker's `spec.parallel` slots (`core/slots.py`: rows decoded together in one context);
        `done(result row)` is called when it ends, from the slots' thread (an error row too, at once when it is refused)."""
        t = time.perf_counter()
        if row.error is not None:
            done(error_row(row, row.error))
            return
        with self._slots_lock:  # a Ray actor's threads arrive together: one scheduler, not one each
            if self.slots is None:
                self.slots = SlotScheduler(self.steerer.lm, self.spec.parallel, scorer=self.steerer.scorer, max_queue=1 << 30)
        try:
            steerer, prompt, best_of, options = self._request(row, base_seed)
            # a row that names its seed is exact (decoded in calls of its own, the same answer whatever else runs); the
            # others' seeds come from the run's (base seed + line) and share decodes: the batching gain
            future = self.slots.submit(steerer, prompt, n=best_of, exact=row.exact if row.exact is not None else "seed" in row.changes, **options)
        except Exception as exc:  # a row refused before it is queued (its prompt, its settings): its own error row
            refused: BaseException = exc
            done(self._answer(row, lambda: _raise(refused), t))
            return
        future.add_done_callback(lambda f: done(self._answer(row, f.result, t)))

    def run_in_slot(self, row: Row, base_seed: int) -> dict[str, Any]:
        """One row through the slots, waiting for it: a Ray actor with `spec.parallel` threads (`max_concurrency`)
        runs that many of these at once, so its rows decode together as a local worker's do."""
        import queue

        box: queue.Queue[dict[str, Any]] = queue.Queue(1)
        self.submit(row, base_seed, box.put)
        return box.get()

    def run_slots(self, rows: Sequence[Row], base_seed: int) -> Iterator[dict[str, Any]]:
        """`rows` decoded together in slots; result rows as they finish. At most twice the slots are prepared at a time
        (a row's prepared state -- its tokens, a grammar's cells of 12 bytes a vocabulary entry -- waits in memory): the
        next row is submitted as one finishes."""
        import queue

        finished: queue.Queue[dict[str, Any]] = queue.Queue()
        pending = iter(rows)
        window = 2 * self.spec.parallel
        submitted = 0
        for row in pending:
            self.submit(row, base_seed, finished.put)
            submitted += 1
            if submitted >= window:
                break
        for _ in range(len(rows)):
            yield finished.get()
            for row in pending:  # one finished: one more in
                self.submit(row, base_seed, finished.put)
                break

    def close(self) -> None:
        """Free the slots' context and thread, if rows ran in slots."""
        if self.slots is not None:
            self.slots.close()
            self.slots = None

    def _request(self, row: Row, base_seed: int) -> tuple[Steerer, Any, int, dict[str, Any]]:
        """What a row asks of the model: the steerer (with the row's own objectives), its prompt, n and settings."""
        assert row.prompt is not None
        steerer = self.steerer if row.mix is None else self.steerer.with_scorer(self.mixes.get(row.mix))
        options = {"seed": base_seed + row.line, **row.changes, "system": row.system or self.spec.system, "raw": self.spec.raw}
        return steerer, row.prompt, row.best_of or self.spec.best_of, options

    def _answer(self, row: Row, decode: Callable[[], Any], t: float) -> dict[str, Any]:
        """The result row of `decode()` (a Generation or a BestOfN); any error becomes the row's error row."""
        out: dict[str, Any] = {"id": row.id, "line": row.line}
        try:
            result = decode()
            if isinstance(result, BestOfN):
                generation = result.best
                out["samples"] = result.samples()
                out["best_index"] = result.best_index
                extra = {"generated_tokens": result.stats.tokens, "reward_calls": result.stats.reward_calls}
                logprob_seconds = sum(c.generation.stats.logprob_seconds for c in result.candidates)
            else:
                generation = result
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


def _raise(exc: BaseException) -> Any:
    raise exc


def error_row(row: Row, message: str) -> dict[str, Any]:
    """A row that could not run: the same keys as a result row, with `error` set and nothing generated."""
    return {"id": row.id, "line": row.line, "text": None, "finish_reason": "error", "stats": None, "error": message}
