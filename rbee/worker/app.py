"""The worker's HTTP app: the OpenAI API for its one model, and /health.

A worker serves either generation (`/v1/chat/completions`, `/v1/completions`) or, when its model
was loaded for embeddings (`--embeddings`), `/v1/embeddings`; each refuses the other's routes with
a 400 that says which worker to start instead. `POST /tokenize` takes a chat request and answers
its prompt's tokens as generation would see them, `{"count", "max_model_len", "tokens"}` (as
vLLM's route does), for the queen's `/v1/messages/count_tokens`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.api import responses, sse
from rbee.api.disconnect import ClientGoneError, until_disconnect
from rbee.api.hop import HopAuthMiddleware
from rbee.api.http import (
    EXCEPTION_HANDLERS,
    ClosingStreamingResponse,
    read_json,
    request_deadline,
)
from rbee.api.logprobs import CompletionLogprobs, Logprob, chat_logprobs
from rbee.api.openai import (
    ChatRequest,
    CompletionRequest,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
    parse_off_loop,
)
from rbee.api.tools import CallEvent, CallParser, split_calls
from rbee.engines.base import Finish, Piece, embedder_of
from rbee.errors import ApiError, DeadlineError, EngineError
from rbee.worker.runner import EngineRunner, Generation

__all__ = ["create_app"]

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
QUEUED_HEADER = "X-Rbee-Queued-Ms"
"""How long the request waited in the worker's queue; a stream's headers go out when the engine
takes it, so a queued stream shows nothing until then."""


def create_app(runner: EngineRunner, model_id: str, *, token: str | None = None) -> Starlette:
    """The worker app serving `model_id` through `runner`; with `token` (the hive's hop secret),
    every request must carry it."""
    started = int(time.time())
    embedder = embedder_of(runner.engine)

    def check_model(name: str) -> None:
        if name != model_id:
            raise ApiError(
                404,
                f"the model {name!r} does not exist on this worker; it serves {model_id!r}",
                param="model",
                code="model_not_found",
            )

    async def health(request: Request) -> Response:
        stats = runner.stats
        return JSONResponse(
            {
                "status": "ok",
                "role": "worker",
                "model": model_id,
                "engine": runner.engine.name,
                "context_length": runner.engine.context_length,
                "embeddings": embedder is not None,
                "max_queued": runner.admission.max_queued,
                "max_queued_tokens": runner.admission.max_queued_tokens,
                "stats": dataclasses.asdict(stats),
            }
        )

    async def models(request: Request) -> Response:
        entry = {"id": model_id, "created": started, "context_length": runner.engine.context_length}
        return JSONResponse(responses.model_list([entry]))

    async def generate(request: Request, parsed: ChatRequest | CompletionRequest) -> Response:
        check_model(parsed.model)
        if embedder is not None:
            raise _embeddings_only(model_id)
        prepared = await runner.prepare(parsed)
        generation = runner.submit(prepared)  # a full queue: 503 server_overloaded, at once
        deadline = request_deadline(request, None)
        if deadline is not None:
            generation.expire_at(deadline)
        try:
            waited = await until_disconnect(request, generation.started())
        except ClientGoneError:
            generation.close()
            return Response(status_code=499)
        except BaseException:
            generation.close()
            raise
        trace = {QUEUED_HEADER: str(round(waited * 1000))}
        if parsed.stream:
            return ClosingStreamingResponse(
                _stream(generation, parsed),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **trace},
            )
        try:
            choices, prompt_tokens, completion_tokens = await until_disconnect(
                request, _collect(generation, parsed)
            )
        except ClientGoneError:
            return Response(status_code=499)
        body = responses.completion(
            parsed.kind,
            parsed.model,
            choices=choices,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        return JSONResponse(body, headers=trace)

    async def chat(request: Request) -> Response:
        return await generate(
            request, await parse_off_loop(parse_chat_request, await read_json(request))
        )

    async def complete(request: Request) -> Response:
        return await generate(request, parse_completion_request(await read_json(request)))

    async def embeddings(request: Request) -> Response:
        parsed = parse_embedding_request(await read_json(request))
        check_model(parsed.model)
        if embedder is None:
            raise ApiError(
                400,
                f"this worker loaded {model_id} for chat and completions, not for embeddings; "
                f"start one with `rbee worker spawn --model {model_id} --embeddings`",
                param="model",
                code="model_not_supported",
            )
        size = embedder.embedding_length
        if parsed.dimensions is not None and parsed.dimensions != size:
            raise ApiError(
                400,
                f"dimensions={parsed.dimensions} is not supported: {model_id} makes vectors of "
                f"{size} dimensions (leave dimensions out, or send {size})",
                param="dimensions",
                code="unsupported_parameter",
            )
        tokens = await runner.tokenize_inputs(parsed.inputs)
        try:
            result = await until_disconnect(request, runner.embed(tokens))
        except ClientGoneError:
            return Response(status_code=499)

        def encode() -> bytes:
            body = responses.embedding_list(
                parsed.model,
                result.vectors,
                base64=parsed.encoding_format == "base64",
                prompt_tokens=result.prompt_tokens,
            )
            return json.dumps(body, separators=(",", ":")).encode()

        # Thousands of vectors as JSON floats take a while to encode: not on the event loop.
        return Response(await asyncio.to_thread(encode), media_type="application/json")

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", complete, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            _tokenize_route(runner, model_id, check_model),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(HopAuthMiddleware, token=token)] if token else [],
    )


def _embeddings_only(model_id: str) -> ApiError:
    """The 400 for a chat or completion request to a worker loaded for embeddings."""
    return ApiError(
        400,
        f"this worker loaded {model_id} for embeddings (--embeddings) and serves "
        "/v1/embeddings only; for chat and completions, start a worker without "
        f"--embeddings (`rbee worker spawn --model {model_id}`)",
        param="model",
        code="model_not_supported",
    )


def _tokenize_route(runner: EngineRunner, model_id: str, check: Callable[[str], None]) -> Route:
    """`POST /tokenize`: a chat request's prompt tokens, templated and tokenized as generation
    would see them (off the engine's thread, never queued), after `check` of its model."""

    async def tokenize(request: Request) -> Response:
        parsed = parse_chat_request(await read_json(request))
        check(parsed.model)
        if embedder_of(runner.engine) is not None:
            raise _embeddings_only(model_id)
        prepared = await runner.prepare(parsed)
        context = runner.engine.context_length
        return JSONResponse(
            {"count": len(prepared.tokens), "max_model_len": context, "tokens": prepared.tokens}
        )

    return Route("/tokenize", tokenize, methods=["POST"])


def _call_chunks(
    event: Callable[..., bytes], found: list[CallEvent], logprobs: dict[str, Any] | None
) -> Iterator[bytes]:
    """The chunks of what a piece of a streamed answer with tools added: text as content; a
    call's first delta with its index, id, type and name, the next ones with its arguments in
    pieces (OpenAI's stream). `logprobs` go with the text they came from."""
    for e in found:
        if e.kind == "text":
            yield event(text=e.text, logprobs=logprobs)
            logprobs = None
        elif e.kind == "call":
            call = {"index": e.index, "id": e.id, "type": "function",
                    "function": {"name": e.name, "arguments": ""}}  # fmt: skip
            yield event(tool_call=call)
        else:
            yield event(tool_call={"index": e.index, "function": {"arguments": e.text}})


def _with_calls(reason: str, called: bool) -> str:
    """The finish_reason of an answer that made calls: "tool_calls" where it ended by itself."""
    return "tool_calls" if called and reason == "stop" else reason


_Shaper = Callable[[Sequence[Logprob]], dict[str, Any]]
"""Turns one choice's next tokens' Logprobs into a `logprobs` object of the request's kind."""


def _logprobs_shaper(parsed: ChatRequest | CompletionRequest) -> _Shaper | None:
    """A fresh shaper for the next choice of `parsed`; None if it asked for no logprobs."""
    if parsed.sampling.logprobs is None:
        return None
    if isinstance(parsed, ChatRequest):
        return chat_logprobs
    return CompletionLogprobs(parsed.prompt).add


async def _collect(
    generation: Generation, parsed: ChatRequest | CompletionRequest
) -> tuple[list[responses.Choice], int, int]:
    """Every choice of a whole answer; the prompt's tokens and all choices' generated tokens."""
    choices: list[responses.Choice] = []
    parts: list[str] = []
    logprobs: list[Logprob] = []
    prompt_tokens = completion_tokens = 0
    try:
        async for item in generation:
            if isinstance(item, Finish):
                completion_tokens += item.completion_tokens
                if generation.expired:
                    raise DeadlineError(
                        f"the request's deadline passed after {completion_tokens} tokens"
                    )
                shape = _logprobs_shaper(parsed)
                text, reason = "".join(parts), str(item.reason)
                calls: list[dict[str, Any]] = []
                if isinstance(parsed, ChatRequest) and parsed.calls_tools:
                    text, calls = split_calls(text)
                    reason = _with_calls(reason, bool(calls))
                choices.append(
                    responses.Choice(
                        text,
                        reason,
                        shape(logprobs) if shape else None,
                        tuple(calls),
                        item.stop_sequence,
                    )
                )
                parts, logprobs = [], []
                prompt_tokens = item.prompt_tokens
            elif isinstance(item, Piece):
                parts.append(item.text)
                logprobs.extend(item.logprobs)
            else:
                parts.append(item)
    finally:
        generation.close()
    if len(choices) != parsed.sampling.n:
        raise EngineError("generation ended without finishing")
    return choices, prompt_tokens, completion_tokens


async def _stream(
    generation: Generation, parsed: ChatRequest | CompletionRequest
) -> AsyncIterator[bytes]:
    """The SSE events of a streamed answer: choice after choice, as OpenAI sends them (each
    chunk one choice's delta, each choice ending with its own finish_reason chunk), then the
    usage of all choices when asked for, then [DONE]."""
    kind, model = parsed.kind, parsed.model
    rid, created = responses.new_id(kind), int(time.time())
    with_usage = parsed.include_usage
    index, completion_tokens = 0, 0
    shape = _logprobs_shaper(parsed)
    tools = isinstance(parsed, ChatRequest) and parsed.calls_tools
    calls = CallParser() if tools else None

    def event(**fields: Any) -> bytes:
        return sse.encode(
            responses.chunk(
                kind, rid, created, model, index=index, include_usage=with_usage, **fields
            )
        )

    try:
        if kind == "chat":
            yield event(role=True)
        async for item in generation:
            if isinstance(item, Finish):
                completion_tokens += item.completion_tokens
                if generation.expired:
                    message = f"the request's deadline passed after {completion_tokens} tokens"
                    yield sse.encode(DeadlineError(message).body())
                    break
                reason = str(item.reason)
                if calls is not None:
                    for chunk in _call_chunks(event, calls.end(), None):
                        yield chunk
                    reason = _with_calls(reason, calls.calls > 0)
                    calls = CallParser()
                yield event(
                    text=None if kind == "chat" else "",
                    finish_reason=reason,
                    stop_sequence=item.stop_sequence,
                )
                index += 1
                if index < parsed.sampling.n and item.reason != "cancelled":
                    shape = _logprobs_shaper(parsed)
                    if kind == "chat":
                        yield event(role=True)
                    continue
                if with_usage:
                    yield sse.encode(
                        responses.usage_chunk(
                            kind,
                            rid,
                            created,
                            model,
                            prompt_tokens=item.prompt_tokens,
                            completion_tokens=completion_tokens,
                        )
                    )
                break
            text = item.text if isinstance(item, Piece) else item
            logprobs = shape(item.logprobs) if shape and isinstance(item, Piece) else None
            if calls is not None:
                for chunk in _call_chunks(event, calls.feed(text), logprobs):
                    yield chunk
            else:
                yield event(text=text, logprobs=logprobs)
    except EngineError as err:
        log.warning("stream %s failed: %s", rid, err)
        yield sse.encode(ApiError(500, str(err), type="server_error").body())
    finally:
        generation.close()
    yield sse.DONE
