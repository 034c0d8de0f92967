"""The queen's running state: its hives, desired state, reconciler, registry and relay.

Every operator action goes through here and edits the desired state first (rbee.queen.desired):
a spawn records the worker (placed, with its id) before it starts it, and forgets it again if the
start fails or is cancelled, stopping whatever was started; a stop forgets it before stopping it,
so it never comes back. The reconciler (rbee.queen.reconcile) makes every reachable hive match.
A request for a model without a worker loads one, and idle workers are parked (rbee.queen.autoload).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from rbee.api.workers import WorkerInfo, WorkerSpec, validate_worker_id
from rbee.config.limits import DEFAULT_LIMITS, Limits
from rbee.config.settings import Paths, Timeouts
from rbee.engines.select import Choice
from rbee.errors import ApiError, RbeeError, WorkerNotFoundError
from rbee.hive.service import HiveService
from rbee.models.manifest import MANIFEST
from rbee.queen.autoload import Autoloader
from rbee.queen.desired import DesiredState, DesiredWorker
from rbee.queen.fleet import Fleet
from rbee.queen.jobs import JobManager
from rbee.queen.local import LocalHive
from rbee.queen.metrics import QueenMetrics
from rbee.queen.policy_store import load_policies, policies_path
from rbee.queen.reconcile import HiveHandle, Reconciler
from rbee.queen.registry import LOCAL_HIVE, Registry
from rbee.queen.relay import Relay, Unavailable

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
    limits: Limits = DEFAULT_LIMITS
    """Admission, deadlines, models loaded on demand and unloaded when idle."""


class Queen:
    """Owns the local hive (integrated mode), the fleet, the desired state and the relay."""

    def __init__(self, paths: Paths, options: QueenOptions, timeouts: Timeouts = Timeouts()):
        self.paths = paths
        # Policies set through the API (`rbee apply`) are kept and win over rbee.toml's.
        kept = load_policies(policies_path(paths.data_dir))
        if kept:
            limits = options.limits
            options = replace(options, limits=replace(limits, models={**limits.models, **kept}))
        self.options = options
        self.timeouts = timeouts
        self.registry = Registry()
        self.desired = DesiredState.load(paths.data_dir / "desired.json", LOCAL_HIVE)
        self.hive = HiveService(
            paths,
            timeouts,
            name=LOCAL_HIVE,
            on_change=self._on_local_change,
            # A standby worker process makes a load on demand half a second sooner.
            standby=options.limits.autoload,
        )
        self.local = LocalHive(self.hive)
        self.reconciler = Reconciler(self.desired, self.handles)
        self.metrics = QueenMetrics()
        self.relay = Relay(
            self.registry,
            timeouts,
            availability=self.unavailable,
            limits=options.limits,
            metrics=self.metrics,
        )
        self.fleet = Fleet(
            timeouts,
            hives_conf=options.hives_conf,
            store=self.hive.store,
            desired=self.desired,
            on_change=self._on_remote_change,
            on_state=lambda _: self.reconciler.wake(),
            command=options.hive_command,
            lease=options.lease,
            standby=options.limits.remote_autoload(),
        )
        self.autoloader = Autoloader(
            limits=options.limits,
            desired=self.desired,
            registry=self.registry,
            reconciler=self.reconciler,
            hives=self.handles,
            spawn=self.spawn,
            store=self.hive.store,
            remote_models=lambda alias: self.fleet.get(alias).models(),
            metrics=self.metrics,
        )
        self.jobs = JobManager()
        self._stack: contextlib.AsyncExitStack | None = None

    def _on_local_change(self, info: WorkerInfo) -> None:
        self.registry.update(LOCAL_HIVE, info, token=self.hive.token)
        if info.state == "exited":
            self.reconciler.wake()

    def _on_remote_change(
        self, hive: str, info: WorkerInfo, url: str | None, token: str | None
    ) -> None:
        self.registry.update(hive, info, url, token)
        if info.state == "exited" or self.desired.get(hive, info.id) is None:
            self.reconciler.wake()

    async def __aenter__(self) -> Queen:
        if self._stack is not None:
            raise RbeeError("a Queen cannot be reopened once it has been closed")
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.relay)
            await stack.enter_async_context(self.hive)
            await stack.enter_async_context(self.fleet)
            # Jobs stop first (they use hives and workers), so they are entered last.
            await stack.enter_async_context(self.jobs)
            taken: set[str] = set()
            for spec in self.options.models:
                taken.add(await self._start_asked(spec, taken))
            tg = await stack.enter_async_context(asyncio.TaskGroup())
            reconciling = tg.create_task(self.reconciler.run(), name="reconciler")
            stack.callback(reconciling.cancel)  # first thing on the way out: nothing restarts
            loading = tg.create_task(self.autoloader.run(), name="autoloader")
            stack.callback(loading.cancel)
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

    async def _start_asked(self, spec: WorkerSpec, taken: set[str]) -> str:
        """A worker the command line asked for (`rbee up`): one the desired state has for that
        model already (after a restart) and that is not `taken` by an earlier ask, else a new
        one; its id. Failures stop the queen's start."""
        for wanted in self.desired.workers(LOCAL_HIVE):
            same = (wanted.spec.model, wanted.spec.embeddings) == (spec.model, spec.embeddings)
            if same and wanted.id not in taken:
                self.desired.set_parked(*wanted.key, False)  # asked for: loaded, parked or not
                with self.reconciler.claim(LOCAL_HIVE, wanted.id):
                    if self.hive.supervisor.get(wanted.id) is None:
                        await self.local.start(wanted.spec, wanted.id)
                return wanted.id
        _, info = await self.spawn(spec)
        return info.id

    # -- hives ---------------------------------------------------------------------------------

    def handles(self) -> dict[str, HiveHandle]:
        """Every hive started, this machine's first."""
        return {LOCAL_HIVE: self.local, **self.fleet.running()}

    def handle(self, hive: str) -> HiveHandle:
        """One started hive; HiveNotStartedError if `hive` is not."""
        if hive == LOCAL_HIVE:
            return self.local
        return self.fleet.get(hive)

    # -- workers -------------------------------------------------------------------------------

    def workers(self) -> list[tuple[str, WorkerInfo]]:
        """Every worker on every hive, with its hive's name."""
        return [(name, w) for name, handle in self.handles().items() for w in handle.workers()]

    async def place(self, spec: WorkerSpec, hive: str = LOCAL_HIVE) -> tuple[WorkerSpec, Choice]:
        """Engine, device and artifact format `spec` would get on `hive` (refusals raise)."""
        return await self.handle(hive).place(spec)

    async def spawn(self, spec: WorkerSpec, hive: str = LOCAL_HIVE) -> tuple[str, WorkerInfo]:
        """Start a worker for `spec` on `hive` (this machine by default) and wait until it serves.

        It is in the desired state from before it starts; if starting fails or is cancelled, it
        leaves it again and whatever was started is stopped.
        """
        handle = self.handle(hive)
        placed, choice = await handle.place(spec)
        taken = [w.id for w in handle.workers()]
        wanted = DesiredWorker(hive, self.desired.new_id(hive, placed.model, taken), placed)
        self.desired.add(wanted)
        with self.reconciler.claim(*wanted.key):
            try:
                info = await handle.start(placed, wanted.id)
            except BaseException:
                self.desired.remove(*wanted.key)
                await asyncio.shield(self._stop_leftover(handle, wanted.id))
                raise
        return hive, dataclasses.replace(info, note=info.note or choice.note)

    async def _stop_leftover(self, handle: HiveHandle, worker_id: str) -> None:
        # What a failed or cancelled start left behind; a remote hive may not have registered the
        # worker yet (the reconciler stops it once it reports it).
        with contextlib.suppress(RbeeError, OSError):
            await handle.stop(worker_id)

    def _split(self, worker_id: str) -> tuple[str, str]:
        """(hive, id there) of a queen-wide id; 400 if it cannot be a worker's id."""
        local_id, _, hive = worker_id.partition("@")
        return hive or LOCAL_HIVE, validate_worker_id(local_id)

    async def stop_worker(self, worker_id: str) -> tuple[str, WorkerInfo]:
        """Stop a worker by its queen-wide id (`ID` here, `ID@hive` elsewhere), for good.

        It leaves the desired state first, so nothing starts it again; a hive that cannot be
        reached now stops it anyway, with the rest of its workers, when it comes back.
        """
        hive, local_id = self._split(worker_id)
        wanted = self.desired.remove(hive, local_id)
        with self.reconciler.claim(hive, local_id):
            try:
                return hive, await self.handle(hive).stop(local_id)
            except WorkerNotFoundError:
                if wanted is None:
                    raise
            except RbeeError:
                if wanted is None:
                    raise
        spec = wanted.spec
        return hive, WorkerInfo(id=local_id, model=spec.model, engine=spec.engine,
                                device=spec.device, state="exited")  # fmt: skip

    async def restart_worker(self, worker_id: str) -> tuple[str, WorkerInfo]:
        """Start a worker again now (ending a crash-loop) and wait until it serves. A wanted
        worker its hive does not run (any more) is started afresh as the desired state has it:
        what `rbee sweep --heal` asks for a worker it finds missing."""
        hive, local_id = self._split(worker_id)
        with self.reconciler.claim(hive, local_id):
            handle = self.handle(hive)
            wanted = self.desired.get(hive, local_id)
            running = {w.id for w in handle.workers() if w.state != "exited"}
            if wanted is not None and not wanted.parked and local_id not in running:
                return hive, await handle.start(wanted.spec, local_id)
            return hive, await handle.restart(local_id)

    # -- what serves and what does not ---------------------------------------------------------

    def known_models(self, *, embeddings: bool) -> dict[str, int]:
        """Models wanted (parked ones too) or running somewhere, ready or not, with their
        smallest context."""
        known = self.desired.models(embeddings=embeddings)
        for model, ctx in self.registry.served_models(embeddings=embeddings, ready=False).items():
            known[model] = min(known.get(model, ctx), ctx)
        return known

    def loadable_context(self, model: str, *, embeddings: bool) -> int | None:
        """The context a worker loaded on demand for `model` would have (the default of
        WorkerSpec); None if a request for it cannot load one."""
        if self.autoloader.loadable(model, embeddings):
            return WorkerSpec(model=model).ctx_size
        return None

    def stored_models(self) -> dict[str, int]:
        """The models in this machine's store, each with when it was stored (the last write of
        its manifest, in seconds since the epoch; reads the store: call it off the event loop)."""
        store = self.hive.store
        since = {}
        for stored in store.list():
            with contextlib.suppress(OSError):  # removed since it was listed
                since[stored.id] = int((store.folder(stored.id) / MANIFEST).stat().st_mtime)
        return since

    def unavailable(self, model: str, embeddings: bool) -> Unavailable | None:
        """Why no ready worker serves `model`, and whether one is coming; None if it is not
        wanted anywhere and cannot be loaded.

        This is where loading on demand starts: when no worker of the model is wanted (parked
        ones aside) and none runs, the autoloader starts one load and the answer is "coming,
        until the load deadline"."""
        loading = self.autoloader.pending(model, embeddings)
        if loading is not None:
            return loading
        why = self._not_serving(model, embeddings)
        if why is not None:
            return why
        return self.autoloader.load(model, embeddings)

    def _not_serving(self, model: str, embeddings: bool) -> Unavailable | None:
        now = time.time()
        endpoints = self.registry.of_model(model, embeddings=embeddings)
        wanted = [d for d in self.desired.workers() if d.spec.model == model
                  and d.spec.embeddings == embeddings and not d.parked]  # fmt: skip
        coming = [e for e in endpoints if e.info.state in ("starting", "restarting", "ready")]
        if coming:
            delays = [max(0.0, (e.info.retry_at or now) - now) for e in coming]
            states = ", ".join(f"{e.id} {e.info.state}" for e in coming)
            return Unavailable(
                ApiError(
                    503,
                    f"no worker of {model!r} is ready ({states}); retry shortly",
                    type="server_error",
                    code="worker_unavailable",
                    retry_after=math.ceil(min(delays)) + 2,
                ),
                coming=True,
            )
        looping = [e for e in endpoints if e.info.state == "crash-loop"]
        present = {(e.hive, e.info.id) for e in endpoints}
        reasons = [f"{e.id} is in {e.info.error}" for e in looping]
        waits: list[float] = []
        handles = self.handles()
        for d in wanted:
            if d.key in present:
                continue
            failure = self.reconciler.failures.get(d.key)
            handle = handles.get(d.hive)
            if failure is not None:
                reasons.append(f"{d.id}@{d.hive} could not start: {failure.error}")
                waits.append(max(1.0, failure.retry_at - now))
            elif handle is None or not handle.available:
                reasons.append(f"{d.id}@{d.hive}: hive {d.hive} is not reachable now")
                waits.append(5.0)
            else:
                reasons.append(f"{d.id}@{d.hive} is being started")
                waits.append(2.0)
        if not reasons:
            return None
        # A worker being started, or on a hive that is reconnecting, is worth waiting for; a
        # crash-loop or a start that failed is not (until someone acts, or the next attempt).
        coming_back = any("not reachable" in r or "being started" in r for r in reasons)
        return Unavailable(
            ApiError(
                503,
                f"no worker can serve {model!r} now: " + "; ".join(reasons),
                type="server_error",
                code="worker_unavailable",
                retry_after=min(waits) if waits else None,
            ),
            coming=coming_back,
        )

    def problems(self) -> list[dict[str, Any]]:
        """Each desired worker that does not serve (and why), and each hive that cannot run."""
        found: list[dict[str, Any]] = []
        handles = self.handles()
        for d in self.desired.workers():
            if d.parked:  # unloaded on purpose; a request brings it back
                continue
            handle = handles.get(d.hive)
            entry = {"hive": d.hive, "worker": d.id, "model": d.spec.model}
            if handle is None or not handle.available:
                state = getattr(handle, "state", "not started")
                error = getattr(handle, "last_error", None)
                found.append({**entry, "state": f"hive {state}", "error": error})
                continue
            info = next((w for w in handle.workers() if w.id == d.id), None)
            if info is None:
                failure = self.reconciler.failures.get(d.key)
                found.append({**entry, "state": "missing",
                              "error": failure.error if failure else None})  # fmt: skip
            elif info.state != "ready":
                found.append({**entry, "state": info.state, "error": info.error})
        for hive in self.fleet.describe_unlaunchable():
            found.append({"hive": hive["name"], "worker": None, "model": None,
                          "state": "hive error", "error": hive["last_error"]})  # fmt: skip
        return found
