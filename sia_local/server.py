"""`sia serve`: an OpenAI-compatible HTTP server over the one steering core.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions.
Steering settings ride along as an extra body field, e.g. ``"sia": {"ratio": 0.2, "weight": 1.0}``
(``extra_body`` in the openai client), and ``usage.sia`` reports the junction statistics.

Concurrency: one llama.cpp context serves one generation at a time (an asyncio lock); up to
`max_queue` requests wait behind it and any more get a 503 at once. A generation runs in a worker
thread that checks a cancel flag at every token, so a streaming client that disconnects frees the
model after at most one more token; non-streaming and n > 1 requests poll `is_disconnected()` at
every token / step (which is why the server's own checks are a plain ASGI middleware, see `_Guard`).
--request-timeout stops every kind of request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
import uuid
from dataclasses import asdict
from typing import Annotated, Any, AsyncGenerator, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from .config import MAX_TOP_K, settings
from .errors import Cancelled, SiaError
from .junction import gate_names
from .steer import Generation, Steerer

MAX_BODY_BYTES = 1 << 20
MAX_JSON_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(item, dict):
            stack += [(v, d + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, d + 1) for v in item]
    return deepest


def _check_gate(name: str) -> str:
    if name not in gate_names():
        raise ValueError(f"must be one of {', '.join(gate_names())}")  # checked per request: gates registered later count
    return name


def _fields(api: str) -> dict[str, Any]:
    """Pydantic fields for SteerConfig's Settings marked `api`, each with its one range."""
    fields: dict[str, Any] = {}
    for name, setting in settings():
        if setting.api != api:
            continue
        kind: Any = setting.kind
        if name == "gate":
            kind = Annotated[str, AfterValidator(_check_gate)]
        elif setting.kind == "strs":
            kind = str | list[str]  # lengths and counts are SteerConfig's to check (one message for every shell)
        bounds: dict[str, float] = {}
        if setting.lo is not None:
            bounds["gt" if setting.lo_open else "ge"] = setting.lo
        if setting.hi is not None:
            bounds["le"] = setting.hi
        fields[name] = (kind | None, Field(default=None, description=setting.help, **bounds))
    return fields


SiaParams = create_model("SiaParams", __config__=ConfigDict(extra="forbid"), **_fields("sia"))


class StreamOptions(BaseModel):
    include_usage: bool = False


_OpenAIFields = create_model("_OpenAIFields", __config__=ConfigDict(extra="ignore"), **_fields("openai"))  # temperature, top_p, max_tokens, seed, stop


class _Request(_OpenAIFields):  # type: ignore[valid-type,misc]
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    sia: SiaParams | None = None  # type: ignore[valid-type]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # image_url and other parts are accepted and skipped
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[ContentPart] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Request):
    prompt: str | list[str]


class ApiError(Exception):
    """An error with an HTTP status and an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Engine:
    """The model behind the server: one generation at a time, a bounded queue in front."""

    def __init__(self, steerer: Steerer, model_id: str, max_queue: int = 8) -> None:
        self.steerer = steerer
        self.model_id = model_id
        self.max_queue = max_queue
        self.waiting = 0
        self.active = 0
        self.cancelled = 0
        self.served = 0
        self._lock: asyncio.Lock | None = None

    async def _admit(self) -> None:
        """Wait for the model, or refuse at once when the queue is full."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._lock.locked() and self.waiting >= self.max_queue:
            raise ApiError(503, f"the server is busy: {self.active} running and {self.waiting} queued; retry later",
                           type="server_error", code="server_busy")
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
        self.active = 1

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run a whole job (Best-of-N) in a worker thread, behind the same queue as streamed generations."""
        await self._admit()
        try:
            result = await asyncio.to_thread(fn)
            self.served += 1
            return result
        finally:
            self.active = 0
            assert self._lock is not None
            self._lock.release()

    async def run(self, prompt: Any, options: dict[str, Any], cancel: threading.Event) -> AsyncGenerator[tuple[str, Any], None]:
        """Yield ("piece", Piece) ... then ("done", Generation) or ("error", SiaError)."""
        await self._admit()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, item: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, item))

        def finished() -> None:  # runs on the event loop once the worker has let go of the model
            self.active = 0
            assert self._lock is not None
            self._lock.release()

        def worker() -> None:
            try:
                stream = self.steerer.stream(prompt, **options)
                for piece in stream:
                    if cancel.is_set():
                        stream.close()
                        self.cancelled += 1
                        emit("error", Cancelled("the generation was stopped", "the client left or the request ran past its time limit",
                                                api_hint="raise the server's --request-timeout or ask for fewer tokens"))
                        return
                    emit("piece", piece)
                self.served += 1
                emit("done", stream.generation)
            except SiaError as exc:
                emit("error", exc)
            except Exception as exc:  # a bug: report it as a 500 rather than hang the client
                emit("error", exc)
            finally:
                loop.call_soon_threadsafe(finished)

        threading.Thread(target=worker, name="sia-generation", daemon=True).start()
        try:
            while True:
                kind, item = await events.get()
                yield kind, item
                if kind != "piece":
                    return
        finally:
            cancel.set()  # the client went away or we are done: stop the worker at its next token


def create_app(steerer: Steerer, *, model_id: str, max_queue: int = 8, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               max_tokens_limit: int | None = None, allow_origins: list[str] | None = None, request_timeout: float | None = None,
               max_top_k: int | None = None, max_batch_tokens: int | None = None) -> Any:
    """The FastAPI application; state lives on `app.state.engine`.

    Every request is bounded before it reaches the model, each limit refused with a 400 that names it:
    `max_tokens_limit` (default: the larger of 4096 and the context) caps max_tokens (below it, an
    answer stops where the context is full); `max_top_k` (default: SteerConfig's own bound) caps k;
    `max_batch_tokens` (default: from memory, see `default_batch_tokens`) caps Best-of-N's
    n x (prompt + answer) KV cells; a top_k whose tau was never calibrated is refused rather than
    calibrated inside the request.
    """
    token_limit = max_tokens_limit or max(4096, steerer.lm.n_ctx)
    top_k_limit = min(max_top_k or MAX_TOP_K, MAX_TOP_K)
    batch_limit = max_batch_tokens or default_batch_tokens(steerer.lm)
    app = FastAPI(title="sia-local", version="0.1.0")
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    if allow_origins:  # no CORS headers at all unless origins are named (a page elsewhere cannot read the answers); outermost, so preflights pass
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=allow_origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    engine = Engine(steerer, model_id, max_queue)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "active": engine.active, "queued": engine.waiting,
                "served": engine.served, "cancelled": engine.cancelled}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "sia-local"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = await _parse(request, ChatRequest, max_body_bytes)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        return await _respond(request, engine, req, messages, {}, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = await _parse(request, CompletionRequest, max_body_bytes)
        prompt = req.prompt if isinstance(req.prompt, str) else "".join(req.prompt)
        return await _respond(request, engine, req, prompt, {"raw": True}, chat=False)

    def _check(req: _Request, prompt: Any, options: dict[str, Any]) -> None:
        """Refuse, before the model is touched, a request that would cost more than this server allows."""
        if req.model and req.model != model_id:
            raise ApiError(404, f"the model {req.model!r} does not exist; this server has {model_id!r}", param="model", code="model_not_found")
        try:
            config = engine.steerer.config_for(**{k: v for k, v in options.items() if k != "raw"})
        except SiaError as exc:
            raise _as_api_error(exc) from None
        if config.max_tokens > token_limit:
            raise ApiError(400, f"max_tokens is {config.max_tokens} but this server allows at most {token_limit}; lower max_tokens",
                           param="max_tokens", code="context_length_exceeded")
        if config.top_k > top_k_limit:
            raise ApiError(400, f"sia.top_k is {config.top_k} but this server allows at most {top_k_limit} (each junction scores k candidates); "
                           "lower sia.top_k", param="sia.top_k")
        if config.needs_tau() and not engine.steerer.is_calibrated(config.top_k):
            raise ApiError(400, f"tau was never calibrated for top_k {config.top_k} on this model, and a calibration does not run inside a "
                           f"request; run `sia calibrate --top-k {config.top_k}` before starting the server, or give sia.tau",
                           param="sia.top_k", code="not_calibrated")
        if req.n > 1:
            try:
                prompt_tokens = len(engine.steerer.prepare(prompt, None, bool(options.get("raw"))).ids)
            except SiaError as exc:
                raise _as_api_error(exc) from None
            answer = min(config.max_tokens, max(engine.steerer.lm.n_ctx - prompt_tokens, 0))
            cells = req.n * (prompt_tokens + answer)
            if cells > batch_limit:
                raise ApiError(400, f"n={req.n} x ({prompt_tokens} prompt + {answer} answer tokens) = {cells} KV cells, but this server allows "
                               f"{batch_limit} (--max-batch-tokens); lower n or max_tokens", param="n", code="batch_too_large")

    async def _respond(request: Request, engine: Engine, req: _Request, prompt: Any, extra: dict[str, Any], *, chat: bool) -> Any:
        options = {**extra, **_options(req)}
        if "max_tokens" not in options and engine.steerer.config.max_tokens > token_limit:
            options["max_tokens"] = token_limit  # the server's own default never exceeds its limit
        _check(req, prompt, options)
        cancel = threading.Event()
        if request_timeout:
            asyncio.get_running_loop().call_later(request_timeout, cancel.set)  # the worker stops at its next token
        if req.n > 1:
            return await _best_of(request, engine, req, prompt, options, chat, cancel)
        events = engine.run(prompt, options, cancel)
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
                raise _as_api_error(item)
            return _full_response(rid, created, model_id, item, chat)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(rid, created, model_id, first, events, chat, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


class _Guard:
    """The API key (compared in constant time) and the body-size limit, checked before any endpoint runs.

    A plain ASGI middleware on purpose: Starlette's BaseHTTPMiddleware (what ``@app.middleware`` makes)
    wraps `receive`, and behind it `request.is_disconnected()` never sees a client leave, so a
    non-streaming request would hold the model to the end.
    """

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            refusal: ApiError | None = None
            too_large = ApiError(413, f"the request body is over {self.max_body_bytes} bytes", code="request_too_large")
            if self.api_key and scope["path"].startswith("/v1/") and not hmac.compare_digest(headers.get(b"authorization", b""), f"Bearer {self.api_key}".encode()):
                refusal = ApiError(401, "missing or wrong API key", code="invalid_api_key")
            length = headers.get(b"content-length", b"")
            if refusal is None and length.isdigit() and int(length) > self.max_body_bytes:
                refusal = too_large
            if refusal is None and scope.get("method") == "POST":
                body = await self._read_body(receive)  # counted as it arrives: a chunked upload has no Content-Length
                if body is None:
                    refusal = too_large
                else:
                    receive = _replay(body, receive)
            if refusal is not None:
                await JSONResponse(refusal.body(), status_code=refusal.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _read_body(self, receive: Any) -> bytes | None:
        """The whole request body, or None as soon as it passes the limit (the rest is never buffered)."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(parts)  # the client left; the endpoint will see an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that hands the endpoint the body read already, then the client's later messages (a disconnect)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _parse(request: Any, model: type[_Request], max_body_bytes: int) -> Any:
    body = await request.body()
    if len(body) > max_body_bytes:
        raise ApiError(413, f"the request body is over {max_body_bytes} bytes", code="request_too_large")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        req = model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        raise ApiError(400, f"{param}: {err['msg']}", param=param) from None
    return req


def _options(req: _Request) -> dict[str, Any]:
    """Per-request SteerConfig changes from the OpenAI fields (declared by SteerConfig's Settings) and the `sia` extension."""
    out = {name: getattr(req, name) for name, setting in settings() if setting.api == "openai" and getattr(req, name) is not None}
    if req.max_completion_tokens is not None:
        out["max_tokens"] = req.max_completion_tokens
    if req.sia:
        out.update(req.sia.model_dump())  # None = not given; SteerConfig.updated applies "a ratio clears tau"
    return out


async def _first_event(events: AsyncIterator[tuple[str, Any]]) -> tuple[str, Any]:
    kind, item = await events.__anext__()
    if kind == "error":
        raise _as_api_error(item)
    return kind, item


def _as_api_error(exc: BaseException) -> ApiError:
    """By class, never by wording: the error's own HTTP status and OpenAI code, and its hint in request terms."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SiaError):
        kind = "invalid_request_error" if exc.http_status < 500 else "server_error"
        return ApiError(exc.http_status, exc.for_api(), type=kind, code=exc.api_code)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


async def _best_of(request: Any, engine: Engine, req: _Request, prompt: Any, options: dict[str, Any], chat: bool,
                   cancel: threading.Event) -> Any:
    """n > 1: Best-of-N in one batched context; every sample comes back, best first, with its reward."""
    from .search import best_of_n

    if req.stream:
        raise ApiError(400, "stream is not supported with n > 1 (the best sample is known only at the end)", param="stream")
    if engine.steerer.reward is None:
        raise ApiError(400, "n > 1 needs a reward model on the server to rank the samples", param="n")
    job = asyncio.ensure_future(engine.call(lambda: best_of_n(engine.steerer, prompt, req.n, cancel=cancel, **options)))
    left = False
    while not job.done():
        await asyncio.wait([job], timeout=0.1)
        if not left and not job.done() and await request.is_disconnected():
            left = True
            cancel.set()  # the search stops at its next step
            engine.cancelled += 1  # once per request, however long the search takes to wind down
    try:
        result = job.result()
    except SiaError as exc:
        raise _as_api_error(exc) from None
    if cancel.is_set() and await request.is_disconnected():
        return Response(status_code=499)
    ranked = sorted(result.candidates, key=lambda c: -c.score)
    choices = []
    for i, c in enumerate(ranked):
        g = c.generation
        body = {"message": {"role": "assistant", "content": g.text}} if chat else {"text": g.text, "logprobs": None}
        choices.append({"index": i, **body, "finish_reason": _finish(g), "sia_score": _finite(float(c.score)), "sia_sample": c.index})
    st = result.stats
    usage = {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.tokens, "total_tokens": st.prompt_tokens + st.tokens,
             "sia": _finite({"best_of": req.n, "decode_calls": st.decode_calls, "reward_calls": st.reward_calls, "seconds": st.seconds,
                             "reward_seconds": st.reward_seconds, "tokens_per_s": st.tokens_per_s})}
    return {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": engine.model_id, "choices": choices, "usage": usage}


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


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats (an infinite tau, a NaN from an extreme weight) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _finish(generation: Generation) -> str:
    return "length" if generation.stats.finish_reason in ("length", "context") else "stop"


def _usage(generation: Generation) -> dict[str, Any]:
    s = generation.stats
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.tokens,
        "total_tokens": s.prompt_tokens + s.tokens,
        "sia": _finite({k: v for k, v in asdict(s).items() if k not in ("prompt_tokens", "tokens")}),
    }


def _full_response(rid: str, created: int, model_id: str, generation: Generation, chat: bool) -> dict[str, Any]:
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": generation.text}, "finish_reason": _finish(generation)}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": generation.text, "logprobs": None, "finish_reason": _finish(generation)}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [choice], "usage": _usage(generation)}


async def _sse(rid: str, created: int, model_id: str, first: tuple[str, Any], events: AsyncGenerator[tuple[str, Any], None],
               chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, *, role: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        payload: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [choice]}
        if include_usage:
            payload["usage"] = None
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    if chat:
        yield chunk(None, None, role=True)
    pending: list[tuple[str, Any]] = [first]
    try:
        while True:
            kind, item = pending.pop() if pending else await events.__anext__()
            if kind == "piece":
                if item.text:
                    yield chunk(item.text, None)
                continue
            if kind == "error":
                err = _as_api_error(item)
                yield f"data: {json.dumps(err.body())}\n\n".encode()
                break
            generation: Generation = item
            yield chunk(None if chat else "", _finish(generation))
            if include_usage:
                payload = {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [], "usage": _usage(generation)}
                yield f"data: {json.dumps(payload)}\n\n".encode()
            break
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()  # sets the cancel flag if the client left early


def serve(steerer: Steerer, *, model_id: str, host: str = "127.0.0.1", port: int = 8000, **limits: Any) -> None:
    """Run the server until Ctrl-C; `limits` are `create_app`'s keyword arguments."""
    import uvicorn

    app = create_app(steerer, model_id=model_id, **limits)
    uvicorn.run(app, host=host, port=port, log_level="warning")
