"""What a hive does, wherever it runs: inside the queen (integrated mode) or as `rbee hive run`.

It owns the machine's model store and worker processes: spawning picks the engine and device by
the machine's hardware (rbee.placement), fetches the artifact the store lacks, then starts the
worker and waits until it serves.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from types import TracebackType

from rbee.api.hop import new_hop_token, remove_token_file, token_path, write_token_file
from rbee.api.workers import WorkerInfo, WorkerSpec
from rbee.config.settings import Paths, Timeouts
from rbee.engines.factory import check_memory, memory_need
from rbee.engines.fit import fake_mem_available, mem_available
from rbee.engines.select import Choice, default_engine
from rbee.errors import WorkerExistsError
from rbee.facts import Facts, local_facts, read_gpus
from rbee.hive.supervisor import Supervisor
from rbee.models.sources import ensure_model
from rbee.models.store import ModelStore, StoredModel
from rbee.placement import model_formats, place

__all__ = ["HiveService"]


def _refreshed(facts: Facts) -> Facts:
    """`facts` with free memory and free VRAM read again (blocking: nvidia-smi)."""
    gpus = read_gpus() if facts.gpus else None
    return dataclasses.replace(
        facts, mem_available=mem_available() or facts.mem_available, gpus=gpus or facts.gpus
    )


class HiveService:
    """One machine's store and workers; use as an async context manager."""

    def __init__(
        self,
        paths: Paths,
        timeouts: Timeouts = Timeouts(),
        *,
        name: str,
        on_change: Callable[[WorkerInfo], None] | None = None,
        standby: bool = False,
    ) -> None:
        """`standby`: keep a worker process started ahead of need (rbee.worker.standby)."""
        self.name = name
        self.paths = paths
        self.store = ModelStore(paths.models_dir)
        self.token = new_hop_token()
        """The hop secret (rbee.api.hop): this hive's API and its workers' ask for it."""
        self.token_file = token_path(paths.run_dir, name)
        self.supervisor = Supervisor(
            paths, timeouts, on_change=on_change, standby=standby, token=self.token
        )
        self._facts: Facts | None = None
        self._reading: asyncio.Future[Facts] | None = None

    async def __aenter__(self) -> HiveService:
        write_token_file(self.token_file, self.token)
        try:
            await self.supervisor.__aenter__()
        except BaseException:
            remove_token_file(self.token_file, self.token)
            raise
        # Read what the machine is now, in the background (a Python subprocess, about a quarter
        # of a second): the first placement, often a request waiting for its model, need not.
        self._read_facts()
        return self

    def _read_facts(self) -> asyncio.Future[Facts]:
        reading = asyncio.ensure_future(asyncio.to_thread(local_facts))
        reading.add_done_callback(self._facts_read)
        self._reading = reading
        return reading

    def _facts_read(self, reading: asyncio.Future[Facts]) -> None:
        # A failure is raised to the placement that waits for it; none waiting: not logged.
        if reading.cancelled() or reading.exception() is not None:
            return
        # The next standby worker imports the library this hive's workers most likely use.
        self.supervisor.standby_engine = default_engine(reading.result())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
        try:
            await self.supervisor.__aexit__(exc_type, exc, tb)
        finally:
            remove_token_file(self.token_file, self.token)

    def workers(self) -> list[WorkerInfo]:
        """Every worker on this hive."""
        return self.supervisor.workers()

    def models(self) -> list[StoredModel]:
        """Every model in this hive's store."""
        return self.store.list()

    async def facts(self) -> Facts:
        """This machine's facts: what it is, read once; what moves (free memory and VRAM), now.

        Placement decides from these, so each spawn sees the memory earlier ones took.
        """
        if self._facts is None:
            reading = self._reading or self._read_facts()
            try:
                self._facts = await asyncio.shield(reading)
            except Exception:
                self._reading = None  # the next placement asks again
                raise
        return await asyncio.to_thread(_refreshed, self._facts)

    async def place(self, spec: WorkerSpec) -> tuple[WorkerSpec, Choice]:
        """Engine, device, repacking and format for `spec` here, by facts read now."""
        formats = await asyncio.to_thread(model_formats, self.store, spec.model)
        return place(spec, await self.facts(), formats, hive=self.name)

    async def spawn(self, spec: WorkerSpec, worker_id: str | None = None) -> WorkerInfo:
        """Pick the engine and device, fetch the artifact if needed, start the worker, wait.

        Everything that can be refused (unknown model, an engine or device this hive cannot
        run) is refused before anything is fetched or started. `worker_id` names the worker
        (the queen's desired state does); by default the hive picks `MODEL-N`.
        """
        if worker_id is not None and self.supervisor.get(worker_id) is not None:
            raise WorkerExistsError(f"a worker {worker_id!r} already runs on hive {self.name}")
        spec, choice = await self.place(spec)
        stored = await asyncio.to_thread(ensure_model, self.store, spec.model, fmt=choice.format)
        artifact = stored.artifact(choice.format)
        if artifact is not None:  # refuse here what the worker would refuse after starting
            taken = await asyncio.to_thread(self._simulated_use)
            await asyncio.to_thread(
                check_memory, spec.model, artifact.path, spec.device, spec.ctx_size, taken=taken
            )
        info = await self.supervisor.spawn(spec, worker_id)
        return dataclasses.replace(info, note=choice.note) if choice.note else info

    def _simulated_use(self) -> int:
        """With simulated free memory (rbee.engines.fit.FAKE_MEM_ENV, tests), the bytes this
        hive's workers need: the figure does not drop as they load, as real free memory does."""
        if fake_mem_available() is None:
            return 0
        used = 0
        for info in self.workers():
            stored = self.store.get(info.model)
            artifact = stored.artifact("gguf") if stored is not None else None
            if artifact is not None and info.state != "exited":
                used += memory_need(artifact.path, info.context_length)
        return used

    async def stop(self, worker_id: str) -> WorkerInfo:
        """Stop one worker (TERM, then KILL after the grace period)."""
        return await self.supervisor.stop(worker_id)

    async def restart(self, worker_id: str) -> WorkerInfo:
        """Start one worker again now, ending a crash-loop; wait until it serves."""
        return await self.supervisor.restart(worker_id)
