"""Benchmarks rewrite only their own section of docs/benchmarks.md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from benchdoc import write_section


def test_a_section_is_replaced_or_appended_and_the_rest_kept(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write_section(
        "<!-- a:start -->\nA1\n<!-- a:end -->\n", "<!-- a:start -->", "<!-- a:end -->", doc
    )
    write_section(
        "<!-- b:start -->\nB1\n<!-- b:end -->\n", "<!-- b:start -->", "<!-- b:end -->", doc
    )
    write_section(
        "<!-- a:start -->\nA2\n<!-- a:end -->\n", "<!-- a:start -->", "<!-- a:end -->", doc
    )
    assert doc.read_text() == (
        "# Benchmarks\n\n<!-- a:start -->\nA2\n<!-- a:end -->\n\n"
        "<!-- b:start -->\nB1\n<!-- b:end -->\n"
    )
