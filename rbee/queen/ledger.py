"""What the queen remembers of the requests it answered: the last ones, for the dashboard.

Since every hop is authenticated (rbee.api.hop), the queen is its workers' only client, so what
it counts as answers pass through it is what each worker did: the dashboard reads a worker's live
figures (requests served, tokens generated, queue) from here and from the registry's counters,
with no round trip to the worker (a busy fleet of fifty cost 25 /health reads a second).

A token count is exact for a whole answer (its `usage.completion_tokens`) and, for a stream, the
number of SSE events relayed after the first token: one per generated token from rbee's
workers, plus the final event (finish reason) and `[DONE]`.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["RECENT", "Answered", "Ledger", "completion_tokens"]

RECENT = 100
"""Requests kept (the dashboard shows the newest)."""


@dataclass(frozen=True, slots=True)
class Answered:
    """One request the queen answered (or refused)."""

    at: float
    """When it ended (epoch seconds)."""
    model: str
    status: int
    """499: the client went away."""
    duration_s: float
    """From its arrival at the queen to its end."""
    worker: str = ""
    """"" when no worker took it (refused at admission)."""
    hive: str = ""
    ttft_s: float | None = None
    """Time to its first token, for a stream (a whole answer's first token comes with it)."""
    tokens: int | None = None
    """Tokens generated (see the module's doc); None when unknown."""
    stream: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON the dashboard serves."""
        return {
            "at": round(self.at, 3),
            "model": self.model,
            "worker": self.worker,
            "hive": self.hive,
            "status": self.status,
            "stream": self.stream,
            "duration_ms": round(self.duration_s * 1000),
            "ttft_ms": None if self.ttft_s is None else round(self.ttft_s * 1000),
            "tokens": self.tokens,
        }


class Ledger:
    """The last `size` requests answered, newest last."""

    def __init__(self, size: int = RECENT) -> None:
        self._recent: deque[Answered] = deque(maxlen=size)
        self.total = 0
        """Requests recorded since the start."""

    def add(self, answered: Answered) -> None:
        """Record one request that ended."""
        self._recent.append(answered)
        self.total += 1

    def recent(self, limit: int = RECENT) -> list[dict[str, Any]]:
        """The last `limit` requests, newest first, as JSON."""
        newest = list(self._recent)[-limit:] if limit > 0 else []
        return [a.to_json() for a in reversed(newest)]

    @staticmethod
    def ended(arrived: float) -> tuple[float, float]:
        """(now as epoch seconds, seconds since `arrived` on the monotonic clock)."""
        return time.time(), time.monotonic() - arrived


def completion_tokens(body: bytes) -> int | None:
    """`usage.completion_tokens` of a whole answer's JSON body; None if it has none."""
    try:
        usage = json.loads(body).get("usage")
    except (ValueError, AttributeError):
        return None
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and tokens >= 0 else None
