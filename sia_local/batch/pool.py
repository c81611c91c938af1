"""Where batch rows run when they leave this process: supervised worker processes, or Ray actors.

Both hand rows to idle workers one at a time and stream results back to the caller, which alone
writes the output. Unlike a `multiprocessing.Pool` (which restarts a worker whose start-up fails
without end, and waits forever for the row of a worker that died), a worker that cannot load ends
the run with its one-line reason, and a row whose worker died is retried on a fresh one; after
MAX_TRIES deaths it becomes an error row and the run goes on. Ray actors get the same treatment.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any, Callable, Iterator, Sequence

from ..errors import MissingPackageError, SiaError
from .worker import Row, Worker, WorkerSpec, error_row

MAX_TRIES = 3  # a row whose worker (process or Ray actor) died this many times becomes an error row


def run_processes(rows: Sequence[Row], spec: WorkerSpec, workers: int, base_seed: int,
                   on_dispatch: Callable[[int, Row], None] | None = None) -> Iterator[dict[str, Any]]:
    """Rows on `workers` supervised worker processes, `spec.parallel` rows in flight per worker (decoded together in
    its slots; one without).

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
    procs: dict[Any, tuple[Any, list[tuple[Row, int]]]] = {}  # parent's connection -> (process, the (row, tries) in flight)
    ready: set[Any] = set()
    start_deaths = 0

    def start() -> None:
        parent, child = ctx.Pipe()
        proc = spawn(ctx, _worker_main, (spec, child))
        child.close()
        procs[parent] = (proc, [])

    def dispatch(conn: Any) -> None:
        row, tries = pending.popleft()
        proc, flight = procs[conn]
        flight.append((row, tries))
        if on_dispatch is not None:
            on_dispatch(proc.pid, row)
        try:
            conn.send((row, base_seed))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            pass  # it died already: its sentinel says so next

    try:
        for _ in range(min(workers, len(rows))):
            start()
        while pending or any(flight for _, flight in procs.values()):
            for conn in [c for c in procs if c in ready]:
                while pending and len(procs[conn][1]) < max(1, spec.parallel):
                    dispatch(conn)
            watch = {**{c: c for c in procs}, **{procs[c][0].sentinel: c for c in procs}}
            for signalled in wait(list(watch)):
                conn = watch[signalled]
                if conn not in procs:
                    continue
                proc, flight = procs[conn]
                message = _receive(conn)
                if message is not None and message is not _GONE and message[0] == "ready":
                    ready.add(conn)
                elif message is not None and message[0] == "failed":
                    raise SiaError(f"a batch worker could not start: {message[1]}", "check --model and --reward")
                elif message is not None and message[0] == "result":
                    procs[conn] = (proc, [job for job in flight if job[0].line != message[1]["line"]])
                    yield message[1]
                elif message is _GONE or signalled == proc.sentinel:
                    proc.join(timeout=5)
                    del procs[conn]
                    was_ready = conn in ready
                    ready.discard(conn)
                    conn.close()
                    cause = _exit_cause(proc.exitcode)
                    if not flight and not was_ready:  # died while loading, before it could say why
                        start_deaths += 1
                        if start_deaths >= MAX_TRIES:
                            raise SiaError(f"batch workers died {start_deaths} times while loading the model ({cause})",
                                           "run `sia generate` with the same --model / --reward to see why; from Python, call "
                                           "batch.run under `if __name__ == \"__main__\":` (workers are spawned and import your script)")
                    for row, tries in reversed(flight):  # died on rows: they go back in the queue (an idle worker's death loses nothing)
                        if tries + 1 >= MAX_TRIES:
                            yield error_row(row, f"line {row.line}: worker died: {MAX_TRIES} workers died on this row ({cause})")
                        else:
                            pending.appendleft((row, tries + 1))
                    if pending or any(f for _, f in procs.values()):
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


def spawn(ctx: Any, target: Callable[..., None], args: tuple[Any, ...] = ()) -> Any:
    """Start a worker process with SIGINT blocked in this thread meanwhile: the new interpreter inherits the mask, so a
    Ctrl-C that lands while it is still importing (before `_follow_parent` ignores it) waits there and is then
    discarded, instead of killing it with a traceback; here it is delivered when the start returns, never lost."""
    import signal

    proc = ctx.Process(target=target, args=args, daemon=True, name="sia-batch-worker")
    if not hasattr(signal, "pthread_sigmask"):
        proc.start()
        return proc
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # a start launches it first on POSIX, and its launch unblocks SIGINT again
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return proc


def _follow_parent() -> None:
    """A worker stops with the run: Ctrl-C in the terminal reaches the parent alone (which stops the workers, with one
    line), and on Linux a worker whose parent dies (SIGTERM, SIGKILL) is sent SIGTERM at once (PR_SET_PDEATHSIG)."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # started with it blocked (`spawn`): a Ctrl-C pending since is dropped by the ignore
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent is already gone
            os._exit(0)


def _worker_main(spec: WorkerSpec, conn: Any) -> None:
    """A worker process: load once, say so (or say why not), then answer rows until told to stop."""
    _follow_parent()
    try:
        worker = Worker(spec)
    except BaseException as exc:  # noqa: BLE001 - whatever stops the load is the run's one-line reason
        conn.send(("failed", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))
        return
    conn.send(("ready",))
    lock = threading.Lock()  # the slots' thread sends results while this one reads rows
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            break
        if spec.parallel > 1:  # rows in slots: results go back as they finish, from the slots' thread
            worker.submit(*job, done=lambda result: _send(conn, lock, ("result", result)))
        else:
            conn.send(("result", worker.run(*job)))
    worker.close()


def _send(conn: Any, lock: Any, message: Any) -> None:
    with lock:
        try:
            conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            pass  # the parent is gone


# -- Ray: the same Workers as actors, on this machine or a cluster ------------------------------------
# Each actor loads the model and scorer once (the model path must exist on every node, or come with
# --ray-runtime-env). Each actor keeps `spec.parallel` rows in flight (a threaded actor: its rows decode
# together in its slots); results stream back to the driver, which alone writes the output. An actor that
# dies (a lost node, ray.kill) is replaced once and its rows are retried.
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
    parallel = max(1, spec.parallel)
    actor_class = ray.remote(num_cpus=cpus, max_restarts=0, max_concurrency=parallel)(Worker)
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
        in_flight: dict[Any, tuple[int, Any, Row, int]] = {}  # future -> (actor index, the actor, row, tries)
        idle = [i for _ in range(parallel) for i in range(len(actors))]  # an actor's index once per row it may take now
        while pending or in_flight:
            while idle and pending:
                slot = idle.pop()
                row, tries = pending.popleft()
                actor = actors[slot]
                in_flight[(actor.run_in_slot if parallel > 1 else actor.run).remote(row, base_seed)] = (slot, actor, row, tries)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            slot, actor, row, tries = in_flight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                if actors[slot] is actor:  # replace the dead actor (once: its other rows fail the same way); the row goes back first
                    actors[slot] = new_actor()
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
