"""Commands that talk to the queen's API."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rbee.cli.jobs import queen_client, run_job
from rbee.cli.output import emit, table
from rbee.config.settings import Paths

__all__ = [
    "hive_start",
    "hive_stop",
    "infer",
    "worker_list",
    "worker_restart",
    "worker_spawn",
    "worker_stop",
]


def worker_spawn(args: argparse.Namespace, paths: Paths) -> int:
    """Ask the queen to start a worker, and wait until it serves."""
    body: dict[str, Any] = {
        "model": args.model,
        "hive": args.hive,
        "engine": args.engine,
        "device": args.device,
        "ctx_size": args.ctx_size,
        "threads": args.threads,
        "embeddings": args.embeddings,
        "cpu_repack": args.cpu_repack,
        "max_queued": args.max_queued,
        "max_queued_tokens": args.max_queued_tokens,
    }
    with queen_client(args, paths) as client:
        info = run_job(client, {"kind": "worker.spawn", **body})
    serves = ", embeddings" if info.get("embeddings") else ""
    emit(
        f"worker {info['id']} ready: {info['model']} on {info['hive']} ({info['engine']}, "
        f"{info['device']}{serves}, pid {info['pid']})"
    )
    return 0


_WORKER_COLUMNS = ["ID", "HIVE", "MODEL", "ENGINE", "DEVICE", "STATE", "PID", "UP", "IDLE",
                   "RESTARTS", "LAST EXIT"]  # fmt: skip


def worker_list(args: argparse.Namespace, paths: Paths) -> int:
    """Print every worker the queen runs."""
    with queen_client(args, paths) as client:
        workers = client.workers()
    if not workers:
        emit("no workers (start one with `rbee worker spawn --model smollm2-135m`)")
        return 0
    now = time.time()
    table(
        _WORKER_COLUMNS,
        [
            [
                w["id"],
                w["hive"],
                w["model"],
                w["engine"],
                w["device"],
                w["state"],
                w["pid"] or "-",
                _ago(now, w.get("started_at")) if w.get("pid") else "-",
                _idle(w),
                w.get("restarts", 0),
                _last_exit(now, w),
            ]
            for w in workers
        ],
    )
    for w in workers:
        if w.get("error") and w["state"] in ("restarting", "crash-loop"):
            emit(f"{w['id']}: {w['error']}")
    if any(w["state"] == "parked" for w in workers):
        emit("parked: unloaded while idle; the next request for its model loads it again")
    return 0


def _idle(worker: dict[str, Any]) -> str:
    """Time since a ready worker's last request ("-": busy, not ready, or parked)."""
    idle = worker.get("idle_s")
    if worker["state"] != "ready" or not isinstance(idle, int | float) or worker.get("outstanding"):
        return "-"
    return _span(idle)


def _ago(now: float, then: object) -> str:
    if not isinstance(then, int | float) or not then:
        return "-"
    return _span(now - then)


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _last_exit(now: float, worker: dict[str, Any]) -> str:
    how = worker.get("last_exit")
    return f"{how} {_ago(now, worker.get('last_exit_at'))} ago" if how else "-"


def worker_stop(args: argparse.Namespace, paths: Paths) -> int:
    """Stop one worker."""
    with queen_client(args, paths) as client:
        info = client.stop_worker(args.worker_id)
    emit(f"worker {info['id']} stopped")
    return 0


def worker_restart(args: argparse.Namespace, paths: Paths) -> int:
    """Start one worker again now (ending a crash-loop) and wait until it serves."""
    with queen_client(args, paths) as client:
        info = client.restart_worker(args.worker_id)
    emit(f"worker {info['id']} ready again (pid {info['pid']}, {info['restarts']} restarts)")
    return 0


def infer(args: argparse.Namespace, paths: Paths) -> int:
    """Stream one chat answer to stdout as the tokens come."""
    body: dict[str, Any] = {
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
    }
    for key in ("max_tokens", "temperature", "seed"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    with queen_client(args, paths) as client:
        for chunk in client.stream_chat(body):
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    emit(text, end="")
    emit()
    return 0


def hive_start(args: argparse.Namespace, paths: Paths) -> int:
    """Have the queen start a hive over SSH (a job), and wait until it serves."""
    with queen_client(args, paths) as client:
        hive = run_job(client, {"kind": "hive.start", "alias": args.alias})
    emit(f"hive {hive['name']} running on {hive['host']} (pid {hive['pid']})")
    return 0


def hive_stop(args: argparse.Namespace, paths: Paths) -> int:
    """Have the queen stop a hive (a job); its workers stop with it."""
    with queen_client(args, paths) as client:
        run_job(client, {"kind": "hive.stop", "alias": args.alias})
    emit(f"hive {args.alias} stopped")
    return 0
