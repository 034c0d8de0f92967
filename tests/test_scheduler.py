"""The scheduler picks the least busy ready worker, reproducibly."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rbee.queen.scheduler import pick


@dataclass(frozen=True)
class W:
    id: str
    outstanding: int = 0
    dispatched: int = 0


@pytest.mark.parametrize(
    ("candidates", "exclude", "expected"),
    [
        ([], (), None),
        ([W("a")], (), "a"),
        ([W("a")], ("a",), None),
        ([W("a", 2), W("b", 1)], (), "b"),
        ([W("a", 1, 5), W("b", 1, 3)], (), "b"),
        ([W("b", 0, 0), W("a", 0, 0)], (), "a"),
        ([W("a", 0), W("b", 3)], ("a",), "b"),
    ],
)
def test_pick(candidates: list[W], exclude: tuple[str, ...], expected: str | None) -> None:
    chosen = pick(candidates, exclude)
    assert (chosen.id if chosen else None) == expected
