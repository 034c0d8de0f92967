"""Runs an engine on one dedicated thread and hands its tokens to asyncio.

Engines are not thread-safe and block while they compute, so every generation runs on the runner's
thread, one at a time, in arrival order (like mlx-lm's server: one generation thread, a queue per
request). Each request gets an asyncio queue; the thread pushes pieces into it with
`call_soon_threadsafe`. A request with `n` choices runs them one after another, each a generate()
call of its own with that choice's seed, without another request in between. Leaving the async
iterator early (a client that disconnected) sets the request's cancel flag, which the engine checks
between tokens (and the runner between choices). Embedding requests (a worker loaded
for embeddings) take the same thread and queue; their answer is one future, their cancel flag is
checked between llama.cpp batches.

The thread loads the model itself, after lowering its own scheduling priority: the compute threads
the engine starts (OpenMP's pool, created by the first thread that computes) inherit that
priority, so when every core is busy generating, this worker's event loop, which sends the tokens,
still gets a core the moment it wakes. (Other processes, the queen among them, sit in other
scheduling groups and share the machine fairly whatever the niceness.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Literal

from rbee.api.openai import ChatRequest, CompletionRequest, EmbeddingInput
from rbee.engines.base import Embedder, Embeddings, Engine, Finish, Piece, Prepared, embedder_of
from rbee.errors import DeadlineError, EngineError, OverloadedError, RbeeError

__all__ = ["COMPUTE_NICENESS", "Admission", "EngineRunner", "Generation", "RunnerStats"]

log = logging.getLogger(__name__)

_Item = str | Piece | Finish | BaseException | None
"""What the engine thread sends a generation: its pieces and Finishes, an error, None at the end."""

COMPUTE_NICENESS = 5
"""How much lower than the I/O threads' the compute threads' priority is (a nice increment)."""


def _lower_this_threads_priority(increment: int) -> None:
    # Linux schedules threads individually: PRIO_PROCESS with a thread id affects that thread only
    # (and threads it creates later). Elsewhere this would lower the whole process: skip it.
    if increment and sys.platform.startswith("linux"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        except OSError as err:
            log.warning("could not lower the engine thread's priority: %s", err)


@dataclass(frozen=True)
class Admission:
    """How much a worker takes on: the request it runs and `max_queued` more waiting, holding
    `max_queued_tokens` prompt tokens at most between them (0: no bound on tokens)."""

    max_queued: int = 8
    max_queued_tokens: int = 0


@dataclass
class RunnerStats:
    """Counters a worker reports on /health (the queen's metrics and the tests read them); they
    include the warm-up decode (rbee.worker.warmup)."""

    requests: int = 0
    """Admitted."""
    rejected: int = 0
    """Refused at admission: the queue was full."""
    dropped: int = 0
    """Left the queue before the engine saw them (client gone, deadline passed)."""
    started: int = 0
    """Taken by the engine."""
    active: int = 0
    queued: int = 0
    queued_tokens: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    embedded_inputs: int = 0
    cancelled: int = 0
    mean_service_s: float = 0.0
    """Moving average of a request's time on the engine (its queueing excluded)."""
    served: int = 0
    """Requests the engine finished (however they ended)."""
    service_s: float = 0.0
    """Their time on the engine, in all: the mean over any span is Δservice_s / Δserved."""
    last_finish: dict[str, object] = field(default_factory=dict)


@dataclass(eq=False)
class _Job:
    prepared: Prepared
    cancel: threading.Event
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[_Item]
    started: asyncio.Future[float]
    """Set to the seconds it waited when the engine takes it."""
    tokens: int
    admitted_at: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _EmbedJob:
    embedder: Embedder
    inputs: tuple[tuple[int, ...], ...]
    cancel: threading.Event
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[Embeddings]
    started: asyncio.Future[float]
    tokens: int
    admitted_at: float = field(default_factory=time.monotonic)


class Generation:
    """One admitted generation: `started()` waits for the engine to take it, iterating yields
    each choice's pieces then its Finish (choice 0 first; a cancelled choice is the last),
    `close()` takes it out of the queue or stops it."""

    def __init__(self, runner: EngineRunner, job: _Job) -> None:
        self._runner = runner
        self._job = job
        self._timer: asyncio.TimerHandle | None = None
        self._finished = False
        self.expired = False
        """Its deadline passed: it left the queue, or the engine stopped it."""

    def expire_at(self, deadline: float) -> None:
        """Stop it at `deadline` (time.monotonic()): out of the queue, or the engine stops."""
        delay = max(0.0, deadline - time.monotonic())
        self._timer = self._job.loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self.close()

    async def started(self) -> float:
        """Wait until the engine takes it; the seconds it waited in the queue. DeadlineError if
        its deadline passes first."""
        try:
            return await asyncio.shield(self._job.started)
        except asyncio.CancelledError:
            if self.expired and self._job.started.cancelled():
                raise DeadlineError(
                    "the request's deadline passed while it waited in the queue"
                ) from None
            raise

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> str | Piece | Finish:
        if self._finished:
            raise StopAsyncIteration
        item = await self._job.out.get()
        if item is None:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise EngineError(f"generation failed: {item}") from item
        return item

    def close(self) -> None:
        """Leave the queue now if still in it; else stop generating at the next token."""
        if self._timer is not None and not self.expired:
            self._timer.cancel()
        self._runner._withdraw(self._job)


class EngineRunner:
    """Owns the engine thread and its queue; `submit()` admits a generation, `embed()` an
    embedding; a full queue refuses at once with OverloadedError."""

    def __init__(
        self,
        engine: Engine,
        *,
        niceness: int = COMPUTE_NICENESS,
        admission: Admission = Admission(),
    ) -> None:
        self.engine = engine
        self.admission = admission
        self._niceness = niceness
        self._loaded: asyncio.Future[None] | None = None
        self.stats = RunnerStats()
        self._queue: collections.deque[_Job | _EmbedJob] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._state: Literal["new", "running", "closed"] = "new"

    async def __aenter__(self) -> EngineRunner:
        if self._state != "new":
            raise RbeeError("an EngineRunner cannot be reopened once it has been closed")
        loop = asyncio.get_running_loop()
        self._loaded = loop.create_future()
        self._thread = threading.Thread(
            target=self._work,
            args=(loop, self._loaded),
            name=f"engine-{self.engine.name}",
            daemon=True,
        )
        self._thread.start()
        self._state = "running"
        try:
            await self._loaded
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = "closed"
        with self._cond:
            self._closing = True
            self._cond.notify()
        thread = self._thread
        if thread is not None:
            # A generation in progress was cancelled by its client going away; wait for it to
            # notice, but never forever (the thread is a daemon and dies with the process).
            await asyncio.to_thread(thread.join, 5.0)

    async def prepare(self, request: ChatRequest | CompletionRequest) -> Prepared:
        """Template and tokenize off the event loop (tokenizing reads the vocab only)."""
        return await asyncio.to_thread(self.engine.prepare, request)

    def _embedder(self) -> Embedder:
        embedder = embedder_of(self.engine)
        if embedder is None:
            raise EngineError(f"the {self.engine.name} engine was not loaded for embeddings")
        return embedder

    async def tokenize_inputs(
        self, inputs: tuple[EmbeddingInput, ...]
    ) -> tuple[tuple[int, ...], ...]:
        """Tokenize embedding inputs off the event loop (tokenizing reads the vocab only)."""
        return await asyncio.to_thread(self._embedder().tokenize_inputs, inputs)

    # -- admission -----------------------------------------------------------------------------

    def _admit(self, job: _Job | _EmbedJob) -> None:
        if self._state != "running":
            raise EngineError("the engine is shutting down")
        limits = self.admission
        with self._cond:
            waiting = len(self._queue)
            busy = waiting + self.stats.active
            too_many = busy >= 1 + limits.max_queued
            too_long = (
                limits.max_queued_tokens > 0
                and waiting > 0
                and self.stats.queued_tokens + job.tokens > limits.max_queued_tokens
            )
            if too_many or too_long:
                self.stats.rejected += 1
                what = (
                    f"{waiting} request(s) waiting behind the one it runs (limit "
                    f"{limits.max_queued})"
                    if too_many
                    else f"{self.stats.queued_tokens} prompt tokens waiting (limit "
                    f"{limits.max_queued_tokens})"
                )
                # The next place frees up when the request running now ends.
                raise OverloadedError(
                    f"this worker is full: {what}; retry later",
                    retry_after=max(1.0, self.stats.mean_service_s),
                )
            self._queue.append(job)
            self.stats.requests += 1
            self.stats.queued += 1
            self.stats.queued_tokens += job.tokens
            self._cond.notify()

    def _withdraw(self, job: _Job | _EmbedJob) -> None:
        """Take `job` out of the queue if it is still there; in any case, cancel it."""
        job.cancel.set()
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # taken by the engine already (or done)
            self.stats.queued -= 1
            self.stats.queued_tokens -= job.tokens
            self.stats.dropped += 1
        if not job.started.done():
            job.started.cancel()

    def submit(self, prepared: Prepared) -> Generation:
        """Admit one generation (OverloadedError at once when the queue is full)."""
        loop = asyncio.get_running_loop()
        # A request with n choices waits as n requests' worth of prompt tokens: the engine reads
        # its prompt once per choice (a seeded one from a clean cache each time) and generates n
        # answers, so that is the work it holds the queue for. It takes one place in the queue,
        # as it is one request: the queen counts requests per worker (Endpoint.capacity), and a
        # request alone in the queue is still never refused for its size.
        job = _Job(prepared, threading.Event(), loop, asyncio.Queue(), loop.create_future(),
                   tokens=len(prepared.tokens) * prepared.sampling.n)  # fmt: skip
        self._admit(job)
        return Generation(self, job)

    async def stream(self, prepared: Prepared) -> AsyncGenerator[str | Piece | Finish, None]:
        """Yield the pieces of one generation, then its Finish (each choice's in turn)."""
        generation = self.submit(prepared)
        try:
            async for item in generation:
                yield item
        finally:
            generation.close()

    async def embed(self, inputs: tuple[tuple[int, ...], ...]) -> Embeddings:
        """Embed tokenized inputs on the engine thread; cancelling the await stops it there."""
        loop = asyncio.get_running_loop()
        job = _EmbedJob(self._embedder(), inputs, threading.Event(), loop, loop.create_future(),
                        loop.create_future(), tokens=sum(map(len, inputs)))  # fmt: skip
        self._admit(job)
        try:
            return await job.done
        finally:
            self._withdraw(job)

    # -- the engine thread ---------------------------------------------------------------------

    def _next(self) -> _Job | _EmbedJob | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            job = self._queue.popleft()
            self.stats.queued -= 1
            self.stats.queued_tokens -= job.tokens
            if job.cancel.is_set():
                self.stats.dropped += 1
                return job
            self.stats.started += 1
            self.stats.active += 1
        waited = time.monotonic() - job.admitted_at

        def start() -> None:
            if not job.started.done():
                job.started.set_result(waited)

        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            job.loop.call_soon_threadsafe(start)
        return job

    def _work(self, loop: asyncio.AbstractEventLoop, loaded: asyncio.Future[None]) -> None:
        _lower_this_threads_priority(self._niceness)
        try:
            self.engine.load()
        except BaseException as err:
            loop.call_soon_threadsafe(loaded.set_exception, err)
            return
        loop.call_soon_threadsafe(loaded.set_result, None)
        while (job := self._next()) is not None:
            if job.cancel.is_set():
                continue
            began = time.monotonic()
            try:
                if isinstance(job, _EmbedJob):
                    self._run_embed(job)
                else:
                    self._run(job)
            finally:
                took = time.monotonic() - began
                with self._cond:
                    self.stats.active -= 1
                    mean = self.stats.mean_service_s
                    self.stats.mean_service_s = took if not mean else 0.8 * mean + 0.2 * took
                    self.stats.served += 1
                    self.stats.service_s += took

    def _run_embed(self, job: _EmbedJob) -> None:
        def settle(result: Embeddings | None, error: BaseException | None) -> None:
            if job.done.done():  # cancelled: the client went away
                return
            if error is not None:
                job.done.set_exception(EngineError(f"embedding failed: {error}"))
            else:
                assert result is not None
                job.done.set_result(result)

        try:
            result = job.embedder.embed(job.inputs, job.cancel)
        except Exception as err:
            if not job.cancel.is_set():
                log.exception("embedding failed")
            else:
                self.stats.cancelled += 1
            outcome: tuple[Embeddings | None, BaseException | None] = (None, err)
        else:
            self.stats.embedded_inputs += len(result.vectors)
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            job.loop.call_soon_threadsafe(settle, *outcome)

    def _run(self, job: _Job) -> None:
        def put(item: _Item) -> None:
            try:
                job.loop.call_soon_threadsafe(job.out.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                job.cancel.set()

        try:
            for index in range(job.prepared.sampling.n):
                if not self._run_choice(job, index, put):
                    break
        except Exception as err:
            log.exception("generation failed")
            put(err)
        put(None)

    def _run_choice(self, job: _Job, index: int, put: Callable[[_Item], None]) -> bool:
        """Generate choice `index` of `job`; False when the job was cancelled (no more choices)."""
        if index and job.cancel.is_set():
            return False
        prepared = replace(job.prepared, sampling=job.prepared.sampling.for_choice(index))
        finish: Finish | None = None
        for item in self.engine.generate(prepared, job.cancel):
            if not isinstance(item, Finish):
                put(item)
                continue
            finish = replace(item, index=index)
            if index == 0:  # the prompt counts once, as in the answer's usage
                self.stats.prompt_tokens += finish.prompt_tokens
            self.stats.generated_tokens += finish.completion_tokens
            if finish.reason == "cancelled":
                self.stats.cancelled += 1
            self.stats.last_finish = {
                "reason": finish.reason,
                "prompt_tokens": finish.prompt_tokens,
                "completion_tokens": finish.completion_tokens,
            }
            put(finish)
        if finish is None:
            raise EngineError("the engine ended a choice without finishing it")
        return finish.reason != "cancelled"
