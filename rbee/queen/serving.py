"""Whether the queen should serve: `rbee queen start` records yes (and how it was started),
`rbee queen stop` records no, in `run/queen.serving.json`.

`rbee sweep --heal` reads it: a queen that is down although it should serve is started again the
way it was last started (the cron sweep is the watchdog of last resort), and one an operator
stopped stays stopped. Kept apart from the daemon so that reading it imports nothing heavy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rbee.config.settings import Paths
from rbee.fsutil import atomic_write_text

__all__ = ["Serving", "read_serving", "record_serving", "serving_path"]


@dataclass(frozen=True)
class Serving:
    """The operator's last word on the queen."""

    serve: bool
    start_argv: tuple[str, ...]
    """The `rbee … queen start …` command that starts it as it was last started (may be ())."""


def serving_path(paths: Paths) -> Path:
    """Where the record lives (beside the queen's pid file)."""
    return paths.run_dir / "queen.serving.json"


def record_serving(paths: Paths, serve: bool, start_argv: list[str] | None = None) -> None:
    """Record that the queen should (or should not) serve; a stop keeps the last start command."""
    if start_argv is None:
        previous = read_serving(paths)
        start_argv = list(previous.start_argv) if previous else []
    body = {"serve": serve, "start_argv": start_argv}
    atomic_write_text(serving_path(paths), json.dumps(body) + "\n")


def read_serving(paths: Paths) -> Serving | None:
    """The record, or None when the queen was never started with `rbee queen start` (or the file
    is unreadable: then nobody said anything that can be relied on)."""
    try:
        raw = json.loads(serving_path(paths).read_text())
        serve, argv = raw["serve"], raw["start_argv"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(serve, bool) or not all(isinstance(a, str) for a in argv):
        return None
    return Serving(serve=serve, start_argv=tuple(argv))
