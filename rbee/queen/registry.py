"""The queen's view of every worker on every hive, and of the requests each is serving.

A worker serves generation or, loaded with `--embeddings`, embeddings only: every question about
which workers can take a request names the capability it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from rbee.api.workers import WorkerInfo
from rbee.queen.scheduler import pick

__all__ = ["LOCAL_HIVE", "Endpoint", "Registry"]

LOCAL_HIVE = "localhost"
"""The hive the queen runs in its own process (integrated mode)."""


@dataclass
class Endpoint:
    """A worker the queen can route to, with its live request counters."""

    hive: str
    info: WorkerInfo
    forward_url: str | None = None
    """For a worker on another machine: the local end of its SSH port forward."""
    token: str | None = None
    """Its hive's hop secret, which the worker asks of every caller (rbee.api.hop)."""
    outstanding: int = 0
    """Requests the queen has sent it that have not ended (queued there or generating)."""
    dispatched: int = 0
    last_active: float = field(default_factory=time.monotonic)
    """When it last ended a request (or was first seen): its idle time counts from here."""
    served: int = 0
    """Requests it answered in full through the queen (its only client: rbee.api.hop)."""
    tokens_out: int = 0
    """Tokens the queen relayed from it (rbee.queen.ledger says how they are counted)."""
    service_time: float = 0.0
    """Moving average of a request's time on it, queueing excluded (0: none measured yet)."""

    @property
    def id(self) -> str:
        """The worker id, unique across hives (`ID@hive` for a worker on another machine)."""
        return self.info.id if self.hive == LOCAL_HIVE else f"{self.info.id}@{self.hive}"

    @property
    def attempt(self) -> str:
        """This worker in this life: a restarted worker (new pid) may be tried again."""
        return f"{self.id}#{self.info.pid}"

    @property
    def capacity(self) -> int:
        """Requests it takes at once: the one it generates and those it queues."""
        return 1 + self.info.max_queued

    @property
    def idle_for(self) -> float:
        """Seconds since it last served a request; 0 while it serves one."""
        return 0.0 if self.outstanding else time.monotonic() - self.last_active

    @property
    def routable(self) -> bool:
        """Ready, and reachable from here (a remote worker once its forward is open)."""
        return self.info.state == "ready" and (
            self.hive == LOCAL_HIVE or self.forward_url is not None
        )

    @property
    def url(self) -> str:
        """The worker's base URL."""
        url = self.forward_url or self.info.url
        assert url is not None, "only ready workers are routed to"
        return url


class Registry:
    """Workers by id, in every state but exited; hives report changes, the router asks for
    candidates, and a request waiting for a worker waits for the next change."""

    def __init__(self) -> None:
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        self._changed = asyncio.Event()

    def update(
        self,
        hive: str,
        info: WorkerInfo,
        forward_url: str | None = None,
        token: str | None = None,
    ) -> None:
        """Record a worker's new state (an exited worker is forgotten).

        A worker on this machine is reached at its own port; one on another machine through
        `forward_url`, which the hive's handle gives while the worker is ready (None otherwise);
        `token` is its hive's hop secret.
        """
        key = (hive, info.id)
        if info.state == "exited":
            self._endpoints.pop(key, None)
        else:
            current = self._endpoints.get(key)
            if current is None:
                self._endpoints[key] = Endpoint(
                    hive=hive, info=info, forward_url=forward_url, token=token
                )
            else:
                current.info = info
                current.forward_url = forward_url
                current.token = token
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, limit: float) -> None:
        """Return at the next change of any worker, or after `limit` seconds."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await changed.wait()

    def of_model(self, model: str, *, embeddings: bool = False) -> list[Endpoint]:
        """Every known worker of `model` (with that capability), in any state."""
        return [
            e
            for e in self._endpoints.values()
            if e.info.model == model and e.info.embeddings == embeddings
        ]

    def endpoint(self, hive: str, worker_id: str) -> Endpoint | None:
        """The endpoint of one worker, if it is known."""
        return self._endpoints.get((hive, worker_id))

    def endpoints(self) -> list[Endpoint]:
        """Every known worker."""
        return list(self._endpoints.values())

    def ready(self, model: str, *, embeddings: bool = False) -> list[Endpoint]:
        """The workers ready to serve `model` for generation (or, with `embeddings`, for those)."""
        return [e for e in self.of_model(model, embeddings=embeddings) if e.routable]

    def served_models(
        self, *, embeddings: bool | None = None, ready: bool = True
    ) -> dict[str, int]:
        """Each model with a ready worker, mapped to the smallest context among its workers.

        `embeddings` True or False counts only the workers loaded for embeddings, or only the
        others; None counts every worker. `ready` False counts workers in any state.
        """
        models: dict[str, int] = {}
        for e in self._endpoints.values():
            if (e.info.state == "ready" or not ready) and embeddings in (None, e.info.embeddings):
                ctx = e.info.context_length
                models[e.info.model] = min(models.get(e.info.model, ctx), ctx)
        return dict(sorted(models.items()))

    def choose(
        self, model: str, exclude: Collection[str], *, embeddings: bool = False
    ) -> Endpoint | None:
        """The ready worker for `model` (with the capability asked) with room for the next
        request; `exclude` holds `Endpoint.attempt` keys of the tries that failed. None when
        there is none: all tried, all full (Endpoint.capacity), or none ready."""
        ready = [
            e
            for e in self.ready(model, embeddings=embeddings)
            if e.attempt not in exclude and e.outstanding < e.capacity
        ]
        return pick(ready)
