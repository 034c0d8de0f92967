"""Starts, watches, restarts and stops the worker processes of one hive.

Each worker is a child process in its own process group, holding the read end of a lifeline pipe
whose write end only this process holds; it reports readiness on a second pipe once its model is
loaded, one warm-up decode has run and its port is open. Stopping is TERM to the group, then KILL
after the grace period.

Every worker has one life task. It starts the process, waits for the ready line, then watches:
the process exiting, and the worker's own /health (a worker that stops answering it, stopped or
deadlocked, is killed). A worker that goes away without being asked is started again after a
backoff (1 s doubling to 60 s); after 5 crashes within 10 minutes it stays down in `crash-loop`,
naming the cause, until `restart()` (the shape of systemd's StartLimitBurst/StartLimitIntervalSec).
The worker keeps its id, and its log file, across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from rbee.api.hop import HOP_ENV, hop_headers
from rbee.api.workers import WorkerInfo, WorkerSpec, exit_description
from rbee.config.settings import Paths, Timeouts
from rbee.errors import RbeeError, WorkerError, WorkerExistsError, WorkerNotFoundError
from rbee.fsutil import private_dir
from rbee.hive.argv import standby_argv, worker_argv
from rbee.hive.launch import Standby, launch
from rbee.models.catalog import validate_model_id
from rbee.net import plain_http_only
from rbee.proc import stop_process_group
from rbee.worker.standby import Order

__all__ = ["RestartPolicy", "Supervisor", "restart_delay"]

log = logging.getLogger(__name__)

_LOG_TAIL = 1500


@dataclass(frozen=True)
class RestartPolicy:
    """When a crashed worker is started again, and when the hive gives up on it."""

    first_delay: float = 1.0
    max_delay: float = 60.0
    burst: int = 5
    """This many crashes within `window` seconds put a worker in crash-loop."""
    window: float = 600.0
    probe_interval: float = 1.0
    """Seconds between two health checks of a ready worker."""
    probe_timeout: float = 2.0
    probe_misses: int = 3
    """A worker that misses this many health checks in a row is killed (and restarted)."""


def restart_delay(crashes: Sequence[float], now: float, policy: RestartPolicy) -> float | None:
    """Seconds to wait before starting a worker that crashed at the last of `crashes` (monotonic
    times), or None when it crashed too often within the window: crash-loop."""
    recent = [t for t in crashes if now - t < policy.window]
    if len(recent) >= policy.burst:
        return None
    return float(min(policy.max_delay, policy.first_delay * 2 ** max(0, len(recent) - 1)))


@dataclass
class _Worker:
    spec: WorkerSpec
    info: WorkerInfo
    proc: asyncio.subprocess.Process | None = None
    lifeline: int | None = None
    crashes: list[float] = field(default_factory=list)
    stop_requested: bool = False
    restart_requested: bool = False
    kill_reason: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to cut a backoff (or a crash-loop) short: restart() and stop()."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set (and replaced) at every state change."""
    life: asyncio.Task[None] | None = None
    stopping: asyncio.Task[None] | None = None


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


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Supervisor:
    """Owns the worker processes of this machine; use as an async context manager."""

    def __init__(
        self,
        paths: Paths,
        timeouts: Timeouts = Timeouts(),
        *,
        on_change: Callable[[WorkerInfo], None] | None = None,
        python: str | None = None,
        policy: RestartPolicy = RestartPolicy(),
        standby: bool = False,
        token: str | None = None,
    ) -> None:
        """`token`: the hop secret (rbee.api.hop) its workers ask of every caller; None starts
        them asking for none (tests of the supervisor alone)."""
        self.paths = paths
        self.token = token
        self.timeouts = timeouts
        self.policy = policy
        self._on_change = on_change
        self._python = python
        self.standby_engine = "llamacpp"
        """The engine whose library the next standby imports (the hive sets it by its facts)."""
        self._standby = (
            Standby(self._standby_argv, paths.logs_dir / "worker-standby.log", timeouts.stop_grace)
            if standby
            else None
        )
        self._workers: dict[str, _Worker] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._state: Literal["new", "open", "closed"] = "new"

    async def __aenter__(self) -> Supervisor:
        if self._state != "new":
            raise RbeeError("a Supervisor cannot be reopened once it has been closed")
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._state = "open"
        if self._standby is not None:
            private_dir(self.paths.logs_dir)
            self._standby.fill()
        return self

    def _standby_argv(self, ready_fd: int, lifeline_fd: int) -> list[str]:
        return standby_argv(
            data_dir=str(self.paths.data_dir),
            engine=self.standby_engine,
            parent_pid=os.getpid(),
            **({"python": self._python} if self._python else {}),
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = "closed"
        try:
            if self._standby is not None:
                await self._standby.close()
            await self.stop_all()
        finally:
            # Every life task ends once its worker is stopped. The exception that brought us here
            # (if any) is not handed to the task group, which would wrap it in an ExceptionGroup:
            # it propagates as it is once we return.
            assert self._tg is not None
            await self._tg.__aexit__(None, None, None)

    def hurry(self, grace: float) -> None:
        """From now on, KILL workers `grace` seconds after TERM (if that is sooner)."""
        if grace < self.timeouts.stop_grace:
            self.timeouts = replace(self.timeouts, stop_grace=grace)

    def workers(self) -> list[WorkerInfo]:
        """Every worker this supervisor keeps (any state but exited), oldest first."""
        return [w.info for w in self._workers.values()]

    def get(self, worker_id: str) -> WorkerInfo | None:
        """One worker, if this supervisor keeps it."""
        worker = self._workers.get(worker_id)
        return worker.info if worker is not None else None

    def _update(self, worker: _Worker, **changes: object) -> None:
        worker.info = replace(worker.info, **changes)  # type: ignore[arg-type]
        worker.changed.set()
        worker.changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change(worker.info)

    def _new_id(self, model: str) -> str:
        n = 1
        while f"{model}-{n}" in self._workers:
            n += 1
        return f"{model}-{n}"

    async def spawn(self, spec: WorkerSpec, worker_id: str | None = None) -> WorkerInfo:
        """Start a worker for `spec` and wait until it serves; WorkerError (with its log) if not.

        From then on the worker is kept: restarted when it crashes, until stop(). Cancelling the
        wait stops what was started.
        """
        if self._state != "open" or self._tg is None:
            raise WorkerError("the hive is not running")
        validate_model_id(spec.model)
        worker_id = worker_id or self._new_id(spec.model)
        if worker_id in self._workers:
            raise WorkerExistsError(f"a worker {worker_id!r} already runs on this hive")
        private_dir(self.paths.logs_dir)
        log_path = self.paths.logs_dir / f"worker-{worker_id}.log"
        info = WorkerInfo(
            id=worker_id, model=spec.model, engine=spec.engine, device=spec.device,
            state="starting", log_path=str(log_path), context_length=spec.ctx_size,
            embeddings=spec.embeddings, cpu_repack=spec.cpu_repack, max_queued=spec.max_queued,
            threads=spec.threads,
        )  # fmt: skip
        worker = _Worker(spec=spec, info=info)
        self._workers[worker_id] = worker
        first: asyncio.Future[WorkerInfo] = asyncio.get_running_loop().create_future()
        worker.life = self._tg.create_task(self._life(worker, first), name=f"worker-{worker_id}")
        try:
            return await asyncio.shield(first)
        except BaseException:
            with contextlib.suppress(WorkerNotFoundError):  # someone else stopped it already
                await asyncio.shield(self.stop(worker_id))
            if first.done() and not first.cancelled():
                first.exception()  # retrieved: the caller has its own error (or was cancelled)
            raise

    async def restart(self, worker_id: str) -> WorkerInfo:
        """Start a worker again now (its crash count cleared, a crash-loop ended) and wait until
        it serves; WorkerError saying why if it does not."""
        worker = self._find(worker_id)
        if worker.stop_requested:
            raise WorkerError(f"worker {worker_id!r} is stopping")
        worker.crashes.clear()
        changed, before = worker.changed, worker.info.restarts
        if worker.info.state in ("starting", "ready") and worker.proc is not None:
            worker.restart_requested = True
            log.info("restarting worker %s (asked for)", worker_id)
            await self._end_process(worker)
        else:
            worker.wake.set()
        deadline = self.timeouts.worker_ready + self.timeouts.stop_grace
        try:
            async with asyncio.timeout(deadline):
                while True:
                    await changed.wait()
                    changed = worker.changed
                    state, launched = worker.info.state, worker.info.restarts > before
                    if state == "exited" or (
                        launched and state in ("ready", "restarting", "crash-loop")
                    ):
                        break
        except TimeoutError:
            raise WorkerError(
                f"worker {worker_id} was not ready again within {deadline:.0f}s"
            ) from None
        if worker.info.state != "ready":
            raise WorkerError(
                f"worker {worker_id} did not come back: {worker.info.error or worker.info.state}"
            )
        return worker.info

    def _find(self, worker_id: str) -> _Worker:
        worker = self._workers.get(worker_id)
        if worker is None:
            known = ", ".join(self._workers) or "none"
            raise WorkerNotFoundError(f"no worker {worker_id!r} on this hive (workers: {known})")
        return worker

    async def stop(self, worker_id: str) -> WorkerInfo:
        """Stop one worker (TERM, then KILL after the grace period) and forget it.

        Stopping a worker that is already stopping waits for that stop.
        """
        worker = self._find(worker_id)
        if worker.stopping is None:
            assert self._tg is not None
            worker.stopping = self._tg.create_task(self._stop(worker), name=f"stop-{worker_id}")
        await asyncio.shield(worker.stopping)
        return worker.info

    async def _stop(self, worker: _Worker) -> None:
        worker.stop_requested = True
        worker.wake.set()
        self._update(worker, state="stopping", retry_at=None)
        try:
            await self._end_process(worker)
            if worker.life is not None:
                await asyncio.wait([worker.life])
        finally:
            self._workers.pop(worker.info.id, None)
            self._update(worker, state="exited")

    async def stop_all(self) -> None:
        """Stop every worker, concurrently."""
        ids = list(self._workers)
        if ids:
            log.info("stopping %d worker(s)", len(ids))
            await asyncio.gather(*(self.stop(i) for i in ids), return_exceptions=True)

    # -- one worker's life ---------------------------------------------------------------------

    async def _life(self, worker: _Worker, first: asyncio.Future[WorkerInfo]) -> None:
        """The worker's whole life; a bug here ends this worker only, never the hive."""
        try:
            await self._live(worker, first)
        except Exception as err:
            log.exception("worker %s: internal error", worker.info.id)
            if not first.done():
                first.set_exception(WorkerError(f"internal error: {err!r}"))
            if not worker.stop_requested:
                await self._end_process(worker)
                self._update(worker, state="crash-loop", error=f"internal error: {err!r}")

    async def _live(self, worker: _Worker, first: asyncio.Future[WorkerInfo]) -> None:
        """Start, serve until the process ends, restart after a backoff; until stopped."""
        worker_id = worker.info.id
        again = False
        while not worker.stop_requested:
            failure: str
            try:
                await self._launch(worker, again=again)
            except WorkerError as err:
                if worker.stop_requested or not first.done():
                    if not first.done():
                        first.set_exception(
                            WorkerError(f"worker {worker_id} was stopped while starting")
                            if worker.stop_requested
                            else err
                        )
                    return
                if worker.restart_requested:
                    worker.restart_requested = False
                    continue
                failure = str(err)
            else:
                if not first.done():
                    first.set_result(worker.info)
                code, lived = await self._serve(worker)
                if worker.stop_requested:
                    return
                if worker.restart_requested:
                    worker.restart_requested = False
                    continue
                failure = self._describe_exit(worker, code, lived)
                log.warning("worker %s %s", worker_id, failure)
            finally:
                again = True
            await self._after_crash(worker, failure)

    async def _after_crash(self, worker: _Worker, failure: str) -> None:
        now = time.monotonic()
        worker.crashes = [t for t in worker.crashes if now - t < self.policy.window] + [now]
        delay = restart_delay(worker.crashes, now, self.policy)
        exit_at = time.time()
        last_exit = worker.info.last_exit
        if worker.proc is not None and worker.proc.returncode is not None:
            last_exit = exit_description(worker.proc.returncode)
        common = {"pid": None, "port": None, "last_exit": last_exit, "last_exit_at": exit_at}
        worker.wake.clear()
        if worker.stop_requested:
            return
        if delay is None:
            error = (
                f"crash-loop: {len(worker.crashes)} crashes in {self.policy.window / 60:.0f} "
                f"minutes; the last: {failure} (start it again with `rbee worker restart "
                f"{worker.info.id}`)"
            )
            log.error("worker %s: %s", worker.info.id, error)
            self._update(worker, state="crash-loop", error=error, retry_at=None, **common)
            await worker.wake.wait()
            worker.crashes.clear()
            return
        log.info("worker %s: starting it again in %.0fs", worker.info.id, delay)
        self._update(worker, state="restarting", error=failure, retry_at=exit_at + delay, **common)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await worker.wake.wait()

    def _describe_exit(self, worker: _Worker, code: int, lived: float) -> str:
        how = exit_description(code)
        what = "crashed with " + how if code < 0 else "exited unexpectedly with " + how
        if worker.kill_reason:
            what = f"was killed: {worker.kill_reason}"
        tail = _tail(Path(worker.info.log_path))
        return f"{what} after {lived:.0f}s; log {worker.info.log_path}: {tail}"

    async def _launch(self, worker: _Worker, *, again: bool) -> None:
        """Start the process (`again`: once more) and wait for its ready line; WorkerError (the
        process gone) if it does not come."""
        spec, worker_id = worker.spec, worker.info.id

        def argv_for(ready_fd: int, lifeline_fd: int) -> list[str]:
            return worker_argv(
                spec,
                data_dir=str(self.paths.data_dir),
                ready_fd=ready_fd,
                lifeline_fd=lifeline_fd,
                parent_pid=os.getpid(),
                **({"python": self._python} if self._python else {}),
            )

        worker.kill_reason = None
        log_path = self.paths.logs_dir / f"worker-{worker_id}.log"
        launched = None
        if self._standby is not None:
            launched = await self._standby.take(
                lambda s: Order(
                    tuple(argv_for(s.child_ready, s.child_lifeline)[3:]),  # after `python -m rbee`
                    str(log_path),
                    self._worker_env(),
                )
            )
        how = f" (the standby, pid {launched.proc.pid})" if launched is not None else ""
        if launched is None:
            try:
                launched = await launch(argv_for, log_path, env=self._worker_env())
            except OSError as err:
                raise WorkerError(f"could not start worker {worker_id}: {err}") from err
        argv = argv_for(launched.child_ready, launched.child_lifeline)
        log.info("starting worker %s: %s%s", worker_id, " ".join(argv), how)
        worker.proc, worker.lifeline = launched.proc, launched.lifeline
        restarts = worker.info.restarts + (1 if again else 0)
        self._update(worker, state="starting", pid=launched.proc.pid, port=None,
                     started_at=time.time(), retry_at=None, restarts=restarts)  # fmt: skip
        try:
            port = await self._wait_ready(worker, launched.ready)
        except BaseException:
            await self._end_process(worker)
            raise
        self._update(worker, state="ready", port=port, error=None)
        log.info("worker %s ready on port %d", worker_id, port)

    async def _wait_ready(self, worker: _Worker, fd: int) -> int:
        assert worker.proc is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
        )
        info = worker.info
        where = f"worker {info.id} ({info.engine} on {info.device})"
        try:
            line = await asyncio.wait_for(reader.readline(), self.timeouts.worker_ready)
        except TimeoutError:
            raise WorkerError(
                f"{where} was not ready after {self.timeouts.worker_ready:.0f}s; "
                f"log {info.log_path}: {_tail(Path(info.log_path))}"
            ) from None
        finally:
            transport.close()
        if not line:
            code = await worker.proc.wait()
            how = (
                f"crashed with {exit_description(code)}"
                if code < 0
                else f"exited with status {code}"
            )
            raise WorkerError(
                f"{where} {how} before it was ready (loading the model or in its warm-up "
                f"decode); log {info.log_path}: {_tail(Path(info.log_path))}"
            )
        try:
            port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError) as err:
            raise WorkerError(f"{where} sent a bad ready line {line!r}") from err
        return port

    def _worker_env(self) -> dict[str, str]:
        """A worker's environment: this process's, and the hop secret it is to ask for."""
        env = dict(os.environ)
        if self.token is not None:
            env[HOP_ENV] = self.token
        return env

    async def _serve(self, worker: _Worker) -> tuple[int, float]:
        """Watch a ready worker until its process ends; (exit code, seconds it lived)."""
        assert worker.proc is not None
        assert self._tg is not None
        started = time.monotonic()
        probe = self._tg.create_task(self._probe(worker), name=f"probe-{worker.info.id}")
        try:
            code = await worker.proc.wait()
        finally:
            probe.cancel()
            self._close_lifeline(worker)
        return code, time.monotonic() - started

    async def _probe(self, worker: _Worker) -> None:
        """Kill the worker's group once it misses `probe_misses` health checks in a row."""
        assert worker.proc is not None
        policy, pgid = self.policy, worker.proc.pid
        url = f"http://127.0.0.1:{worker.info.port}/health"
        misses, since = 0, time.monotonic()
        timeout = httpx.Timeout(policy.probe_timeout)
        async with httpx.AsyncClient(
            timeout=timeout,
            trust_env=False,
            verify=plain_http_only(),
            headers=hop_headers(self.token),
        ) as client:
            while True:
                await asyncio.sleep(policy.probe_interval)
                try:
                    ok = (await client.get(url)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    misses, since = 0, time.monotonic()
                    continue
                misses += 1
                if misses >= policy.probe_misses:
                    worker.kill_reason = (
                        f"it did not answer its health check for {time.monotonic() - since:.0f}s "
                        "(hung or stopped)"
                    )
                    log.warning("worker %s: %s; killing it", worker.info.id, worker.kill_reason)
                    _kill_group(pgid)
                    return

    def _close_lifeline(self, worker: _Worker) -> None:
        if worker.lifeline is not None:
            with contextlib.suppress(OSError):
                os.close(worker.lifeline)
            worker.lifeline = None

    async def _end_process(self, worker: _Worker) -> None:
        """TERM the worker's group, KILL it after the grace period; wait until it has exited."""
        # Closing the lifeline alone would stop it; the signals make it prompt and certain.
        self._close_lifeline(worker)
        if worker.proc is not None:
            await stop_process_group(worker.proc, self.timeouts.stop_grace)
