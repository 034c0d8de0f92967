"""Running, watching and listing the queen's jobs from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from typing import Any

from rbee.api.client import QueenClient
from rbee.api.jobs import JobEvent
from rbee.cli.output import LiveProgress, emit, live_progress, note, table
from rbee.config.settings import DEFAULT_QUEEN_PORT, Paths
from rbee.queen.record import read_record

__all__ = [
    "job_cancel",
    "job_list",
    "job_watch",
    "queen_client",
    "render_event",
    "run_job",
    "watch_job",
]


def render_event(view: LiveProgress, event: JobEvent) -> None:
    """Show one job event: steps as `[n/m] message`, logs as lines, progress as a bar."""
    if event.type == "step":
        prefix = f"[{event.step}/{event.steps}] " if event.step and event.steps else ""
        view.line(prefix + event.message)
    elif event.type == "log":
        view.line(f"  {event.message}")
    elif event.type == "progress":
        view.bar(event.message, event.done or 0, event.total)


def watch_job(client: QueenClient, job_id: str) -> dict[str, Any]:
    """Render a job's events until it ends; its result, or JobFailedError with its error.

    Ctrl+C stops watching only: the job keeps running, and the note says how to watch it again.
    """
    try:
        with live_progress() as view, contextlib.closing(client.stream_job(job_id)) as events:
            for event in events:
                render_event(view, event)
    except KeyboardInterrupt:
        note(
            f"stopped watching; job {job_id} keeps running (watch it again with "
            f"`rbee job watch {job_id}`, cancel it with `rbee job cancel {job_id}`)"
        )
        raise
    return client.job_result(job_id)


def run_job(client: QueenClient, operation: dict[str, Any]) -> dict[str, Any]:
    """Start `operation` as a job on the queen, render its progress, return its result."""
    job = client.submit_job(operation)
    return watch_job(client, str(job["job_id"]))


def queen_client(args: argparse.Namespace, paths: Paths) -> QueenClient:
    """The client of the queen `--queen` names, else the running one, else the default URL."""
    record = read_record(paths)
    url = args.queen or (record.url if record else f"http://127.0.0.1:{DEFAULT_QUEEN_PORT}")
    return QueenClient(url, api_key=args.api_key)


def job_watch(args: argparse.Namespace, paths: Paths) -> int:
    """`rbee job watch ID`: replay a job's events and follow it to its end."""
    with queen_client(args, paths) as client:
        result = watch_job(client, args.job_id)
    emit(json.dumps(result, indent=2) if result else f"job {args.job_id} succeeded")
    return 0


def job_list(args: argparse.Namespace, paths: Paths) -> int:
    """`rbee job list`: running and recently finished jobs."""
    with queen_client(args, paths) as client:
        jobs = client.list_jobs()
    if not jobs:
        emit("no jobs")
        return 0
    now = time.time()
    table(
        ["ID", "KIND", "STATE", "AGE", "LAST"],
        [
            [
                j["job_id"],
                j["kind"],
                j["state"],
                f"{now - j['created_at']:.0f}s",
                j.get("error") or j.get("last_message") or "",
            ]
            for j in jobs
        ],
    )
    return 0


def job_cancel(args: argparse.Namespace, paths: Paths) -> int:
    """`rbee job cancel ID`: cancel a running job."""
    with queen_client(args, paths) as client:
        job = client.cancel_job(args.job_id)
    emit(f"job {job['job_id']} {job['state']}")
    return 0
