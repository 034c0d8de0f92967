"""Which worker takes a request: a pure function over the ready candidates.

Least outstanding requests first; among equals, the one given the fewest requests so far, then the
lowest id, so a run of requests spreads over replicas and the choice is reproducible.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, TypeVar

__all__ = ["Candidate", "pick"]


class Candidate(Protocol):
    """What the scheduler needs to know about a worker."""

    @property
    def id(self) -> str: ...
    @property
    def outstanding(self) -> int: ...
    @property
    def dispatched(self) -> int: ...


C = TypeVar("C", bound=Candidate)


def pick(candidates: Sequence[C], exclude: Collection[str] = ()) -> C | None:
    """The candidate to send the next request to, or None if none is left."""
    usable = [c for c in candidates if c.id not in exclude]
    if not usable:
        return None
    return min(usable, key=lambda c: (c.outstanding, c.dispatched, c.id))
