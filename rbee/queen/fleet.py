"""The hives the queen runs on other machines: each one a long task in the fleet's task group."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from rbee.api.workers import WorkerInfo, WorkerSpec
from rbee.config.hives import load_hives
from rbee.config.settings import Timeouts
from rbee.errors import ConfigError, RbeeError, WorkerError
from rbee.models.store import ModelStore
from rbee.queen.desired import load_desired, save_desired
from rbee.queen.remote import RemoteHive

__all__ = ["Fleet"]

log = logging.getLogger(__name__)


class Fleet:
    """Starts, supervises and stops remote hives; use as an async context manager."""

    def __init__(
        self,
        timeouts: Timeouts,
        *,
        hives_conf: Path | None,
        store: ModelStore,
        on_change: Callable[[str, WorkerInfo, str | None], None],
        command: Sequence[str] | None = None,
        lease: float = 15.0,
        state_path: Path | None = None,
    ) -> None:
        self._timeouts = timeouts
        self._conf = hives_conf
        self._store = store
        self._on_change = on_change
        self._command = command
        self._lease = lease
        self._hives: dict[str, RemoteHive] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._state_path = state_path

    async def __aenter__(self) -> Fleet:
        if self._tg is not None:
            raise RbeeError("a Fleet cannot be reopened")
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        if self._state_path is not None and self._conf is not None:
            for alias, specs in load_desired(self._state_path).items():
                log.info("%s: restarting (desired state), with %d worker(s)", alias, len(specs))
                try:
                    self._launch(alias, specs)
                except ConfigError as err:
                    log.warning("%s: cannot restart: %s", alias, err)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for hive in self._hives.values():
            hive.request_stop()
        assert self._tg is not None
        await self._tg.__aexit__(None, None, None)

    def hives(self) -> list[RemoteHive]:
        """The remote hives started so far (running, reconnecting or stopped)."""
        return list(self._hives.values())

    def get(self, alias: str) -> RemoteHive:
        """A started hive; WorkerError if `alias` was not started."""
        hive = self._hives.get(alias)
        if hive is None or hive.state == "stopped":
            started = ", ".join(a for a, h in self._hives.items() if h.state != "stopped")
            raise WorkerError(
                f"hive {alias!r} is not started (start it with `rbee hive start {alias}`; "
                f"started: {started or 'none'})"
            )
        return hive

    async def start(self, alias: str) -> RemoteHive:
        """Connect to `alias`, start its hive, and wait until it serves."""
        if self._conf is None:
            raise ConfigError("the queen has no hives.conf (start it with --hives PATH)")
        current = self._hives.get(alias)
        if current is not None and current.state != "stopped":
            await current.wait_running(self._timeouts.worker_ready)
            return current
        hive = self._launch(alias, [])
        try:
            await hive.wait_running(self._timeouts.worker_ready)
        except BaseException:
            await self.stop(alias)
            raise
        return hive

    def _launch(self, alias: str, desired: list[WorkerSpec]) -> RemoteHive:
        """Create the hive's handle and start its life task (without waiting for it)."""
        if self._conf is None:
            raise ConfigError("the queen has no hives.conf (start it with --hives PATH)")
        config = load_hives(self._conf)
        hive = RemoteHive(
            config.get(alias),
            config.path,
            self._timeouts,
            command=self._command,
            lease=self._lease,
            on_change=self._on_change,
            store=self._store,
            desired=desired,
            on_desired=self._save,
            config_text=config.asyncssh_text(alias),
        )
        assert self._tg is not None
        self._hives[alias] = hive
        self._tasks[alias] = self._tg.create_task(hive.run(), name=f"hive-{alias}")
        self._save()
        return hive

    def _save(self) -> None:
        if self._state_path is None:
            return
        wanted = {a: h.desired for a, h in self._hives.items() if a in self._tasks}
        save_desired(self._state_path, wanted)

    async def stop(self, alias: str) -> None:
        """Stop `alias`'s hive (and so its workers) and wait until its task ends."""
        hive = self._hives.get(alias)
        if hive is None:
            raise WorkerError(f"hive {alias!r} was not started")
        hive.request_stop()
        task = self._tasks.pop(alias, None)
        self._save()
        if task is not None:
            try:
                async with asyncio.timeout(3 * self._timeouts.stop_grace + 5):
                    await asyncio.shield(task)
            except TimeoutError:
                log.warning("%s: the hive did not stop in time; cancelling", alias)
                task.cancel()
