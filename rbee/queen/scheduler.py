"""Which worker takes a request: a pure function over the ready candidates.

The candidates are ready workers (loaded, warm): a request never waits for a load while one of
them has room. Least work per capacity first (outstanding requests over the requests a worker
takes at once, so a worker that queues more gets more); among equals, the one given the fewest
requests so far, then the lowest id, so a run of requests spreads over replicas and the choice
is reproducible.
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
    @property
    def capacity(self) -> int: ...


C = TypeVar("C", bound=Candidate)


def pick(candidates: Sequence[C], exclude: Collection[str] = ()) -> C | None:
    """The candidate to send the next request to, or None if none is left."""
    usable = [c for c in candidates if c.id not in exclude]
    if not usable:
        return None
    return min(
        usable,
        key=lambda c: (c.outstanding / max(1, c.capacity), c.dispatched, c.id),
    )
