"""Everything the CLI prints goes through here: results to stdout, messages to stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from rbee.models.sources import Progress as ProgressFn

__all__ = ["confirm", "emit", "fail", "fetch_progress", "note", "table"]


def emit(text: str = "", *, end: str = "\n") -> None:
    """A result, on stdout."""
    sys.stdout.write(text + end)
    sys.stdout.flush()


def note(text: str) -> None:
    """A message for the person at the terminal, on stderr."""
    sys.stderr.write(f"rbee: {text}\n")
    sys.stderr.flush()


def fail(text: str) -> int:
    """Print one error line and return the exit status to use."""
    sys.stderr.write(f"rbee: error: {text}\n")
    sys.stderr.flush()
    return 1


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows as aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        emit("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@contextmanager
def fetch_progress() -> Iterator[ProgressFn]:
    """A progress callback for model fetches: a bar on a terminal, plain lines otherwise."""
    if not sys.stderr.isatty():
        seen: set[str] = set()

        def plain(stage: str, done: int, total: int | None) -> None:
            if stage not in seen:
                seen.add(stage)
                note(f"{stage}…")

        yield plain
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def confirm(question: str) -> bool:
    """Ask a yes/no question on the terminal; False when there is no terminal to ask."""
    if not sys.stdin.isatty():
        return False
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in {"y", "yes"}
