"""This machine's hive, which the queen runs in its own process, as a HiveHandle."""

from __future__ import annotations

from rbee.api.workers import WorkerInfo, WorkerSpec
from rbee.engines.select import Choice
from rbee.hive.service import HiveService

__all__ = ["LocalHive"]


class LocalHive:
    """The queen's own hive (integrated mode), always available: a reconcile.HiveHandle."""

    def __init__(self, service: HiveService) -> None:
        self.service = service

    @property
    def name(self) -> str:
        """The hive's name (`localhost`)."""
        return self.service.name

    @property
    def available(self) -> bool:
        """Always: it runs in the queen's process."""
        return True

    def workers(self) -> list[WorkerInfo]:
        """Every worker on this machine."""
        return self.service.workers()

    async def place(self, spec: WorkerSpec) -> tuple[WorkerSpec, Choice]:
        """Engine, device and repacking for `spec` here, by facts read now."""
        return await self.service.place(spec)

    async def start(self, spec: WorkerSpec, worker_id: str) -> WorkerInfo:
        """Fetch the model if needed, start the worker, wait until it serves."""
        return await self.service.spawn(spec, worker_id)

    async def stop(self, worker_id: str) -> WorkerInfo:
        """Stop one worker."""
        return await self.service.stop(worker_id)

    async def restart(self, worker_id: str) -> WorkerInfo:
        """Start one worker again."""
        return await self.service.restart(worker_id)
