"""`rbee hive run`: a hive on its machine, serving its HTTP app on loopback.

The queen starts it over SSH as `exec rbee hive run …` with a PTY, and writes a heartbeat line on
its stdin every few seconds. The hive stops (its workers first, TERM then KILL) when any of these
happens: SIGHUP (the PTY hung up: the SSH connection closed), EOF on stdin (the channel closed),
no heartbeat within the lease (the network went silent, which sshd may not notice for minutes),
SIGTERM or SIGINT. Once its port is open it prints one JSON line, `{"event": "ready", "port": N,
"pid": P, "token": SECRET}`, on stdout (SECRET: what its API and its workers ask of every caller,
rbee.api.hop), and then one line `{"event": "worker", "worker": {...}}` whenever a worker's state
changes (started, ready, crashed, restarting, crash-loop, stopped).

The lease is a promise: everything the hive started is gone within LEASE seconds of the last
heartbeat. So the hive starts stopping `STOP_BUDGET` seconds before the lease ends, and on a lapsed
lease or stdin EOF (the queen is gone, and nobody waits for an answer) it gives its workers and
its own open connections, which a dead link keeps open, only `HURRIED_GRACE` seconds; on SIGHUP
(the PTY hung up) its workers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

from rbee.api.workers import WorkerInfo
from rbee.config.hive_keys import DEFAULT_HIVE_PORT
from rbee.config.settings import Paths, Timeouts
from rbee.hive.app import create_app
from rbee.hive.service import HiveService
from rbee.net import bind_tcp
from rbee.serve import Server, run_event_loop, uvicorn_server

__all__ = ["HiveOptions", "run_hive"]

log = logging.getLogger(__name__)

STOP_BUDGET = 1.5
HURRIED_GRACE = 0.5


@dataclass(frozen=True)
class HiveOptions:
    """What `rbee hive run` was asked to do."""

    name: str = "localhost"
    port: int = DEFAULT_HIVE_PORT
    lease: float = 0.0
    """The hive is gone within this many seconds of the last heartbeat line on stdin; 0: no
    lease."""
    standby: bool = False
    """Keep a standby worker process (rbee.worker.standby)."""


def run_hive(paths: Paths, options: HiveOptions, timeouts: Timeouts = Timeouts()) -> int:
    """Run a hive in this process until it is told to stop; return the exit code."""
    sock = bind_tcp("127.0.0.1", options.port)
    try:
        return run_event_loop(_serve(paths, options, timeouts, sock))
    finally:
        sock.close()


async def _serve(
    paths: Paths, options: HiveOptions, timeouts: Timeouts, sock: socket.socket
) -> int:
    def report(info: WorkerInfo) -> None:
        # The queen reads these lines on the SSH session it holds: it knows of a crash at once.
        _say({"event": "worker", "worker": info.to_json(options.name)})

    async with HiveService(
        paths, timeouts, name=options.name, on_change=report, standby=options.standby
    ) as hive:
        server = uvicorn_server(create_app(hive), graceful=timeouts.stop_grace)
        async with asyncio.TaskGroup() as tg:
            side_tasks = [tg.create_task(_announce_ready(server, sock, hive.token))]
            if options.lease > 0:
                side_tasks.append(tg.create_task(_hold_lease(server, hive, options.lease)))
            await server.serve(sockets=[sock])
            for task in side_tasks:
                task.cancel()
        if server.signal_received == signal.SIGHUP:  # the PTY hung up: the queen is gone too
            hive.supervisor.hurry(HURRIED_GRACE)
        log.info("hive stopping; stopping %d worker(s)", len(hive.workers()))
    return 0


async def _announce_ready(server: Server, sock: socket.socket, token: str) -> None:
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for "started"
        await asyncio.sleep(0.005)
    port = sock.getsockname()[1]
    # The hop secret goes to the queen on the SSH session it holds, and nowhere else.
    _say({"event": "ready", "port": port, "pid": os.getpid(), "token": token})
    log.info("hive serving on 127.0.0.1:%d", port)


def _say(event: dict[str, object]) -> None:
    """One JSON line on stdout, for the queen: one write(2) straight to the fd, so no log line
    splits it and nothing is left buffered when the PTY is gone (a failed flush at exit would
    make the exit status 120)."""
    line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    with contextlib.suppress(OSError):
        os.write(sys.stdout.fileno(), line)


async def _hold_lease(server: Server, hive: HiveService, lease: float) -> None:
    """Stop, in a hurry, on stdin EOF or when no line arrives within the lease (less the time
    stopping takes)."""
    wait = lease - STOP_BUDGET if lease > 2 * STOP_BUDGET else lease / 2
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(0), "rb", 0)
    )
    try:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), wait)
            except TimeoutError:
                log.warning("no heartbeat for %.1fs: the queen is unreachable; stopping before "
                            "the %gs lease ends", wait, lease)  # fmt: skip
                break
            if not line:
                log.warning("stdin closed: the queen is gone; stopping")
                break
    finally:
        transport.close()
    hive.supervisor.hurry(HURRIED_GRACE)
    server.config.timeout_graceful_shutdown = HURRIED_GRACE  # type: ignore[assignment]
    server.should_exit = True
