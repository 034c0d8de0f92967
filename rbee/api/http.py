"""Starlette helpers for every role: bounded JSON bodies, OpenAI error bodies, the access log.

The queen's API keys and scopes are rbee.queen.auth (hives and workers listen on loopback only).
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rbee.api.jsonbody import decode_body
from rbee.errors import ApiError, RbeeError

__all__ = [
    "DEADLINE_HEADER",
    "EXCEPTION_HANDLERS",
    "MAX_BODY_BYTES",
    "MAX_TAIL_LINES",
    "AccessLogMiddleware",
    "ClosingStreamingResponse",
    "error_response",
    "internal_error",
    "parse_json",
    "read_body",
    "read_json",
    "request_deadline",
    "scrub_addresses",
    "tail_lines",
]

MAX_BODY_BYTES = 1 << 20
DEADLINE_HEADER = "x-rbee-deadline"
"""Seconds a client gives its request, queueing and generation (lower than the queen's
`--request-timeout`; the queen passes what is left of it on to the worker)."""

access_log = logging.getLogger("rbee.access")


_INTERNAL_URL = re.compile(
    r"\bhttps?://(?:localhost|\[[0-9a-fA-F:.]+\]|\d{1,3}(?:\.\d{1,3}){3})(?::\d+)?[^\s'\")]*"
)
_SOCKET_ADDRESS = re.compile(r"\(\s*'[0-9a-fA-F:.]+'\s*,\s*\d+[^)]*\)")
_HOST_PORT = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}:\d{1,5}\b")


def scrub_addresses(text: str) -> str:
    """`text` with the machine-internal addresses it may hold (a worker's or a hive forward's
    URL, a socket's ('127.0.0.1', 9301), an ip:port) written as `<internal address>`: the
    queen's error bodies name workers and hives by id, never by where they listen."""
    for pattern in (_INTERNAL_URL, _SOCKET_ADDRESS, _HOST_PORT):
        text = pattern.sub("<internal address>", text)
    return text


def error_response(err: ApiError) -> JSONResponse:
    """The OpenAI-shaped error response for `err`; a server error's message is scrubbed of
    internal addresses (it may carry an exception's text from deep in the relay)."""
    body = err.body()
    if err.status >= 500:
        body["error"]["message"] = scrub_addresses(str(body["error"]["message"]))
    return JSONResponse(body, status_code=err.status, headers=err.headers())


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, however the response ends.

    When a client disconnects, the body generator is abandoned mid-iteration; closing it at once
    runs its `finally` now (cancelling generation), not whenever the garbage collector gets to it.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 past `limit` bytes (declared or actually sent)."""
    too_large = ApiError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client disconnected before sending the whole body") from None
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body; 400 saying why (and naming the field) if it is empty, malformed or
    not strict JSON (rbee.api.jsonbody)."""
    return decode_body(raw)


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The request's JSON body; 413 past `limit` bytes, 400 if it is not JSON."""
    return parse_json(await read_body(request, limit))


MAX_TAIL_LINES = 2000


def tail_lines(request: Request, default: int = 200) -> int:
    """The `lines` a log tail asks for (`default` if none): 0 to MAX_TAIL_LINES, else 400."""
    raw = request.query_params.get("lines", str(default))
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_TAIL_LINES:
        raise ApiError(400, f"lines must be 0-{MAX_TAIL_LINES}, got {raw[:20]!r}", param="lines")
    return int(raw)


def request_deadline(request: Request, limit: float | None) -> float | None:
    """When `request` must be answered by (time.monotonic()): `limit` seconds from now, or
    sooner if its `X-Rbee-Deadline` header (seconds) says so; None: no deadline. 400 if the
    header is not a positive number of seconds."""
    raw = request.headers.get(DEADLINE_HEADER)
    seconds = limit
    if raw is not None:
        try:
            asked = float(raw)
        except ValueError:
            asked = math.nan
        if not math.isfinite(asked) or asked <= 0:
            raise ApiError(
                400,
                f"the {DEADLINE_HEADER} header must be a positive number of seconds, got "
                f"{raw[:40]!r}",
                param=DEADLINE_HEADER,
                code="invalid_header",
            )
        seconds = asked if limit is None else min(asked, limit)
    return None if seconds is None else time.monotonic() + seconds


class AccessLogMiddleware:
    """One line per request on the `rbee.access` logger: method, path, status, milliseconds.

    A client that went away before its answer was complete is logged as 499, whatever status
    the answer had begun with (nginx's convention).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.monotonic()
        status = 500
        complete = False
        gone = False

        async def watch_receive() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                gone = True
            return message

        async def watch_send(message: Message) -> None:
            nonlocal status, complete, gone
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            try:
                await send(message)
            except OSError:
                gone = True
                raise

        try:
            await self.app(scope, watch_receive, watch_send)
        finally:
            shown = 499 if gone and not complete else status
            access_log.info(
                "%s %s %d %.0fms",
                scope["method"],
                scope["path"],
                shown,
                (time.monotonic() - began) * 1000,
            )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


def _route_methods(request: Request, path: str) -> dict[str, set[str]]:
    """The methods each route of the app takes, by route path; only the routes matching `path`
    when it is given (one path may be served by several routes, one per method)."""
    scope = {**request.scope, "path": path, "root_path": ""}
    found: dict[str, set[str]] = {}
    for route in getattr(request.app, "routes", ()):
        route_path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if not isinstance(route_path, str) or not methods:
            continue
        if path and route.matches(scope)[0] is Match.NONE:
            continue
        found.setdefault(route_path, set()).update(methods - {"HEAD"})
    return found


_CONVERTOR = re.compile(r"{(\w+):\w+}")


def _listing(routes: dict[str, set[str]]) -> str:
    # A client reads `/v1/models/{model}`: the `:path` convertor is the router's business.
    return "; ".join(
        ", ".join(sorted(m)) + " " + _CONVERTOR.sub(r"{\1}", p) for p, m in routes.items()
    )


def _not_found(request: Request) -> ApiError:
    path = request.url.path
    under_v1 = path == "/v1" or path.startswith("/v1/")
    routes = {
        p: m for p, m in _route_methods(request, "").items() if not under_v1 or p.startswith("/v1/")
    }
    hint = ""
    if not under_v1 and _route_methods(request, "/v1" + path):
        hint = f" (did you mean /v1{path}? OpenAI clients take a base URL ending in /v1)"
    where = "under /v1 " if under_v1 else ""
    message = (
        f"{request.method} {path}: no such route{hint}; the routes {where}are: {_listing(routes)}"
    )
    return ApiError(404, message, code="not_found")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and "endpoint" not in request.scope:
        return error_response(_not_found(request))
    if exc.status_code == 405:
        # Starlette's Allow names one route's methods; the path may have a route per method.
        allowed = sorted(
            {m for ms in _route_methods(request, request.url.path).values() for m in ms}
        )
        message = (
            f"{request.method} {request.url.path}: method not allowed; this route takes "
            f"{', '.join(allowed)}"
        )
        response = error_response(ApiError(405, message, code="method_not_allowed"))
        response.headers["Allow"] = ", ".join(allowed)
        return response
    code = {404: "not_found"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(ApiError(exc.status_code, message, code=code))


async def _rbee_error(request: Request, exc: Exception) -> Response:
    # An RbeeError that is not an ApiError is rbee's own failure (an engine, a worker), not the
    # client's: a 500 that says what went wrong.
    return error_response(ApiError(500, str(exc), type="server_error"))


def internal_error(request: Request, exc: Exception) -> ApiError:
    """What a bug in rbee answers: a 500 naming only the exception's type (its text may hold
    paths or addresses)."""
    return ApiError(
        500,
        f"internal error ({type(exc).__name__}) while serving {request.method} "
        f"{request.url.path}; the server's log has the details",
        type="server_error",
        code="internal_error",
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Anything else is a bug in rbee. Starlette's own answer would be a bare `Internal Server
    # Error` (or a traceback in debug mode); an OpenAI client parses this one. Starlette
    # re-raises the exception after this answer is sent, so the server logs the traceback.
    return error_response(internal_error(request, exc))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    RbeeError: _rbee_error,
    Exception: _internal_error,
}
"""Starlette exception handlers that answer every error with OpenAI's error body, a bug in rbee
(any other exception) included."""
