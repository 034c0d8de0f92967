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
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from rbee.api import sse
from rbee.api.disconnect import wait_disconnect
from rbee.api.http import ClosingStreamingResponse
from rbee.config.settings import Timeouts
from rbee.errors import ApiError, ClientGoneError
from rbee.queen.registry import Endpoint, Registry
from rbee.ssh.connection import MAX_FORWARDED

__all__ = ["RELAYED_PER_HIVE", "Relay", "RelayResponse", "Unavailable"]

RELAYED_PER_HIVE = MAX_FORWARDED - 1

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


Availability = Callable[[str, bool], Unavailable | None]
"""(model, embeddings) → why it cannot be served now; None: it is not wanted anywhere."""


class RelayResponse(ClosingStreamingResponse):
    """A streamed upstream answer; whatever happens, the upstream is closed and released after.

    It starts with `opening`, the events read before the answer was handed over (up to the first
    generated token), then relays the rest of `chunks` as they come. `cut` ends it from outside
    at the next chunk (a stream that is generating gets one every token), with an error event and
    `[DONE]`; `abort` also closes the upstream, for a stream that receives nothing any more.
    """

    def __init__(
        self,
        upstream: httpx.Response,
        release: Callable[[], Awaitable[None]],
        *,
        chunks: AsyncIterator[bytes],
        opening: bytes,
        worker: str,
        streams: set[RelayResponse],
    ) -> None:
        self._upstream = upstream
        self._chunks = chunks
        self._opening = opening
        self._release = release
        self._worker = worker
        self._streams = streams
        self._cut: str | None = None
        streams.add(self)
        super().__init__(self._body(), media_type="text/event-stream", headers=_SSE_HEADERS)

    def cut(self, why: str) -> None:
        """End the stream at its next chunk: an error event saying `why`, then `[DONE]`."""
        self._cut = why

    async def abort(self) -> None:
        """Close the upstream, so a stream waiting for a chunk ends now (as cut)."""
        await self._upstream.aclose()

    async def _body(self) -> AsyncIterator[bytes]:
        try:
            if self._opening:
                yield self._opening
            async for chunk in self._chunks:
                if self._cut is not None:
                    break
                yield chunk
            else:
                return
        except (httpx.HTTPError, RuntimeError) as err:
            # RuntimeError: httpx's answer to reading a stream that abort() closed.
            if self._cut is None:
                log.warning("stream from worker %s broke: %r", self._worker, err)
                message = f"the stream from worker {self._worker} broke: {err!r}"
                yield sse.encode(ApiError(502, message, type="server_error").body())
                yield sse.DONE
                return
        message = f"the stream from worker {self._worker} was ended: {self._cut}"
        yield sse.encode(ApiError(502, message, type="server_error").body())
        yield sse.DONE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._streams.discard(self)
            await self._release()


class Relay:
    """Sends requests to workers picked from the registry."""

    def __init__(
        self,
        registry: Registry,
        timeouts: Timeouts,
        *,
        availability: Availability | None = None,
    ) -> None:
        self.registry = registry
        self.timeouts = timeouts
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
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            trust_env=False,
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
            )
            self._hive_clients[endpoint.hive] = client
        return client

    # -- stopping ------------------------------------------------------------------------------

    def _begin(self) -> None:
        self._inflight += 1
        self._idle.clear()

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
    ) -> Response:
        """POST `raw` to `path` on a worker serving `model` (for embeddings, if asked); relay."""
        if self.closing:
            raise ApiError(503, "the queen is shutting down", type="server_error",
                           code="shutting_down", retry_after=5)  # fmt: skip
        self._begin()
        handed_over = False
        try:
            response = await self._forward(
                request, model, path, raw, stream=stream, embeddings=embeddings
            )
            handed_over = isinstance(response, RelayResponse)
            return response
        finally:
            if not handed_over:
                self._end()

    async def _forward(
        self,
        request: Request,
        model: str,
        path: str,
        raw: bytes,
        *,
        stream: bool,
        embeddings: bool,
    ) -> Response:
        deadline = time.monotonic() + self.timeouts.first_byte
        tried: set[str] = set()
        failed: Response | None = None
        while True:
            endpoint = self.registry.choose(model, tried, embeddings=embeddings)
            if endpoint is None:
                if failed is not None:
                    return failed  # every replica answered 5xx: the last one's answer
                await self._wait_for_worker(request, model, embeddings, deadline)
                continue
            tried.add(endpoint.attempt)
            answer = await self._try(request, endpoint, path, raw, stream)
            if answer is None:
                continue
            if answer.status_code >= 500 and not isinstance(answer, RelayResponse):
                log.warning("worker %s answered %d; trying another", endpoint.id,
                            answer.status_code)  # fmt: skip
                failed = answer
                continue
            return answer

    async def _wait_for_worker(
        self, request: Request, model: str, embeddings: bool, deadline: float
    ) -> None:
        """Wait for the next change of the fleet if a worker of `model` is coming (within the
        deadline); else raise the 503 saying why none serves."""
        why = self._availability(model, embeddings) if self._availability else None
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
        left = deadline - time.monotonic()
        if not why.coming or left <= 0:
            raise why.error
        try:
            await self._unless_cut(request, self.registry.wait_changed(min(left, 1.0)))
        except ClientGoneError:
            raise ApiError(499, "the client went away while waiting for a worker") from None

    async def _try(
        self, request: Request, endpoint: Endpoint, path: str, raw: bytes, stream: bool
    ) -> Response | None:
        """One attempt on `endpoint`: its answer, or None when it failed before answering.

        The attempt counts in `endpoint.outstanding` until it ends here, or, for a stream handed
        over, until the RelayResponse releases it.
        """
        client = self._client_for(endpoint)
        endpoint.outstanding += 1
        endpoint.dispatched += 1
        handed_over = False
        upstream_request = client.build_request(
            "POST",
            endpoint.url + path,
            content=raw,
            headers={"content-type": "application/json"},
            timeout=httpx.USE_CLIENT_DEFAULT if stream else self._whole_answer_timeout(),
        )
        try:
            try:
                if stream:  # a worker answers a stream's headers at once
                    upstream = await client.send(upstream_request, stream=True)
                else:  # a whole answer arrives when generation ends: watch the client meanwhile
                    upstream = await self._unless_cut(request, client.send(upstream_request))
            except _RETRYABLE as err:
                log.warning("worker %s failed before answering (%r); trying another",
                            endpoint.id, err)  # fmt: skip
                return None
            except ClientGoneError:
                return Response(status_code=499)
            if stream and upstream.status_code == 200:
                answer = await self._open_stream(request, endpoint, upstream, path)
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
            return Response(
                body,
                status_code=upstream.status_code,
                media_type=upstream.headers.get("content-type"),
            )
        except httpx.HTTPError as err:
            raise ApiError(
                502, f"worker {endpoint.id} failed: {err!r}", type="server_error"
            ) from err
        finally:
            if not handed_over:
                endpoint.outstanding -= 1

    async def _open_stream(
        self, request: Request, endpoint: Endpoint, upstream: httpx.Response, path: str
    ) -> Response | None:
        """Hand a stream over once its first generated token came; None if the worker died
        before that (the worker's queue, the prompt's prefill): the request may go elsewhere."""
        chunks = upstream.aiter_raw()
        events = 2 if path.endswith("/chat/completions") else 1  # chat: the role chunk first
        try:
            opening = await self._unless_cut(request, _opening(chunks, events))
        except _RETRYABLE as err:
            log.warning("worker %s failed before its first token (%r); trying another",
                        endpoint.id, err)  # fmt: skip
            await upstream.aclose()
            return None
        except ClientGoneError:
            await upstream.aclose()
            return Response(status_code=499)
        except BaseException:
            await upstream.aclose()
            raise

        async def release() -> None:
            try:
                await upstream.aclose()
            finally:
                endpoint.outstanding -= 1
                self._end()

        return RelayResponse(
            upstream,
            release,
            chunks=chunks,
            opening=opening,
            worker=endpoint.id,
            streams=self._streams,
        )

    def _whole_answer_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeouts.generation, connect=self.timeouts.connect)


async def _opening(chunks: AsyncIterator[bytes], events: int) -> bytes:
    """The bytes of a stream's first `events` SSE events (fewer if it ends first)."""
    got = b""
    async for chunk in chunks:
        got += chunk
        if got.count(b"\n\n") >= events:
            break
    return got
