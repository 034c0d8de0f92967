"""The hives the queen runs on other machines: each one a long task in the fleet's task group.

Which hives run is the desired state's (rbee.queen.desired): starting a hive adds it there,
stopping one removes it, and a queen that starts again launches every hive it lists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from rbee.config.hives import load_hives
from rbee.config.settings import Timeouts
from rbee.errors import ConfigError, HiveNotStartedError, RbeeError
from rbee.models.store import ModelStore
from rbee.queen.desired import DesiredState
from rbee.queen.remote import OnChange, RemoteHive

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
        desired: DesiredState,
        on_change: OnChange,
        on_state: Callable[[str], None] | None = None,
        command: Sequence[str] | None = None,
        lease: float = 15.0,
        standby: bool = False,
    ) -> None:
        """`standby`: hives keep a standby worker process (for models loaded on demand)."""
        self._timeouts = timeouts
        self._standby = standby
        self._conf = hives_conf
        self._store = store
        self._desired = desired
        self._on_change = on_change
        self._on_state = on_state
        self._command = command
        self._lease = lease
        self._hives: dict[str, RemoteHive] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.unlaunchable: dict[str, str] = {}
        """Hives the desired state wants that cannot be started (not in hives.conf any more)."""

    async def __aenter__(self) -> Fleet:
        if self._tg is not None:
            raise RbeeError("a Fleet cannot be reopened")
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        for alias in self._desired.remote_hives():
            workers = len(self._desired.workers(alias))
            log.info("%s: starting again (desired state), with %d worker(s)", alias, workers)
            try:
                self._launch(alias)
            except ConfigError as err:
                self.unlaunchable[alias] = str(err)
                log.warning("%s: cannot start: %s", alias, err)
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

    def running(self) -> dict[str, RemoteHive]:
        """The hives started and not stopped, by alias."""
        return {a: h for a, h in self._hives.items() if a in self._tasks}

    def describe_unlaunchable(self) -> list[dict[str, Any]]:
        """The hives wanted but not startable, as /v1/hives lists hives."""
        return [
            {
                "name": a,
                "host": None,
                "state": "error",
                "pid": None,
                "workers": 0,
                "last_error": why,
                "facts": None,
            }
            for a, why in self.unlaunchable.items()
        ]

    def get(self, alias: str) -> RemoteHive:
        """A started hive; HiveNotStartedError (saying how to start it) if not."""
        hive = self._hives.get(alias)
        if hive is None or alias not in self._tasks:
            started = ", ".join(self.running()) or "none"
            raise HiveNotStartedError(
                f"hive {alias!r} is not started (start it with `rbee hive start {alias}`; "
                f"started: {started})"
            )
        return hive

    async def start(self, alias: str) -> RemoteHive:
        """Connect to `alias`, start its hive, and wait until it serves."""
        if self._conf is None:
            raise ConfigError("the queen has no hives.conf (start it with --hives PATH)")
        current = self._hives.get(alias)
        if current is not None and alias in self._tasks:
            await current.wait_running(self._timeouts.worker_ready)
            return current
        hive = self._launch(alias)
        self._desired.add_hive(alias)
        try:
            await hive.wait_running(self._timeouts.worker_ready)
        except BaseException:
            await self.stop(alias)
            raise
        return hive

    def _launch(self, alias: str) -> RemoteHive:
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
            standby=self._standby,
            on_change=self._on_change,
            on_state=self._on_state,
            store=self._store,
            config_text=config.asyncssh_text(alias),
        )
        assert self._tg is not None
        self._hives[alias] = hive
        self._tasks[alias] = self._tg.create_task(hive.run(), name=f"hive-{alias}")
        self.unlaunchable.pop(alias, None)
        return hive

    async def stop(self, alias: str) -> None:
        """Stop `alias`'s hive (and so its workers) and wait until its task ends."""
        self._desired.remove_hive(alias)
        if self.unlaunchable.pop(alias, None) is not None:
            return
        hive = self.get(alias)
        hive.request_stop()
        task = self._tasks.pop(alias, None)
        if task is not None:
            try:
                async with asyncio.timeout(3 * self._timeouts.stop_grace + 5):
                    await asyncio.shield(task)
            except TimeoutError:
                log.warning("%s: the hive did not stop in time; cancelling", alias)
                task.cancel()
