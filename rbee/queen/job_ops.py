"""The runners of rbee's job kinds; the queen installs `JOB_RUNNERS` as `app.state.job_runners`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from rbee.api.jobs import WorkerSpawn
from rbee.models.catalog import validate_model_id
from rbee.models.sources import ensure_model
from rbee.queen.jobs import Progress, Runner, RunnerFactory
from rbee.queen.service import LOCAL_HIVE, Queen

__all__ = ["JOB_RUNNERS", "worker_spawn"]


def worker_spawn(operation: Any, state: Any) -> Runner:
    """`worker.spawn`: fetch the model with progress if the store lacks it, then start a worker."""
    if not isinstance(operation, WorkerSpawn):
        raise TypeError(f"worker_spawn runs a WorkerSpawn, not {operation!r}")
    queen: Queen = state.queen
    spec = operation.spec

    async def run(progress: Progress) -> dict[str, Any]:
        progress.step(1, 2, f"fetching model {spec.model} (if needed)")
        validate_model_id(spec.model)
        store = queen.hive.store
        if store.get(spec.model) is None:
            # The hive would fetch it too, but silently: fetching here shows the transfer.
            await asyncio.to_thread(
                ensure_model, store, spec.model, progress=progress.from_thread()
            )
        else:
            progress.log(f"model {spec.model} is already stored")
        progress.step(2, 2, "starting worker…")
        hive, info = await queen.spawn(spec, operation.hive or LOCAL_HIVE)
        progress.log(f"worker {info.id} ready on {hive} (pid {info.pid}, port {info.port})")
        return info.to_json(hive)

    return run


JOB_RUNNERS: Mapping[str, RunnerFactory] = MappingProxyType({WorkerSpawn.kind: worker_spawn})
"""Runner factories by operation kind."""
