"""Models on demand: a request for a model without a worker loads one; idle workers are parked.

Loading: when the relay finds no ready worker of a model it asks the queen why
(`Queen.unavailable`); if nothing of the model is wanted or coming and the model can be loaded, the
`Autoloader` starts one load and says "coming, until the load deadline", so the request waits
(streams get SSE keep-alive comments meanwhile). A second request for the same model while that
load runs gets the same answer: one load per (model, embeddings), never two spawns. A worker that
was parked comes back where it was; else a new worker starts on this machine if the model is in
its store and its policy says `autoload` (the default), or on a started remote hive whose store
has it if the model's own table in rbee.toml says `autoload = true` (asking remote stores is a
round trip over SSH, so it is never done for a model nobody opted in). A load that fails is
remembered for a few seconds, so requests in that window get a 503 naming the cause at once;
after that the next request tries again. A model that is stored nowhere is never downloaded
because of a request.

Parking: a ready worker idle for longer than its model's `idle_ttl` stays in the desired state,
marked parked, and is stopped; the reconciler leaves it stopped. When a hive lacks the memory for
a load, the least recently used idle worker there is parked first (LRU) and the load tried again;
a worker serving a request is never parked. Loads and unloads are logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from rbee.api.workers import WorkerInfo, WorkerSpec
from rbee.config.limits import Limits
from rbee.errors import ApiError, InsufficientMemoryError, RbeeError, WorkerNotFoundError
from rbee.models.store import ModelStore
from rbee.queen.desired import DesiredState, DesiredWorker
from rbee.queen.metrics import QueenMetrics
from rbee.queen.reconcile import HiveHandle, Reconciler
from rbee.queen.registry import LOCAL_HIVE, Endpoint, Registry
from rbee.queen.relay import Unavailable

__all__ = ["FAILURE_BACKOFF", "Autoloader", "idle_seconds", "lru_victim", "to_park"]

log = logging.getLogger(__name__)

FAILURE_BACKOFF = 5.0
"""Seconds a failed load is answered from memory before a request may try again."""

T = TypeVar("T")

Key = tuple[str, bool]
"""(model, embeddings): what one load is for."""


def idle_seconds(endpoint: Endpoint, now: float) -> float:
    """How long a worker has served nothing: since its last request, and at most since its
    process started (`now` is time.time(); a worker that took long to load is not idle yet)."""
    idle = endpoint.idle_for
    if endpoint.info.started_at:
        idle = min(idle, max(0.0, now - endpoint.info.started_at))
    return idle


def to_park(
    endpoints: Iterable[Endpoint], ttl: Callable[[str], float], now: float
) -> list[Endpoint]:
    """The ready workers serving nothing for longer than their model's idle TTL (0: never)."""
    found = []
    for e in endpoints:
        limit = ttl(e.info.model)
        idle = e.info.state == "ready" and e.outstanding == 0
        if idle and limit > 0 and idle_seconds(e, now) > limit:
            found.append(e)
    return found


def lru_victim(endpoints: Iterable[Endpoint], hive: str, now: float) -> Endpoint | None:
    """The worker on `hive` to unload for room: the ready one idle the longest; None when every
    worker there is serving a request (a busy worker is never unloaded)."""
    idle = [
        e for e in endpoints if e.hive == hive and e.info.state == "ready" and e.outstanding == 0
    ]
    return max(idle, key=lambda e: idle_seconds(e, now), default=None)


def _short_of_memory(err: BaseException) -> bool:
    if isinstance(err, InsufficientMemoryError):
        return True
    return isinstance(err, ApiError) and err.code == "insufficient_memory"


@dataclass(frozen=True)
class _Failure:
    answer: Unavailable
    until: float
    """time.monotonic() after which a request may try again."""


class Autoloader:
    """Loads models when requests ask for them and parks workers nobody uses; one per queen."""

    def __init__(
        self,
        *,
        limits: Limits,
        desired: DesiredState,
        registry: Registry,
        reconciler: Reconciler,
        hives: Callable[[], Mapping[str, HiveHandle]],
        spawn: Callable[[WorkerSpec, str], Awaitable[tuple[str, WorkerInfo]]],
        store: ModelStore,
        remote_models: Callable[[str], Awaitable[list[dict[str, Any]]]],
        metrics: QueenMetrics,
    ) -> None:
        self.limits = limits
        self._desired = desired
        self._registry = registry
        self._reconciler = reconciler
        self._hives = hives
        self._spawn = spawn
        self._store = store
        self._remote_models = remote_models
        self._metrics = metrics
        self._tg: asyncio.TaskGroup | None = None
        self._loads: dict[Key, Unavailable] = {}
        self._failures: dict[Key, _Failure] = {}

    # -- what can be loaded --------------------------------------------------------------------

    def parked(self, model: str, embeddings: bool) -> list[DesiredWorker]:
        """The parked workers of `model` (with that capability), this machine's first."""
        found = [
            d
            for d in self._desired.workers()
            if d.parked and d.spec.model == model and d.spec.embeddings == embeddings
        ]
        return sorted(found, key=lambda d: d.hive != LOCAL_HIVE)

    def stored_here(self, model: str) -> bool:
        """True if this machine's store holds `model` (one small file read)."""
        try:
            return self._store.get(model) is not None
        except RbeeError:
            return False

    def loadable(self, model: str, embeddings: bool) -> bool:
        """True if a request for `model` may load it: a parked worker of it, or a policy that
        says autoload and a store that has it (remote: any started hive, checked when loading)."""
        if self.parked(model, embeddings):
            return True
        policy = self.limits.policy(model)
        if not policy.autoload:
            return False
        if self.stored_here(model):
            return True
        return policy.remote and any(
            name != LOCAL_HIVE and h.available for name, h in self._hives().items()
        )

    # -- loading -------------------------------------------------------------------------------

    def pending(self, model: str, embeddings: bool) -> Unavailable | None:
        """The answer for a load of `model` that runs now or failed moments ago; else None."""
        key = (model, embeddings)
        loading = self._loads.get(key)
        if loading is not None:
            return loading
        failure = self._failures.get(key)
        if failure is not None:
            if time.monotonic() < failure.until:
                return failure.answer
            del self._failures[key]
        return None

    def load(self, model: str, embeddings: bool) -> Unavailable | None:
        """Start loading `model` (one load at a time per model), answering "coming until the
        deadline"; None when it cannot be loaded (or the queen is not running)."""
        key = (model, embeddings)
        already = self.pending(model, embeddings)
        if already is not None:
            return already
        if self._tg is None or not self.loadable(model, embeddings):
            return None
        timeout = self.limits.load_timeout
        started = time.monotonic()
        answer = Unavailable(
            ApiError(
                503,
                f"the model {model!r} did not load within {timeout:g}s (load_timeout); retry later",
                type="server_error",
                code="model_loading",
                retry_after=5,
            ),
            coming=True,
            until=started + timeout,
        )
        self._loads[key] = answer
        self._tg.create_task(self._load(key, started), name=f"load-{model}")
        return answer

    async def _load(self, key: Key, started: float) -> None:
        model, embeddings = key
        where: list[str] = []
        try:
            async with asyncio.timeout(self.limits.load_timeout):
                worker = await self._bring(model, embeddings, where)
        except Exception as err:
            seconds = time.monotonic() - started
            if isinstance(err, TimeoutError):
                cause = f"it did not load within {self.limits.load_timeout:g}s (load_timeout)"
            else:
                cause = str(err) if isinstance(err, RbeeError) else repr(err)
            hive = where[-1] if where else ""
            on = f" on hive {hive}" if hive else ""
            log.warning("load of %s%s failed after %.1fs: %s", model, on, seconds, cause)
            self._metrics.loaded(model, hive=hive, seconds=seconds, ok=False)
            self._failures[key] = _Failure(
                Unavailable(
                    ApiError(
                        503,
                        f"the model {model!r} could not be loaded{on}: {cause}",
                        type="server_error",
                        code="model_load_failed",
                        retry_after=math.ceil(FAILURE_BACKOFF),
                    ),
                    coming=False,
                ),
                time.monotonic() + FAILURE_BACKOFF,
            )
        else:
            seconds = time.monotonic() - started
            log.info("loaded %s on hive %s as worker %s in %.1fs (a request asked for it)",
                     model, where[-1], worker, seconds)  # fmt: skip
            self._metrics.loaded(model, hive=where[-1], seconds=seconds, ok=True)
            self._failures.pop(key, None)
        finally:
            self._loads.pop(key, None)

    async def _bring(self, model: str, embeddings: bool, where: list[str]) -> str:
        """Bring back a parked worker of `model`, or start a new one; its id."""
        parked = self.parked(model, embeddings)
        if parked:
            wanted = parked[0]
            where.append(wanted.hive)
            await self._unpark(wanted)
            return wanted.id
        hive = await self._where(model)
        where.append(hive)
        spec = WorkerSpec(
            model=model,
            embeddings=embeddings,
            max_queued=self.limits.max_queued,
            max_queued_tokens=self.limits.max_queued_tokens,
        )
        _, info = await self._making_room(hive, lambda: self._spawn(spec, hive))
        return info.id

    async def _where(self, model: str) -> str:
        """The hive to load `model` on: this machine if it stores it, else a started remote hive
        that does (only for a model whose own policy opted in)."""
        policy = self.limits.policy(model)
        if not policy.autoload:
            raise RbeeError(f"autoload is off for {model!r}")
        if await asyncio.to_thread(self.stored_here, model):
            return LOCAL_HIVE
        if policy.remote:
            for name, hive in self._hives().items():
                if name == LOCAL_HIVE or not hive.available:
                    continue
                try:
                    stored = await self._remote_models(name)
                except RbeeError as err:
                    log.warning("%s: cannot list its models (%s); not loading %s there",
                                name, err, model)  # fmt: skip
                    continue
                if any(m.get("id") == model for m in stored):
                    return name
        raise RbeeError(
            f"no started hive stores it; get it with `rbee model download {model}` "
            "(or `rbee model import`), then ask again"
        )

    async def _unpark(self, wanted: DesiredWorker) -> None:
        """Start a parked worker again where it was; parked again if that fails."""
        hive = self._hives().get(wanted.hive)
        if hive is None or not hive.available:
            raise RbeeError(f"hive {wanted.hive} is not reachable now")
        while self._reconciler.busy(*wanted.key):  # being parked right now: let it stop first
            await self._registry.wait_changed(0.5)
        self._desired.set_parked(*wanted.key, False)
        try:
            with self._reconciler.claim(*wanted.key):
                await self._making_room(wanted.hive, lambda: hive.start(wanted.spec, wanted.id))
        except BaseException:
            if self._desired.set_parked(*wanted.key, True) is not None:
                with contextlib.suppress(RbeeError, OSError):
                    await asyncio.shield(hive.stop(wanted.id))
            raise

    async def _making_room(self, hive: str, start: Callable[[], Awaitable[T]]) -> T:
        """`start()`; each time the hive is short of memory, park its least recently used idle
        worker and try again (the memory error itself when none is idle)."""
        while True:
            try:
                return await start()
            except (RbeeError, OSError) as err:
                if not _short_of_memory(err):
                    raise
                victim = lru_victim(self._registry.endpoints(), hive, time.time())
                if victim is None or not await self.park(victim, "lru"):
                    raise
                log.info("%s: retrying the load after unloading %s", hive, victim.id)

    # -- parking -------------------------------------------------------------------------------

    async def park(self, endpoint: Endpoint, reason: str) -> bool:
        """Unload one worker and keep it wanted, parked (`reason`: idle or lru); False if it is
        not a wanted idle worker now."""
        wanted = self._desired.get(endpoint.hive, endpoint.info.id)
        if wanted is None or wanted.parked or endpoint.outstanding:
            return False
        if self._reconciler.busy(*wanted.key):
            return False
        hive = self._hives().get(endpoint.hive)
        if hive is None or not hive.available:
            return False
        idle = idle_seconds(endpoint, time.time())
        self._desired.set_parked(*wanted.key, True)
        # No request may be routed to it from now on (nothing was awaited since it was found
        # idle, so none is on its way): the hive reports it stopping, then exited, soon after.
        stopping = dataclasses.replace(endpoint.info, state="stopping")
        self._registry.update(endpoint.hive, stopping, endpoint.forward_url, endpoint.token)
        started = time.monotonic()
        with self._reconciler.claim(*wanted.key):
            try:
                await hive.stop(wanted.id)
            except WorkerNotFoundError:
                pass
            except (RbeeError, OSError) as err:  # the reconciler stops it when it can
                log.warning("%s: could not unload worker %s now: %s", hive.name, wanted.id, err)
        log.info("unloaded worker %s (%s) on hive %s: %s, idle for %.0fs; stopped in %.1fs",
                 endpoint.id, wanted.spec.model, wanted.hive,
                 "idle past its TTL" if reason == "idle" else "room for another model",
                 idle, time.monotonic() - started)  # fmt: skip
        self._metrics.unloaded(wanted.spec.model, hive=wanted.hive, reason=reason)
        return True

    def _interval(self) -> float:
        ttls = [self.limits.policy(e.info.model).idle_ttl for e in self._registry.endpoints()]
        shortest = min((t for t in ttls if t > 0), default=20.0)
        return max(0.25, min(5.0, shortest / 4))

    async def run(self) -> None:
        """Park idle workers, and run the loads requests start, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                while True:
                    await asyncio.sleep(self._interval())
                    try:
                        await self._park_idle()
                    except Exception:  # a bug here must not stop the queen: log it, go on
                        log.exception("unloading idle workers failed")
            finally:
                self._tg = None

    async def _park_idle(self) -> None:
        ttl = lambda model: self.limits.policy(model).idle_ttl  # noqa: E731
        for endpoint in to_park(self._registry.endpoints(), ttl, time.time()):
            busy_loading = (endpoint.info.model, endpoint.info.embeddings) in self._loads
            # Still idle now? (an unload before it in this loop took time: a request may have
            # come and gone meanwhile)
            if not busy_loading and to_park([endpoint], ttl, time.time()):
                await self.park(endpoint, "idle")
