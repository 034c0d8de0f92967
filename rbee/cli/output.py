"""Everything the CLI prints goes through here: results to stdout, messages to stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from rbee.models.transfer import Progress as ProgressFn

# rich is imported where a bar is drawn: it costs 75 ms, and every command (and every worker a hive
# starts) imports this module for its plain lines.

__all__ = [
    "LiveProgress",
    "confirm",
    "emit",
    "fail",
    "fetch_progress",
    "live_progress",
    "note",
    "table",
]


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
    from rich.progress import (  # noqa: PLC0415 - see the imports above
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

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


class LiveProgress(Protocol):
    """Status lines and progress bars on stderr, as `live_progress()` yields them."""

    def line(self, text: str) -> None:
        """One status line."""
        ...

    def bar(self, label: str, done: int, total: int | None) -> None:
        """Progress of `label`: `done` of `total` (None: unknown)."""
        ...


class _PlainProgress:
    def __init__(self) -> None:
        self._started: set[str] = set()
        self._finished: set[str] = set()

    def line(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def bar(self, label: str, done: int, total: int | None) -> None:
        # Without a terminal a bar would be noise: say when each transfer starts and ends.
        if label not in self._started:
            self._started.add(label)
            self.line(f"  {label}…")
        if total is not None and done >= total and label not in self._finished:
            self._finished.add(label)
            self.line(f"  {label}: done")


class _RichProgress:
    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def line(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def bar(self, label: str, done: int, total: int | None) -> None:
        if label not in self._tasks:
            self.settle()
            self._tasks[label] = self._progress.add_task(label, total=total)
        self._progress.update(self._tasks[label], completed=done, total=total)

    def settle(self) -> None:
        # A transfer of unknown size is over once the next one starts (or all is done): stop its
        # bar pulsing.
        for task in self._progress.tasks:
            if task.total is None:
                self._progress.update(task.id, total=1, completed=1)


@contextmanager
def live_progress() -> Iterator[LiveProgress]:
    """Status lines and progress bars on stderr: rich bars on a terminal, plain lines otherwise."""
    if not sys.stderr.isatty():
        yield _PlainProgress()
        return
    from rich.console import Console  # noqa: PLC0415 - see the imports above
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as progress:
        view = _RichProgress(progress)
        yield view
        view.settle()
