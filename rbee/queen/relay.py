"""Forwarding OpenAI requests from the queen to a worker, streaming answers token by token.

The queen has parsed and checked the request already; it forwards the client's bytes as they came,
and relays the worker's SSE bytes as they come, without re-encoding them.

Before the first byte of an answer, a failure is the queen's to hide: a worker that cannot be
reached, resets the connection, answers 5xx (through an SSH forward the local accept always
succeeds, so a dead remote worker shows as a read error), or dies before its first generated
token (the queen holds a chat stream's opening role chunk until that token comes, so a request
waiting in a worker's queue or in its prefill is not lost with it) is passed over for the next
replica, and
a worker of the model that is starting or restarting is waited for, within the first-byte
deadline. When none can serve, the answer is 503 `worker_unavailable` at once, with the cause (a
crash-loop, a hive that is unreachable) and `Retry-After`. After the first byte, a stream that
breaks ends with an error event and `[DONE]`. When the client goes away, the upstream connection
is closed, which the worker sees as its own client going away: generation stops there too.

Stopping: `drain()` makes new requests 503 `shutting_down`, lets those in flight finish within a
grace period, then ends each stream still open with an error event and `[DONE]`.

Workers on another machine are reached through SSH port forwards, and a hive's connection has
only so many channels (`rbee.ssh.connection.MAX_FORWARDED` for forwarded connections). So each
such hive gets its own connection pool, `RELAYED_PER_HIVE` connections at most: a request over
that waits in the queen, in arrival order, and a connection kept alive to one worker is closed to
make room for a request to another. One forwarded slot stays free for the queen's own calls to
the hive (spawn, list, stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

# httpcore has anyio import its synchronisation module on the first request: 30 ms with the event
# loop blocked, on the path of the first answer after a model loads. Import it with the relay.
from anyio import Event as _AnyioEvent  # noqa: F401
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from rbee.api import sse
from rbee.api.disconnect import wait_disconnect
from rbee.api.hop import hop_headers
from rbee.api.http import (
    DEADLINE_HEADER,
    ClosingStreamingResponse,
    request_deadline,
    scrub_addresses,
)
from rbee.config.limits import DEFAULT_LIMITS, Limits
from rbee.config.settings import Timeouts
from rbee.errors import ApiError, ClientGoneError, DeadlineError, OverloadedError
from rbee.net import plain_http_only
from rbee.queen.ledger import Answered, Ledger, completion_tokens
from rbee.queen.metrics import QueenMetrics
from rbee.queen.registry import Endpoint, Registry
from rbee.ssh.connection import MAX_FORWARDED

__all__ = [
    "RELAYED_PER_HIVE",
    "Relay",
    "RelayResponse",
    "Unavailable",
    "WaitingStream",
    "error_of",
    "failure",
]

RELAYED_PER_HIVE = MAX_FORWARDED - 1
QUEUED_HEADER = "x-rbee-queued-ms"

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)
"""Failures before any answer came back: generation has no side effects, so try another."""

T = TypeVar("T")


@dataclass(frozen=True)
class Unavailable:
    """Why no worker serves a model now, and whether one is coming (then a request waits)."""

    error: ApiError
    coming: bool
    until: float | None = None
    """When waiting for the one coming stops (time.monotonic()): a model loaded on demand gets
    its load deadline; None: the request's first-byte deadline."""


Availability = Callable[[str, bool], Unavailable | None]
"""(model, embeddings) → why it cannot be served now; None: it is not wanted anywhere."""


class RelayResponse(ClosingStreamingResponse):
    """A streamed upstream answer; whatever happens, the upstream is closed and released after.

    It starts with `opening`, the events read before the answer was handed over (up to the first
    generated token), then relays the rest of `chunks` as they come. `cut` ends it from outside
    at the next chunk (a stream that is generating gets one every token), with an error event and
    `[DONE]`; `abort` also closes the upstream, for a stream that receives nothing any more. At
    its deadline it is cut and aborted.
    """

    def __init__(
        self,
        upstream: httpx.Response,
        release: Callable[[bool], Awaitable[None]],
        *,
        chunks: AsyncIterator[bytes],
        opening: bytes,
        worker: str,
        streams: set[RelayResponse],
        deadline: float,
        headers: Mapping[str, str],
        on_end: Callable[[], None] = lambda: None,
    ) -> None:
        self._upstream = upstream
        self._chunks = chunks
        self._opening = opening
        self._release = release
        self._worker = worker
        self._streams = streams
        self._deadline = deadline
        self._on_end = on_end
        self._cut: ApiError | None = None
        self._complete = False
        self._closed = False
        streams.add(self)
        super().__init__(
            self.relay(), media_type="text/event-stream", headers={**_SSE_HEADERS, **headers}
        )

    def cut(self, why: str) -> None:
        """End the stream at its next chunk: an error event saying `why`, then `[DONE]`."""
        message = f"the stream from worker {self._worker} was ended: {why}"
        self._cut = ApiError(502, message, type="server_error")

    async def abort(self) -> None:
        """Close the upstream, so a stream waiting for a chunk ends now (as cut)."""
        await self._upstream.aclose()

    def _expire(self) -> None:
        self._cut = DeadlineError(f"the request's deadline passed while worker {self._worker} "
                                  "was answering")  # fmt: skip
        asyncio.get_running_loop().create_task(self.abort())

    async def relay(self) -> AsyncIterator[bytes]:
        """The stream's bytes: the opening, the rest as it comes, an error event if it breaks."""
        timer = asyncio.get_running_loop().call_later(
            max(0.0, self._deadline - time.monotonic()), self._expire
        )
        try:
            if self._opening:
                yield self._opening
            async for chunk in self._chunks:
                if self._cut is not None:
                    break
                yield chunk
            else:
                self._complete = True
                return
        except (httpx.HTTPError, RuntimeError) as err:
            # RuntimeError: httpx's answer to reading a stream that abort() closed.
            if self._cut is None:
                log.warning("stream from worker %s broke: %r", self._worker, err)
                message = f"the stream from worker {self._worker} broke: {failure(err)}"
                yield sse.encode(ApiError(502, message, type="server_error").body())
                yield sse.DONE
                return
        finally:
            timer.cancel()
        assert self._cut is not None
        yield sse.encode(self._cut.body())
        yield sse.DONE

    async def close(self) -> None:
        """Close and release the upstream (once)."""
        if not self._closed:
            self._closed = True
            self._streams.discard(self)
            await self._release(self._complete)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.close()
            finally:
                self._on_end()


class WaitingStream(ClosingStreamingResponse):
    """A stream whose worker is not ready yet (its model loading): SSE comments keep the client
    from timing out until the answer comes, then the answer is relayed as it comes. Headers went
    out before a worker was known, so the worker, hive and waits come in an SSE comment."""

    def __init__(
        self,
        answer: asyncio.Task[Response],
        *,
        model: str,
        every: float,
        on_end: Callable[[], None],
    ) -> None:
        self._answer = answer
        self._model = model
        self._every = every
        self._on_end = on_end
        self._inner: RelayResponse | None = None
        super().__init__(self._body(), media_type="text/event-stream", headers=_SSE_HEADERS)

    async def _body(self) -> AsyncIterator[bytes]:
        # The stream waited a keep-alive period for its worker already: say at once that a load
        # is under way (even if it ends before this body runs), then keep saying it.
        yield f": loading {self._model}\n\n".encode()
        while not self._answer.done():
            await asyncio.wait({self._answer}, timeout=self._every)
            if not self._answer.done():
                yield f": loading {self._model}\n\n".encode()
        try:
            answer = self._answer.result()
        except ApiError as err:
            yield sse.encode(err.body())
            yield sse.DONE
            return
        if not isinstance(answer, RelayResponse):
            yield sse.encode(error_of(answer).body())
            yield sse.DONE
            return
        self._inner = answer
        trace = " ".join(f"{k.lower()}={v}" for k, v in answer.headers.items()
                         if k.lower().startswith("x-rbee-"))  # fmt: skip
        yield f": {trace}\n\n".encode()
        async for chunk in answer.relay():
            yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                if not self._answer.done():
                    self._answer.cancel()
                    with contextlib.suppress(BaseException):
                        await self._answer
                elif not self._answer.cancelled() and self._answer.exception() is None:
                    answer = self._answer.result()
                    if isinstance(answer, RelayResponse):
                        await answer.close()
            finally:
                self._on_end()


def failure(err: BaseException) -> str:
    """What went wrong talking to a worker, for a client: the exception's type and text with
    every internal address taken out (httpx and the socket layer name the URL or the
    ('127.0.0.1', port) they failed on; the client gets the worker's id instead)."""
    text = scrub_addresses(str(err))[:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def error_of(answer: Response) -> ApiError:
    """The ApiError a whole (non-stream) error answer carries: for a stream's error event, or to
    answer it in another API's shape (its Retry-After kept)."""
    retry_after: float | None = None
    with contextlib.suppress(ValueError):
        retry_after = float(answer.headers.get("retry-after", ""))
    if retry_after is not None and not math.isfinite(retry_after):
        retry_after = None
    try:
        error = json.loads(bytes(answer.body))["error"]
        return ApiError(answer.status_code, str(error["message"]), type=str(error["type"]),
                        param=error.get("param"), code=error.get("code"),
                        retry_after=retry_after)  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return ApiError(answer.status_code, f"the worker answered {answer.status_code}",
                        type="server_error")  # fmt: skip


class Relay:
    """Sends requests to workers picked from the registry."""

    def __init__(
        self,
        registry: Registry,
        timeouts: Timeouts,
        *,
        availability: Availability | None = None,
        limits: Limits = DEFAULT_LIMITS,
        metrics: QueenMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.timeouts = timeouts
        self.limits = limits
        self.metrics = metrics or QueenMetrics()
        self.ledger = Ledger()
        """The requests answered lately (the dashboard's list)."""
        self._availability = availability
        self._client: httpx.AsyncClient | None = None
        self._hive_clients: dict[str, httpx.AsyncClient] = {}
        self._streams: set[RelayResponse] = set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut = asyncio.Event()
        self.closing = False
        """True once draining: new requests are refused with 503."""

    async def __aenter__(self) -> Relay:
        self._client = httpx.AsyncClient(
            timeout=self._stream_timeout(pool=self.timeouts.connect),
            # Admission bounds what the queen sends each worker (Endpoint.capacity), so the
            # pool needs no bound of its own.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            trust_env=False,
            verify=plain_http_only(),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        clients, self._hive_clients = list(self._hive_clients.values()), {}
        if self._client is not None:
            clients.append(self._client)
        for client in clients:
            await client.aclose()

    def _stream_timeout(self, *, pool: float) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.timeouts.connect,
            read=self.timeouts.first_byte,
            write=self.timeouts.connect,
            pool=pool,
        )

    def _client_for(self, endpoint: Endpoint) -> httpx.AsyncClient:
        """The pool that reaches `endpoint`: its hive's own for a worker behind a forward."""
        assert self._client is not None, "the relay is not open"
        if endpoint.forward_url is None:
            return self._client
        client = self._hive_clients.get(endpoint.hive)
        if client is None:
            client = httpx.AsyncClient(
                # Waiting for one of the hive's connections is waiting in line, as a request
                # waits in a busy worker's queue: the same first-byte deadline bounds both.
                timeout=self._stream_timeout(pool=self.timeouts.first_byte),
                limits=httpx.Limits(
                    max_connections=RELAYED_PER_HIVE, max_keepalive_connections=RELAYED_PER_HIVE
                ),
                trust_env=False,
                verify=plain_http_only(),
            )
            self._hive_clients[endpoint.hive] = client
        return client

    # -- stopping ------------------------------------------------------------------------------

    def _begin(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _answered(
        self,
        trip: _Trip,
        status: int,
        endpoint: Endpoint | None = None,
        *,
        tokens: int | None = None,
        first: float | None = None,
    ) -> None:
        """Count one request's end (`first`: when its first token went out, for a stream)."""
        worker, hive = (endpoint.id, endpoint.hive) if endpoint is not None else ("", "")
        self.metrics.request(trip.model, status, worker=worker, hive=hive)
        if endpoint is not None and status == 200:
            endpoint.served += 1
        now = time.monotonic()
        self.ledger.add(
            Answered(
                at=time.time(),
                model=trip.model,
                status=status,
                duration_s=now - trip.arrived,
                worker=worker,
                hive=hive,
                ttft_s=None if first is None else first - trip.arrived,
                tokens=tokens,
                stream=trip.stream,
            )
        )

    def _end(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Refuse new requests, give those in flight `grace` seconds, then end open streams with
        an error event and `[DONE]` (and answer waiting whole answers 503)."""
        self.closing = True
        if self._inflight:
            log.info("draining: %d request(s) in flight, waiting up to %.0fs", self._inflight,
                     grace)  # fmt: skip
            try:
                async with asyncio.timeout(grace):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("draining: ending %d open stream(s) and %d other request(s)",
                            len(self._streams), self._inflight - len(self._streams))  # fmt: skip
        self._cut.set()
        for stream in list(self._streams):
            stream.cut("the queen is shutting down")
        try:
            async with asyncio.timeout(1.0):
                await self._idle.wait()
        except TimeoutError:
            # A stream that gets no chunk (its worker hung) learns of the cut when its read ends.
            for stream in list(self._streams):
                await stream.abort()
            try:
                async with asyncio.timeout(1.0):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("draining: %d request(s) did not end in time", self._inflight)

    async def _unless_cut(self, request: Request, work: Awaitable[T]) -> T:
        """`work`, unless the client goes (ClientGoneError) or the queen stops (503) first."""

        async def cut() -> None:
            await self._cut.wait()
            raise ApiError(503, "the queen is shutting down", type="server_error",
                           code="shutting_down", retry_after=5)  # fmt: skip

        try:
            async with asyncio.TaskGroup() as tg:
                watchers = [tg.create_task(wait_disconnect(request)), tg.create_task(cut())]
                result = await work
                for watcher in watchers:
                    watcher.cancel()
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        return result

    # -- forwarding ----------------------------------------------------------------------------

    async def forward(
        self,
        request: Request,
        model: str,
        path: str,
        raw: bytes,
        stream: bool,
        *,
        embeddings: bool = False,
        pace: bool = True,
    ) -> Response:
        """POST `raw` to `path` on a worker serving `model` (for embeddings, if asked); relay.
        `pace`: the answer's time counts in the worker's pace (not for a request that does not
        generate, such as counting tokens).

        Bounded by the request's deadline (`--request-timeout`, lowered by `X-Rbee-Deadline`):
        past it, 504, and the worker stops (its connection is closed). A stream that has to wait
        for its worker longer than that is answered at once and kept alive with SSE
        comments until the worker answers (both every `Limits.keepalive` seconds).
        """
        if self.closing:
            raise ApiError(503, "the queen is shutting down", type="server_error",
                           code="shutting_down", retry_after=5)  # fmt: skip
        trip = _Trip(model, path, raw, stream, embeddings,
                     deadline=request_deadline(request, self.limits.request_timeout),
                     pace=pace)  # fmt: skip
        self._begin()
        handed_over = False
        try:
            work = asyncio.ensure_future(self._within_deadline(request, trip))
            if stream:
                keepalive = self.limits.keepalive
                try:
                    done, _ = await asyncio.wait({work}, timeout=keepalive)
                except asyncio.CancelledError:
                    work.cancel()  # asyncio.wait does not pass a cancellation on
                    raise
                if not done and trip.waiting_for_worker:
                    handed_over = True
                    return WaitingStream(work, model=model, every=keepalive, on_end=self._end)
            # Not waiting for a worker: queued at one, whose headers come when its engine takes
            # the request (awaiting the task itself passes a cancellation on to it).
            response = await work
        except ApiError as err:
            self._count_refusal(trip, err)
            raise
        else:
            handed_over = isinstance(response, RelayResponse)  # it ends the request itself
            return response
        finally:
            if not handed_over:
                self._end()

    def _count_refusal(self, trip: _Trip, err: ApiError) -> None:
        self._answered(trip, err.status)
        reason = {"server_overloaded": "overloaded", "worker_unavailable": "unavailable",
                  "request_timeout": "timeout"}.get(err.code or "")  # fmt: skip
        if reason is not None:
            self.metrics.rejected(trip.model, reason)

    async def _within_deadline(self, request: Request, trip: _Trip) -> Response:
        loop = asyncio.get_running_loop()
        assert trip.deadline is not None
        try:
            async with asyncio.timeout_at(loop.time() + trip.deadline - time.monotonic()):
                return await self._forward(request, trip)
        except TimeoutError:
            seconds = time.monotonic() - trip.arrived
            raise DeadlineError(
                f"the request's deadline passed after {seconds:.1f}s before its answer came "
                f"(--request-timeout {self.limits.request_timeout:g}s, or {DEADLINE_HEADER})"
            ) from None

    async def _forward(self, request: Request, trip: _Trip) -> Response:
        first_byte = time.monotonic() + self.timeouts.first_byte
        tried: set[str] = set()
        failed: Response | None = None
        while True:
            endpoint = self.registry.choose(trip.model, tried, embeddings=trip.embeddings)
            if endpoint is None:
                if failed is not None:
                    return failed  # every replica answered 5xx: the last one's answer
                full = [e for e in self.registry.ready(trip.model, embeddings=trip.embeddings)
                        if e.attempt not in tried]  # fmt: skip
                if full:
                    raise _overloaded(trip.model, full)
                await self._wait_for_worker(request, trip, first_byte)
                continue
            tried.add(endpoint.attempt)
            answer = await self._try(request, endpoint, trip)
            if answer is None:
                continue
            if answer.status_code >= 500 and not isinstance(answer, RelayResponse):
                log.warning("worker %s answered %d; trying another", endpoint.id,
                            answer.status_code)  # fmt: skip
                failed = answer
                continue
            return answer

    async def _wait_for_worker(self, request: Request, trip: _Trip, first_byte: float) -> None:
        """Wait for the next change of the fleet if a worker of the model is coming (within its
        load deadline, else the first-byte deadline); else raise the 503 saying why none serves.
        """
        model = trip.model
        why = self._availability(model, trip.embeddings) if self._availability else None
        if why is None:
            why = Unavailable(
                ApiError(
                    503,
                    f"no worker serves {model!r} now",
                    type="server_error",
                    code="worker_unavailable",
                    retry_after=5,
                ),
                coming=False,
            )
        left = (why.until if why.until is not None else first_byte) - time.monotonic()
        if not why.coming or left <= 0:
            raise why.error
        began = time.monotonic()
        trip.waiting_for_worker = True
        try:
            await self._unless_cut(request, self.registry.wait_changed(min(left, 1.0)))
        except ClientGoneError:
            raise ApiError(499, "the client went away while waiting for a worker") from None
        finally:
            trip.waiting_for_worker = False
            trip.load_wait += time.monotonic() - began

    async def _try(self, request: Request, endpoint: Endpoint, trip: _Trip) -> Response | None:
        """One attempt on `endpoint`: its answer, or None when it failed before answering.

        The attempt counts in `endpoint.outstanding` until it ends here, or, for a stream handed
        over, until the RelayResponse releases it.
        """
        client = self._client_for(endpoint)
        endpoint.outstanding += 1
        endpoint.dispatched += 1
        sent = time.monotonic()
        handed_over = False
        assert trip.deadline is not None
        left = max(0.001, trip.deadline - sent)
        upstream_request = client.build_request(
            "POST",
            endpoint.url + trip.path,
            content=trip.raw,
            headers={
                "content-type": "application/json",
                DEADLINE_HEADER: f"{left:.3f}",
                **hop_headers(endpoint.token),
            },
            timeout=httpx.Timeout(left, connect=self.timeouts.connect),
        )
        try:
            try:
                if trip.stream:  # a worker answers a stream's headers when its engine takes it
                    sending = client.send(upstream_request, stream=True)
                    upstream = await self._unless_cut(request, sending)
                else:  # a whole answer arrives when generation ends: watch the client meanwhile
                    upstream = await self._unless_cut(request, client.send(upstream_request))
            except _RETRYABLE as err:
                log.warning("worker %s failed before answering (%r); trying another",
                            endpoint.id, err)  # fmt: skip
                return None
            except ClientGoneError:
                self._answered(trip, 499, endpoint)
                return Response(status_code=499)
            headers = trip.trace(endpoint, upstream, sent)
            if trip.stream and upstream.status_code == 200:
                answer = await self._open_stream(request, endpoint, upstream, trip, sent=sent)
                handed_over = isinstance(answer, RelayResponse)
                return answer
            try:
                body = await upstream.aread()
            except _RETRYABLE as err:
                log.warning("worker %s failed while answering (%r); trying another",
                            endpoint.id, err)  # fmt: skip
                return None
            finally:
                await upstream.aclose()
            if upstream.status_code == 200 and trip.pace:
                _learn_pace(endpoint, time.monotonic() - sent, upstream)
            if "retry-after" in upstream.headers:
                headers["Retry-After"] = upstream.headers["retry-after"]
            tokens = completion_tokens(body) if upstream.status_code == 200 else None
            endpoint.tokens_out += tokens or 0
            self._answered(trip, upstream.status_code, endpoint, tokens=tokens)
            return Response(
                body,
                status_code=upstream.status_code,
                media_type=upstream.headers.get("content-type"),
                headers=headers,
            )
        except httpx.HTTPError as err:
            raise ApiError(
                502,
                f"worker {endpoint.id} (hive {endpoint.hive}) failed: {failure(err)}",
                type="server_error",
            ) from err
        finally:
            if not handed_over:
                endpoint.outstanding -= 1
                endpoint.last_active = time.monotonic()

    async def _open_stream(
        self,
        request: Request,
        endpoint: Endpoint,
        upstream: httpx.Response,
        trip: _Trip,
        *,
        sent: float,
    ) -> Response | None:
        """Hand a stream over once its first generated token came; None if the worker died
        before that (the worker's queue, the prompt's prefill): the request may go elsewhere."""
        chunks = upstream.aiter_raw()
        events = 2 if trip.path.endswith("/chat/completions") else 1  # chat: the role chunk first
        try:
            opening = await self._unless_cut(request, _opening(chunks, events))
        except _RETRYABLE as err:
            log.warning("worker %s failed before its first token (%r); trying another",
                        endpoint.id, err)  # fmt: skip
            await upstream.aclose()
            return None
        except ClientGoneError:
            await upstream.aclose()
            self._answered(trip, 499, endpoint)
            return Response(status_code=499)
        except BaseException:
            await upstream.aclose()
            raise
        first = time.monotonic()
        self.metrics.first_token(trip.model, worker=endpoint.id, hive=endpoint.hive,
                                 seconds=first - trip.arrived)  # fmt: skip
        counted = _TokenCounter(chunks, endpoint)

        async def release(complete: bool) -> None:
            try:
                await upstream.aclose()
            finally:
                now = time.monotonic()
                endpoint.outstanding -= 1
                endpoint.last_active = now
                if complete:
                    _learn_pace(endpoint, now - sent, upstream)
                    if counted.events > 1:
                        self.metrics.per_token(trip.model, worker=endpoint.id, hive=endpoint.hive,
                                               seconds=(now - first) / counted.events)  # fmt: skip
                self._answered(trip, 200 if complete else 499, endpoint,
                               tokens=counted.events, first=first)  # fmt: skip

        return RelayResponse(
            upstream,
            release,
            chunks=counted,
            opening=opening,
            worker=endpoint.id,
            streams=self._streams,
            deadline=trip.deadline or math.inf,
            headers=trip.trace(endpoint, upstream, sent),
            on_end=self._end,
        )

    async def worker_health(self, endpoint: Endpoint) -> dict[str, Any] | None:
        """A worker's /health, over the connections the relay already uses to reach it; None if
        it does not answer within 2 s."""
        try:
            response = await self._client_for(endpoint).get(
                endpoint.url + "/health", timeout=2.0, headers=hop_headers(endpoint.token)
            )
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) else None


@dataclass(eq=False)
class _Trip:
    """One request on its way through the relay: what to send, its deadline, its waits."""

    model: str
    path: str
    raw: bytes
    stream: bool
    embeddings: bool
    deadline: float | None
    pace: bool = True
    """Whether the answer's time counts in the worker's pace (it does for generation)."""
    arrived: float = field(default_factory=time.monotonic)
    waiting_for_worker: bool = False
    """Now waiting for a worker of the model to come (a load, a restart)."""
    load_wait: float = 0.0
    """Seconds it waited for a worker to come."""

    def trace(self, endpoint: Endpoint, upstream: httpx.Response, sent: float) -> dict[str, str]:
        """The trace headers of the answer `endpoint` gave: which worker, how long it waited."""
        in_queen = max(0.0, sent - self.arrived - self.load_wait)
        queued = round(in_queen * 1000) + _queued_ms(upstream)
        headers = {
            "X-Rbee-Worker": endpoint.id,
            "X-Rbee-Hive": endpoint.hive,
            "X-Rbee-Queued-Ms": str(queued),
        }
        if self.load_wait > 0:
            headers["X-Rbee-Load-Ms"] = str(round(self.load_wait * 1000))
        return headers


def _queued_ms(upstream: httpx.Response) -> int:
    """How long the worker says the request waited in its queue."""
    try:
        return max(0, int(upstream.headers.get(QUEUED_HEADER, "0")))
    except ValueError:
        return 0


def _learn_pace(endpoint: Endpoint, took: float, upstream: httpx.Response) -> None:
    """Fold one request's time on `endpoint` (its queueing excluded) into its moving average."""
    service = max(0.0, took - _queued_ms(upstream) / 1000)
    mean = endpoint.service_time
    endpoint.service_time = service if not mean else 0.8 * mean + 0.2 * service


def _overloaded(model: str, full: list[Endpoint]) -> OverloadedError:
    """The 503 for a model whose every ready worker holds all it takes. Retry-After is when the
    next place frees up at the pace they drain (one request per service time per worker)."""
    held = sum(e.outstanding for e in full)
    pace = sum(e.service_time or 1.0 for e in full) / len(full)
    retry_after = min(60.0, max(1.0, pace / len(full)))
    takes = ", ".join(sorted({str(e.capacity) for e in full}))
    return OverloadedError(
        f"every worker of {model!r} is full: {len(full)} worker(s) hold {held} request(s) "
        f"(each takes {takes}: one generating, the rest queued); retry in "
        f"{math.ceil(retry_after)}s",
        retry_after=retry_after,
    )


class _TokenCounter:
    """Passes a stream's chunks on, counting its SSE events (about one per token), in its
    worker's count as well while they pass."""

    def __init__(self, chunks: AsyncIterator[bytes], endpoint: Endpoint) -> None:
        self._chunks = chunks
        self._endpoint = endpoint
        self.events = 0

    def __aiter__(self) -> _TokenCounter:
        return self

    async def __anext__(self) -> bytes:
        chunk = await anext(self._chunks)
        events = chunk.count(b"\n\n")
        self.events += events
        self._endpoint.tokens_out += events
        return chunk


async def _opening(chunks: AsyncIterator[bytes], events: int) -> bytes:
    """The bytes of a stream's first `events` SSE events (fewer if it ends first)."""
    got = b""
    async for chunk in chunks:
        got += chunk
        if got.count(b"\n\n") >= events:
            break
    return got
