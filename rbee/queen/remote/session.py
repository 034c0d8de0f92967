"""The queen's handle on a hive on another machine: its session and lease over one SSH connection.

`RemoteHive.run()` is the hive's whole life as the queen sees it, one long task in the fleet's
task group: connect, start `exec rbee hive run …` with a PTY, wait for its ready line, forward a
local port to its HTTP port, then write a heartbeat line every few seconds and read the hive's
lines: its log, and one JSON line per worker state change, so the queen knows of a crash there
at once. When the process or the connection ends, it reconnects with backoff (1 s doubling to
30 s) as long as the hive is wanted; the reconciler then starts the workers the desired state
wants there. Everything on the hive dies with the connection: the PTY hang-up (SIGHUP), stdin EOF
and the heartbeat lease each stop the hive, and its workers die with it.

A fault while handling one hive stays with that hive: an error nobody expected puts it in state
`error` (with the message, for /health and `rbee hive status`) and it is retried with the same
backoff; the queen and its other hives go on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import asyncssh
import httpx

from rbee.api.workers import WorkerInfo, WorkerSpec, parse_worker_info
from rbee.config.hives import Hive
from rbee.config.settings import Timeouts
from rbee.engines.select import Choice
from rbee.errors import ApiError, HiveUnavailableError, RbeeError, SshError
from rbee.models.store import ModelStore
from rbee.queen.remote.workers import OnChange, RemoteWorkers
from rbee.ssh.argv import remote_command
from rbee.ssh.connection import HiveConnection

__all__ = ["HiveState", "RemoteHive"]

log = logging.getLogger(__name__)

HiveState = Literal["stopped", "connecting", "running", "lost", "error"]
_OUTPUT_LINES = 500
"""The hive's last output lines kept (its log, which stays on its session: the dashboard's log
pane shows them)."""
_EXPECTED = (SshError, OSError, asyncssh.Error, httpx.HTTPError, ApiError)
"""What a network or a hive going away raises: the hive is `lost`, not in `error`."""


class RemoteHive:
    """One hive from hives.conf, started and supervised over SSH (a HiveHandle)."""

    def __init__(
        self,
        hive: Hive,
        config_path: Path,
        timeouts: Timeouts = Timeouts(),
        *,
        command: Sequence[str] | None = None,
        lease: float = 15.0,
        standby: bool = False,
        heartbeat: float = 3.0,
        on_change: OnChange | None = None,
        on_state: Callable[[str], None] | None = None,
        store: ModelStore | None = None,
        config_text: str | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.hive = hive
        self.name = hive.alias
        self._config = config_path
        self._config_text = config_text
        self._facts: dict[str, Any] | None = None
        self._timeouts = timeouts
        self._command = list(command) if command else None
        self._lease = lease
        self._standby = standby
        self._heartbeat = heartbeat
        self._on_state = on_state
        self._max_backoff = max_backoff
        self.remote = RemoteWorkers(hive, timeouts, store=store, on_change=on_change)
        self.state: HiveState = "stopped"
        self.last_error: str | None = None
        self.pid: int | None = None
        self._wanted = False
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._output: list[str] = []
        self._process: asyncssh.SSHClientProcess[str] | None = None
        self._ran = False
        """The current session reached `running` (a loss after that starts the backoff anew)."""
        self._conn: HiveConnection | None = None
        self._heard: float | None = None
        """When (time.monotonic()) a heartbeat last came back through the hive's PTY."""

    # -- what the queen asks (rbee.queen.reconcile.HiveHandle) ---------------------------------

    @property
    def available(self) -> bool:
        """True while the hive runs and the queen is connected to it."""
        return self.state == "running" and self.remote.attached

    def workers(self) -> list[WorkerInfo]:
        """The workers this hive reported, as last seen."""
        return self.remote.workers()

    def _require(self) -> RemoteWorkers:
        if not self.available:
            why = f": {self.last_error}" if self.last_error else ""
            raise HiveUnavailableError(f"{self.name}: the hive is {self.state}{why}")
        return self.remote

    async def place(self, spec: WorkerSpec) -> tuple[WorkerSpec, Choice]:
        """Engine, device and repacking for `spec` there."""
        return await self._require().place(spec)

    async def start(self, spec: WorkerSpec, worker_id: str) -> WorkerInfo:
        """Start a worker there (uploading the model if needed) and wait until it serves."""
        return await self._require().start(spec, worker_id)

    async def stop(self, worker_id: str) -> WorkerInfo:
        """Stop one worker there."""
        return await self._require().stop(worker_id)

    async def restart(self, worker_id: str) -> WorkerInfo:
        """Start one worker there again."""
        return await self._require().restart(worker_id)

    async def models(self) -> list[dict[str, Any]]:
        """The models in this hive's store, as the hive reports them."""
        return await self._require().models()

    async def health(self) -> dict[str, Any]:
        """The hive's /health now (facts read just now, its workers, its GPUs' processes)."""
        answer: dict[str, Any] = await self._require().http("GET", "/health")
        return answer

    async def worker_log(self, worker_id: str, lines: int) -> dict[str, Any]:
        """The last `lines` lines of one of its workers' logs, read by the hive."""
        answer: dict[str, Any] = await self._require().http(
            "GET", "/v1/logs", params={"worker": worker_id, "lines": lines}
        )
        return answer

    def output(self, lines: int) -> list[str]:
        """The last `lines` lines the hive wrote on its session since it last started (its own
        log: a remote hive logs to the SSH session, not to a file)."""
        return self._output[-lines:] if lines > 0 else []

    @property
    def lease_age(self) -> float | None:
        """Seconds since the hive's PTY echoed the queen's last heartbeat (the hive's lease runs
        from about then); None while no session has heard one."""
        return None if self._heard is None else time.monotonic() - self._heard

    @property
    def ssh_channels(self) -> int | None:
        """Channels in use on the SSH connection to the hive now; None while not connected."""
        return None if self._conn is None else self._conn.channels_in_use

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for the queen's API."""
        return {
            "name": self.name,
            "host": self.hive.hostname,
            "state": self.state,
            "pid": self.pid,
            "workers": len(self.remote.workers()),
            "last_error": self.last_error,
            "facts": self._facts,
        }

    async def wait_running(self, limit: float) -> None:
        """Wait until the hive serves; SshError with the last error if it does not in time."""
        try:
            async with asyncio.timeout(limit):
                await self._ready.wait()
        except TimeoutError:
            raise SshError(
                f"{self.name}: the hive did not start within {limit:.0f}s"
                + (f": {self.last_error}" if self.last_error else "")
            ) from None

    def request_stop(self) -> None:
        """Ask run() to stop the hive (closing the channel stops everything on it) and return."""
        self._wanted = False
        self._wake.set()
        if self._process is not None:
            self._process.close()

    # -- the life of the hive ------------------------------------------------------------------

    def _set_state(self, state: HiveState) -> None:
        if state != self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(self.name)

    async def run(self) -> None:
        """Keep the hive running until request_stop(); reconnect with backoff when it is lost."""
        self._wanted = True
        backoff = 1.0
        while self._wanted:
            self._set_state("connecting")
            failed: HiveState = "lost"
            self._ran = False
            try:
                async with HiveConnection(
                    self.name,
                    self._config,
                    connect_timeout=self._timeouts.connect * 2,
                    config_text=self._config_text,
                ) as conn:
                    await self._session(conn)
            except _EXPECTED as err:
                self.last_error = str(err) or repr(err)
                log.warning("%s: %s", self.name, self.last_error)
            except Exception as err:
                # A bug, or a hive answering what it should not: this hive only is affected.
                failed = "error"
                self.last_error = f"internal error: {err!r}"
                log.exception("%s: unexpected error; the hive is retried", self.name)
            finally:
                self._ready.clear()
                self._process = None
                self._conn = None
                self._heard = None
                await self.remote.detach()
            if not self._wanted:
                break
            if self._ran:  # it served before it ended: a new loss, not the same one again
                backoff = 1.0
            self._set_state(failed)
            log.info("%s: reconnecting in %.0fs", self.name, backoff)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            backoff = min(backoff * 2, self._max_backoff)
        self._set_state("stopped")

    async def _session(self, conn: HiveConnection) -> None:
        self._conn = conn
        argv = await self._hive_argv(conn)
        async with conn.channel():  # the hive's session holds one of the connection's slots
            process = await conn.open_session(
                lambda: conn.conn.create_process(
                    remote_command(argv), term_type="dumb", term_size=(200, 24), encoding="utf-8"
                )
            )
            self._process = process
            try:
                await self._serve(conn, process)
            finally:
                process.close()
        if self._wanted:
            tail = " | ".join(self._output[-3:])
            raise SshError(f"{self.name}: the hive process ended" + (f": {tail}" if tail else ""))

    async def _serve(self, conn: HiveConnection, process: asyncssh.SSHClientProcess[str]) -> None:
        """From the hive's ready line until its process ends: forward, track, heartbeat."""
        port, self.pid, token = await self._read_ready(process)
        forward = await conn.forward(port)
        self.remote.attach(conn, forward.url, token)
        try:
            self._facts = await self.remote.facts()
            async with asyncio.TaskGroup() as tg:
                beat = tg.create_task(self._beat(process))
                tg.create_task(self._read_lines(process))
                await self.remote.refresh()
                self.last_error = None
                self._ran = True
                self._set_state("running")
                self._ready.set()
                log.info("%s: hive running (pid %s)", self.name, self.pid)
                await process.wait_closed()
                beat.cancel()
        except ExceptionGroup as group:
            raise group.exceptions[0] from None
        finally:
            forward.close()

    async def _hive_argv(self, conn: HiveConnection) -> list[str]:
        command = self._command
        if command is None:
            install = await conn.resolve(self.hive.install_dir)
            command = [posixpath.join(install, "venv", "bin", "rbee")]
        argv = [*command, "hive", "run", "--port", str(self.hive.hive_port),
                "--lease", f"{self._lease:g}", "--name", self.name]  # fmt: skip
        return [*argv, "--standby"] if self._standby else argv

    async def _read_ready(
        self, process: asyncssh.SSHClientProcess[str]
    ) -> tuple[int, int, str | None]:
        """The hive's port, pid and hop secret, from its ready line."""
        self._output = []
        try:
            async with asyncio.timeout(self._timeouts.worker_ready):
                while True:
                    line = await process.stdout.readline()
                    if not line:
                        tail = " | ".join(self._output[-3:])
                        raise SshError(f"{self.name}: the hive exited before it was ready: {tail}")
                    event = self._event(line)
                    if event is None:
                        self._remember(line)
                    elif event.get("event") == "ready":
                        token = event.get("token")
                        if token is not None and not isinstance(token, str):
                            raise SshError(f"{self.name}: the hive sent a ready line with a "
                                           "hop secret that is not text")  # fmt: skip
                        return int(event["port"]), int(event["pid"]), token
        except TimeoutError:
            raise SshError(f"{self.name}: the hive was not ready in time: "
                           + " | ".join(self._output[-3:])) from None  # fmt: skip

    def _event(self, line: str) -> dict[str, Any] | None:
        """The hive's JSON event on `line`, or None for a log line (or a broken event: logged)."""
        text = line.strip()
        if not text.startswith('{"event"'):
            return None
        try:
            event = json.loads(text)
        except ValueError as err:
            log.warning("%s: the hive sent a broken event line (%s): %.200s", self.name, err, text)
            return {}
        return event if isinstance(event, dict) else {}

    def _remember(self, line: str) -> None:
        line = line.rstrip()
        if line and line != "hb":
            self._output = [*self._output[-_OUTPUT_LINES:], line]
            log.debug("%s: %s", self.name, line)

    async def _beat(self, process: asyncssh.SSHClientProcess[str]) -> None:
        while True:
            process.stdin.write("hb\n")
            await asyncio.sleep(self._heartbeat)

    async def _read_lines(self, process: asyncssh.SSHClientProcess[str]) -> None:
        """Read the hive's lines (reading also keeps the PTY from filling up): its log, echoed
        heartbeats, and its worker events, which update the queen's view at once."""
        while line := await process.stdout.readline():
            if line.strip() == "hb":
                self._heard = time.monotonic()
            event = self._event(line)
            if event is None:
                self._remember(line)
            elif event.get("event") == "worker":
                try:
                    info = parse_worker_info(event.get("worker"))
                except (TypeError, ValueError) as err:
                    log.warning("%s: the hive reported a worker the queen cannot read: %s",
                                self.name, err)  # fmt: skip
                    continue
                try:
                    await self.remote.track(info)
                except RbeeError as err:
                    log.warning("%s: worker %s: %s", self.name, info.id, err)
