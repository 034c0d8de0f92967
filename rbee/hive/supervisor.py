"""Starts, watches and stops the worker processes of one hive.

Each worker is a child process in its own process group, holding the read end of a lifeline pipe
whose write end only this process holds; it reports readiness on a second pipe once its model is
loaded and its port is open. Stopping is TERM to the group, then KILL after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Literal

from rbee.api.workers import WorkerInfo, WorkerSpec
from rbee.config.settings import Paths, Timeouts
from rbee.errors import RbeeError, WorkerError
from rbee.hive.argv import worker_argv
from rbee.models.catalog import validate_model_id
from rbee.proc import stop_process_group

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

_LOG_TAIL = 1500


@dataclass
class _Worker:
    info: WorkerInfo
    proc: asyncio.subprocess.Process
    lifeline: int
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


def _tail(path: Path, lines: int = 3) -> str:
    """The last few non-empty lines of a log, on one line (errors are printed as one line)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _LOG_TAIL))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


class Supervisor:
    """Owns the worker processes of this machine; use as an async context manager."""

    def __init__(
        self,
        paths: Paths,
        timeouts: Timeouts = Timeouts(),
        *,
        on_change: Callable[[WorkerInfo], None] | None = None,
        python: str | None = None,
    ) -> None:
        self.paths = paths
        self.timeouts = timeouts
        self._on_change = on_change
        self._python = python
        self._workers: dict[str, _Worker] = {}
        self._ids = itertools.count(1)
        self._tg: asyncio.TaskGroup | None = None
        self._state: Literal["new", "open", "closed"] = "new"

    async def __aenter__(self) -> Supervisor:
        if self._state != "new":
            raise RbeeError("a Supervisor cannot be reopened once it has been closed")
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
        self._state = "closed"
        try:
            await self.stop_all()
        finally:
            # Every watcher ends once its worker has exited. The exception that brought us here
            # (if any) is not handed to the task group, which would wrap it in an ExceptionGroup:
            # it propagates as it is once we return.
            assert self._tg is not None
            await self._tg.__aexit__(None, None, None)

    def hurry(self, grace: float) -> None:
        """From now on, KILL workers `grace` seconds after TERM (if that is sooner)."""
        if grace < self.timeouts.stop_grace:
            self.timeouts = replace(self.timeouts, stop_grace=grace)

    def workers(self) -> list[WorkerInfo]:
        """Every worker this supervisor started and has not forgotten, oldest first."""
        return [w.info for w in self._workers.values()]

    def _update(self, worker: _Worker, **changes: object) -> None:
        worker.info = replace(worker.info, **changes)  # type: ignore[arg-type]
        if self._on_change is not None:
            self._on_change(worker.info)

    async def spawn(self, spec: WorkerSpec) -> WorkerInfo:
        """Start a worker for `spec` and wait until it serves; WorkerError (with its log) if not."""
        if self._state != "open" or self._tg is None:
            raise WorkerError("the hive is not running")
        validate_model_id(spec.model)
        worker_id = f"{spec.model}-{next(self._ids)}"
        self.paths.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.paths.logs_dir / f"worker-{worker_id}.log"
        ready_r, ready_w = os.pipe()
        life_r, life_w = os.pipe()
        os.set_inheritable(life_w, False)
        argv = worker_argv(
            spec,
            data_dir=str(self.paths.data_dir),
            ready_fd=ready_w,
            lifeline_fd=life_r,
            parent_pid=os.getpid(),
            **({"python": self._python} if self._python else {}),
        )
        log.info("starting worker %s: %s", worker_id, " ".join(argv))
        try:
            with log_path.open("ab") as log_file:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    pass_fds=(ready_w, life_r),
                    start_new_session=True,
                )
        except OSError as err:
            os.close(life_w)
            os.close(ready_r)
            raise WorkerError(f"could not start worker {worker_id}: {err}") from err
        finally:
            os.close(ready_w)
            os.close(life_r)
        worker = _Worker(
            info=WorkerInfo(
                id=worker_id, model=spec.model, engine=spec.engine, device=spec.device,
                state="starting", pid=proc.pid, started_at=time.time(), log_path=str(log_path),
                context_length=spec.ctx_size, embeddings=spec.embeddings,
            ),
            proc=proc,
            lifeline=life_w,
        )  # fmt: skip
        self._workers[worker_id] = worker
        self._update(worker)
        self._tg.create_task(self._watch(worker), name=f"watch-{worker_id}")
        try:
            port = await self._wait_ready(worker, ready_r)
        except BaseException:
            await self._stop(worker)
            self._workers.pop(worker_id, None)
            raise
        self._update(worker, state="ready", port=port)
        log.info("worker %s ready on port %d", worker_id, port)
        return worker.info

    async def _wait_ready(self, worker: _Worker, fd: int) -> int:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
        )
        try:
            line = await asyncio.wait_for(reader.readline(), self.timeouts.worker_ready)
        except TimeoutError:
            raise WorkerError(
                f"worker {worker.info.id} was not ready after {self.timeouts.worker_ready:.0f}s; "
                f"log {worker.info.log_path}: {_tail(Path(worker.info.log_path))}"
            ) from None
        finally:
            transport.close()
        if not line:
            code = await worker.proc.wait()
            raise WorkerError(
                f"worker {worker.info.id} exited with status {code} before it was ready; "
                f"log {worker.info.log_path}: {_tail(Path(worker.info.log_path))}"
            )
        try:
            port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError) as err:
            raise WorkerError(f"worker {worker.info.id} sent a bad ready line {line!r}") from err
        return port

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.proc.wait()
        with contextlib.suppress(OSError):
            os.close(worker.lifeline)
        if worker.info.state != "stopping":
            log.warning("worker %s exited unexpectedly with status %s", worker.info.id, code)
        self._update(worker, state="exited", exit_code=code)
        worker.stopped.set()

    async def _stop(self, worker: _Worker) -> None:
        if worker.info.state != "exited":
            self._update(worker, state="stopping")
        # Closing the lifeline alone would stop it; the signals make it prompt and certain.
        with contextlib.suppress(OSError):
            os.close(worker.lifeline)
        await stop_process_group(worker.proc, self.timeouts.stop_grace)
        await worker.stopped.wait()

    async def stop(self, worker_id: str) -> WorkerInfo:
        """Stop one worker (TERM, then KILL after the grace period) and forget it."""
        worker = self._workers.get(worker_id)
        if worker is None:
            known = ", ".join(self._workers) or "none"
            raise WorkerError(f"no worker {worker_id!r} on this hive (workers: {known})")
        await self._stop(worker)
        del self._workers[worker_id]
        return worker.info

    async def stop_all(self) -> None:
        """Stop every worker, concurrently."""
        workers = list(self._workers.values())
        if workers:
            log.info("stopping %d worker(s)", len(workers))
            await asyncio.gather(*(self._stop(w) for w in workers))
        self._workers.clear()
