"""`sia serve`: an OpenAI-compatible HTTP server over the one steering core.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions.
Steering settings ride along as an extra body field, e.g. ``"sia": {"ratio": 0.2, "weight": 1.0}``
(``extra_body`` in the openai client), and ``usage.sia`` reports the junction statistics.

Concurrency: `--parallel` slots decode together in one llama.cpp context (`core/slots.py`: one
`llama_decode` a step for every running request, their junctions scored together); up to `max_queue`
requests wait for a slot and any more get a 503 at once. The slots' thread checks every request's cancel
flag at every step, so a streaming client that disconnects frees its slot within one step; non-streaming
and n > 1 requests poll `is_disconnected()` while they wait (which is why the server's own checks are a
plain ASGI middleware, see `_Guard`). --request-timeout stops every kind of request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..core.config import MAX_TOP_K
from ..errors import SiaError
from .guard import OriginPolicy, _Guard
from .openai_api import (MAX_BODY_BYTES, ApiError, ChatRequest, CompletionRequest, Logprobs, as_api_error, finish_reason_of, finite,
                         full_response, logprob_count, mix_of, options_of, parse, sse, token_tracer)
from .openai_api import Request as ApiRequest
from ..rewards.mix import MixCache
from ..core.slots import SlotScheduler
from ..core.steer import Steerer
from ..core.tools import ToolPlan, plan as plan_tools
from .choices import best_of


@dataclass(frozen=True)
class ServerSettings:
    """The server's own settings (the steering ones are the steerer's `SteerConfig`), each declared here once.

    max_queue: requests that may wait behind the running one (more get 503). api_key: required as a
    bearer token on /v1/*. max_body_bytes: the largest request body (413). max_tokens_limit: the
    largest max_tokens (default: the larger of 4096 and the context). allow_origins: browser origins
    that may call the API from a page elsewhere, and get CORS headers (none by default: every other
    cross-origin request is refused). request_timeout: seconds a request may hold the model (504).
    max_top_k: the largest sia.top_k (default SteerConfig's bound). max_batch_tokens: Best-of-N's KV
    budget, n x (prompt + answer) (default: `default_batch_tokens`). host: the address the server is bound
    to (the Host header must name it, a loopback name, or one of `allowed_hosts`; "*" accepts any).
    objective_dirs: folders of reward folders a request may name in `sia.rewards` besides the named
    objectives (`sia reward list`); a request never names a path. parallel: slots, requests decoded together
    in one context (default: `default_parallel`, what the KV budget holds, at most 4); slots x context must fit
    max_batch_tokens. strict_model: refuse (404) a request whose `model` is not this server's id; by default, as
    llama.cpp's server does, any name is answered by the one model served (scripts written for other servers send
    names like "gpt-4o-mini"), and every response's `model` says which one answered. exact_seeds: a request that
    names its seed decodes in calls of its own (`core/slots.py`: its answer whatever else runs); False batches it with
    the others (their throughput, answers up to batched rounding).
    """

    max_queue: int = 8
    api_key: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_tokens_limit: int | None = None
    allow_origins: list[str] | None = None
    request_timeout: float | None = None
    max_top_k: int | None = None
    max_batch_tokens: int | None = None
    host: str = "127.0.0.1"
    allowed_hosts: list[str] | None = None
    objective_dirs: list[str] | None = None
    parallel: int | None = None
    strict_model: bool = False
    exact_seeds: bool = True


class Engine:
    """The model behind the server: `parallel` slots decoding together in one context (`core/slots.py`), a bounded
    queue in front (503 beyond it). Requests' own objectives share one embedder."""

    def __init__(self, steerer: Steerer, model_id: str, max_queue: int = ServerSettings.max_queue, parallel: int = 1,
                 slot_ctx: int | None = None, max_top_k: int = MAX_TOP_K, exact_seeds: bool = True) -> None:
        self.steerer = steerer
        self.exact_seeds = exact_seeds
        self.model_id = model_id
        shared = getattr(steerer.scorer, "embedder", None)  # the server's own mix, if it is one: its embedder serves every request's mix
        self.mixes = MixCache(**({"embedder": shared} if shared is not None else {}))
        self.max_queue = max_queue
        self.parallel = parallel
        self.slots = SlotScheduler(steerer.lm, parallel, scorer=steerer.scorer, slot_ctx=slot_ctx, max_queue=max_queue,
                                   branches=max(max_top_k, steerer.config.top_k))

    @property
    def waiting(self) -> int:
        return self.slots.waiting

    @property
    def active(self) -> int:
        return self.slots.active

    @property
    def served(self) -> int:
        return self.slots.served

    @property
    def cancelled(self) -> int:
        return self.slots.cancelled

    def refuse_when_full(self) -> None:
        """503 at once when every slot is busy and the queue is full."""
        if self.slots.full():
            raise ApiError(503, f"the server is busy: {self.active} slots running and {self.waiting} queued; retry later",
                           type="server_error", code="server_busy")

    def steerer_for(self, mix: tuple[tuple[str, float], ...] | None) -> Steerer:
        """The server's steerer, or one scoring with a request's own objectives (loaded once, then cached)."""
        return self.steerer if mix is None else self.steerer.with_scorer(self.mixes.get(mix))

    async def submit(self, prompt: Any, options: dict[str, Any], cancel: threading.Event, mix: tuple[tuple[str, float], ...] | None = None,
                     n: int = 1, on_piece: Callable[[int, Any], None] | None = None) -> "asyncio.Future[Any]":
        """Queue a request for the slots (its objectives loaded and its prompt prepared off the event loop); the awaitable
        result is a Generation, or a BestOfN when n > 1."""
        self.refuse_when_full()

        def prepare() -> Any:
            return self.slots.submit(self.steerer_for(mix), prompt, n=n, on_piece=on_piece, cancel=cancel, bounded=True,
                                     exact=None if self.exact_seeds else False, **options)

        return asyncio.wrap_future(await asyncio.to_thread(prepare))

    async def run(self, prompt: Any, options: dict[str, Any], cancel: threading.Event,
                  mix: tuple[tuple[str, float], ...] | None = None) -> AsyncGenerator[tuple[str, Any], None]:
        """Yield ("piece", Piece) ... then ("done", Generation) or ("error", SiaError)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def on_piece(_: int, piece: Any) -> None:  # from the slots' thread, in order with the result below
            loop.call_soon_threadsafe(events.put_nowait, ("piece", piece))

        try:
            result = await self.submit(prompt, options, cancel, mix, on_piece=on_piece)
        except ApiError:
            raise
        except Exception as exc:  # a SiaError becomes its 4xx/5xx; anything else (a bug) a 500 rather than a hung client
            yield "error", exc
            return
        result.add_done_callback(lambda f: events.put_nowait(("error", f.exception()) if f.exception() is not None else ("done", f.result())))
        try:
            while True:
                kind, item = await events.get()
                yield kind, item
                if kind != "piece":
                    return
        finally:
            cancel.set()  # the client went away or we are done: the slot is freed at the next step


def create_app(steerer: Steerer, *, model_id: str, settings: ServerSettings | None = None, **changes: Any) -> Any:
    """The FastAPI application; state lives on `app.state.engine`. `changes`: ServerSettings fields to change.

    Every request is bounded before it reaches the model, each limit refused with a 400 that names it:
    `max_tokens_limit` caps max_tokens (below it, an answer stops where the context is full);
    `max_top_k` caps k; `max_batch_tokens` caps Best-of-N's n x (prompt + answer) KV cells; a top_k
    whose tau was never calibrated is refused rather than calibrated inside the request.
    """
    conf = dataclasses.replace(settings or ServerSettings(), **changes)
    max_tokens_limit, max_top_k, max_batch_tokens = conf.max_tokens_limit, conf.max_top_k, conf.max_batch_tokens
    max_queue, api_key, max_body_bytes = conf.max_queue, conf.api_key, conf.max_body_bytes
    allow_origins, request_timeout, strict_model = conf.allow_origins, conf.request_timeout, conf.strict_model
    objective_dirs = [Path(d) for d in conf.objective_dirs or []]
    token_limit = max_tokens_limit or max(4096, steerer.lm.n_ctx)
    top_k_limit = min(max_top_k or MAX_TOP_K, MAX_TOP_K)
    batch_limit = max_batch_tokens or default_batch_tokens(steerer.lm)
    app = FastAPI(title="sia-local", version="0.1.0")
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes,
                       origin=OriginPolicy(conf.host, conf.allowed_hosts or [], allow_origins or []))
    if allow_origins:  # no CORS headers at all unless origins are named (a page elsewhere cannot read the answers); outermost, so preflights pass
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=allow_origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    parallel = check_parallel(conf.parallel, steerer.lm, batch_limit)
    engine = Engine(steerer, model_id, max_queue, parallel, max_top_k=top_k_limit, exact_seeds=conf.exact_seeds)
    app.state.engine = engine
    app.router.on_shutdown.append(engine.slots.close)  # the slots' thread stops and their context is freed with the app

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "parallel": engine.parallel, "active": engine.active, "queued": engine.waiting,
                "served": engine.served, "cancelled": engine.cancelled}

    @app.get("/")
    async def page() -> Response:
        """The chat page (static, offline: no CDN, font or external script) that talks to this server's own API."""
        from importlib import resources

        return Response(resources.files("sia_local.serve").joinpath("web/index.html").read_bytes(), media_type="text/html; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "sia-local"}]}

    @app.get("/v1/sia/settings")
    async def sia_settings() -> dict[str, Any]:
        """Every request setting with its one range and this server's default, the server's own limits, the
        gates and the objectives it can load: what a client (the web page) builds its controls from."""
        from ..core.config import settings as all_settings
        from ..core.junction import gate_names
        from ..rewards.objectives import list_objectives, request_objectives

        fields = [{"name": name, "place": s.place(name), "kind": s.kind if isinstance(s.kind, str) else s.kind.__name__,
                   "lo": s.lo, "hi": s.hi, "lo_open": s.lo_open, "max_items": s.max_items, "max_len": s.max_len, "help": s.help,
                   "default": finite(getattr(engine.steerer.config, name) if not isinstance(getattr(engine.steerer.config, name), tuple)
                                     else list(getattr(engine.steerer.config, name)))}
                  for name, s in all_settings() if s.api]
        objectives = await asyncio.to_thread(list_objectives)

        named = {o["name"] for o in objectives}
        extra = await asyncio.to_thread(request_objectives, objective_dirs)
        objectives += [{"name": n, "description": None, "cv": None, "created": None, "built_in": False, "from": "--objective-dir"}
                       for n in sorted(extra) if n not in named]
        scorer = engine.steerer.scorer
        details = scorer.info().details if scorer is not None else {}
        return {"settings": fields, "gates": list(gate_names()), "objectives": objectives, "scorer": getattr(scorer, "name", None),
                "early_exit": details.get("early_exit"), "ranks_answers_with": details.get("ranks_answers_with"), "scorer_chosen": details.get("chosen"),
                "limits": {"max_tokens": token_limit, "top_k": top_k_limit, "n": 16, "batch_tokens": batch_limit, "body_bytes": max_body_bytes},
                "slots": {"parallel": engine.parallel, "context": engine.slots.slot_ctx, "queue": engine.max_queue}}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = await parse(request, ChatRequest, max_body_bytes)
        try:
            tools = plan_tools(req.tools, req.tool_choice, req.functions, req.function_call, req.parallel_tool_calls)
        except SiaError as exc:
            raise as_api_error(exc) from None
        native = tools is not None and engine.steerer.lm.renders_tools  # the template describes the tools itself
        # earlier calls and tool results in the format calls are made in (also when this request sends no tools)
        messages = (tools or ToolPlan((), "none")).messages([m.as_dict() for m in req.messages], native)
        extra = {"tools": [{"type": "function", "function": f.signature()} for f in tools.offered()]} if native and tools else {}
        return await _respond(request, engine, req, messages, extra, chat=True, tools=tools)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = await parse(request, CompletionRequest, max_body_bytes)
        prompt = req.prompt if isinstance(req.prompt, str) else "".join(req.prompt)
        return await _respond(request, engine, req, prompt, {"raw": True}, chat=False)

    def _check(req: ApiRequest, prompt: Any, options: dict[str, Any], steerer: Steerer, mixed: bool) -> None:
        """Refuse, before the model is touched, a request that would cost more than this server allows. `mixed`: the
        request brings its own objectives (a sequence reward, loaded once admitted), so a steering gate has a scorer."""
        if strict_model and req.model and req.model != model_id:
            raise ApiError(404, f"the model {req.model!r} does not exist; this server has {model_id!r} (started with --strict-model)",
                           param="model", code="model_not_found")
        vector = options.get("vector")
        if isinstance(vector, str) and (".gguf" in vector or "/" in vector or "\\" in vector):
            raise ApiError(400, "sia.vector names an objective's control vector (\"formal:1.5\"), never a file; the server's user gives files "
                                "with sia serve --vector", param="sia.vector")
        try:
            changes = {k: v for k, v in options.items() if k not in ("raw", "tools")}
            config = steerer.config.updated(**changes) if mixed else steerer.config_for(**changes)
        except SiaError as exc:
            raise as_api_error(exc) from None
        if config.max_tokens > token_limit:
            raise ApiError(400, f"max_tokens is {config.max_tokens} but this server allows at most {token_limit}; lower max_tokens",
                           param="max_tokens", code="context_length_exceeded")
        if config.top_k > top_k_limit:
            raise ApiError(400, f"sia.top_k is {config.top_k} but this server allows at most {top_k_limit} (each junction scores k candidates); "
                           "lower sia.top_k", param="sia.top_k")
        if config.needs_tau() and not steerer.is_calibrated(config.top_k):
            raise ApiError(400, f"tau was never calibrated for top_k {config.top_k} on this model, and a calibration does not run inside a "
                           f"request; run `sia calibrate --top-k {config.top_k}` before starting the server, or give sia.tau",
                           param="sia.top_k", code="not_calibrated")
        if req.n > 1:
            try:
                prompt_tokens = len(steerer.prepare(prompt, None, bool(options.get("raw"))).ids)
            except SiaError as exc:
                raise as_api_error(exc) from None
            answer = min(config.max_tokens, max(steerer.lm.n_ctx - prompt_tokens, 0))
            cells = req.n * (prompt_tokens + answer)
            if cells > batch_limit:
                raise ApiError(400, f"n={req.n} x ({prompt_tokens} prompt + {answer} answer tokens) = {cells} KV cells, but this server allows "
                               f"{batch_limit} (--max-batch-tokens); lower n or max_tokens", param="n", code="batch_too_large")

    async def _respond(request: Request, engine: Engine, req: ApiRequest, prompt: Any, extra: dict[str, Any], *, chat: bool,
                       tools: ToolPlan | None = None) -> Any:
        if tools is not None and tools.calls_possible and req.n > 1:
            raise ApiError(400, "n > 1 with tools is not supported; send n = 1", param="n")
        try:
            options = {**extra, **options_of(req, tools)}
        except SiaError as exc:  # a response_format that names no grammar llama.cpp can build
            raise as_api_error(exc) from None
        n_logprobs = logprob_count(req)
        tracer = token_tracer(engine.steerer.lm.piece) if options.get("trace") else None
        logprobs = Logprobs(engine.steerer.lm.piece, n_logprobs) if n_logprobs is not None else None
        if logprobs is not None:
            options.update(logprobs=True, trace=True)  # the token records the logprobs are read from
        if "max_tokens" not in options and engine.steerer.config.max_tokens > token_limit:
            options["max_tokens"] = token_limit  # the server's own default never exceeds its limit
        mix = mix_of(req)
        if mix is not None:  # the request's own objectives: names checked now, loaded by the worker once admitted
            mix = await asyncio.to_thread(_allowed_mix, mix, objective_dirs)
        steerer = engine.steerer
        _check(req, prompt, options, steerer, mix is not None)
        cancel = threading.Event()
        # the worker stops at its next token; the timer goes with the response (handles never pile up under load)
        timer = asyncio.get_running_loop().call_later(request_timeout, cancel.set) if request_timeout else None
        streaming = False
        try:
            response = await _answer(request, req, prompt, options, chat, cancel, mix, tracer, logprobs, tools)
            streaming = isinstance(response, StreamingResponse)
            if streaming and timer is not None:
                response.body_iterator = _then(response.body_iterator, timer.cancel)
            return response
        finally:
            if timer is not None and not streaming:
                timer.cancel()

    async def _answer(request: Request, req: ApiRequest, prompt: Any, options: dict[str, Any], chat: bool, cancel: threading.Event,
                      mix: Any, tracer: Any, logprobs: Any, tools: ToolPlan | None) -> Any:
        """The response to an admitted request: Best-of-N, a whole answer, or a stream."""
        if req.n > 1:
            return await best_of(request, engine, mix, req, prompt, options, chat, cancel)
        events = engine.run(prompt, options, cancel, mix)
        first = await _first_event(events)  # prompt errors surface here, before any byte is sent
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if not req.stream:
            kind, item = first
            while kind == "piece":
                if await request.is_disconnected():  # nobody will read the answer: free the model now
                    await events.aclose()
                    return Response(status_code=499)
                kind, item = await events.__anext__()
            if kind == "error":
                raise as_api_error(item)
            return full_response(rid, created, model_id, item, chat, tracer, logprobs, tools)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(sse(rid, created, model_id, first, events, chat, include_usage, tracer, logprobs, tools), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _allowed_mix(mix: tuple[tuple[str, float], ...], dirs: list[Path]) -> tuple[tuple[str, float], ...]:
    """A request's objectives as the worker will load them: named objectives by name, `--objective-dir` folders by their
    path. Anything else is one 400 that lists what may be named, the same whether or not such a path exists."""
    from ..rewards.objectives import request_objectives

    allowed = request_objectives(dirs)
    out = []
    for name, weight in mix:
        if name not in allowed:
            raise ApiError(400, f"sia.rewards: no objective named {name[:60]!r} on this server; it has: {', '.join(sorted(allowed))} "
                                "(a request names objectives, never paths; the server's user adds folders with --objective-dir)",
                           param="sia.rewards", code="unknown_objective")
        folder = allowed[name]
        out.append((str(folder) if folder is not None else name, weight))
    return tuple(out)


async def _first_event(events: AsyncIterator[tuple[str, Any]]) -> tuple[str, Any]:
    kind, item = await events.__anext__()
    if kind == "error":
        raise as_api_error(item)
    return kind, item


DEFAULT_PARALLEL = 4  # slots when none are asked: on a 2-core CPU 4 streams decode at ~2x one stream's tokens/s (docs/benchmarks.md)


def default_parallel(lm: Any, budget: int) -> int:
    """Slots when --parallel is not given: as many full contexts as the KV budget holds, at most DEFAULT_PARALLEL. With
    layers on a GPU the KV cache lives in its memory, which the budget (host RAM) does not measure: one slot, and
    the start-up line says to give --parallel."""
    if getattr(lm, "n_gpu_layers", 0):
        return 1
    return max(1, min(DEFAULT_PARALLEL, budget // max(lm.n_ctx, 1)))


def check_parallel(parallel: int | None, lm: Any, budget: int) -> int:
    """The slots to run: --parallel, checked against the KV budget (slots x context tokens), or the default."""
    from ..errors import ConfigError

    if parallel is None:
        return default_parallel(lm, budget)
    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel}", "use --parallel 1 or more")
    if parallel * lm.n_ctx > budget:
        raise ConfigError(f"--parallel {parallel} x {lm.n_ctx} context tokens = {parallel * lm.n_ctx} KV cells, over the budget of {budget} "
                          "(--max-batch-tokens, default a quarter of free memory)", "lower --parallel or --ctx-size, or raise --max-batch-tokens")
    return parallel


def default_batch_tokens(lm: Any) -> int:
    """Best-of-N's KV budget when the server is not given one: the tokens whose KV cache fits in a
    quarter of the memory free now (at least one full context, at most 32 of them)."""
    free = _free_memory_bytes()
    per_token = lm.kv_bytes_per_token()
    fit = int(free // 4 // per_token) if free and per_token else 16 * lm.n_ctx
    return max(lm.n_ctx, min(fit, 32 * lm.n_ctx))


def _free_memory_bytes() -> int | None:
    import os

    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not on this platform
        return None


async def _then(body: Any, done: Callable[[], Any]) -> Any:
    """`body`'s chunks, then `done()` however the stream ends (finished, failed, or the client left)."""
    try:
        async for chunk in body:
            yield chunk
    finally:
        done()


def serve(steerer: Steerer, *, model_id: str, host: str = "127.0.0.1", port: int = 8000, settings: ServerSettings | None = None,
          announce: Callable[[str], None] | None = None) -> None:
    """Run the server until Ctrl-C; `announce` gets one line saying where, with what scorer and how many slots."""
    import uvicorn

    app = create_app(steerer, model_id=model_id, settings=dataclasses.replace(settings or ServerSettings(), host=host))
    engine: Engine = app.state.engine
    if announce is not None:
        gpu = "; the KV cache is on the GPU, whose free memory is not measured: give --parallel N to decode N requests together" if (
            steerer.lm.n_gpu_layers and (settings is None or settings.parallel is None)) else ""
        announce(f"serving {model_id} on http://{host}:{port}/v1 (reward: {getattr(steerer.scorer, 'name', 'none')}; {engine.parallel} slots of "
                 f"{engine.slots.slot_ctx} tokens, --parallel{gpu}); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="warning")
