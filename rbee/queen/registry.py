"""The queen's view of every worker on every hive, and of the requests each is serving.

A worker serves generation or, loaded with `--embeddings`, embeddings only: every question about
which workers can take a request names the capability it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    outstanding: int = 0
    dispatched: int = 0

    @property
    def id(self) -> str:
        """The worker id, unique across hives (`ID@hive` for a worker on another machine)."""
        return self.info.id if self.hive == LOCAL_HIVE else f"{self.info.id}@{self.hive}"

    @property
    def url(self) -> str:
        """The worker's base URL."""
        url = self.forward_url or self.info.url
        assert url is not None, "only ready workers are routed to"
        return url


class Registry:
    """Workers by id; hives report changes, the router asks for candidates."""

    def __init__(self) -> None:
        self._endpoints: dict[tuple[str, str], Endpoint] = {}

    def update(self, hive: str, info: WorkerInfo, forward_url: str | None = None) -> None:
        """Record a worker's new state (an exited worker is forgotten)."""
        key = (hive, info.id)
        if info.state == "exited":
            self._endpoints.pop(key, None)
            return
        current = self._endpoints.get(key)
        if current is None:
            self._endpoints[key] = Endpoint(hive=hive, info=info, forward_url=forward_url)
        else:
            current.info = info
            current.forward_url = forward_url or current.forward_url

    def endpoint(self, hive: str, worker_id: str) -> Endpoint | None:
        """The endpoint of one worker, if it is known."""
        return self._endpoints.get((hive, worker_id))

    def endpoints(self) -> list[Endpoint]:
        """Every known worker."""
        return list(self._endpoints.values())

    def ready(self, model: str, *, embeddings: bool = False) -> list[Endpoint]:
        """The workers ready to serve `model` for generation (or, with `embeddings`, for those)."""
        return [
            e
            for e in self._endpoints.values()
            if e.info.model == model and e.info.state == "ready" and e.info.embeddings == embeddings
        ]

    def served_models(self, *, embeddings: bool | None = None) -> dict[str, int]:
        """Each model with a ready worker, mapped to the smallest context among its workers.

        `embeddings` True or False counts only the workers loaded for embeddings, or only the
        others; None counts every worker.
        """
        models: dict[str, int] = {}
        for e in self._endpoints.values():
            if e.info.state == "ready" and embeddings in (None, e.info.embeddings):
                ctx = e.info.context_length
                models[e.info.model] = min(models.get(e.info.model, ctx), ctx)
        return dict(sorted(models.items()))

    def choose(self, model: str, exclude: set[str], *, embeddings: bool = False) -> Endpoint | None:
        """The ready worker for `model` (with the capability asked) to take the next request."""
        return pick(self.ready(model, embeddings=embeddings), exclude)
