"""Long operations run as jobs: one task each, in one TaskGroup the JobManager owns.

A job's runner reports through a `Progress`; every event goes into the job's history (the last
`max_events`), which subscribers replay before following live events, so a late `stream` sees the
whole story. A job ends with one final event: `done`, or `error` with an RbeeError's message,
"internal error: ..." for a bug (logged with its traceback), or "cancelled". Finished jobs are
kept (the last `keep_finished`) so their history can still be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Literal

from rbee.api.jobs import JobEvent, JobEventType, JobState, Operation
from rbee.errors import RbeeError

__all__ = ["Job", "JobManager", "Progress", "Runner", "RunnerFactory"]

log = logging.getLogger(__name__)


class Progress:
    """What a runner reports through: steps, log lines and transfer progress."""

    def __init__(self, job: Job, interval: float) -> None:
        self._job = job
        self._interval = interval
        self._last_progress = 0.0
        self._last_message: str | None = None
        self._loop = asyncio.get_running_loop()

    def step(self, n: int, of: int, message: str) -> None:
        """Step `n` of `of` begins: `[n/of] message`."""
        self._job.emit("step", message, step=n, steps=of)

    def log(self, message: str) -> None:
        """One line of detail."""
        self._job.emit("log", message)

    def progress(self, done: int, total: int | None, message: str) -> None:
        """`done` of `total` units of `message` (total None: unknown); rate-limited per message."""
        now = time.monotonic()
        finished = total is not None and done >= total
        same = message == self._last_message
        if same and not finished and now - self._last_progress < self._interval:
            return
        self._last_progress, self._last_message = now, message
        self._job.emit("progress", message, done=done, total=total)

    def from_thread(self) -> Callable[[str, int, int | None], None]:
        """A `progress(stage, done, total)` callback (rbee.models.sources) safe in any thread."""

        def report(stage: str, done: int, total: int | None) -> None:
            # The loop is gone when the thread outlives a cancelled job at shutdown.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.progress, done, total, stage)

        return report


Runner = Callable[[Progress], Awaitable[dict[str, Any] | None]]
"""The work of one job: reports through Progress, returns its result (None means {})."""

RunnerFactory = Callable[[Any, Any], Runner]
"""Builds the runner of one kind of job from its parsed operation and the app's state."""

Finished = Literal["succeeded", "failed", "cancelled"]


class Job:
    """One job: its operation, state, bounded event history and outcome."""

    def __init__(self, operation: Operation, *, max_events: int) -> None:
        self.id = f"job-{secrets.token_hex(6)}"
        self.operation = operation
        self.kind = operation.kind
        self.state: JobState = "queued"
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.cancel_reason: str | None = None
        self._max_events = max_events
        self._events: list[JobEvent] = []
        self._first_seq = 1
        self._seq = 0
        self._wakeup = asyncio.Event()

    @property
    def finished(self) -> bool:
        """True once the job has its final event."""
        return self.finished_at is not None

    @property
    def event_count(self) -> int:
        """How many events the job has reported (older ones may have been dropped)."""
        return self._seq

    def emit(
        self,
        type: JobEventType,
        message: str,
        *,
        step: int | None = None,
        steps: int | None = None,
        done: int | None = None,
        total: int | None = None,
    ) -> None:
        """Record one event and wake the subscribers; ignored once the job has finished."""
        if self.finished:
            return
        self._seq += 1
        event = JobEvent(
            self._seq, self.id, type, message, step, steps, done, total, at=time.time()
        )
        self._events.append(event)
        if len(self._events) > 2 * self._max_events:
            self._trim()  # in halves, so that appending stays O(1) amortised
        if type != "progress":
            log.info("job %s: %s%s", self.id, f"[{type}] " if type != "step" else "", message)
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _trim(self) -> None:
        drop = max(0, len(self._events) - self._max_events)
        del self._events[:drop]
        self._first_seq += drop

    def start(self) -> None:
        """Mark the job running (the JobManager calls this)."""
        self.state = "running"
        self.started_at = time.time()

    def finish(
        self, state: Finished, *, result: dict[str, Any] | None = None, error: str = ""
    ) -> None:
        """Record the outcome and the final event, once (the JobManager calls this)."""
        if self.finished:
            return
        if state == "succeeded":
            self.result = result if result is not None else {}
            self.emit("done", "done")
        else:
            self.error = error or state
            self.emit("error", self.error)
        self.state = state
        self.finished_at = time.time()
        self._trim()

    def events_after(self, seq: int) -> list[JobEvent]:
        """The kept events numbered after `seq`."""
        return self._events[max(0, seq + 1 - self._first_seq) :]

    async def next_events(self, after: int) -> list[JobEvent]:
        """Events after `after`, waiting for one if there is none yet; [] once finished."""
        while True:
            events = self.events_after(after)
            if events or self.finished:
                return events
            await self._wakeup.wait()

    async def follow(self, after: int = 0) -> AsyncIterator[JobEvent]:
        """The history after `after`, then live events, ending with the final event."""
        while True:
            events = await self.next_events(after)
            if not events:
                return
            for event in events:
                yield event
                if event.final:
                    return
            after = events[-1].seq

    async def wait(self) -> None:
        """Return once the job has finished."""
        async for _ in self.follow(self._seq):
            pass

    def to_json(self) -> dict[str, Any]:
        """The job as `GET /v1/jobs/{id}` answers."""
        last = self._events[-1].message if self._events else None
        return {
            "object": "job",
            "job_id": self.id,
            "kind": self.kind,
            "state": self.state,
            "operation": self.operation.to_json(),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
            "events": self.event_count,
            "last_message": last,
        }


class JobManager:
    """Runs jobs in one TaskGroup; leaving it cancels and awaits every running job."""

    def __init__(
        self, *, keep_finished: int = 200, max_events: int = 10_000, progress_interval: float = 0.1
    ) -> None:
        self._keep_finished = keep_finished
        self._max_events = max_events
        self._progress_interval = progress_interval
        self._jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finished: deque[str] = deque()
        self._tg: asyncio.TaskGroup | None = None
        self._state: Literal["new", "open", "closed"] = "new"

    async def __aenter__(self) -> JobManager:
        if self._state != "new":
            raise RbeeError("a JobManager cannot be reopened once it has been closed")
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        self._state = "closed"
        for job_id in list(self._tasks):
            self.cancel(job_id, reason="cancelled: the queen is stopping")
        await self._tg.__aexit__(None, None, None)

    def submit(self, operation: Operation, runner: Runner) -> Job:
        """Start a job running `runner`; it reports through the Progress it is given."""
        if self._state != "open" or self._tg is None:
            raise RbeeError("jobs are not accepted: the queen is stopping")
        job = Job(operation, max_events=self._max_events)
        self._jobs[job.id] = job
        self._tasks[job.id] = self._tg.create_task(self._run(job, runner), name=job.id)
        log.info("job %s started: %s", job.id, operation.to_json())
        return job

    def get(self, job_id: str) -> Job | None:
        """The job `job_id`, running or recently finished."""
        return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """Every known job, oldest first."""
        return list(self._jobs.values())

    def cancel(self, job_id: str, *, reason: str = "cancelled") -> Job | None:
        """Cancel a running job (its final event says `reason`); None if there is no such job."""
        job = self._jobs.get(job_id)
        task = self._tasks.get(job_id)
        if job is not None and task is not None and not job.finished:
            job.cancel_reason = reason
            if job.state == "queued":
                # The task never starts, so its handler cannot record this.
                self._done(job, "cancelled", error=reason)
            task.cancel()
        return job

    async def _run(self, job: Job, runner: Runner) -> None:
        job.start()
        try:
            result = await runner(Progress(job, self._progress_interval))
        except asyncio.CancelledError:
            self._done(job, "cancelled", error=job.cancel_reason or "cancelled")
            raise
        except RbeeError as err:
            self._done(job, "failed", error=str(err))
        except Exception as err:
            log.exception("job %s (%s) failed with an unexpected error", job.id, job.kind)
            self._done(job, "failed", error=f"internal error: {err.__class__.__name__}: {err}")
        else:
            self._done(job, "succeeded", result=result)

    def _done(
        self, job: Job, state: Finished, *, result: dict[str, Any] | None = None, error: str = ""
    ) -> None:
        if job.finished:
            return
        job.finish(state, result=result, error=error)
        self._tasks.pop(job.id, None)
        self._finished.append(job.id)
        while len(self._finished) > self._keep_finished:
            self._jobs.pop(self._finished.popleft(), None)
