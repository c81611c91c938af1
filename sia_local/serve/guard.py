"""Who may drive the server: the checks in front of every endpoint.

A local server is reachable from every web page its user visits, so the Host header (DNS rebinding),
the Origin of a browser request, the content type of a body (a form or text/plain post needs no CORS
preflight), the API key and the body size are checked here, before any endpoint runs.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from .openai_api import ApiError


class _Guard:
    """Who may drive the model, checked before any endpoint runs: the Host header (DNS rebinding), the Origin of a
    browser request (any page the user visits can reach a local port), JSON bodies only on the API (a form or
    text/plain post needs no CORS preflight), the API key (compared in constant time) and the body-size limit.

    A plain ASGI middleware on purpose: Starlette's BaseHTTPMiddleware (what ``@app.middleware`` makes)
    wraps `receive`, and behind it `request.is_disconnected()` never sees a client leave, so a
    non-streaming request would hold the model to the end.
    """

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int, origin: "OriginPolicy") -> None:
        self.app, self.api_key, self.max_body_bytes, self.origin = app, api_key, max_body_bytes, origin

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            refusal = self.origin.refusal(headers, scope)
            too_large = ApiError(413, f"the request body is over {self.max_body_bytes} bytes", code="request_too_large")
            if refusal is None and self.api_key and scope["path"].startswith("/v1/") and not hmac.compare_digest(
                    headers.get(b"authorization", b""), f"Bearer {self.api_key}".encode()):
                refusal = ApiError(401, "missing or wrong API key", code="invalid_api_key")
            if refusal is None and scope.get("method") == "POST" and scope["path"].startswith("/v1/") and not _is_json(headers):
                refusal = ApiError(415, "the API takes JSON bodies only: send Content-Type: application/json", code="unsupported_media_type")
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


def _is_json(headers: dict[bytes, bytes]) -> bool:
    media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return media == b"application/json"


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _host_name(value: str) -> str:
    """The host of a Host header or an origin's authority, without the port, brackets or a trailing dot, lowercased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _is_loopback(name: str) -> bool:
    import ipaddress

    if name in LOOPBACK_NAMES or name.endswith(".localhost"):  # browsers resolve *.localhost to loopback themselves
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class OriginPolicy:
    """Which Host headers and browser origins the server obeys.

    Host: a loopback name or address, the bound address, any IP address when bound to all interfaces (0.0.0.0 / ::,
    where a LAN client names the machine by address), or one of `allowed_hosts` ("*": any). A name that only
    resolves here (DNS rebinding: a page's own domain pointed at 127.0.0.1) is refused. Origin (sent by browsers
    on every cross-origin request and every POST): the page this server serves itself (same host and port), or
    one of `allowed_origins` ("*": any)."""

    host: str
    allowed_hosts: list[str]
    allowed_origins: list[str]

    def host_ok(self, value: str) -> bool:
        name = _host_name(value)
        allowed = {_host_name(h) for h in self.allowed_hosts}
        if "*" in allowed or name in allowed or _is_loopback(name) or name == _host_name(self.host):
            return True
        return _host_name(self.host) in ("0.0.0.0", "::", "") and _is_ip(name)

    def origin_ok(self, origin: str, host: str) -> bool:
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        scheme, sep, authority = origin.partition("://")
        return bool(sep) and scheme in ("http", "https") and authority.lower() == host.strip().lower()

    def refusal(self, headers: dict[bytes, bytes], scope: dict[str, Any]) -> ApiError | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if host and not self.host_ok(host):
            return ApiError(403, f"the Host header {host[:100]!r} does not name this server; if you reach it by that name, start "
                                 f"sia serve with --allowed-host {_host_name(host)[:100]}", code="host_not_allowed")
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            if not self.origin_ok(text, host):
                return ApiError(403, f"a page at {text[:100]!r} may not use this server; if you trust it, start sia serve with "
                                     f"--allowed-origin {text[:100]}", code="origin_not_allowed")
        return None


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
