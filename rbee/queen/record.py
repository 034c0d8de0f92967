"""The queen's pid file (`run/queen.json`): what every CLI command reads to find the queen.

Kept apart from rbee.queen.daemon so that reading it does not import the queen's server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rbee.config.settings import Paths
from rbee.proc import pid_alive

__all__ = ["QueenRecord", "read_record", "record_path"]

_STATE = "queen.json"


@dataclass(frozen=True)
class QueenRecord:
    """What the pid file says about a running queen."""

    pid: int
    url: str
    host: str
    port: int


def record_path(paths: Paths) -> Path:
    """Where the pid file lives."""
    return paths.run_dir / _STATE


def read_record(paths: Paths) -> QueenRecord | None:
    """The pid file of a queen that is still alive, or None (a stale file is ignored)."""
    try:
        raw = json.loads(record_path(paths).read_text())
        record = QueenRecord(
            pid=int(raw["pid"]), url=str(raw["url"]), host=str(raw["host"]), port=int(raw["port"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if pid_alive(record.pid) else None
