"""Listening sockets and uvicorn wiring shared by every role's daemon."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import signal
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from types import FrameType
from typing import Any, TypeVar

import uvicorn
from starlette.types import ASGIApp

from rbee.errors import ConfigError, PortInUseError

__all__ = [
    "Server",
    "bind_tcp",
    "is_loopback",
    "plain_http_only",
    "run_event_loop",
    "uvicorn_server",
]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def plain_http_only() -> ssl.SSLContext:
    """The `verify=` for an httpx client that only speaks plain HTTP (to a worker or hive on
    loopback, or through an SSH forward).

    httpx's default loads the CA bundle for every client, 60-70 ms of blocked event loop, paid
    right when a worker becomes ready or a hive's first request goes out. This context trusts no
    CA at all, so a TLS connection through it fails rather than going unverified.
    """
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one); PortInUseError if taken."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0-65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(f"cannot resolve listen address {host!r}: {err}") from err
    family, _, proto, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Streamed tokens are small writes: with Nagle's algorithm on, each waits for the
        # client's delayed ACK (~40 ms). Accepted sockets inherit this on Linux, and asyncio only
        # sets it itself for sockets created with IPPROTO_TCP.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.set_inheritable(False)
    return sock


class Server(uvicorn.Server):
    """uvicorn's server, except that a SIGINT, SIGTERM or SIGHUP that stops it is not re-raised.

    uvicorn re-raises the signal once `serve()` returns, which would kill the process before the
    code after `serve()` (stopping workers TERM then KILL) could run. `signal_received` tells the
    caller which signal stopped the server, if any.
    """

    signal_received: int | None = None
    before_shutdown: Callable[[], Awaitable[None]] | None = None
    """Run once new connections are refused and before uvicorn's own graceful shutdown (the
    queen drains its streams here, ending them with an error event instead of a cut)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.before_shutdown is not None:
            for server in self.servers:
                server.close()
            await self.before_shutdown()
        await super().shutdown(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(sig: int, frame: FrameType | None) -> None:
            self.signal_received = sig
            self.handle_exit(sig, frame)

        # SIGHUP too: a hive started over SSH with a PTY gets it when the connection drops.
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, handle) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def uvicorn_server(app: ASGIApp, *, graceful: float, lifespan: str = "off") -> Server:
    """A quiet uvicorn server for `app` (rbee logs what matters itself)."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(max(1, graceful)),
        timeout_keep_alive=30,
        server_header=False,
    )
    return Server(config)


T = TypeVar("T")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a daemon's top coroutine, on uvloop where it is installed (less CPU per request)."""
    try:
        import uvloop  # noqa: PLC0415 - optional: absent on Windows
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
