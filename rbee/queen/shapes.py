"""The other API shapes the queen serves on the chat completions path: OpenAI's Responses API and
Anthropic's Messages API.

    POST /v1/responses               OpenAI's Responses API, stateless (rbee.api.responses_api)
    POST /v1/messages                Anthropic's Messages API (rbee.api.anthropic)
    POST /v1/messages/count_tokens   a prompt's tokens, counted by a worker of its model

Each request is mapped to a chat completion request, checked by the shared parser and the queen's
own checks (the same errors, named as that API names its fields), and relayed as any chat
completion is: admission, deadlines, models loaded on demand, retries before the first byte and
trace headers all apply. The answer is mapped back, a stream event by event as it comes; SSE
comments (the keep-alives while a model loads, the trace comment after) pass through, as both
APIs' clients skip them. /v1/messages answers every error in Anthropic's body (rbee's 503
`server_overloaded` as Anthropic's 529 `overloaded_error`), with the same Retry-After.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rbee.api import anthropic, responses_api, sse
from rbee.api.http import (
    EXCEPTION_HANDLERS,
    error_response,
    internal_error,
    parse_json,
    read_body,
    scrub_addresses,
)
from rbee.api.openai import ChatRequest, parse_chat_request
from rbee.errors import ApiError, RbeeError
from rbee.queen.relay import error_of
from rbee.queen.service import Queen

__all__ = [
    "QUEEN_EXCEPTION_HANDLERS",
    "Check",
    "StreamShape",
    "event_error",
    "key_refusal",
    "map_stream",
    "shape_routes",
]

CHAT_PATH = "/v1/chat/completions"
TOKENIZE_PATH = "/tokenize"
"""The worker route that templates and tokenizes a chat request without generating."""

Check = Callable[[Queen, ChatRequest, str], None]
"""The queen's check that it can serve a chat request (rbee.queen.app.check_servable): raises
404 for a model it cannot serve, 400 naming the max tokens field (given) past the context."""


class StreamShape(Protocol):
    """Maps a relayed chat completion stream to another API's events."""

    def opening(self) -> bytes: ...
    def chunk(self, chunk: dict[str, Any]) -> bytes: ...
    def error(self, err: ApiError) -> bytes: ...
    def done(self) -> bytes: ...


def _is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def _anthropic_error(err: RbeeError) -> Response:
    if not isinstance(err, ApiError):
        err = ApiError(500, str(err), type="server_error")
    body = anthropic.error_body(err)
    if err.status >= 500:  # as error_response does: no internal address in a server error
        body["error"]["message"] = scrub_addresses(str(body["error"]["message"]))
    return JSONResponse(body, status_code=anthropic.error_status(err), headers=err.headers())


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Under /v1/messages an Anthropic client parses only Anthropic's body, a bug's answer too.
    if _is_anthropic(request.url.path):
        return _anthropic_error(exc if isinstance(exc, RbeeError) else internal_error(request, exc))
    handler = EXCEPTION_HANDLERS[RbeeError if isinstance(exc, RbeeError) else Exception]
    response: Response = await handler(request, exc)
    return response


QUEEN_EXCEPTION_HANDLERS: dict[Any, Any] = {
    **EXCEPTION_HANDLERS,
    RbeeError: _unexpected,
    Exception: _unexpected,
}
"""The queen's exception handlers: EXCEPTION_HANDLERS, with rbee's failures and bugs answered in
Anthropic's body under /v1/messages (ApiErrors there are answered by its routes)."""


def key_refusal(path: str, err: ApiError) -> Response:
    """The answer to a request without the API key: in Anthropic's body under /v1/messages."""
    return _anthropic_error(err) if _is_anthropic(path) else error_response(err)


def event_error(payload: Any) -> ApiError:
    """The ApiError an OpenAI error event (`{"error": {...}}`) of a relayed stream carries; a
    stream's error has no HTTP status of its own, so it is told from the error's code."""
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    code, kind = error.get("code"), error.get("type")
    if code in ("server_overloaded", "worker_unavailable", "shutting_down"):
        status = 503
    elif code == "request_timeout":
        status = 504
    else:
        status = 400 if kind == "invalid_request_error" else 500
    message = str(error.get("message") or "the stream failed")
    return ApiError(status, message, type=str(kind or "server_error"), param=error.get("param"),
                    code=code)  # fmt: skip


def _data(frame: bytes) -> bytes | None:
    """The data of one SSE event; None for a comment (or an event without data)."""
    lines = [line[5:].strip() for line in frame.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


async def _as_bytes(chunks: AsyncIterable[str | bytes | memoryview]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)


async def map_stream(
    chunks: AsyncIterable[str | bytes | memoryview], shape: StreamShape
) -> AsyncIterator[bytes]:
    """A relayed chat completion stream as `shape`'s events. The relayed stream is read to its
    end even after its last event, so the relay sees it complete (and counts it so)."""
    ended = False
    try:
        yield shape.opening()
        async for frame in sse.frames(_as_bytes(chunks)):
            if ended:
                continue
            data = _data(frame)
            if data is None:
                yield frame  # a keep-alive or the trace: SSE comments every client skips
                continue
            if data == b"[DONE]":
                ended = True
                yield shape.done()
                continue
            try:
                payload = json.loads(data)
            except ValueError:
                payload = {"error": {"message": f"the worker sent a bad event: {data[:80]!r}"}}
            if isinstance(payload, dict) and "error" in payload:
                ended = True
                yield shape.error(event_error(payload))
            elif isinstance(payload, dict):
                yield shape.chunk(payload)
        if not ended:
            yield shape.error(ApiError(502, "the stream ended before its answer was complete",
                                       type="server_error"))  # fmt: skip
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _trace(answer: Response) -> dict[str, str]:
    """The headers of a relayed answer worth keeping on its mapped form."""
    return {k: v for k, v in answer.headers.items()
            if k.startswith("x-rbee-") or k == "retry-after"}  # fmt: skip


def _relayed(
    answer: Response,
    whole: Callable[[dict[str, Any]], dict[str, Any]],
    stream: Callable[[], StreamShape],
) -> Response:
    """The relay's `answer` to a chat completion request, mapped by `whole` or `stream`; an
    error answer raised as its ApiError."""
    if answer.status_code == 499:  # the client went away: nobody reads this
        return answer
    if isinstance(answer, StreamingResponse):
        # The relay's own response keeps its work (releasing the worker, the deadline, the
        # end of a stream that waited for its model); only its bytes are mapped.
        answer.body_iterator = map_stream(answer.body_iterator, stream())
        return answer
    if answer.status_code != 200:
        raise error_of(answer)
    return JSONResponse(whole(json.loads(bytes(answer.body))), headers=_trace(answer))


def _parsed(chat: dict[str, Any], rename: Callable[[ApiError], ApiError]) -> ChatRequest:
    """A mapped request read by the chat parser, its errors named by `rename` as the API that
    sent the request names its fields."""
    try:
        return parse_chat_request(chat)
    except ApiError as err:
        raise rename(err) from None


def _queen(request: Request) -> Queen:
    queen: Queen = request.app.state.queen
    return queen


def _encoded(chat: dict[str, Any]) -> bytes:
    return json.dumps(chat, separators=(",", ":")).encode()


def shape_routes(check: Check) -> list[Route]:
    """The routes of the other API shapes, checking each request with `check`."""

    async def create_response(request: Request) -> Response:
        queen = _queen(request)
        mapped = responses_api.parse_responses_request(parse_json(await read_body(request)))
        try:
            parsed = parse_chat_request(mapped.chat)
            check(queen, parsed, "max_output_tokens")
            answer = await queen.relay.forward(
                request, parsed.model, CHAT_PATH, _encoded(mapped.chat), parsed.stream
            )
            return _relayed(
                answer,
                lambda body: responses_api.response(body, mapped),
                lambda: responses_api.ResponseStream(mapped),
            )
        except ApiError as err:
            raise responses_api.rename(err) from None

    async def create_message(request: Request) -> Response:
        try:
            queen = _queen(request)
            mapped = anthropic.parse_messages_request(parse_json(await read_body(request)))
            parsed = _parsed(mapped.chat, anthropic.rename)
            check(queen, parsed, "max_tokens")
            answer = await queen.relay.forward(
                request, parsed.model, CHAT_PATH, _encoded(mapped.chat), parsed.stream
            )
            return _relayed(
                answer,
                lambda body: anthropic.message(body, mapped.model),
                lambda: anthropic.MessageStream(mapped.model),
            )
        except RbeeError as err:
            return _anthropic_error(err)

    async def count_tokens(request: Request) -> Response:
        try:
            queen = _queen(request)
            chat = anthropic.count_request(parse_json(await read_body(request)))
            parsed = _parsed(chat, anthropic.rename)
            check(queen, parsed, "max_tokens")
            answer = await queen.relay.forward(
                request, parsed.model, TOKENIZE_PATH, _encoded(chat), stream=False, pace=False
            )
            if answer.status_code == 499:
                return answer
            if answer.status_code != 200:
                raise error_of(answer)
            counted = json.loads(bytes(answer.body))
            return JSONResponse({"input_tokens": counted["count"]}, headers=_trace(answer))
        except RbeeError as err:
            return _anthropic_error(err)

    return [
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/messages", create_message, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    ]
