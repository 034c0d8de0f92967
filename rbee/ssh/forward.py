"""A local TCP port whose connections reach a port on a hive, each through its own SSH channel.

asyncssh's `forward_local_port` opens a channel for every accepted connection at once; this one
takes a channel slot from its connection first (`HiveConnection.forward`), so a burst of
connections waits for a free slot instead of taking every channel the connection has. While one
waits, what the client sends is kept (reading pauses past `_PENDING_LIMIT`).

Once the channel is open the bytes move in the protocols' callbacks, both ways, with each side's
flow control passed to the other (a slow reader pauses the writer); no task wakes per chunk. An end
of data from the client is passed on (an HTTP client may half-close and still read the answer);
when the hive's side ends, the local connection is closed once its buffer is flushed: a server that
stops sending is done with the connection, and the slot must not wait for an idle client. The slot
is given back when the channel has closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import cast

import asyncssh

from rbee.net import bind_tcp

__all__ = ["OpenChannel", "PortForward"]

log = logging.getLogger(__name__)

OpenChannel = Callable[
    [Callable[[], asyncssh.SSHTCPSession[bytes]]],
    Awaitable[tuple[asyncssh.SSHTCPChannel[bytes], asyncssh.SSHTCPSession[bytes]]],
]
"""Opens a direct-tcpip channel to the forwarded port with the session the factory makes."""

_PENDING_LIMIT = 256 * 1024


class PortForward:
    """A listening port on 127.0.0.1 forwarding each connection through a channel of its own."""

    def __init__(
        self,
        name: str,
        slot: Callable[[], AbstractAsyncContextManager[None]],
        open_channel: OpenChannel,
    ) -> None:
        self.name = name
        self._slot = slot
        self._open_channel = open_channel
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self.port = 0

    @classmethod
    async def start(
        cls,
        name: str,
        slot: Callable[[], AbstractAsyncContextManager[None]],
        open_channel: OpenChannel,
    ) -> PortForward:
        """Listen on a free port of 127.0.0.1; each connection holds `slot()` while it is open."""
        forward = cls(name, slot, open_channel)
        sock = bind_tcp("127.0.0.1", 0)  # TCP_NODELAY: relayed tokens are small writes
        loop = asyncio.get_running_loop()
        forward._server = await loop.create_server(lambda: _Link(forward), sock=sock)
        forward.port = sock.getsockname()[1]
        return forward

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Accepted connections not yet closed (including those waiting for a channel)."""
        return len(self._links)

    def close(self) -> None:
        """Stop listening and drop every connection still open."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()


class _Link(asyncio.Protocol):
    """One accepted connection and, once a slot is free, its channel to the hive."""

    def __init__(self, forward: PortForward) -> None:
        self._forward = forward
        self._local: asyncio.Transport | None = None
        self._channel: asyncssh.SSHTCPChannel[bytes] | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._client_eof = False
        self._task: asyncio.Task[None] | None = None
        self._channel_closed = asyncio.get_running_loop().create_future()

    # -- the local side (asyncio calls these) ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's, in the queen, is not a subclass of asyncio.Transport).
        self._local = cast(asyncio.Transport, transport)
        self._forward._links.add(self)
        self._task = asyncio.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self._channel is not None:
            self._send(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > _PENDING_LIMIT and self._local is not None:
            self._local.pause_reading()

    def eof_received(self) -> bool:
        self._client_eof = True
        if self._channel is not None:
            self._send(None)
        return True  # keep the connection open: the answer may still come

    def connection_lost(self, exc: Exception | None) -> None:
        self._local = None
        self._forward._links.discard(self)
        if self._channel is not None:
            self._channel.close()
        elif self._task is not None:
            self._task.cancel()  # still waiting for a slot or for the channel to open

    def pause_writing(self) -> None:
        if self._channel is not None:
            self._channel.pause_reading()

    def resume_writing(self) -> None:
        if self._channel is not None:
            self._channel.resume_reading()

    # -- the channel's side ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with self._forward._slot():
                if self._local is None:
                    return  # the client left while waiting
                channel, _ = await self._forward._open_channel(lambda: _Remote(self))
                self._attach(channel)
                await self._channel_closed
        except (OSError, asyncssh.Error) as err:
            log.debug("%s: no channel for a forwarded connection: %s", self._forward.name, err)
            self.abort()
        except asyncio.CancelledError:
            self.abort()  # a cancelled handler task must not be logged by asyncio as an error

    def _attach(self, channel: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._channel = channel
        if self._local is None:  # the client left while the channel opened
            channel.close()
            return
        pending, self._pending = self._pending, []
        for data in pending:
            self._send(data)
        if self._client_eof:
            self._send(None)
        if self._pending_bytes > _PENDING_LIMIT:
            self.pause_local(False)
        self._pending_bytes = 0

    def _send(self, data: bytes | None) -> None:
        """Send `data` to the hive, or the end of data for None."""
        assert self._channel is not None
        try:
            if data is None:
                self._channel.write_eof()
            else:
                self._channel.write(data)
        except (OSError, asyncssh.Error):  # the channel is closing: the link ends with it
            self.abort()

    def to_client(self, data: bytes) -> None:
        if self._local is not None and not self._local.is_closing():
            self._local.write(data)

    def hive_done(self) -> None:
        """The hive's side sent its last byte: close once what it sent has reached the client."""
        if self._local is not None:
            self._local.close()

    def channel_closed(self) -> None:
        if not self._channel_closed.done():
            self._channel_closed.set_result(None)
        self.hive_done()

    def pause_local(self, pause: bool) -> None:
        if self._local is not None and not self._local.is_closing():
            with contextlib.suppress(RuntimeError):  # already paused or resumed
                (self._local.pause_reading if pause else self._local.resume_reading)()

    def abort(self) -> None:
        """Drop the link now (the forward closes, or its channel could not open)."""
        if self._local is not None:
            self._local.abort()
        if self._channel is not None:
            self._channel.close()
        if not self._channel_closed.done():
            self._channel_closed.set_result(None)


class _Remote(asyncssh.SSHTCPSession[bytes]):
    """The channel's end: hands what the hive sends to the link."""

    def __init__(self, link: _Link) -> None:
        self._link = link

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self._link.to_client(data)

    def eof_received(self) -> bool:
        self._link.hive_done()
        return False  # let asyncssh close the channel

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.channel_closed()

    def pause_writing(self) -> None:
        self._link.pause_local(True)

    def resume_writing(self) -> None:
        self._link.pause_local(False)
