"""Running the queen: in the foreground (`rbee up`, `rbee queen run`) or as a daemon.

The foreground queen binds its port first (so "port in use" is said before any model loads), then
enters the Queen (local hive, workers), then serves. SIGINT/SIGTERM stop the server: new requests
get 503, those in flight get the grace period to finish, and streams still open then end with an
error event and `[DONE]`; leaving the Queen stops every worker, TERM then KILL. The daemon is the
same process started detached, with `run/queen.json` ({"pid", "url"}) as its pid file and
`logs/queen.log` as its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from rbee.config.keys import keys_path, load_keys
from rbee.config.limits import Limits
from rbee.config.settings import Paths, Timeouts
from rbee.errors import ConfigError, QueenError, QueenNotRunningError
from rbee.fsutil import atomic_write_text, open_private_log
from rbee.net import bind_tcp, is_loopback
from rbee.proc import pid_alive
from rbee.queen.app import create_app
from rbee.queen.record import QueenRecord, read_record, record_path
from rbee.queen.service import Queen, QueenOptions
from rbee.serve import run_event_loop, uvicorn_server

__all__ = [
    "QueenRecord",
    "limit_flags",
    "read_record",
    "run_queen",
    "start_daemon",
    "stop_daemon",
]

log = logging.getLogger(__name__)

_LOG_TAIL = 1500


def check_exposure(options: QueenOptions, paths: Paths) -> None:
    """Refuse to listen off loopback without an API key (the flag's, or one in the keys file);
    a keys file the queen could not use stops it here, with the file and entry named."""
    keys = load_keys(keys_path(paths))
    if not is_loopback(options.host) and not options.api_key and not keys.entries:
        raise ConfigError(
            f"listening on {options.host} exposes the queen beyond this machine: set an API key "
            "with --api-key or RBEE_API_KEY, or add one with `rbee key add NAME`"
        )


def run_queen(
    paths: Paths,
    options: QueenOptions,
    timeouts: Timeouts = Timeouts(),
    *,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Run the queen in this process until SIGINT/SIGTERM; return the exit code."""
    check_exposure(options, paths)
    sock = bind_tcp(options.host, options.port)
    port = sock.getsockname()[1]
    display_host = f"[{options.host}]" if ":" in options.host else options.host
    url = f"http://{display_host}:{port}"
    state = record_path(paths)
    try:
        return run_event_loop(
            _serve(paths, options, timeouts=timeouts, sock=sock, url=url, on_ready=on_ready)
        )
    finally:
        sock.close()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state.read_text()).get("pid") == os.getpid():
                state.unlink()


async def _serve(
    paths: Paths,
    options: QueenOptions,
    *,
    timeouts: Timeouts,
    sock: socket.socket,
    url: str,
    on_ready: Callable[[str], None] | None,
) -> int:
    async with Queen(paths, options, timeouts) as queen:
        server = uvicorn_server(create_app(queen), graceful=timeouts.stop_grace)

        async def drain() -> None:
            await queen.relay.drain(timeouts.stop_grace)

        server.before_shutdown = drain
        async with asyncio.TaskGroup() as tg:
            ready = tg.create_task(
                _when_started(server, paths, options=options, url=url, on_ready=on_ready)
            )
            await server.serve(sockets=[sock])
            ready.cancel()
        log.info("queen stopping (signal %s); stopping workers", server.signal_received)
    return 0


async def _when_started(
    server: Any,
    paths: Paths,
    *,
    options: QueenOptions,
    url: str,
    on_ready: Callable[[str], None] | None,
) -> None:
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for "started"
        await asyncio.sleep(0.01)
    record = {
        "pid": os.getpid(),
        "url": url,
        "host": options.host,
        "port": int(url.rsplit(":", 1)[1]),
    }
    atomic_write_text(record_path(paths), json.dumps(record) + "\n")
    log.info("queen serving %s/v1", url)
    if on_ready is not None:
        on_ready(url)


def queen_run_argv(paths: Paths, options: QueenOptions) -> list[str]:
    """argv of the detached `rbee queen run` that `rbee queen start` launches."""
    argv = [
        sys.executable, "-m", "rbee",
        "--data-dir", str(paths.data_dir), "--config-dir", str(paths.config_dir),
        *(["--hives", str(options.hives_conf)] if options.hives_conf else []),
        "queen", "run", "--host", options.host, "--port", str(options.port),
    ]  # fmt: skip
    for spec in options.models:
        argv += ["--model", spec.model]
    return argv + limit_flags(options.limits)


def limit_flags(limits: Limits) -> list[str]:
    """The flags that give `rbee queen run` these limits (those of rbee.toml and RBEE_* come
    out the same; the flags given to `rbee queen start` are passed on this way)."""
    flags = [
        "--max-queued", str(limits.max_queued),
        "--max-queued-tokens", str(limits.max_queued_tokens),
        "--request-timeout", repr(limits.request_timeout),
        "--load-timeout", repr(limits.load_timeout),
        "--keepalive", repr(limits.keepalive),
        "--idle-ttl", repr(limits.idle_ttl),
    ]  # fmt: skip
    for origin in limits.cors_origins:
        flags += ["--cors-origin", origin]
    return flags if limits.autoload else [*flags, "--no-autoload"]


def _tail(path: Path) -> str:
    try:
        return path.read_bytes()[-_LOG_TAIL:].decode(errors="replace").strip()
    except OSError:
        return ""


def start_daemon(
    paths: Paths, options: QueenOptions, timeouts: Timeouts = Timeouts()
) -> QueenRecord:
    """Start `rbee queen run` detached and wait until it answers /health."""
    check_exposure(options, paths)
    running = read_record(paths)
    if running is not None:
        raise QueenError(f"a queen is already running (pid {running.pid}, {running.url})")
    # Say "port in use" now, not after the daemon has failed in the background.
    bind_tcp(options.host, options.port).close()
    log_path = paths.logs_dir / "queen.log"
    env = dict(os.environ)
    if options.api_key:
        env["RBEE_API_KEY"] = options.api_key
    with open_private_log(log_path) as log_file:
        proc = subprocess.Popen(
            queen_run_argv(paths, options),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    deadline = time.monotonic() + timeouts.daemon_start
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise QueenError(
                f"the queen exited with status {code} while starting; {log_path}: {_tail(log_path)}"
            )
        record = read_record(paths)
        if record is not None and record.pid == proc.pid and _healthy(record.url, timeouts):
            return record
        time.sleep(0.1)
    proc.kill()
    raise QueenError(
        f"the queen did not answer within {timeouts.daemon_start:.0f}s; {log_path}: "
        f"{_tail(log_path)}"
    )


def _healthy(url: str, timeouts: Timeouts) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=timeouts.connect, trust_env=False).is_success
    except httpx.HTTPError:
        return False


def _is_queen(pid: int) -> bool:
    # Guard against a recycled pid: only signal a process that is `rbee ... queen run`.
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return sys.platform != "linux" and pid_alive(pid)
    return b"rbee" in b" ".join(argv) and b"queen" in argv


def stop_daemon(paths: Paths, timeouts: Timeouts = Timeouts()) -> QueenRecord:
    """SIGTERM the daemon, wait while it stops its workers, SIGKILL it past the deadline."""
    record = read_record(paths)
    if record is None or not _is_queen(record.pid):
        raise QueenNotRunningError("the queen is not running")
    os.kill(record.pid, signal.SIGTERM)
    # The queen needs the workers' grace period plus its own graceful shutdown.
    deadline = time.monotonic() + 3 * timeouts.stop_grace + 5
    while pid_alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(record.pid):
        log.warning("queen %d did not stop in time; killing it", record.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        record_path(paths).unlink()
    return record
