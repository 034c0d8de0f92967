"""Runs an engine on one dedicated thread and hands its tokens to asyncio.

Engines are not thread-safe and block while they compute, so every generation runs on the runner's
thread, one at a time, in arrival order (like mlx-lm's server: one generation thread, a queue per
request). Each request gets an asyncio queue; the thread pushes pieces into it with
`call_soon_threadsafe`. Leaving the async iterator early (a client that disconnected) sets the
request's cancel flag, which the engine checks between tokens. Embedding requests (a worker loaded
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
import contextlib
import logging
import os
import queue
import sys
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from rbee.api.openai import ChatRequest, CompletionRequest, EmbeddingInput
from rbee.engines.base import Embedder, Embeddings, Engine, Finish, Prepared, embedder_of
from rbee.errors import EngineError, RbeeError

__all__ = ["COMPUTE_NICENESS", "EngineRunner", "RunnerStats"]

log = logging.getLogger(__name__)

_Item = str | Finish | BaseException

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


@dataclass
class RunnerStats:
    """Counters a worker reports on /health (the tests watch them to see cancellation); they
    include the warm-up decode (rbee.worker.warmup)."""

    requests: int = 0
    active: int = 0
    queued: int = 0
    generated_tokens: int = 0
    embedded_inputs: int = 0
    cancelled: int = 0
    last_finish: dict[str, object] = field(default_factory=dict)


@dataclass
class _Job:
    prepared: Prepared
    cancel: threading.Event
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[_Item]


@dataclass
class _EmbedJob:
    embedder: Embedder
    inputs: tuple[tuple[int, ...], ...]
    cancel: threading.Event
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[Embeddings]


class EngineRunner:
    """Owns the engine thread; `stream()` runs one generation on it, `embed()` one embedding."""

    def __init__(self, engine: Engine, *, niceness: int = COMPUTE_NICENESS) -> None:
        self.engine = engine
        self._niceness = niceness
        self._loaded: asyncio.Future[None] | None = None
        self.stats = RunnerStats()
        self._jobs: queue.SimpleQueue[_Job | _EmbedJob | None] = queue.SimpleQueue()
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
        self._jobs.put(None)
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

    async def embed(self, inputs: tuple[tuple[int, ...], ...]) -> Embeddings:
        """Embed tokenized inputs on the engine thread; cancelling the await stops it there."""
        if self._state != "running":
            raise EngineError("the engine is shutting down")
        loop = asyncio.get_running_loop()
        job = _EmbedJob(self._embedder(), inputs, threading.Event(), loop, loop.create_future())
        self.stats.requests += 1
        self.stats.queued += 1
        self._jobs.put(job)
        try:
            return await job.done
        finally:
            job.cancel.set()

    async def stream(self, prepared: Prepared) -> AsyncGenerator[str | Finish, None]:
        """Yield the pieces of one generation, then its Finish."""
        if self._state != "running":
            raise EngineError("the engine is shutting down")
        job = _Job(prepared, threading.Event(), asyncio.get_running_loop(), asyncio.Queue())
        self.stats.requests += 1
        self.stats.queued += 1
        self._jobs.put(job)
        try:
            while True:
                item = await job.out.get()
                if isinstance(item, BaseException):
                    raise EngineError(f"generation failed: {item}") from item
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            job.cancel.set()

    def _work(self, loop: asyncio.AbstractEventLoop, loaded: asyncio.Future[None]) -> None:
        _lower_this_threads_priority(self._niceness)
        try:
            self.engine.load()
        except BaseException as err:
            loop.call_soon_threadsafe(loaded.set_exception, err)
            return
        loop.call_soon_threadsafe(loaded.set_result, None)
        while (job := self._jobs.get()) is not None:
            self.stats.queued -= 1
            if job.cancel.is_set():
                continue
            self.stats.active += 1
            try:
                if isinstance(job, _EmbedJob):
                    self._run_embed(job)
                else:
                    self._run(job)
            finally:
                self.stats.active -= 1

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
            for item in self.engine.generate(job.prepared, job.cancel):
                if isinstance(item, Finish):
                    self.stats.generated_tokens += item.completion_tokens
                    if item.reason == "cancelled":
                        self.stats.cancelled += 1
                    self.stats.last_finish = {
                        "reason": item.reason,
                        "prompt_tokens": item.prompt_tokens,
                        "completion_tokens": item.completion_tokens,
                    }
                put(item)
        except Exception as err:
            log.exception("generation failed")
            put(err)
