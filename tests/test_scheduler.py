"""The scheduler picks the ready worker with the least work per capacity, reproducibly."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rbee.queen.scheduler import pick


@dataclass(frozen=True)
class W:
    id: str
    outstanding: int = 0
    dispatched: int = 0
    capacity: int = 9


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
        # work per capacity: 4 of 9 is less than 2 of 3
        ([W("a", 2, 1, capacity=3), W("b", 4, 1, capacity=9)], (), "b"),
        ([W("a", 2, 1, capacity=3), W("b", 4, 1, capacity=5)], (), "a"),
    ],
)
def test_pick(candidates: list[W], exclude: tuple[str, ...], expected: str | None) -> None:
    chosen = pick(candidates, exclude)
    assert (chosen.id if chosen else None) == expected
