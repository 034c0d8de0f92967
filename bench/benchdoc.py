"""Writing one benchmark's section of docs/benchmarks.md, leaving the other sections alone."""

from __future__ import annotations

from pathlib import Path

from rbee.fsutil import atomic_write_text

__all__ = ["DOC", "write_section"]

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
