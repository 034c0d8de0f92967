"""The reconciler: makes each hive run what the desired state wants, no more, no less.

`plan` is the decision, a pure function of the desired workers, the workers a hive reports and
the ones being started or stopped right now. The `Reconciler` acts on it for every hive that can
be reached: it starts what is missing (a hive that came back after a crash, a queen that was
restarted) and stops what is not wanted (a worker whose spawn was cancelled after the hive had
started it). A worker that fails to start is tried again with backoff (1 s doubling to 60 s), and
its error is kept for /health. It wakes when something changes and every few seconds anyway.

A parked worker (unloaded for being idle, rbee.queen.autoload) is wanted but not started, and
stopped if it runs.

Crashes of single workers are the hive's own business (rbee.hive.supervisor restarts them): to
the reconciler a restarting or crash-looping worker is present, not missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from rbee.api.workers import WorkerInfo, WorkerSpec
from rbee.engines.select import Choice
from rbee.errors import RbeeError, WorkerNotFoundError
from rbee.queen.desired import DesiredState, DesiredWorker

__all__ = ["HiveHandle", "Plan", "Reconciler", "StartFailure", "plan"]

log = logging.getLogger(__name__)


class HiveHandle(Protocol):
    """What the queen does with a hive, this machine's or another's."""

    @property
    def name(self) -> str:
        """The hive's alias (`localhost` for this machine's)."""
        ...

    @property
    def available(self) -> bool:
        """True while the hive can be asked to do things (a remote one: connected)."""
        ...

    def workers(self) -> list[WorkerInfo]:
        """The workers the hive runs, as last reported."""
        ...

    async def place(self, spec: WorkerSpec) -> tuple[WorkerSpec, Choice]:
        """Engine, device, repacking and format for `spec` there, by fresh facts."""
        ...

    async def start(self, spec: WorkerSpec, worker_id: str) -> WorkerInfo:
        """Fetch or upload the model if needed, start the worker, wait until it serves."""
        ...

    async def stop(self, worker_id: str) -> WorkerInfo:
        """Stop one worker; WorkerNotFoundError if the hive has none by that id."""
        ...

    async def restart(self, worker_id: str) -> WorkerInfo:
        """Start one worker again now (ending a crash-loop) and wait until it serves."""
        ...


@dataclass(frozen=True)
class Plan:
    """What one hive needs: workers to start, and ids of workers to stop."""

    start: tuple[DesiredWorker, ...] = ()
    stop: tuple[str, ...] = ()


def plan(
    desired: Sequence[DesiredWorker], actual: Sequence[WorkerInfo], busy: Collection[str] = ()
) -> Plan:
    """Start what is wanted and absent, stop what is present and unwanted (or parked); leave
    `busy` ids be."""
    present = {w.id for w in actual if w.state != "exited"}
    wanted = {d.id for d in desired if not d.parked}
    return Plan(
        start=tuple(
            d for d in desired if not d.parked and d.id not in present and d.id not in busy
        ),
        stop=tuple(
            w.id
            for w in actual
            if w.id not in wanted and w.id not in busy and w.state not in ("stopping", "exited")
        ),
    )


@dataclass(frozen=True)
class StartFailure:
    """A desired worker that could not be started, and when it is tried again."""

    error: str
    attempts: int
    retry_at: float
    """time.time() of the next attempt."""


class Reconciler:
    """Runs `plan` for every reachable hive; one long task in the queen."""

    def __init__(
        self,
        desired: DesiredState,
        hives: Callable[[], Mapping[str, HiveHandle]],
        *,
        interval: float = 5.0,
        first_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        self._desired = desired
        self._hives = hives
        self._interval = interval
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._wake = asyncio.Event()
        self._busy: set[tuple[str, str]] = set()
        self.failures: dict[tuple[str, str], StartFailure] = {}
        """Desired workers that failed to start, by (hive, id): their error for /health."""

    def wake(self) -> None:
        """Look again now (something changed)."""
        self._wake.set()

    @contextlib.contextmanager
    def claim(self, hive: str, worker_id: str) -> Iterator[None]:
        """Keep the reconciler off one worker while the caller starts or stops it."""
        key = (hive, worker_id)
        self._busy.add(key)
        try:
            yield
        finally:
            self._busy.discard(key)
            self.wake()

    def busy(self, hive: str, worker_id: str) -> bool:
        """True while someone starts or stops that worker."""
        return (hive, worker_id) in self._busy

    async def run(self) -> None:
        """Reconcile until cancelled."""
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wake.clear()
                try:
                    self._round(tg)
                except Exception:  # a bug here must not stop the queen: log it, go on
                    log.exception("reconciling failed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()

    def _round(self, tg: asyncio.TaskGroup) -> None:
        now = time.time()
        for name, hive in self._hives().items():
            if not hive.available:
                continue
            busy = {i for h, i in self._busy if h == name}
            todo = plan(self._desired.workers(name), hive.workers(), busy)
            for wanted in todo.start:
                failure = self.failures.get(wanted.key)
                if failure is not None and failure.retry_at > now:
                    continue
                self._busy.add(wanted.key)
                tg.create_task(self._start(hive, wanted), name=f"reconcile-start-{wanted.id}")
            for worker_id in todo.stop:
                self._busy.add((name, worker_id))
                tg.create_task(self._stop(hive, worker_id), name=f"reconcile-stop-{worker_id}")
        for key in list(self.failures):
            if self._desired.get(*key) is None:
                del self.failures[key]

    async def _start(self, hive: HiveHandle, wanted: DesiredWorker) -> None:
        try:
            log.info("%s: starting worker %s (desired, not running)", hive.name, wanted.id)
            await hive.start(wanted.spec, wanted.id)
        except Exception as err:
            previous = self.failures.get(wanted.key)
            attempts = (previous.attempts if previous else 0) + 1
            delay = min(self._max_delay, self._first_delay * 2 ** (attempts - 1))
            message = str(err) if isinstance(err, RbeeError) else repr(err)
            self.failures[wanted.key] = StartFailure(message, attempts, time.time() + delay)
            log.warning("%s: worker %s could not start (attempt %d, next in %.0fs): %s",
                        hive.name, wanted.id, attempts, delay, message)  # fmt: skip
        else:
            self.failures.pop(wanted.key, None)
        finally:
            self._busy.discard(wanted.key)
            self.wake()

    async def _stop(self, hive: HiveHandle, worker_id: str) -> None:
        try:
            log.info("%s: stopping worker %s (not desired)", hive.name, worker_id)
            await hive.stop(worker_id)
        except WorkerNotFoundError:
            pass
        except Exception as err:
            log.warning("%s: could not stop worker %s: %r", hive.name, worker_id, err)
        finally:
            self._busy.discard((hive.name, worker_id))
            self.wake()
