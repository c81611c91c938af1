"""The OpenAI wire format, derived from the one steering core: request models, request -> config changes, responses.

The request's OpenAI fields (temperature, top_p, max_tokens, seed, stop) and its `sia` object are
pydantic models built from SteerConfig's Settings (`api="openai"` / `api="sia"`), so each field has
the one range the CLI and `sia batch` enforce too; `request_changes` turns a validated request into
SteerConfig changes. Responses, stream chunks and errors take OpenAI's shapes; a value JSON cannot
hold (an infinite tau, a NaN) becomes null.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Annotated, Any, AsyncGenerator, AsyncIterator, Callable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from ..core.config import request_changes, settings
from ..errors import SiaError
from ..core.junction import gate_names
from ..core.steer import Generation, TokenInfo
from ..core.tools import ToolPlan
from .fields import BY_NAME, SERVER, check_field


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
        elif setting.kind == "bias":
            fields[setting.wire or name] = (dict[str, Any] | None, Field(default=None, description=setting.help))  # ids and biases: SteerConfig's
            continue
        bounds: dict[str, float] = {}
        if setting.lo is not None:
            bounds["gt" if setting.lo_open else "ge"] = setting.lo
        if setting.hi is not None:
            bounds["le"] = setting.hi
        fields[setting.wire or name] = (kind | None, Field(default=None, description=setting.help, **bounds))
    return fields


class ObjectiveWeight(BaseModel):
    """One objective of a request's mix: a name from `sia reward list` (or a reward folder on the server) and its weight."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    weight: float = Field(default=1.0, ge=-1000.0, le=1000.0)


SiaParams = create_model("SiaParams", __config__=ConfigDict(extra="forbid"), **_fields("sia"),
                         trace=(bool | None, Field(default=None, description="each token's steering info in the answer (`sia.tokens`)")),
                         steer_arguments=(bool | None, Field(default=None, description="steer inside tool-call arguments too")),
                         rewards=(list[ObjectiveWeight] | None, Field(default=None, min_length=1, max_length=8,
                                                                       description="objectives to mix at each junction (the scorer, not a setting)")))


class StreamOptions(BaseModel):
    include_usage: bool = False


_OpenAIFields = create_model("_OpenAIFields", __config__=ConfigDict(extra="ignore"), **_fields("openai"))  # temperature, top_p, max_tokens, seed, stop


class Request(_OpenAIFields):  # type: ignore[valid-type,misc]
    model_config = ConfigDict(extra="allow")  # every other field is checked against `fields.FIELDS` (`parse`): no effect, or refused
    model: str | None = None
    grammar: str | None = Field(default=None, max_length=1 << 18)  # GBNF text, as llama.cpp's server takes it
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None  # structured output: the grammar every token keeps valid (`llama/grammar.py`)
    sia: SiaParams | None = None  # type: ignore[valid-type]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # image_url and other parts are accepted and skipped
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[ContentPart] | None = ""
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    function_call: dict[str, Any] | None = None  # the older form
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.function_call:
            out["function_call"] = self.function_call
        return out


class ChatRequest(Request):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    function_call: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(Request):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)


def logprob_count(req: Request) -> int | None:
    """How many alternatives per token the request wants with its logprobs (None: no logprobs), in OpenAI's two shapes:
    chat's `logprobs: true` + `top_logprobs: N`, completions' `logprobs: N`."""
    if isinstance(req, ChatRequest):
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return (req.top_logprobs or 0) if req.logprobs else None
    value = getattr(req, "logprobs", None)
    return int(value) if value is not None else None


class Logprobs:
    """OpenAI's logprobs from the loop's token records. `logprob` and `top_logprobs` are the **base model's**: log p over
    the full vocabulary at T = 1, before steering (what OpenAI reports for an unsteered model). The alternatives are the
    step's top-k candidates (at most k of them, however many are asked). Under `sia` each token also carries
    `draw_logprob`, log p of the token in the draw it came from (the steered softmax((z + w r) / T) over the k at a
    junction, the base one over the k elsewhere; top-p not applied), and whether the step was a junction."""

    def __init__(self, piece: Callable[[int], bytes], n: int) -> None:
        self.piece, self.n = piece, n

    def _alternatives(self, t: TokenInfo) -> list[tuple[bytes, float]]:
        return [(self.piece(c), lp) for c, lp in zip((t.candidates or [])[: self.n], (t.top_logprobs or [])[: self.n])]

    def _by_text(self, t: TokenInfo) -> dict[str, float]:
        """Completions' {text: logprob}: two tokens whose bytes decode alike (parts of a character) keep the likelier."""
        out: dict[str, float] = {}
        for b, lp in self._alternatives(t):
            out.setdefault(b.decode("utf-8", "replace"), lp)
        return out

    def chat(self, tokens: list[TokenInfo]) -> dict[str, Any]:
        """`choices[].logprobs` of a chat answer or chunk."""
        content = []
        for t in tokens:
            raw = self.piece(t.id)
            content.append({"token": raw.decode("utf-8", "replace"), "logprob": t.logprob, "bytes": list(raw),
                            "top_logprobs": [{"token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)} for b, lp in self._alternatives(t)],
                            "sia": {"draw_logprob": t.draw_logprob, "junction": t.junction, "changed": t.changed}})
        return finite({"content": content, "refusal": None})

    def completion(self, tokens: list[TokenInfo], offset: int = 0) -> dict[str, Any]:
        """`choices[].logprobs` of a completion (or a chunk, its text starting at `offset`)."""
        texts = [self.piece(t.id).decode("utf-8", "replace") for t in tokens]
        starts, at = [], offset
        for text in texts:
            starts.append(at)
            at += len(text)
        return finite({"tokens": texts, "token_logprobs": [t.logprob for t in tokens],
                       "top_logprobs": [self._by_text(t) for t in tokens],
                       "text_offset": starts, "sia": [{"draw_logprob": t.draw_logprob, "junction": t.junction} for t in tokens]})


class ApiError(Exception):
    """An error with an HTTP status and an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


async def parse(request: Any, model: type[Request], max_body_bytes: int) -> Any:
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
    for name, value in (req.model_extra or {}).items():  # not declared by this endpoint: no effect, or refused with one line
        field = BY_NAME.get(name)
        if field is not None and field.fate == "honoured":
            raise ApiError(400, f"{name} is not a field of this endpoint (it is one of /v1/chat/completions' or /v1/completions')", param=name)
        try:
            check_field(name, value, SERVER)
        except SiaError as exc:
            raise ApiError(400, exc.for_api(), param=name) from None
    return req


def options_of(req: Request, tools: ToolPlan | None = None) -> dict[str, Any]:
    """The request's SteerConfig changes: its OpenAI fields and its `sia` object (None = not given), its grammar (GBNF,
    `response_format` or the tool calls' `tools`: one of them)."""
    fields = {k: v for k, v in req.model_dump(exclude_none=True, exclude={"sia"}).items() if k not in (req.model_extra or {})}
    given = [name for name, on in (("grammar", req.grammar is not None), ("response_format", req.response_format is not None),
                                   ("tools", tools is not None and tools.calls_possible)) if on]
    if len(given) > 1:
        raise ApiError(400, f"{' and '.join(given)} both constrain the answer; send one of them", param=given[1])
    sia = req.sia.model_dump(exclude_none=True, exclude={"rewards"}) if req.sia else None
    changes = request_changes(fields, sia)
    if req.grammar is not None:
        changes["grammar"] = req.grammar
    if tools is not None and tools.calls_possible:
        changes.update(grammar=tools.grammar(), grammar_trigger=tools.trigger)
    return changes


def mix_of(req: Request) -> tuple[tuple[str, float], ...] | None:
    """The request's own mix of objectives (`sia.rewards`), or None for the server's scorer."""
    rewards = getattr(req.sia, "rewards", None) if req.sia else None
    return tuple((r.name, r.weight) for r in rewards) if rewards else None


def as_api_error(exc: BaseException) -> ApiError:
    """By class, never by wording: the error's own HTTP status and OpenAI code, and its hint in request terms."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SiaError):
        kind = "invalid_request_error" if exc.http_status < 500 else "server_error"
        return ApiError(exc.http_status, exc.for_api(), type=kind, code=exc.api_code)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


def finite(value: Any) -> Any:
    """JSON-safe: non-finite floats (an infinite tau, a NaN from an extreme weight) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def finish_reason_of(generation: Generation) -> str:
    return "length" if generation.stats.finish_reason in ("length", "context") else "stop"


def usage_of(generation: Generation) -> dict[str, Any]:
    s = generation.stats
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.tokens,
        "total_tokens": s.prompt_tokens + s.tokens,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},  # OpenAI's name: prompt tokens not decoded again
        "sia": finite({k: v for k, v in asdict(s).items() if k not in ("prompt_tokens", "tokens", "cached_tokens")}),
    }


TokenTrace = Callable[[TokenInfo], dict[str, Any]]


def token_tracer(piece: Callable[[int], bytes]) -> TokenTrace:
    """A token's steering info for clients (the web page): its text, entropy, whether it was a junction and
    whether the reward changed it, and its k candidates as text with their base and steered probabilities
    and rewards. `piece` gives a candidate token's bytes."""

    def trace(t: TokenInfo) -> dict[str, Any]:
        out: dict[str, Any] = {"text": t.text, "entropy": round(t.entropy, 4), "junction": t.junction, "changed": t.changed, "rank": t.rank}
        if t.candidates is not None:
            cands = []
            for i, c in enumerate(t.candidates):
                row: dict[str, Any] = {"text": piece(c).decode("utf-8", "replace"), "p_base": t.p_base[i] if t.p_base else None}
                if t.rewards is not None:
                    row["reward"] = round(t.rewards[i], 4)
                if t.p_steered is not None:
                    row["p_steered"] = t.p_steered[i]
                if t.objectives:
                    row["rewards"] = {name: round(v[i], 4) for name, v in t.objectives.items()}
                cands.append(row)
            out["candidates"] = cands
        return finite(out)

    return trace


def tool_message(generation: Generation, tools: ToolPlan | None) -> tuple[str | None, dict[str, Any], str]:
    """An answer as OpenAI's assistant message: its content, its calls (`tool_calls`, or `function_call` for the older
    `functions`) and its finish reason ("tool_calls" / "function_call" when it calls)."""
    finish = finish_reason_of(generation)
    if tools is None:
        return generation.text, {}, finish
    content, calls = tools.split(generation.text)
    if not calls:
        return content if content is not None else "", {}, finish
    if tools.legacy:
        return content, {"function_call": {"name": calls[0].name, "arguments": calls[0].arguments}}, "function_call"
    return content, {"tool_calls": [c.openai() for c in calls]}, "tool_calls"


def call_delta(calls: dict[str, Any]) -> dict[str, Any]:
    """A stream's delta carrying an answer's calls (`tool_message`'s), each whole, indexed as OpenAI's deltas are."""
    if "function_call" in calls:
        return {"function_call": calls["function_call"]}
    return {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls["tool_calls"])]}


def full_response(rid: str, created: int, model_id: str, generation: Generation, chat: bool, trace: TokenTrace | None = None,
                  logprobs: Logprobs | None = None, tools: ToolPlan | None = None) -> dict[str, Any]:
    tokens = list(generation.trace or [])
    if chat:
        content, calls, finish = tool_message(generation, tools)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content, **calls}, "finish_reason": finish,
                                  "logprobs": logprobs.chat(tokens) if logprobs else None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": generation.text, "logprobs": logprobs.completion(tokens) if logprobs else None,
                  "finish_reason": finish_reason_of(generation)}
        obj = "text_completion"
    out = {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [choice], "usage": usage_of(generation)}
    if trace is not None and generation.trace is not None:
        out["sia"] = {"tokens": [trace(t) for t in generation.trace]}
    return out


def chunk_payload(rid: str, created: int, model_id: str, chat: bool, text: str | None, finish: str | None, *, role: bool = False,
                  logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed chunk in OpenAI's (and llama-cpp-python's) shape: a chat delta or a completion's text."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created, "model": model_id,
            "choices": [choice]}


async def sse(rid: str, created: int, model_id: str, first: tuple[str, Any], events: AsyncGenerator[tuple[str, Any], None],
              chat: bool, include_usage: bool, trace: TokenTrace | None = None, logprobs: Logprobs | None = None,
              tools: ToolPlan | None = None) -> AsyncIterator[bytes]:
    """The answer as OpenAI chunks; with `trace`, each chunk also carries its token's steering info (`sia.tokens`); with
    `logprobs`, its token's log-probabilities (`choices[].logprobs`, in OpenAI's shape)."""
    obj = "chat.completion.chunk" if chat else "text_completion"  # the usage chunk's object
    offset = 0

    def chunk(text: str | None, finish: str | None, *, role: bool = False, tokens: list[dict[str, Any]] | None = None,
              token: TokenInfo | None = None) -> bytes:
        lp = None
        if logprobs is not None and token is not None:
            lp = logprobs.chat([token]) if chat else logprobs.completion([token], offset)
        payload = chunk_payload(rid, created, model_id, chat, text, finish, role=role, logprobs=lp)
        if include_usage:
            payload["usage"] = None
        if tokens is not None:
            payload["sia"] = {"tokens": tokens}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    if chat:
        yield chunk(None, None, role=True)
    pending: list[tuple[str, Any]] = [first]
    seen: TokenInfo | None = None
    try:
        while True:
            kind, item = pending.pop() if pending else await events.__anext__()
            if kind == "piece":
                fresh, seen = item.token is not seen, item.token  # the closing piece (held-back text) repeats the last token
                if fresh and (trace is not None or logprobs is not None):  # every token, even one whose text is held back
                    yield chunk(item.text, None, tokens=[trace(item.token)] if trace is not None else None, token=item.token)
                elif item.text:
                    yield chunk(item.text, None)
                offset += len(item.text)
                continue
            if kind == "error":
                err = as_api_error(item)
                yield f"data: {json.dumps(err.body())}\n\n".encode()
                break
            generation: Generation = item
            finish = finish_reason_of(generation)
            if chat and tools is not None:  # a call is streamed whole once it is complete (the grammar held it back from the text)
                _, calls, finish = tool_message(generation, tools)
                if calls:
                    payload = chunk_payload(rid, created, model_id, chat, None, None)
                    payload["choices"][0]["delta"] = call_delta(calls)
                    if include_usage:
                        payload["usage"] = None
                    yield f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
            yield chunk(None if chat else "", finish)
            if include_usage:
                payload = {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [], "usage": usage_of(generation)}
                yield f"data: {json.dumps(payload)}\n\n".encode()
            break
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()  # sets the cancel flag if the client left early
