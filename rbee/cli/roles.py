"""The roles other processes start: `rbee worker run` (a hive runs it) and `rbee hive run` (the
queen runs it, locally or over SSH).

Kept apart from the queen's commands on purpose: a worker starting up imports only what a worker
needs (the queen's modules and asyncssh cost a third of a second), and that start-up is on the path
of every model loaded on demand and every restart after a crash.
"""

from __future__ import annotations

import argparse

from rbee.config.settings import Paths
from rbee.errors import ConfigError

__all__ = ["hive_run", "worker_run", "worker_standby"]


def worker_run(args: argparse.Namespace, paths: Paths) -> int:
    """One worker in the foreground (what a hive runs)."""
    from rbee.worker.daemon import WorkerOptions, run_worker  # noqa: PLC0415 - see module doc

    options = WorkerOptions(
        model=args.model, engine=args.engine, device=args.device, port=args.port,
        ctx_size=args.ctx_size, threads=args.threads, ready_fd=args.ready_fd,
        lifeline_fd=args.lifeline_fd, parent_pid=args.parent_pid, embeddings=args.embeddings,
        cpu_repack=args.cpu_repack, max_queued=args.max_queued,
        max_queued_tokens=args.max_queued_tokens,
    )  # fmt: skip
    return run_worker(paths, options)


def worker_standby(args: argparse.Namespace, paths: Paths) -> int:
    """A worker process in waiting (what a hive keeps): once handed its order, `worker_run`."""
    from rbee.cli.main import main  # noqa: PLC0415 - the order runs through the same parser
    from rbee.worker.standby import wait_for_order  # noqa: PLC0415 - see module doc

    return wait_for_order(args.engine, args.parent_pid, main)


def hive_run(args: argparse.Namespace, paths: Paths) -> int:
    """One hive in the foreground (what the queen starts over SSH)."""
    from rbee.api.hop import token_path  # noqa: PLC0415 - see module doc
    from rbee.hive.daemon import HiveOptions, run_hive  # noqa: PLC0415 - see module doc

    try:
        token_path(paths.run_dir, args.name)  # the name names its secret's file
    except ValueError as err:
        raise ConfigError(f"--name: {err}") from None
    options = HiveOptions(name=args.name, port=args.port, lease=args.lease, standby=args.standby)
    return run_hive(paths, options)
