"""What the benchmarks share: writing one section of docs/benchmarks.md (leaving the others
alone), and running a benchmark's main so that SIGTERM and Ctrl+C still clean up."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from rbee.fsutil import atomic_write_text

__all__ = ["DOC", "run_main", "write_section"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(section: str, start_mark: str, end_mark: str, doc: Path = DOC) -> None:
    """Replace the text between the markers in `doc` (atomically); append it if missing."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start, end = text.find(start_mark), text.find(end_mark)
    if start != -1 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(end_mark) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(doc, text if text.endswith("\n") else text + "\n")


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_main(main: Callable[[], int], progress: Callable[[str], None]) -> NoReturn:
    """Exit with `main()`'s status; SIGTERM and Ctrl+C unwind through its `finally` blocks, so
    the processes, namespaces and files a benchmark made are removed."""
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted")
        sys.exit(130)
