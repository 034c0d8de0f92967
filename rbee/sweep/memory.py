"""What a sweep remembers of the last one (`STATE_DIR/last.json`, written atomically) and what
changed since: each check's status, the workers' restart counts, the queen's pid and each GPU's
free-VRAM baseline."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbee.fsutil import atomic_write_text
from rbee.sweep.status import Check

__all__ = [
    "Change",
    "Memory",
    "carried_over",
    "changes",
    "load_memory",
    "save_memory",
    "sweep_memory_path",
]

_FILE = "last.json"
_VERSION = 1


@dataclass(frozen=True)
class Memory:
    """The previous sweep, as far as the next one needs it."""

    at: str
    """When it ran (ISO 8601, UTC)."""
    status: str
    checks: dict[str, str] = field(default_factory=dict)
    """`target/check` → status name."""
    restarts: dict[str, int] = field(default_factory=dict)
    queen_pid: int | None = None
    vram_baseline: dict[str, dict[str, int]] = field(default_factory=dict)
    """hive → GPU uuid → free bytes with no worker running."""
    crash_loops_restarted: dict[str, str] = field(default_factory=dict)
    """Worker id → the crash-loop cause `--heal` restarted it for (never twice for one cause)."""
    details: dict[str, str] = field(default_factory=dict)
    """`target/check` → what it said, for each check that was not OK (the queen's dashboard
    shows them)."""


def sweep_memory_path(state_dir: Path) -> Path:
    """The file a sweep with `state_dir` keeps its memory in."""
    return state_dir / _FILE


@dataclass(frozen=True)
class Change:
    """A check whose status is not what it was."""

    target: str
    check: str
    before: str | None
    """None: the check is new."""
    after: str | None
    """None: the check is gone."""


def load_memory(state_dir: Path) -> Memory | None:
    """The last sweep's memory; None for the first sweep (or a memory that cannot be read)."""
    try:
        raw: Any = json.loads(sweep_memory_path(state_dir).read_text())
        if raw.get("version") != _VERSION:
            return None
        return Memory(
            at=str(raw["at"]),
            status=str(raw["status"]),
            checks={str(k): str(v) for k, v in raw["checks"].items()},
            restarts={str(k): int(v) for k, v in raw["restarts"].items()},
            queen_pid=int(raw["queen_pid"]) if raw.get("queen_pid") is not None else None,
            vram_baseline={
                str(h): {str(g): int(v) for g, v in gpus.items()}
                for h, gpus in raw["vram_baseline"].items()
            },
            crash_loops_restarted={
                str(k): str(v) for k, v in raw.get("crash_loops_restarted", {}).items()
            },
            details={str(k): str(v) for k, v in raw.get("details", {}).items()},
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_memory(state_dir: Path, memory: Memory) -> None:
    """Keep this sweep for the next one (atomically: a reader never sees half of it)."""
    body = {
        "version": _VERSION,
        "at": memory.at,
        "status": memory.status,
        "checks": memory.checks,
        "restarts": memory.restarts,
        "queen_pid": memory.queen_pid,
        "vram_baseline": memory.vram_baseline,
        "crash_loops_restarted": memory.crash_loops_restarted,
        "details": memory.details,
    }
    atomic_write_text(
        sweep_memory_path(state_dir), json.dumps(body, indent=1, sort_keys=True) + "\n"
    )


def changes(checks: list[Check], before: Memory | None) -> list[Change]:
    """What changed since the last sweep (nothing on the first). A check this sweep did not
    make (`carried_over` keeps it) is not "gone"."""
    if before is None:
        return []
    now = {c.key: c.status.name for c in checks}
    found = []
    for key in sorted(now.keys() | before.checks.keys()):
        old, new = before.checks.get(key), now.get(key)
        if old != new:
            target, _, check = key.partition("/")
            found.append(Change(target, check, old, new))
    return found


def carried_over(before: Memory | None, swept: set[str], probed: bool) -> dict[str, str]:
    """The previous statuses of checks this sweep did not make: of targets it did not sweep
    (`--hive`, `--group`), and the `--probe` ones when it did not probe."""
    if before is None:
        return {}
    kept = {}
    for key, status in before.checks.items():
        target, _, check = key.partition("/")
        if target not in swept or (check.startswith("probe:") and not probed):
            kept[key] = status
    return kept
