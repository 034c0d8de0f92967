"""Starlette helpers for every role: bounded JSON bodies, OpenAI error bodies, API keys."""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from rbee.errors import ApiError, RbeeError

__all__ = [
    "EXCEPTION_HANDLERS",
    "MAX_BODY_BYTES",
    "ApiKeyMiddleware",
    "ClosingStreamingResponse",
    "error_response",
    "parse_json",
    "read_body",
    "read_json",
]

MAX_BODY_BYTES = 1 << 20


def error_response(err: ApiError) -> JSONResponse:
    """The OpenAI-shaped error response for `err`."""
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


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
    """Decode a JSON body; 400 saying why if it is empty or malformed."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The request's JSON body; 413 past `limit` bytes, 400 if it is not JSON."""
    return parse_json(await read_body(request, limit))


class ApiKeyMiddleware:
    """Require `Authorization: Bearer <key>` on every path but /health (constant-time compare)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key):
            await self.app(scope, receive, send)
            return
        err = ApiError(
            401,
            "missing or wrong API key: send `Authorization: Bearer <key>`",
            code="invalid_api_key",
        )
        response: Response = error_response(err)
        await response(scope, receive, send)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(ApiError(exc.status_code, message, code=code))


async def _rbee_error(request: Request, exc: Exception) -> Response:
    # An RbeeError that is not an ApiError is rbee's own failure (an engine, a worker), not the
    # client's: a 500 that says what went wrong.
    return error_response(ApiError(500, str(exc), type="server_error"))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    RbeeError: _rbee_error,
}
"""Starlette exception handlers that answer every error with OpenAI's error body."""
