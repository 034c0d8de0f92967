"""`rbee worker run`: load one model, warm it up, then serve it until told to stop or orphaned.

The hive starts this with two pipes: it reads one line of JSON from the ready pipe once the model
is loaded and the port is open (`{"port": N, "pid": P}`), and it holds the write end of the
lifeline pipe; EOF on the lifeline (the hive died, however it died) stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass

import uvicorn

from rbee.api.hop import HOP_ENV, take_env_token
from rbee.api.workers import WorkerSpec
from rbee.config.settings import Paths, Timeouts
from rbee.engines.base import Engine
from rbee.engines.factory import create_engine
from rbee.engines.repack import choose_cpu_repack
from rbee.engines.select import AUTO, engine_formats
from rbee.errors import ModelError
from rbee.facts import local_facts
from rbee.models.store import ModelStore
from rbee.net import bind_tcp
from rbee.placement import model_formats, place
from rbee.proc import (
    arm_parent_death_signal,
    lower_session_priority,
    set_process_name,
    watch_lifeline,
)
from rbee.serve import run_event_loop, uvicorn_server
from rbee.worker.app import create_app
from rbee.worker.runner import Admission, EngineRunner
from rbee.worker.warmup import warm_up

__all__ = ["WORKER_NAME", "WorkerOptions", "build_engine", "run_worker"]


log = logging.getLogger(__name__)

WORKER_NAME = "rbee-worker"
"""The process name (`comm`) of every worker, for `top` and `ps -o comm`."""
SESSION_NICENESS = 5
"""How much lower a worker's session weighs against the queen's, the hive's and the user's on a
busy CPU (rbee.proc.lower_session_priority): rejections and relayed tokens come sooner. Measured
in docs/benchmarks.md ("Overload")."""


@dataclass(frozen=True)
class WorkerOptions:
    """What `rbee worker run` was asked to do."""

    model: str
    engine: str = AUTO
    device: str = AUTO
    host: str = "127.0.0.1"
    port: int = 0
    ctx_size: int = 4096
    threads: int = 0
    ready_fd: int | None = None
    lifeline_fd: int | None = None
    parent_pid: int | None = None
    embeddings: bool = False
    cpu_repack: str = AUTO
    max_queued: int = 8
    max_queued_tokens: int = 0
    """0: four times the context length."""


def build_engine(paths: Paths, options: WorkerOptions) -> Engine:
    """Pick the artifact, check it against its sha256 and set up the engine (not loaded yet).

    The hive has decided engine and device already; `rbee worker run` by hand may leave them
    `auto`, and then the worker decides the same way from this machine's facts.
    """
    store = ModelStore(paths.models_dir)
    spec = WorkerSpec(model=options.model, engine=options.engine, device=options.device,
                      embeddings=options.embeddings, cpu_repack=options.cpu_repack)  # fmt: skip
    formats = model_formats(store, options.model)
    facts = local_facts() if AUTO in (options.engine, options.device, options.cpu_repack) else None
    if facts is not None:
        spec, _ = place(spec, facts, formats, hive="localhost")
    repack = choose_cpu_repack(spec.cpu_repack, facts)
    wanted = engine_formats(spec.engine, formats)
    stored = store.get(options.model)
    artifact = next(
        (a for f in wanted if stored is not None and (a := stored.artifact(f)) is not None), None
    )
    if artifact is None:
        have = ", ".join(stored.formats) if stored is not None else "nothing"
        raise ModelError(
            f"model {options.model!r} has no artifact engine {spec.engine} can load in the store "
            f"at {paths.models_dir} (stored: {have}; {spec.engine} reads "
            f"{', '.join(wanted) or 'none of its formats'}); `rbee worker spawn` fetches it"
        )
    store.verify(artifact)
    threads = options.threads or max(1, os.cpu_count() or 1)
    return create_engine(
        spec.engine,
        artifact.path,
        model=options.model,
        device=spec.device,
        n_ctx=options.ctx_size,
        threads=threads,
        embeddings=options.embeddings,
        cpu_repack=repack,
    )


def run_worker(paths: Paths, options: WorkerOptions, timeouts: Timeouts = Timeouts()) -> int:
    """Run a worker in this process until it is stopped; return the exit code."""
    if options.parent_pid is not None:
        arm_parent_death_signal(options.parent_pid)
    set_process_name(WORKER_NAME)
    lower_session_priority(SESSION_NICENESS)
    token = take_env_token()  # before the engine starts anything that would inherit it
    if token is None:
        log.warning("started without a hive's secret (%s): this worker's API asks for none; "
                    "anyone on this machine may use it", HOP_ENV)  # fmt: skip
    engine = build_engine(paths, options)
    sock = bind_tcp(options.host, options.port)
    try:
        run_event_loop(_serve(engine, options, sock, timeouts, token))
    finally:
        sock.close()
        engine.close()
    return 0


def _arm_exit_watchdog(seconds: float) -> None:
    # Once told to stop, a worker must be gone soon even if a generation refuses to end.
    timer = threading.Timer(seconds, os._exit, args=(1,))
    timer.daemon = True
    timer.start()


async def _serve(
    engine: Engine,
    options: WorkerOptions,
    sock: socket.socket,
    timeouts: Timeouts,
    token: str | None,
) -> None:
    admission = Admission(
        max_queued=options.max_queued,
        max_queued_tokens=options.max_queued_tokens or 4 * options.ctx_size,
    )
    async with EngineRunner(engine, admission=admission) as runner:
        await warm_up(runner, options.model)
        app = create_app(runner, options.model, token=token)
        server = uvicorn_server(app, graceful=timeouts.stop_grace)

        def stop() -> None:
            log.info("lifeline closed: the hive is gone, stopping")
            server.should_exit = True
            _arm_exit_watchdog(timeouts.stop_grace + 2)

        unwatch = (
            watch_lifeline(options.lifeline_fd, stop) if options.lifeline_fd is not None else None
        )
        try:
            async with asyncio.TaskGroup() as tg:
                announce = tg.create_task(_announce_ready(server, sock, options.ready_fd))
                await server.serve(sockets=[sock])
                announce.cancel()
        finally:
            if unwatch is not None:
                unwatch()


async def _announce_ready(server: uvicorn.Server, sock: socket.socket, fd: int | None) -> None:
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for "started"
        await asyncio.sleep(0.005)
    port = sock.getsockname()[1]
    log.info("serving on 127.0.0.1:%d", port)
    if fd is None:
        return
    line = json.dumps({"port": port, "pid": os.getpid()}) + "\n"
    try:
        os.write(fd, line.encode())
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
