"""A remote hive's workers as the queen sees them, and what the queen asks of them.

The hive reports each worker's state on the session the queen holds (a JSON line per change) and
answers the admin calls over its HTTP port, which the queen reaches through an SSH forward. Here
the queen keeps the last report of each worker, a forward to each ready worker's port (a new one
when a restart moved the worker to another port), and tells the registry of every change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from rbee.api.client import AsyncApiClient
from rbee.api.hop import hop_headers
from rbee.api.workers import WorkerInfo, WorkerSpec, parse_worker_info
from rbee.config.hives import Hive
from rbee.config.settings import Timeouts
from rbee.engines.select import Choice
from rbee.errors import HiveUnavailableError, SshError
from rbee.models.sources import ensure_model
from rbee.models.store import ModelStore
from rbee.placement import facts_from_json, model_formats, place
from rbee.ssh.connection import HiveConnection
from rbee.ssh.forward import PortForward
from rbee.ssh.upload import upload_model

__all__ = ["OnChange", "RemoteWorkers"]

log = logging.getLogger(__name__)

OnChange = Callable[[str, WorkerInfo, str | None, str | None], None]
"""(hive alias, the worker's new state, the local URL of its forward or None, the hive's hop
secret that the worker asks for)."""


class RemoteWorkers:
    """The workers of one remote hive, while the queen is connected to it."""

    def __init__(
        self,
        hive: Hive,
        timeouts: Timeouts,
        *,
        store: ModelStore | None,
        on_change: OnChange | None,
    ) -> None:
        self.hive = hive
        self.name = hive.alias
        self._timeouts = timeouts
        self._store = store
        self._on_change = on_change
        self._conn: HiveConnection | None = None
        self._client: AsyncApiClient | None = None
        self.token: str | None = None
        """The hop secret of the hive's current session (rbee.api.hop)."""
        self._workers: dict[str, WorkerInfo] = {}
        self._forwards: dict[str, tuple[int, PortForward]] = {}
        """worker id -> (its port on the hive, the forward to it)"""
        self._tracking = asyncio.Lock()
        self._models_dir: str | None = None
        # One upload per model at a time: two spawns must not send the same artifact twice, nor
        # rewrite the model's manifest on the hive at once (a queen is a hive's only writer).
        self._uploading: dict[str, asyncio.Lock] = {}

    # -- the connection ------------------------------------------------------------------------

    def attach(self, conn: HiveConnection, url: str, token: str | None) -> None:
        """Use `conn` and the hive's HTTP API at `url` (its forward), with the hop secret the
        hive gave in its ready line, from now on."""
        self._conn = conn
        self.token = token
        self._client = AsyncApiClient(
            url, name=self.name, timeouts=self._timeouts, headers=hop_headers(token)
        )
        self._models_dir = None

    async def detach(self) -> None:
        """The connection is gone: forget every worker (they die with the hive's session)."""
        client, self._client, self._conn = self._client, None, None
        self.token = None
        for worker_id, info in list(self._workers.items()):
            self._forget(worker_id, info)
        if client is not None:
            await client.aclose()

    @property
    def attached(self) -> bool:
        """True while the hive can be asked."""
        return self._client is not None

    async def http(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call to the hive's API; HiveUnavailableError when not connected."""
        if self._client is None:
            raise HiveUnavailableError(f"{self.name}: the hive is not connected")
        return await self._client.request(method, path, **kwargs)

    # -- what the hive reports -----------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        """The workers as last reported."""
        return list(self._workers.values())

    async def refresh(self) -> None:
        """Ask the hive for every worker (after a connect), and track them."""
        listed = await self.http("GET", "/v1/workers")
        for raw in listed["data"]:
            await self.track(parse_worker_info(raw))

    async def track(self, info: WorkerInfo) -> None:
        """Record a worker's new state: a forward to its port while it is ready, none otherwise."""
        async with self._tracking:
            if info.state == "exited":
                self._forget(info.id, info)
                return
            self._workers[info.id] = info
            port, forward = self._forwards.get(info.id, (None, None))
            if forward is not None and (info.state != "ready" or port != info.port):
                forward.close()  # the worker moved (restarted) or is down: this forward is stale
                del self._forwards[info.id]
                forward = None
            if forward is None and info.state == "ready" and info.port and self._conn is not None:
                forward = await self._conn.forward(info.port)
                self._forwards[info.id] = (info.port, forward)
            url = forward.url if forward is not None else None
        if self._on_change is not None:
            self._on_change(self.name, info, url, self.token)

    def _forget(self, worker_id: str, info: WorkerInfo) -> None:
        self._workers.pop(worker_id, None)
        _, forward = self._forwards.pop(worker_id, (None, None))
        if forward is not None:
            forward.close()
        if self._on_change is not None:
            self._on_change(self.name, dataclasses.replace(info, state="exited"), None, None)

    # -- what the queen asks -------------------------------------------------------------------

    async def facts(self) -> dict[str, Any] | None:
        """The hive's facts as its /health reports them (free memory read just now)."""
        facts = (await self.http("GET", "/health")).get("facts")
        return facts if isinstance(facts, dict) else None

    async def models(self) -> list[dict[str, Any]]:
        """The models in the hive's store."""
        listed = await self.http("GET", "/v1/models")
        models: list[dict[str, Any]] = listed["data"]
        return models

    async def place(self, spec: WorkerSpec) -> tuple[WorkerSpec, Choice]:
        """Engine, device and repacking for `spec` by the hive's facts (read now) and the formats
        at hand; hives.conf's RbeeCpuRepack applies unless the spawn said."""
        if spec.cpu_repack == "auto":
            spec = dataclasses.replace(spec, cpu_repack=self.hive.cpu_repack)
        try:
            facts = facts_from_json(await self.facts())
        except (TypeError, ValueError) as err:
            raise SshError(f"{self.name}: the hive reported unreadable facts ({err})") from err
        there = [
            f
            for m in await self.models()
            if m.get("id") == spec.model
            for f in (m.get("formats") or [m.get("format")])
            if isinstance(f, str)
        ]
        formats = await asyncio.to_thread(model_formats, self._store, spec.model, elsewhere=there)
        return place(spec, facts, formats, hive=self.name)

    async def start(self, spec: WorkerSpec, worker_id: str) -> WorkerInfo:
        """Upload the artifact the hive lacks, start the worker, wait until it serves."""
        placed, choice = await self.place(spec)
        await self._ensure_model(placed.model, choice.format)
        body = {"id": worker_id, **dataclasses.asdict(placed)}
        info = parse_worker_info(await self.http("POST", "/v1/workers", json=body))
        await self.track(info)
        return dataclasses.replace(info, note=choice.note) if choice.note else info

    async def stop(self, worker_id: str) -> WorkerInfo:
        """Stop one worker on the hive (WorkerNotFoundError if it has none by that id)."""
        info = parse_worker_info(await self.http("DELETE", f"/v1/workers/{worker_id}"))
        await self.track(dataclasses.replace(info, state="exited"))
        return info

    async def restart(self, worker_id: str) -> WorkerInfo:
        """Start one worker again on the hive and wait until it serves."""
        info = parse_worker_info(await self.http("POST", f"/v1/workers/{worker_id}/restart"))
        await self.track(info)
        return info

    async def _ensure_model(self, model: str, fmt: str) -> None:
        """Upload `model`'s `fmt` artifact from the queen's store unless the hive has it."""
        if self._store is None:
            return
        async with self._uploading.setdefault(model, asyncio.Lock()):
            for m in await self.models():
                # A hive of this version lists "formats"; one of the single-GGUF store, "format".
                if m.get("id") == model and fmt in (m.get("formats") or [m.get("format")]):
                    return
            stored = await asyncio.to_thread(ensure_model, self._store, model, fmt=fmt)
            if self._models_dir is None:  # where the hive keeps models: asked once a session
                self._models_dir = str((await self.http("GET", "/health"))["models_dir"])
            models_dir = self._models_dir
            if self._conn is None:
                raise HiveUnavailableError(f"{self.name}: the hive is not connected")
            log.info("%s: uploading model %s (%s)", self.name, model, fmt)
            await upload_model(self._conn, stored, models_dir, self.hive.python, fmt=fmt)
