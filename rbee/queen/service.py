"""The queen's running state: its hives, its registry, its relay. One per queen process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from rbee.api.workers import WorkerInfo, WorkerSpec
from rbee.config.settings import Paths, Timeouts
from rbee.engines.select import Choice
from rbee.errors import RbeeError
from rbee.hive.service import HiveService
from rbee.placement import model_formats, place
from rbee.queen.fleet import Fleet
from rbee.queen.jobs import JobManager
from rbee.queen.registry import LOCAL_HIVE, Registry
from rbee.queen.relay import Relay

__all__ = ["LOCAL_HIVE", "Queen", "QueenOptions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueenOptions:
    """How a queen runs."""

    host: str = "127.0.0.1"
    port: int = 8500
    api_key: str | None = None
    models: tuple[WorkerSpec, ...] = ()
    """Workers to start with the queen (`rbee up` asks for the default model)."""
    hives_conf: Path | None = None
    """The hives.conf remote hives are started from (read again at every start)."""
    hive_command: tuple[str, ...] | None = None
    """Run remote hives with this command instead of the installed `rbee` (development)."""
    lease: float = 15.0
    """Seconds a remote hive lives on without the queen's heartbeat."""


class Queen:
    """Owns the local hive (integrated mode), the registry and the relay."""

    def __init__(self, paths: Paths, options: QueenOptions, timeouts: Timeouts = Timeouts()):
        self.paths = paths
        self.options = options
        self.timeouts = timeouts
        self.registry = Registry()
        self.hive = HiveService(paths, timeouts, name=LOCAL_HIVE, on_change=self._on_worker_change)
        self.relay = Relay(self.registry, timeouts)
        self.fleet = Fleet(
            timeouts,
            hives_conf=options.hives_conf,
            store=self.hive.store,
            on_change=self.registry.update,
            command=options.hive_command,
            lease=options.lease,
            state_path=paths.data_dir / "desired.json",
        )
        self.jobs = JobManager()
        self._stack: contextlib.AsyncExitStack | None = None

    def _on_worker_change(self, info: WorkerInfo) -> None:
        self.registry.update(LOCAL_HIVE, info)

    async def __aenter__(self) -> Queen:
        if self._stack is not None:
            raise RbeeError("a Queen cannot be reopened once it has been closed")
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.relay)
            await stack.enter_async_context(self.hive)
            await stack.enter_async_context(self.fleet)
            # Jobs stop first (they use hives and workers), so they are entered last.
            await stack.enter_async_context(self.jobs)
            for spec in self.options.models:
                await self.hive.spawn(spec)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        await self._stack.__aexit__(exc_type, exc, tb)

    def workers(self) -> list[tuple[str, WorkerInfo]]:
        """Every worker on every hive, with its hive's name."""
        found = [(LOCAL_HIVE, w) for w in self.hive.workers()]
        for remote in self.fleet.hives():
            found += [(remote.name, w) for w in remote.workers()]
        return found

    async def place(self, spec: WorkerSpec, hive: str = LOCAL_HIVE) -> tuple[WorkerSpec, Choice]:
        """Engine, device and artifact format `spec` would get on `hive` (refusals raise)."""
        if hive == LOCAL_HIVE:
            formats = await asyncio.to_thread(model_formats, self.hive.store, spec.model)
            return place(spec, await self.hive.facts(), formats, hive=LOCAL_HIVE)
        return await self.fleet.get(hive).place(spec)

    async def spawn(self, spec: WorkerSpec, hive: str = LOCAL_HIVE) -> tuple[str, WorkerInfo]:
        """Start a worker for `spec` on `hive` (this machine by default)."""
        if hive == LOCAL_HIVE:
            return LOCAL_HIVE, await self.hive.spawn(spec)
        return hive, await self.fleet.get(hive).spawn(spec)

    async def stop_worker(self, worker_id: str) -> tuple[str, WorkerInfo]:
        """Stop a worker by its queen-wide id (`ID` here, `ID@hive` elsewhere)."""
        local_id, _, hive = worker_id.partition("@")
        if not hive or hive == LOCAL_HIVE:
            return LOCAL_HIVE, await self.hive.stop(local_id)
        return hive, await self.fleet.get(hive).stop_worker(local_id)
