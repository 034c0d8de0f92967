"""The command lines a hive runs: pure builders, so they can be checked with plain tables."""

from __future__ import annotations

import sys

from rbee.api.workers import WorkerSpec

__all__ = ["standby_argv", "worker_argv"]


def worker_argv(
    spec: WorkerSpec,
    *,
    data_dir: str,
    ready_fd: int,
    lifeline_fd: int,
    parent_pid: int,
    python: str = sys.executable,
) -> list[str]:
    """argv of `rbee worker run` for `spec`, reporting on `ready_fd`, watching `lifeline_fd`."""
    argv = [
        python, "-m", "rbee", "--data-dir", data_dir,
        "worker", "run",
        "--model", spec.model,
        "--engine", spec.engine,
        "--device", spec.device,
        "--port", "0",
        "--ctx-size", str(spec.ctx_size),
        "--ready-fd", str(ready_fd),
        "--lifeline-fd", str(lifeline_fd),
        "--parent-pid", str(parent_pid),
    ]  # fmt: skip
    if spec.threads:
        argv += ["--threads", str(spec.threads)]
    if spec.cpu_repack != "auto":
        argv += ["--cpu-repack", spec.cpu_repack]
    if spec.max_queued != WorkerSpec.max_queued:
        argv += ["--max-queued", str(spec.max_queued)]
    if spec.max_queued_tokens:
        argv += ["--max-queued-tokens", str(spec.max_queued_tokens)]
    if spec.embeddings:
        argv.append("--embeddings")
    return argv


def standby_argv(
    *, data_dir: str, engine: str, parent_pid: int, python: str = sys.executable
) -> list[str]:
    """argv of `rbee worker standby`, importing `engine`'s library while it waits for its order
    (the ready and lifeline pipes it inherits are named in the order's `rbee worker run` argv)."""
    return [python, "-m", "rbee", "--data-dir", data_dir, "worker", "standby",
            "--engine", engine, "--parent-pid", str(parent_pid)]  # fmt: skip
