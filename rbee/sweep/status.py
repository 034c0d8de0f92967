"""What a check says: a Nagios status, and the check itself. Shared by every sweep module."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Check", "Status", "worst"]


class Status(enum.IntEnum):
    """A Nagios plugin's status; its value is the exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def rank(self) -> int:
        """Severity for aggregation: CRITICAL > WARNING > UNKNOWN > OK (Nagios' own rule: an
        unknown does not hide a warning or a critical)."""
        return {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}[self]


def worst(statuses: Iterable[Status]) -> Status:
    """The status of a set of checks (OK when there are none)."""
    return max(statuses, key=lambda s: s.rank, default=Status.OK)


@dataclass(frozen=True)
class Check:
    """One finding: on `target` (a hive's alias, or "queen"), `name` gave `status`."""

    target: str
    name: str
    status: Status
    detail: str
    value: float | None = None
    """The figure behind it, where there is one (bytes free, a ratio, a count)."""

    @property
    def key(self) -> str:
        """`target/name`: what the previous sweep is compared by."""
        return f"{self.target}/{self.name}"


_GIB = 1 << 30


@dataclass(frozen=True)
class Thresholds:
    """Where a figure turns WARNING or CRITICAL (the flags of `rbee sweep`, with these defaults)."""

    timeout: float = 10.0
    """Seconds each hive gets, connecting included: past it, it is unreachable."""
    disk_warn: int = 2 * _GIB
    """Free bytes in the install or model dir below which it is WARNING."""
    disk_crit: int = _GIB // 2
    ram_warn: float = 0.80
    """Share of RAM used by processes that are not rbee's above which it is WARNING."""
    ram_crit: float = 0.90
    vram_warn: float = 0.10
    """Share of a GPU's memory held by processes that are not rbee's above which it is WARNING."""
    vram_crit: float = 0.50
    vram_leak: int = 512 << 20
    """Free VRAM this far below its baseline, with no worker running, is WARNING."""
    queue_warn: int = 16
    """Requests waiting in the workers' queues above which it is WARNING."""
    queue_crit: int = 64
    probe_warn: float = 5.0
    """Seconds for one token through a worker (`--probe`) above which it is WARNING."""
    probe_crit: float = 30.0
