"""Commands that run the queen in this process or manage the queen daemon."""

from __future__ import annotations

import argparse
import os
import shlex

from rbee.api.client import QueenClient
from rbee.api.workers import WorkerSpec
from rbee.cli.output import emit, fetch_progress, note
from rbee.config.hives import hives_path
from rbee.config.limits import Limits
from rbee.config.limits_file import ENV_VARS, load_limits
from rbee.config.settings import Paths
from rbee.errors import QueenNotRunningError
from rbee.models.sources import ensure_model
from rbee.models.store import ModelStore
from rbee.queen.daemon import queen_run_argv, run_queen, start_daemon, stop_daemon
from rbee.queen.record import read_record
from rbee.queen.service import QueenOptions
from rbee.queen.serving import record_serving

__all__ = [
    "queen_run",
    "queen_start",
    "queen_status",
    "queen_stop",
    "up",
]


def _spec(args: argparse.Namespace, model: str) -> WorkerSpec:
    return WorkerSpec(
        model=model,
        engine=args.engine,
        device=args.device,
        ctx_size=args.ctx_size,
        threads=args.threads,
        embeddings=args.embeddings,
        cpu_repack=args.cpu_repack,
        max_queued=args.max_queued,
        max_queued_tokens=args.max_queued_tokens,
    )


def _limits(args: argparse.Namespace, paths: Paths) -> Limits:
    """The queen's limits: rbee.toml, then RBEE_* variables, then the flags given."""
    flags = {key: getattr(args, key, None) for key in ENV_VARS}
    return load_limits(paths.config_dir, os.environ, flags)


def up(args: argparse.Namespace, paths: Paths) -> int:
    """Queen + local hive + one model, in the foreground; Ctrl+C stops everything."""
    limits = _limits(args, paths)  # a mistake in rbee.toml is said before any download
    # --max-queued and --max-queued-tokens are the queen's limits and this worker's alike.
    args.max_queued, args.max_queued_tokens = limits.max_queued, limits.max_queued_tokens
    store = ModelStore(paths.models_dir)
    stored = store.get(args.model)
    if stored is None or stored.artifact("gguf") is None:
        note(f"fetching model {args.model} (first run only)")
        with fetch_progress() as progress:
            ensure_model(store, args.model, progress=progress)
    options = _queen_options(args, paths, (_spec(args, args.model),), limits)

    def ready(url: str) -> None:
        note(f"serving {args.model} at {url}/v1 (OpenAI-compatible); Ctrl+C stops everything")

    note(f"starting the queen on {args.host}:{args.port} and a worker for {args.model}")
    code = run_queen(paths, options, on_ready=ready)
    note("stopped; no worker is left running")
    return code


def _queen_options(
    args: argparse.Namespace,
    paths: Paths,
    models: tuple[WorkerSpec, ...],
    limits: Limits | None = None,
) -> QueenOptions:
    command = os.environ.get("RBEE_HIVE_COMMAND")
    return QueenOptions(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        models=models,
        hives_conf=hives_path(paths, args.hives),
        hive_command=tuple(shlex.split(command)) if command else None,
        limits=limits if limits is not None else _limits(args, paths),
    )


def queen_run(args: argparse.Namespace, paths: Paths) -> int:
    """The queen in the foreground (what the daemon runs)."""
    options = _queen_options(args, paths, tuple(WorkerSpec(model=m) for m in args.model))
    return run_queen(paths, options)


def queen_start(args: argparse.Namespace, paths: Paths) -> int:
    """Start the queen daemon and wait until it answers."""
    options = _queen_options(args, paths, tuple(WorkerSpec(model=m) for m in args.model))
    record = start_daemon(paths, options)
    # `rbee sweep --heal` starts it again this way should it go down (rbee.queen.serving).
    argv = queen_run_argv(paths, options)
    argv[argv.index("queen") + 1] = "start"
    record_serving(paths, True, argv)
    emit(f"queen started (pid {record.pid}) at {record.url}/v1; log {paths.logs_dir / 'queen.log'}")
    return 0


def queen_stop(args: argparse.Namespace, paths: Paths) -> int:
    """Stop the queen daemon; it stops its workers first."""
    record = stop_daemon(paths)
    record_serving(paths, False)  # stopped on purpose: `rbee sweep --heal` leaves it stopped
    emit(f"queen stopped (pid {record.pid})")
    return 0


def queen_status(args: argparse.Namespace, paths: Paths) -> int:
    """Print whether the queen runs, where, and what it serves."""
    record = read_record(paths)
    url = args.queen or (record.url if record else None)
    if url is None:
        raise QueenNotRunningError("the queen is not running (start it with `rbee queen start`)")
    with QueenClient(url, api_key=args.api_key) as client:
        health = client.health()
    if "pid" not in health:
        # A queen with an API key tells a client without it only that it is up.
        emit(f"queen running at {url}/v1 (details need its API key: --api-key or $RBEE_API_KEY)")
        return 0
    workers = health.get("workers", {})
    models = ", ".join(health.get("models", [])) or "none"
    emit(f"queen running (pid {health.get('pid')}) at {url}/v1")
    emit(f"workers: {workers.get('ready', 0)} ready of {workers.get('total', 0)}; models: {models}")
    return 0
