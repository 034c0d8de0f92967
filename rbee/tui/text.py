"""`rbee tui --once`: one snapshot of the fleet as plain text tables, for scripts and docs.

The rows are the dashboard's own (rbee.tui.view), so the text says what the screen shows.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from rbee.tui import view

__all__ = ["render"]


def _table(title: str, columns: Sequence[str], rows: list[view.Row]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="ellipsis", no_wrap=True)
    for row in rows:
        table.add_row(*row.cells)
    if not rows:
        table.add_row("(none)", *[""] * (len(columns) - 1))
    return table


NATURAL = 10_000
"""A width no table reaches: each one takes the columns it needs, nothing cut."""


def render(
    snapshot: Mapping[str, Any],
    *,
    url: str,
    configured: Sequence[str] = (),
    width: int | None = None,
) -> str:
    """The fleet as text: hives, workers, models, jobs, the last ten requests and the last
    sweep, no colour; fitted in `width` columns (long cells cut) or, for None, as wide as the
    tables need (for scripts: nothing is cut)."""
    out = io.StringIO()
    console = Console(file=out, width=width or NATURAL, color_system=None, highlight=False)
    workers = snapshot.get("workers") or []
    ready = sum(1 for w in workers if w.get("state") == "ready")
    problems = (snapshot.get("queen") or {}).get("problems") or []
    console.print(
        f"rbee queen {url}: {len(workers)} worker(s), {ready} ready"
        + (f", {len(problems)} problem(s)" if problems else "")
    )
    now = float(snapshot.get("at") or 0) or None
    for title, columns, rows in (
        ("Hives", view.HIVE_COLUMNS, view.hive_rows(snapshot, configured)),
        ("Workers", view.WORKER_COLUMNS, view.worker_rows(snapshot)),
        ("Models", view.MODEL_COLUMNS, view.model_rows(snapshot)),
        ("Jobs", view.JOB_COLUMNS, view.job_rows(snapshot, now=now)),
        ("Recent requests", view.RECENT_COLUMNS, view.recent_rows(snapshot, now=now)[:10]),
    ):
        console.print(_table(title, columns, rows))
    console.print(view.sweep_line(snapshot, now=now)[0])
    for problem in problems:
        where = problem.get("worker") or problem.get("hive")
        console.print(f"problem: {where}: {problem.get('state')} {problem.get('error') or ''}")
    return out.getvalue()
