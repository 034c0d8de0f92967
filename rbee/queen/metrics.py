"""The queen's Prometheus metrics (`GET /metrics`), on a registry of each QueenMetrics' own.

Two kinds of figures. The relay and the autoloader call the hooks of `QueenMetrics` as requests
and loads happen (requests, time to first token, time per output token, rejections, loads and
unloads). The rest is read at scrape time: `take_snapshot` asks every ready worker for its
`/health` at once, over the connections the queen already has to it (no hive opens a port), and
reads each worker's state and each remote hive's lease and SSH channels; `QueenMetrics.render`
turns the counters and that snapshot into the text format. Every metric and its labels are
listed in docs/api.md ("Metrics").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from rbee.api.workers import WorkerState
from rbee.queen.registry import Endpoint, Registry

__all__ = [
    "FleetCollector",
    "HiveFigures",
    "HiveView",
    "QueenMetrics",
    "Snapshot",
    "WorkerFigures",
    "take_snapshot",
]

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
"""Time to first token: a short prompt on a small model to a long prefill behind a queue."""
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
"""Time per output token: 200 tokens/s on a GPU to a large model crawling on a CPU."""
LOAD_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""A model's load, from a small GGUF already on disk to a large one uploaded to a hive first."""

_WORKER_LABELS = ("model", "worker", "hive")
_STATES = tuple(s for s in get_args(WorkerState) if s != "exited")
_FROM_STATS = (
    # (key in the worker's /health `stats`, a counter (else a gauge), metric, help)
    ("queued", False, "rbee_worker_queued_requests", "Requests waiting in the worker's queue"),
    ("active", False, "rbee_worker_active_requests", "Requests the worker is generating now"),
    ("prompt_tokens", True, "rbee_prompt_tokens", "Prompt tokens the worker has read"),
    ("generated_tokens", True, "rbee_completion_tokens",
     "Tokens the worker has generated (its warm-up decode included)"),
    ("rejected", True, "rbee_worker_rejected_requests",
     "Requests the worker refused (its queue was full)"),
)  # fmt: skip

Health = Callable[[Endpoint], Awaitable[dict[str, Any] | None]]
"""A worker's /health body, or None when it does not answer (`Relay.worker_health`)."""


class HiveView(Protocol):
    """What a scrape reads of a remote hive (rbee.queen.remote.RemoteHive)."""

    @property
    def name(self) -> str: ...
    @property
    def lease_age(self) -> float | None: ...
    @property
    def ssh_channels(self) -> int | None: ...


@dataclass(frozen=True)
class WorkerFigures:
    """One worker as a scrape found it."""

    model: str
    worker: str
    """Its queen-wide id (`ID@hive` on another machine), as `rbee worker list` shows it."""
    hive: str
    state: str
    restarts: int
    outstanding: int
    """Requests the queen has sent it that have not ended."""
    stats: Mapping[str, Any] | None = None
    """The `stats` of its /health; None if it was not ready or did not answer."""


@dataclass(frozen=True)
class HiveFigures:
    """One remote hive as a scrape found it; None where it is not connected now."""

    hive: str
    lease_age: float | None
    ssh_channels: int | None


@dataclass(frozen=True)
class Snapshot:
    """What the fleet looked like at one scrape."""

    workers: tuple[WorkerFigures, ...] = ()
    hives: tuple[HiveFigures, ...] = ()


async def take_snapshot(registry: Registry, hives: Iterable[HiveView], health: Health) -> Snapshot:
    """Every worker and remote hive now, with the /health stats of each ready worker, all asked
    at once (a scrape costs one round trip, bounded by `health`'s own deadline)."""
    endpoints = registry.endpoints()

    async def stats(e: Endpoint) -> Mapping[str, Any] | None:
        # Only a worker the relay could route to has an address to ask.
        if not e.routable:
            return None
        body = await health(e)
        found = body.get("stats") if body is not None else None
        return found if isinstance(found, Mapping) else None

    answers = await asyncio.gather(*(stats(e) for e in endpoints))
    workers = tuple(
        WorkerFigures(
            model=e.info.model,
            worker=e.id,
            hive=e.hive,
            state=e.info.state,
            restarts=e.info.restarts,
            outstanding=e.outstanding,
            stats=s,
        )
        for e, s in zip(endpoints, answers, strict=True)
    )
    return Snapshot(
        workers=workers,
        hives=tuple(
            HiveFigures(hive=h.name, lease_age=h.lease_age, ssh_channels=h.ssh_channels)
            for h in hives
        ),
    )


def _number(stats: Mapping[str, Any], key: str) -> float | None:
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class FleetCollector:
    """A prometheus_client Collector of one snapshot's figures: worker states, restarts and
    requests, the workers' own counters, and each remote hive's lease and SSH channels."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """The snapshot's metric families."""
        labels = list(_WORKER_LABELS)
        state = GaugeMetricFamily(
            "rbee_worker_state",
            "1 for the worker's current state, 0 for the others",
            labels=[*labels, "state"],
        )
        restarts = CounterMetricFamily(
            "rbee_worker_restarts",
            "Times the worker was started again after it ended",
            labels=labels,
        )
        outstanding = GaugeMetricFamily(
            "rbee_worker_outstanding_requests",
            "Requests the queen has sent the worker that have not ended",
            labels=labels,
        )
        from_stats = [
            (key, (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=labels))
            for key, counter, name, doc in _FROM_STATS
        ]
        for w in self.snapshot.workers:
            values = [w.model, w.worker, w.hive]
            for name in _STATES:
                state.add_metric([*values, name], 1.0 if w.state == name else 0.0)
            restarts.add_metric(values, w.restarts)
            outstanding.add_metric(values, w.outstanding)
            if w.stats is None:
                continue
            for key, family in from_stats:
                value = _number(w.stats, key)
                if value is not None:  # a worker of an older rbee may not report it
                    family.add_metric(values, value)
        yield from (state, restarts, outstanding, *(f for _, f in from_stats))

        lease = GaugeMetricFamily(
            "rbee_hive_lease_age_seconds",
            "Seconds since the hive last acknowledged the queen's heartbeat",
            labels=["hive"],
        )
        channels = GaugeMetricFamily(
            "rbee_hive_ssh_channels",
            "Channels in use on the queen's SSH connection to the hive",
            labels=["hive"],
        )
        for h in self.snapshot.hives:
            if h.lease_age is not None:
                lease.add_metric([h.hive], h.lease_age)
            if h.ssh_channels is not None:
                channels.add_metric([h.hive], h.ssh_channels)
        yield from (lease, channels)


class _Scrape:
    """The queen's own counters followed by one snapshot's figures (a Collector)."""

    def __init__(self, registry: CollectorRegistry, fleet: FleetCollector) -> None:
        self._registry = registry
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._fleet.collect()


class QueenMetrics:
    """Counters and histograms the relay and the autoloader feed; figures read at scrape time."""

    def __init__(self) -> None:
        # A registry of its own, never prometheus_client's global one: a test process runs
        # several queens.
        self.registry = CollectorRegistry()
        worker = list(_WORKER_LABELS)
        self._requests = Counter(
            "rbee_requests",
            "Requests answered, by status code (499: the client went away); worker and hive "
            "empty when no worker took it",
            ["model", "code", "worker", "hive"],
            registry=self.registry,
        )
        self._ttft = Histogram(
            "rbee_time_to_first_token_seconds",
            "Time from the queen receiving a request to its first generated token going out",
            worker,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self._tpot = Histogram(
            "rbee_time_per_output_token_seconds",
            "Mean time per output token after the first, one observation per streamed answer",
            worker,
            buckets=TPOT_BUCKETS,
            registry=self.registry,
        )
        self._rejected = Counter(
            "rbee_rejected_requests",
            "Requests the queen refused at admission (overloaded, unavailable, timeout)",
            ["model", "reason"],
            registry=self.registry,
        )
        self._loads = Histogram(
            "rbee_model_load_seconds",
            "Time to load a model on demand, by outcome (ok, failed)",
            ["model", "hive", "outcome"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self._unloads = Counter(
            "rbee_model_unloads",
            "Workers the queen stopped to free their place (idle, lru)",
            ["model", "hive", "reason"],
            registry=self.registry,
        )

    def request(self, model: str, status: int, *, worker: str, hive: str) -> None:
        """One request answered (status 499: the client went away); worker/hive "" when none
        took it."""
        self._requests.labels(model, str(status), worker, hive).inc()

    def first_token(self, model: str, *, worker: str, hive: str, seconds: float) -> None:
        """Time from the queen receiving a request to its first generated token going out."""
        self._ttft.labels(model, worker, hive).observe(seconds)

    def per_token(self, model: str, *, worker: str, hive: str, seconds: float) -> None:
        """Mean time per output token after the first, of one streamed answer."""
        self._tpot.labels(model, worker, hive).observe(seconds)

    def rejected(self, model: str, reason: str) -> None:
        """A request refused at admission: reason `overloaded`, `unavailable` or `timeout`."""
        self._rejected.labels(model, reason).inc()

    def loaded(self, model: str, *, hive: str, seconds: float, ok: bool) -> None:
        """A model loaded on demand (or failed to)."""
        self._loads.labels(model, hive, "ok" if ok else "failed").observe(seconds)

    def unloaded(self, model: str, *, hive: str, reason: str) -> None:
        """A worker stopped by the queen to free its place: reason `idle` or `lru`."""
        self._unloads.labels(model, hive, reason).inc()

    def render(self, snapshot: Snapshot = Snapshot()) -> bytes:
        """Every metric in the Prometheus text format (`prometheus_client.CONTENT_TYPE_LATEST`),
        the fleet's figures taken from `snapshot`."""
        return generate_latest(_Scrape(self.registry, FleetCollector(snapshot)))
