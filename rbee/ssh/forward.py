"""A local TCP port whose connections reach a port on a hive, each through its own SSH channel.

asyncssh's `forward_local_port` opens a channel for every accepted connection at once; this one
asks its connection for a channel slot first (`HiveConnection.forward`), so a burst of relayed
requests waits for a free slot instead of taking every channel the connection has. While it waits,
the accepted socket just holds the request bytes the client sent. The bytes are copied as they
come, both ways; an end of data from the client is passed on (HTTP clients may half-close and still
read the answer), and the connection is closed, its slot freed, once the hive's side has ended or
either side fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncssh

from rbee.net import bind_tcp

__all__ = ["PortForward", "Stream"]

log = logging.getLogger(__name__)

Stream = tuple["asyncssh.SSHReader[bytes]", "asyncssh.SSHWriter[bytes]"]
"""The two ends of an open SSH channel to the forwarded port."""

_CHUNK = 64 * 1024


class PortForward:
    """A listening port on 127.0.0.1; `tunnel()` opens the channel for each accepted connection."""

    def __init__(
        self, name: str, tunnel: Callable[[], AbstractAsyncContextManager[Stream]]
    ) -> None:
        self.name = name
        self._tunnel = tunnel
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.port = 0

    @classmethod
    async def start(
        cls, name: str, tunnel: Callable[[], AbstractAsyncContextManager[Stream]]
    ) -> PortForward:
        """Listen on a free port of 127.0.0.1 and forward what connects to it."""
        forward = cls(name, tunnel)
        # bind_tcp sets TCP_NODELAY: relayed tokens are small writes.
        sock = bind_tcp("127.0.0.1", 0)
        forward._server = await asyncio.start_server(forward._serve, sock=sock)
        forward.port = sock.getsockname()[1]
        return forward

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Accepted connections not yet closed (including those waiting for a channel)."""
        return len(self._tasks)

    def close(self) -> None:
        """Stop listening and drop every connection still open."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with self._tunnel() as (remote_reader, remote_writer):
                await self._pipe(reader, writer, remote_reader, remote_writer)
        except (OSError, asyncssh.Error) as err:
            log.debug("%s: cannot open a channel for a forwarded connection: %s", self.name, err)
        except asyncio.CancelledError:
            # close() dropped this connection. asyncio's stream server (3.11) logs the handler
            # task's exception, a cancellation included, as an error: end quietly instead.
            if not self._closed:
                raise
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        remote_reader: asyncssh.SSHReader[bytes],
        remote_writer: asyncssh.SSHWriter[bytes],
    ) -> None:
        """Copy both ways until the hive's side ends (a server that stops sending is done with the
        connection, and its slot must not wait for an idle client), or either side fails."""
        up = asyncio.create_task(_copy(reader, remote_writer))
        down = asyncio.create_task(_copy(remote_reader, writer))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if not down.done() and not up.cancelled() and up.exception() is None:
                await asyncio.wait({down})  # the client has sent all it will: the answer follows
        finally:
            up.cancel()
            down.cancel()
            ended = await asyncio.gather(up, down, return_exceptions=True)
        for result in ended:
            if isinstance(result, Exception):
                log.debug("%s: forwarded connection ended: %s", self.name, result)


async def _copy(
    reader: asyncio.StreamReader | asyncssh.SSHReader[bytes],
    writer: asyncio.StreamWriter | asyncssh.SSHWriter[bytes],
) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
