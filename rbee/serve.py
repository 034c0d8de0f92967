"""The HTTP servers of every role's daemon: uvicorn, quiet, stopped on a signal without dying of
it, on uvloop where there is one. Apart from rbee.net so that commands that only speak SSH or
HTTP as clients (a sweep, `hive status`) do not import uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from types import FrameType
from typing import Any, TypeVar

import uvicorn
from starlette.types import ASGIApp

__all__ = ["Server", "run_event_loop", "uvicorn_server"]


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
