"""Commands that talk to the queen's API."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rbee.api.client import QueenClient
from rbee.api.jobs_client import queen_http
from rbee.cli.jobs import run_job
from rbee.cli.output import emit, table
from rbee.config.settings import DEFAULT_QUEEN_PORT, Paths
from rbee.queen.record import read_record

__all__ = [
    "hive_start",
    "hive_stop",
    "infer",
    "worker_list",
    "worker_spawn",
    "worker_stop",
]


def queen_client(args: argparse.Namespace, paths: Paths) -> QueenClient:
    record = read_record(paths)
    url = args.queen or (record.url if record else f"http://127.0.0.1:{DEFAULT_QUEEN_PORT}")
    return QueenClient(url, api_key=args.api_key)


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
    }
    with queen_client(args, paths) as client, queen_http(client.url, api_key=args.api_key) as http:
        info = run_job(http, {"kind": "worker.spawn", **body})
    serves = ", embeddings" if info.get("embeddings") else ""
    emit(
        f"worker {info['id']} ready: {info['model']} on {info['hive']} ({info['engine']}, "
        f"{info['device']}{serves}, pid {info['pid']})"
    )
    return 0


def worker_list(args: argparse.Namespace, paths: Paths) -> int:
    """Print every worker the queen runs."""
    with queen_client(args, paths) as client:
        workers = client.workers()
    if not workers:
        emit("no workers (start one with `rbee worker spawn --model smollm2-135m`)")
        return 0
    now = time.time()
    table(
        ["ID", "HIVE", "MODEL", "ENGINE", "DEVICE", "STATE", "PID", "PORT", "UP"],
        [
            [
                w["id"],
                w["hive"],
                w["model"],
                w["engine"],
                w["device"],
                w["state"],
                w["pid"],
                w["port"] or "-",
                f"{now - w['started_at']:.0f}s",
            ]
            for w in workers
        ],
    )
    return 0


def worker_stop(args: argparse.Namespace, paths: Paths) -> int:
    """Stop one worker."""
    with queen_client(args, paths) as client:
        info = client.stop_worker(args.worker_id)
    emit(f"worker {info['id']} stopped")
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
    with queen_client(args, paths) as client, queen_http(client.url, api_key=args.api_key) as http:
        hive = run_job(http, {"kind": "hive.start", "alias": args.alias})
    emit(f"hive {hive['name']} running on {hive['host']} (pid {hive['pid']})")
    return 0


def hive_stop(args: argparse.Namespace, paths: Paths) -> int:
    """Have the queen stop a hive (a job); its workers stop with it."""
    with queen_client(args, paths) as client, queen_http(client.url, api_key=args.api_key) as http:
        run_job(http, {"kind": "hive.stop", "alias": args.alias})
    emit(f"hive {args.alias} stopped")
    return 0
