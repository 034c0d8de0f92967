"""The queen's handle on a hive on another machine, reached over one SSH connection.

`RemoteHive.run()` is the hive's whole life as the queen sees it, one long task in the queen's
task group: connect, start `exec rbee hive run …` with a PTY, wait for its ready line, forward a
local port to its HTTP port, restore the workers it was asked for, write a heartbeat line every few
seconds, and when the process or the connection ends, reconnect with backoff, as long as the hive
is wanted. Everything on the hive dies with the connection: the PTY hang-up (SIGHUP), stdin EOF and
the heartbeat lease each stop the hive, and its workers die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from rbee.errors import ApiError, SshError, WorkerError
from rbee.models.sources import ensure_model
from rbee.models.store import ModelStore
from rbee.placement import facts_from_json, model_formats, place
from rbee.ssh.argv import remote_command
from rbee.ssh.connection import HiveConnection
from rbee.ssh.forward import PortForward
from rbee.ssh.upload import upload_model

__all__ = ["HiveState", "RemoteHive"]

log = logging.getLogger(__name__)

HiveState = Literal["stopped", "connecting", "running", "lost"]
_OUTPUT_LINES = 40


class RemoteHive:
    """One hive from hives.conf, started and supervised over SSH."""

    def __init__(
        self,
        hive: Hive,
        config_path: Path,
        timeouts: Timeouts = Timeouts(),
        *,
        command: Sequence[str] | None = None,
        lease: float = 15.0,
        heartbeat: float = 3.0,
        on_change: Callable[[str, WorkerInfo, str | None], None] | None = None,
        store: ModelStore | None = None,
        desired: Sequence[WorkerSpec] = (),
        on_desired: Callable[[], None] | None = None,
        config_text: str | None = None,
    ) -> None:
        self.hive = hive
        self.name = hive.alias
        self._config = config_path
        self._config_text = config_text
        self._facts: dict[str, Any] | None = None
        self._timeouts = timeouts
        self._command = list(command) if command else None
        self._lease = lease
        self._heartbeat = heartbeat
        self._on_change = on_change
        self._store = store
        self.state: HiveState = "stopped"
        self.last_error: str | None = None
        self.pid: int | None = None
        self._wanted = False
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._url: str | None = None
        self._conn: HiveConnection | None = None
        self._workers: dict[str, WorkerInfo] = {}
        self._forwards: dict[str, PortForward] = {}
        self._desired: list[WorkerSpec] = list(desired)
        self._on_desired = on_desired
        self._output: list[str] = []
        # One upload per model at a time: two spawns must not send the same artifact twice, nor
        # rewrite the model's manifest on the hive at once (a queen is a hive's only writer).
        self._uploading: dict[str, asyncio.Lock] = {}
        self._process: asyncssh.SSHClientProcess[str] | None = None

    # -- what the queen asks -------------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        """The workers this hive reported, as last seen."""
        return list(self._workers.values())

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for the queen's API."""
        return {
            "name": self.name,
            "host": self.hive.hostname,
            "state": self.state,
            "pid": self.pid,
            "workers": len(self._workers),
            "last_error": self.last_error,
            "facts": self._facts,
        }

    async def models(self) -> list[dict[str, Any]]:
        """The models in this hive's store, as the hive reports them."""
        listed = await self._http("GET", "/v1/models")
        models: list[dict[str, Any]] = listed["data"]
        return models

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

    async def spawn(self, spec: WorkerSpec) -> WorkerInfo:
        """Start a worker on this hive (and remember it, to restore after a reconnect)."""
        if self.state != "running":
            raise WorkerError(f"{self.name}: the hive is {self.state}, not running")
        info = await self._spawn(spec)
        self._desired.append(spec)
        self._desired_changed()
        return info

    async def stop_worker(self, worker_id: str) -> WorkerInfo:
        """Stop one worker on this hive and forget it."""
        info = self._workers.get(worker_id)
        if info is None:
            known = ", ".join(self._workers) or "none"
            raise WorkerError(f"no worker {worker_id!r} on {self.name} (workers: {known})")
        response = await self._http("DELETE", f"/v1/workers/{worker_id}")
        for spec in self._desired:
            if _kind(spec) == _kind(_spec_of(info)):
                self._desired.remove(spec)
                self._desired_changed()
                break
        self._forget(worker_id, parse_worker_info(response))
        return info

    @property
    def desired(self) -> list[WorkerSpec]:
        """The workers this hive was asked for (restored after every reconnect)."""
        return list(self._desired)

    def _desired_changed(self) -> None:
        if self._on_desired is not None:
            self._on_desired()

    def request_stop(self) -> None:
        """Ask run() to stop the hive (closing the channel stops everything on it) and return."""
        self._wanted = False
        self._wake.set()
        if self._process is not None:
            self._process.close()

    # -- the life of the hive ------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the hive running until request_stop(); reconnect with backoff when it is lost."""
        self._wanted = True
        backoff = 1.0
        while self._wanted:
            self.state = "connecting"
            try:
                async with HiveConnection(
                    self.name,
                    self._config,
                    connect_timeout=self._timeouts.connect * 2,
                    config_text=self._config_text,
                ) as conn:
                    self._conn = conn
                    await self._session(conn)
                    backoff = 1.0
            except (SshError, OSError, asyncssh.Error, httpx.HTTPError, ApiError) as err:
                self.last_error = str(err)
                log.warning("%s: %s", self.name, err)
            finally:
                self._conn = None
                self._lost()
            if not self._wanted:
                break
            self.state = "lost"
            log.info("%s: reconnecting in %.0fs", self.name, backoff)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            backoff = min(backoff * 2, 30.0)
        self.state = "stopped"

    async def _session(self, conn: HiveConnection) -> None:
        argv = await self._hive_argv(conn)
        async with conn.channel():  # the hive's session holds one of the connection's slots
            process = await conn.conn.create_process(
                remote_command(argv), term_type="dumb", term_size=(200, 24), encoding="utf-8"
            )
            self._process = process
            try:
                await self._serve(conn, process)
            finally:
                self._process = None
                process.close()
        if self._wanted:
            tail = " | ".join(self._output[-3:])
            raise SshError(f"{self.name}: the hive process ended" + (f": {tail}" if tail else ""))

    async def _serve(self, conn: HiveConnection, process: asyncssh.SSHClientProcess[str]) -> None:
        """From the hive's ready line until its process ends: forward, restore, heartbeat."""
        port, self.pid = await self._read_ready(process)
        forward = await conn.forward(port)
        self._url = forward.url
        try:
            facts = (await self._http("GET", "/health")).get("facts")
            self._facts = facts if isinstance(facts, dict) else None
            async with asyncio.TaskGroup() as tg:
                beat = tg.create_task(self._beat(process))
                tg.create_task(self._drain(process))
                await self._restore()
                self.state = "running"
                self.last_error = None
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
            install = self.hive.install_dir
            if install.startswith("~"):
                home = (await conn.check(["sh", "-c", 'printf %s "$HOME"'])).stdout
                install = posixpath.join(home, install[2:] if install.startswith("~/") else "")
            command = [posixpath.join(install, "venv", "bin", "rbee")]
        return [*command, "hive", "run", "--port", str(self.hive.hive_port),
                "--lease", f"{self._lease:g}", "--name", self.name]  # fmt: skip

    async def _read_ready(self, process: asyncssh.SSHClientProcess[str]) -> tuple[int, int]:
        self._output = []
        try:
            async with asyncio.timeout(self._timeouts.worker_ready):
                while True:
                    line = await process.stdout.readline()
                    if not line:
                        tail = " | ".join(self._output[-3:])
                        raise SshError(f"{self.name}: the hive exited before it was ready: {tail}")
                    self._remember(line)
                    if line.lstrip().startswith("{"):
                        ready = json.loads(line)
                        if ready.get("event") == "ready":
                            return int(ready["port"]), int(ready["pid"])
        except TimeoutError:
            raise SshError(f"{self.name}: the hive was not ready in time: "
                           + " | ".join(self._output[-3:])) from None  # fmt: skip

    def _remember(self, line: str) -> None:
        line = line.rstrip()
        if line and line != "hb":
            self._output = [*self._output[-_OUTPUT_LINES:], line]
            log.debug("%s: %s", self.name, line)

    async def _beat(self, process: asyncssh.SSHClientProcess[str]) -> None:
        while True:
            process.stdin.write("hb\n")
            await asyncio.sleep(self._heartbeat)

    async def _drain(self, process: asyncssh.SSHClientProcess[str]) -> None:
        # The PTY echoes heartbeats and carries the hive's log: read it so it never fills up.
        while line := await process.stdout.readline():
            self._remember(line)

    async def _restore(self) -> None:
        """After a (re)connect: learn what runs there, start what was asked for and is missing."""
        listed = await self._http("GET", "/v1/workers")
        for raw in listed["data"]:
            info = parse_worker_info(raw)
            await self._track(info)
        running = [_kind(_spec_of(w)) for w in self._workers.values()]
        for spec in self._desired:
            if _kind(spec) in running:
                running.remove(_kind(spec))
            else:
                log.info("%s: restoring a worker for %s", self.name, spec.model)
                await self._spawn(spec)

    async def place(self, spec: WorkerSpec) -> tuple[WorkerSpec, Choice]:
        """Decide engine and device for `spec` by the hive's facts and the formats at hand."""
        if spec.cpu_repack == "auto":  # hives.conf's RbeeCpuRepack, unless the spawn said
            spec = dataclasses.replace(spec, cpu_repack=self.hive.cpu_repack)
        health = await self._http("GET", "/health")
        try:
            facts = facts_from_json(health.get("facts"))
        except (TypeError, ValueError) as err:
            raise SshError(f"{self.name}: the hive reported unreadable facts ({err})") from err
        listed = await self._http("GET", "/v1/models")
        there = [
            f
            for m in listed["data"]
            if m.get("id") == spec.model
            for f in (m.get("formats") or [m.get("format")])
            if isinstance(f, str)
        ]
        formats = await asyncio.to_thread(model_formats, self._store, spec.model, elsewhere=there)
        return place(spec, facts, formats, hive=self.name)

    async def _spawn(self, spec: WorkerSpec) -> WorkerInfo:
        spec, choice = await self.place(spec)
        await self._ensure_model(spec.model, choice.format)
        body = {"model": spec.model, "engine": spec.engine, "device": spec.device,
                "ctx_size": spec.ctx_size, "threads": spec.threads,
                "embeddings": spec.embeddings, "cpu_repack": spec.cpu_repack}  # fmt: skip
        info = parse_worker_info(await self._http("POST", "/v1/workers", json=body))
        await self._track(info)
        return dataclasses.replace(info, note=choice.note) if choice.note else info

    async def _ensure_model(self, model: str, fmt: str = "gguf") -> None:
        """Upload `model`'s `fmt` artifact from the queen's store unless the hive has it."""
        if self._store is None:
            return
        async with self._uploading.setdefault(model, asyncio.Lock()):
            await self._upload_unless_there(model, fmt)

    async def _upload_unless_there(self, model: str, fmt: str) -> None:
        assert self._store is not None
        listed = await self._http("GET", "/v1/models")
        for m in listed["data"]:
            # A hive of this version lists "formats"; one of the single-GGUF store, "format".
            if m.get("id") == model and fmt in (m.get("formats") or [m.get("format")]):
                return
        stored = await asyncio.to_thread(ensure_model, self._store, model, fmt=fmt)
        health = await self._http("GET", "/health")
        assert self._conn is not None
        log.info("%s: uploading model %s (%s)", self.name, model, fmt)
        await upload_model(self._conn, stored, str(health["models_dir"]), self.hive.python, fmt=fmt)

    async def _track(self, info: WorkerInfo) -> None:
        self._workers[info.id] = info
        url = None
        if info.state == "ready" and info.port and info.id not in self._forwards:
            assert self._conn is not None
            forward = await self._conn.forward(info.port)
            self._forwards[info.id] = forward
            url = forward.url
        elif info.id in self._forwards:
            url = self._forwards[info.id].url
        if self._on_change is not None:
            self._on_change(self.name, info, url)

    def _forget(self, worker_id: str, info: WorkerInfo) -> None:
        self._workers.pop(worker_id, None)
        forward = self._forwards.pop(worker_id, None)
        if forward is not None:
            forward.close()
        if self._on_change is not None:
            self._on_change(self.name, WorkerInfo(**{**info.__dict__, "state": "exited"}), None)

    def _lost(self) -> None:
        self._ready.clear()
        self._url = None
        for worker_id, info in list(self._workers.items()):
            self._forget(worker_id, info)

    async def _http(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._url is None:
            raise SshError(f"{self.name}: the hive is not reachable")
        timeout = httpx.Timeout(self._timeouts.worker_ready + 600, connect=self._timeouts.connect)
        async with httpx.AsyncClient(base_url=self._url, timeout=timeout, trust_env=False) as c:
            started = time.monotonic()
            response = await c.request(method, path, **kwargs)
            log.debug("%s: %s %s %d in %.2fs", self.name, method, path, response.status_code,
                      time.monotonic() - started)  # fmt: skip
        if not response.is_success:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise ApiError(response.status_code, f"{self.name}: {message}")
        return response.json()


def _spec_of(info: WorkerInfo) -> WorkerSpec:
    return WorkerSpec(model=info.model, engine=info.engine, device=info.device,
                      ctx_size=info.context_length or 4096,
                      embeddings=info.embeddings)  # fmt: skip


def _kind(spec: WorkerSpec) -> tuple[str, str, str, bool]:
    """What makes two workers interchangeable when restoring."""
    return (spec.model, spec.engine, spec.device, spec.embeddings)
