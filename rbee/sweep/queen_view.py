"""What the queen says about itself and its fleet, read through its API (`QueenClient`).

A sweep runs whether or not a queen answers: `read_queen` never raises for a queen that is down
or unreachable, it says so (`QueenView.error`), and the checks decide what that means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rbee.config.settings import Paths, Timeouts
from rbee.queen.record import read_record

__all__ = ["QueenView", "parse_metrics", "read_queen"]

QUEEN_TIMEOUTS = Timeouts(connect=2.0, first_byte=5.0)
"""A sweep asks a queen quick questions: one that does not answer within these is not up."""


@dataclass(frozen=True)
class QueenView:
    """The queen as one sweep saw it."""

    url: str | None
    """Where it was asked (None: no pid file and no `--queen`)."""
    up: bool
    error: str | None = None
    pid: int | None = None
    version: str | None = None
    workers: tuple[dict[str, Any], ...] = ()
    """`GET /v1/workers`: id (`ID@HIVE` for remote ones), hive, state, pid, port, restarts."""
    hives: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`GET /v1/hives` by name: state, pid, last_error."""
    queue_depth: int | None = None
    """Requests waiting in the workers' queues (`rbee_worker_queued_requests`, summed)."""

    def hive(self, alias: str) -> dict[str, Any] | None:
        """The queen's record of one hive (None: not started, or no queen)."""
        return self.hives.get(alias)

    def workers_on(self, alias: str) -> list[dict[str, Any]]:
        """The workers the queen reports on one hive."""
        return [w for w in self.workers if w.get("hive") == alias]


def parse_metrics(text: str) -> int:
    """Requests queued in every worker, from the queen's /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    queued = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "rbee_worker_queued_requests":
            queued += sum(sample.value for sample in family.samples)
    return int(queued)


def read_queen(paths: Paths, url: str | None, api_key: str | None) -> QueenView:
    """Ask the queen at `url` (else the one the pid file names) for everything a sweep checks."""
    if url is None:
        record = read_record(paths)
        if record is None:
            return QueenView(url=None, up=False, error="no live pid file")
        url = record.url
    # Imported only when there is a queen to ask: a sweep of a fleet whose queen is down (as
    # cron runs it, a fresh process each time) does not pay for an HTTP client.
    import httpx  # noqa: PLC0415

    from rbee.api.client import QueenClient  # noqa: PLC0415
    from rbee.errors import QueenError  # noqa: PLC0415

    try:
        with QueenClient(url, api_key=api_key, timeouts=QUEEN_TIMEOUTS) as client:
            health = client.health()
            workers = client.workers()
            hives = {str(h["name"]): h for h in client.hives()}
            response = client.http.get("/metrics")
            queued = parse_metrics(response.text) if response.is_success else None
    except QueenError as err:
        return QueenView(url=url, up=False, error=str(err))
    except httpx.HTTPError as err:  # /metrics, asked with the bare client
        return QueenView(url=url, up=False, error=f"GET {url}/metrics: {err}")
    except (ValueError, KeyError, TypeError) as err:  # a /metrics or an answer it cannot read
        return QueenView(url=url, up=False, error=f"answered what a queen does not: {err}")
    pid = health.get("pid")
    return QueenView(
        url=url,
        up=True,
        pid=pid if isinstance(pid, int) else None,
        version=str(health["version"]) if "version" in health else None,
        workers=tuple(workers),
        hives=hives,
        queue_depth=queued,
    )
