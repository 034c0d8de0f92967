"""Forwarding OpenAI requests from the queen to a worker, streaming answers token by token.

The queen has parsed and checked the request already; it forwards the client's bytes as they came,
and relays the worker's SSE bytes as they come, without re-encoding them. A worker that cannot be
reached before anything was sent is skipped for the next replica; a stream that breaks after it
started ends with an error event. When the client goes away, the upstream connection is closed,
which the worker sees as its own client going away: generation stops there too.

Workers on another machine are reached through SSH port forwards, and a hive's connection has
only so many channels (`rbee.ssh.connection.MAX_FORWARDED` for forwarded connections). So each
such hive gets its own connection pool, `RELAYED_PER_HIVE` connections at most: a request over
that waits in the queen, in arrival order, and a connection kept alive to one worker is closed to
make room for a request to another. One forwarded slot stays free for the queen's own calls to
the hive (spawn, list, stop).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from rbee.api import sse
from rbee.api.disconnect import ClientGoneError, until_disconnect
from rbee.api.http import ClosingStreamingResponse
from rbee.config.settings import Timeouts
from rbee.errors import ApiError
from rbee.queen.registry import Endpoint, Registry
from rbee.ssh.connection import MAX_FORWARDED

__all__ = ["RELAYED_PER_HIVE", "Relay", "RelayResponse"]

RELAYED_PER_HIVE = MAX_FORWARDED - 1

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class RelayResponse(ClosingStreamingResponse):
    """A streamed upstream answer; whatever happens, the upstream is closed and released after."""

    def __init__(
        self, upstream: httpx.Response, release: Callable[[], Awaitable[None]], worker: str
    ) -> None:
        self._upstream = upstream
        self._release = release
        self._worker = worker
        super().__init__(self._body(), media_type="text/event-stream", headers=_SSE_HEADERS)

    async def _body(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as err:
            log.warning("stream from worker %s broke: %r", self._worker, err)
            message = f"the stream from worker {self._worker} broke: {err!r}"
            yield sse.encode(ApiError(502, message, type="server_error").body())
            yield sse.DONE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release()


class Relay:
    """Sends requests to workers picked from the registry."""

    def __init__(self, registry: Registry, timeouts: Timeouts) -> None:
        self.registry = registry
        self.timeouts = timeouts
        self._client: httpx.AsyncClient | None = None
        self._hive_clients: dict[str, httpx.AsyncClient] = {}

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
        tried: set[str] = set()
        while (endpoint := self.registry.choose(model, tried, embeddings=embeddings)) is not None:
            tried.add(endpoint.id)
            client = self._client_for(endpoint)
            endpoint.outstanding += 1
            endpoint.dispatched += 1
            released = False

            async def release(endpoint: Endpoint = endpoint) -> None:
                nonlocal released
                if not released:
                    released = True
                    endpoint.outstanding -= 1

            upstream_request = client.build_request(
                "POST",
                endpoint.url + path,
                content=raw,
                headers={"content-type": "application/json"},
                timeout=httpx.USE_CLIENT_DEFAULT if stream else self._whole_answer_timeout(),
            )
            try:
                if stream:
                    upstream = await client.send(upstream_request, stream=True)
                else:
                    # A whole answer arrives only when generation ends: watch the client meanwhile.
                    upstream = await until_disconnect(request, client.send(upstream_request))
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as err:
                # Nothing came back: the worker (or the SSH forward to it) is gone. Generation and
                # embedding have no side effects, so the request may go to another replica.
                await release()
                log.warning("worker %s unreachable (%r); trying another", endpoint.id, err)
                continue
            except ClientGoneError:
                await release()
                return Response(status_code=499)
            except httpx.HTTPError as err:
                await release()
                raise ApiError(
                    502, f"worker {endpoint.id} failed: {err!r}", type="server_error"
                ) from err
            if stream and upstream.status_code == 200:
                return RelayResponse(upstream, _closer(upstream, release), endpoint.id)
            try:
                body = await upstream.aread()
            except httpx.HTTPError as err:
                raise ApiError(
                    502, f"worker {endpoint.id} failed: {err!r}", type="server_error"
                ) from err
            finally:
                await upstream.aclose()
                await release()
            return Response(
                body,
                status_code=upstream.status_code,
                media_type=upstream.headers.get("content-type"),
            )
        raise ApiError(
            503,
            f"no worker serving {model!r} could be reached (tried {', '.join(sorted(tried))})",
            type="server_error",
            code="worker_unavailable",
        )

    def _whole_answer_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeouts.generation, connect=self.timeouts.connect)


def _closer(
    upstream: httpx.Response, release: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        try:
            await upstream.aclose()
        finally:
            await release()

    return close
