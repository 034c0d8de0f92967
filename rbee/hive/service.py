"""What a hive does, wherever it runs: inside the queen (integrated mode) or as `rbee hive run`.

It owns the machine's model store and worker processes: spawning checks the engine and device,
fetches a catalog model the store lacks, then starts the worker and waits until it serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from rbee.api.workers import WorkerInfo, WorkerSpec
from rbee.config.settings import Paths, Timeouts
from rbee.errors import ConfigError
from rbee.hive.facts import Facts, local_facts
from rbee.hive.supervisor import Supervisor
from rbee.models.catalog import validate_model_id
from rbee.models.sources import ensure_model
from rbee.models.store import ModelStore, StoredModel

__all__ = ["ENGINES", "HiveService"]

ENGINES = ("llamacpp",)
"""Engines this version can run (ExLlamaV2 and MLX come with their adapters)."""


class HiveService:
    """One machine's store and workers; use as an async context manager."""

    def __init__(
        self,
        paths: Paths,
        timeouts: Timeouts = Timeouts(),
        *,
        name: str,
        on_change: Callable[[WorkerInfo], None] | None = None,
    ) -> None:
        self.name = name
        self.paths = paths
        self.store = ModelStore(paths.models_dir)
        self.supervisor = Supervisor(paths, timeouts, on_change=on_change)
        self._facts: Facts | None = None

    async def __aenter__(self) -> HiveService:
        await self.supervisor.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.supervisor.__aexit__(exc_type, exc, tb)

    def workers(self) -> list[WorkerInfo]:
        """Every worker on this hive."""
        return self.supervisor.workers()

    def models(self) -> list[StoredModel]:
        """Every model in this hive's store."""
        return self.store.list()

    async def facts(self) -> Facts:
        """This machine's hardware facts (gathered once, off the event loop)."""
        if self._facts is None:
            self._facts = await asyncio.to_thread(local_facts)
        return self._facts

    async def spawn(self, spec: WorkerSpec) -> WorkerInfo:
        """Check the request, fetch the model if needed, start the worker, wait until it serves."""
        validate_model_id(spec.model)
        if spec.engine not in ENGINES:
            raise ConfigError(
                f"engine {spec.engine!r} is not available on {self.name} (available: "
                f"{', '.join(ENGINES)})"
            )
        if spec.device != "cpu":
            raise ConfigError(f"device {spec.device!r} is not available on {self.name}; use cpu")
        await asyncio.to_thread(ensure_model, self.store, spec.model)
        return await self.supervisor.spawn(spec)

    async def stop(self, worker_id: str) -> WorkerInfo:
        """Stop one worker (TERM, then KILL after the grace period)."""
        return await self.supervisor.stop(worker_id)
