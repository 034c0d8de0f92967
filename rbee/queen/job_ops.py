"""The runners of rbee's job kinds, and the checks each job's input passes before it is accepted.

The queen installs `JOB_RUNNERS` as `app.state.job_runners` and `JOB_CHECKS` as
`app.state.job_checks`: `POST /v1/jobs` answers 400/404 at once for an operation that cannot
work (an unknown model or hive, an impossible engine), as the admin API does, instead of 202 and
a job that fails later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from rbee.api.jobs import HiveAction, WorkerSpawn
from rbee.config.hives import load_hives
from rbee.errors import ConfigError
from rbee.models.sources import ensure_model
from rbee.queen.admin import QueenWorkers
from rbee.queen.jobs import Progress, Runner, RunnerFactory
from rbee.queen.service import LOCAL_HIVE, Queen
from rbee.ssh.connection import HiveConnection
from rbee.ssh.install import StepEvent, install_hive
from rbee.ssh.wheelhouse import Target, Wheelhouse, build_wheelhouse, extra_dirs_from_env

__all__ = ["JOB_CHECKS", "JOB_RUNNERS", "JobCheck", "hive_install", "hive_start", "hive_stop",
           "worker_spawn"]  # fmt: skip

JobCheck = Callable[[Any, Any], Awaitable[None]]
"""Checks a parsed operation against the app's state; raises an RbeeError if it cannot work."""


def worker_spawn(operation: Any, state: Any) -> Runner:
    """`worker.spawn`: fetch the model with progress if the store lacks it, then start a worker."""
    if not isinstance(operation, WorkerSpawn):
        raise TypeError(f"worker_spawn runs a WorkerSpawn, not {operation!r}")
    queen: Queen = state.queen
    spec = operation.spec

    async def run(progress: Progress) -> dict[str, Any]:
        progress.step(1, 3, f"choosing the engine for {spec.model}")
        target = operation.hive or LOCAL_HIVE
        placed, choice = await queen.place(spec, target)
        progress.log(f"{placed.engine} on {placed.device} ({choice.format})")
        if choice.note:
            progress.log(choice.note)
        progress.step(2, 3, f"fetching model {spec.model} (if needed)")
        store = queen.hive.store
        stored = store.get(spec.model)
        if stored is None or stored.artifact(choice.format) is None:
            # The hive would fetch it too, but silently: fetching here shows the transfer.
            await asyncio.to_thread(
                ensure_model, store, spec.model, fmt=choice.format, progress=progress.from_thread()
            )
        else:
            progress.log(f"model {spec.model} is already stored")
        progress.step(3, 3, "starting worker…")
        hive, info = await queen.spawn(placed, target)
        progress.log(f"worker {info.id} ready on {hive} (pid {info.pid}, port {info.port})")
        return QueenWorkers(queen).worker_json(hive, info)

    return run


def hive_start(operation: Any, state: Any) -> Runner:
    """`hive.start`: connect over SSH, start the hive, wait until it serves."""
    if not isinstance(operation, HiveAction):
        raise TypeError(f"hive_start runs a HiveAction, not {operation!r}")
    queen: Queen = state.queen

    async def run(progress: Progress) -> dict[str, Any]:
        progress.step(1, 1, f"starting hive {operation.alias} over SSH…")
        hive = await queen.fleet.start(operation.alias)
        progress.log(f"hive {hive.name} running on {hive.hive.hostname} (pid {hive.pid})")
        return hive.describe()

    return run


def hive_stop(operation: Any, state: Any) -> Runner:
    """`hive.stop`: stop the hive; its workers stop with it."""
    if not isinstance(operation, HiveAction):
        raise TypeError(f"hive_stop runs a HiveAction, not {operation!r}")
    queen: Queen = state.queen

    async def run(progress: Progress) -> dict[str, Any]:
        progress.step(1, 1, f"stopping hive {operation.alias} and its workers…")
        await queen.fleet.stop(operation.alias)
        return {"name": operation.alias, "state": "stopped"}

    return run


def hive_install(operation: Any, state: Any) -> Runner:
    """`hive.install`: the offline install of `rbee hive install`, run by the queen."""
    if not isinstance(operation, HiveAction):
        raise TypeError(f"hive_install runs a HiveAction, not {operation!r}")
    queen: Queen = state.queen

    async def run(progress: Progress) -> dict[str, Any]:
        conf = queen.options.hives_conf
        if conf is None:
            raise ConfigError("the queen has no hives.conf (start it with --hives PATH)")
        config = load_hives(conf)
        hive = config.get(operation.alias)
        cache, extra = queen.paths.data_dir / "wheelhouse", extra_dirs_from_env()

        def wheelhouse_for(target: Target, extras: tuple[str, ...]) -> Wheelhouse:
            return build_wheelhouse(target, cache, extras=extras, extra_dirs=extra)

        def step(event: StepEvent) -> None:
            if event.state == "start":
                progress.step(event.index, event.total, event.title)
            elif event.state == "done":
                progress.log(f"{event.title}: {event.result} in {event.seconds:.1f}s")

        async with HiveConnection.of(config, hive.alias) as conn:
            result = await install_hive(conn, hive, wheelhouse_for, step)
        return {"alias": hive.alias, "up_to_date": result.up_to_date,
                "rbee_version": result.rbee_version, "install_dir": result.install_dir,
                "uploaded_files": result.uploaded_files, "seconds": result.seconds}  # fmt: skip

    return run


async def check_worker_spawn(operation: Any, state: Any) -> None:
    """The model exists, the hive is started and reachable, the engine and device can work."""
    queen: Queen = state.queen
    await queen.place(operation.spec, operation.hive or LOCAL_HIVE)


async def check_hive_in_config(operation: Any, state: Any) -> None:
    """The alias is in the queen's hives.conf."""
    queen: Queen = state.queen
    conf = queen.options.hives_conf
    if conf is None:
        raise ConfigError("the queen has no hives.conf (start it with --hives PATH)")
    load_hives(conf).get(operation.alias)


async def check_hive_started(operation: Any, state: Any) -> None:
    """The hive was started."""
    queen: Queen = state.queen
    queen.fleet.get(operation.alias)


JOB_CHECKS: Mapping[str, JobCheck] = MappingProxyType(
    {
        WorkerSpawn.kind: check_worker_spawn,
        "hive.install": check_hive_in_config,
        "hive.start": check_hive_in_config,
        "hive.stop": check_hive_started,
    }
)
"""Input checks by operation kind (run before a job is accepted)."""


JOB_RUNNERS: Mapping[str, RunnerFactory] = MappingProxyType(
    {
        WorkerSpawn.kind: worker_spawn,
        "hive.install": hive_install,
        "hive.start": hive_start,
        "hive.stop": hive_stop,
    }
)
"""Runner factories by operation kind."""
