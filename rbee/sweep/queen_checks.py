"""The queen's checks, as pure functions: up (and whether it should be), its workers ready, the
depth of its queues, and workers restarted since the last sweep."""

from __future__ import annotations

from collections.abc import Mapping

from rbee.sweep.expect import Expected
from rbee.sweep.queen_view import QueenView
from rbee.sweep.status import Check, Status, Thresholds

__all__ = ["QUEEN", "check_queen", "restart_counts"]

QUEEN = "queen"
"""The target name of the queen's checks."""


def restart_counts(queen: QueenView) -> dict[str, int]:
    """Each worker's restart count, by the queen's worker id (remembered for the next sweep)."""
    return {str(w.get("id")): int(w.get("restarts") or 0) for w in queen.workers}


def _restarts_since(now: Mapping[str, int], before: Mapping[str, int] | None) -> int | None:
    """Restarts since the previous sweep; a count that went down (a new queen) counts whole."""
    if before is None:
        return None
    return sum(n - before.get(k, 0) if n >= before.get(k, 0) else n for k, n in now.items())


def check_queen(
    queen: QueenView,
    expected: Expected,
    thresholds: Thresholds,
    *,
    last_restarts: Mapping[str, int] | None,
    last_pid: int | None,
) -> list[Check]:
    """The queen's checks; `last_*` are what the previous sweep saw (None: no previous sweep)."""
    if not queen.up:
        where = f" at {queen.url}" if queen.url else ""
        serving = expected.serving
        if serving is not None and not serving.serve:
            return [Check(QUEEN, "up", Status.OK, "stopped on purpose (`rbee queen stop`)", 0.0)]
        if serving is not None:
            detail = f"down{where} but it should serve: {queen.error}"
            return [Check(QUEEN, "up", Status.CRITICAL, detail, 0.0)]
        detail = f"not running{where} ({queen.error}); nothing records that it should serve"
        return [Check(QUEEN, "up", Status.WARNING, detail, 0.0)]
    checks = []
    pid = f"pid {queen.pid} " if queen.pid else ""
    new = last_pid is not None and queen.pid is not None and queen.pid != last_pid
    if new:
        detail = f"up ({pid}at {queen.url}), restarted since the last sweep (was pid {last_pid})"
        checks.append(Check(QUEEN, "up", Status.WARNING, detail, 1.0))
    else:
        checks.append(Check(QUEEN, "up", Status.OK, f"up ({pid}at {queen.url})", 1.0))
    ready = sum(1 for w in queen.workers if w.get("state") == "ready")
    total = len(queen.workers)
    status = Status.OK if ready == total else Status.WARNING
    checks.append(Check(QUEEN, "workers_ready", status, f"{ready} of {total} ready", float(ready)))
    if expected.error is not None:
        checks.append(Check(QUEEN, "desired_state", Status.UNKNOWN, expected.error))
    depth = queen.queue_depth
    if depth is None:
        checks.append(Check(QUEEN, "queue_depth", Status.UNKNOWN, "/metrics not readable"))
    else:
        level = (
            Status.CRITICAL
            if depth > thresholds.queue_crit
            else Status.WARNING
            if depth > thresholds.queue_warn
            else Status.OK
        )
        checks.append(Check(QUEEN, "queue_depth", level, f"{depth} queued", float(depth)))
    since = _restarts_since(restart_counts(queen), last_restarts)
    if since is None:
        checks.append(Check(QUEEN, "restarts", Status.OK, "first sweep: nothing to compare", 0.0))
    else:
        level = Status.WARNING if since else Status.OK
        detail = f"{since} worker restart(s) since the last sweep"
        checks.append(Check(QUEEN, "restarts", level, detail, float(since)))
    return checks
