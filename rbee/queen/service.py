"""The queen's running state: its hives, its registry, its relay. One per queen process."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from types import TracebackType

from rbee.api.workers import WorkerInfo, WorkerSpec
from rbee.config.settings import Paths, Timeouts
from rbee.errors import RbeeError
from rbee.hive.service import HiveService
from rbee.queen.registry import Registry
from rbee.queen.relay import Relay

__all__ = ["LOCAL_HIVE", "Queen", "QueenOptions"]

log = logging.getLogger(__name__)

LOCAL_HIVE = "localhost"


@dataclass(frozen=True)
class QueenOptions:
    """How a queen runs."""

    host: str = "127.0.0.1"
    port: int = 8500
    api_key: str | None = None
    models: tuple[WorkerSpec, ...] = ()
    """Workers to start with the queen (`rbee up` asks for the default model)."""


class Queen:
    """Owns the local hive (integrated mode), the registry and the relay."""

    def __init__(self, paths: Paths, options: QueenOptions, timeouts: Timeouts = Timeouts()):
        self.paths = paths
        self.options = options
        self.timeouts = timeouts
        self.registry = Registry()
        self.hive = HiveService(paths, timeouts, name=LOCAL_HIVE, on_change=self._on_worker_change)
        self.relay = Relay(self.registry, timeouts)
        self._stack: contextlib.AsyncExitStack | None = None

    def _on_worker_change(self, info: WorkerInfo) -> None:
        self.registry.update(LOCAL_HIVE, info)

    async def __aenter__(self) -> Queen:
        if self._stack is not None:
            raise RbeeError("a Queen cannot be reopened once it has been closed")
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.relay)
            await stack.enter_async_context(self.hive)
            for spec in self.options.models:
                await self.spawn(spec)
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

    async def spawn(self, spec: WorkerSpec) -> WorkerInfo:
        """Start a worker for `spec` on the local hive."""
        return await self.hive.spawn(spec)
