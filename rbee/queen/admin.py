"""The queen's admin API: workers on every hive, and the hives themselves.

The worker routes are rbee.api.worker_routes, shared with the hives; here they act on every hive:
GET    /v1/workers                 every worker on every hive (`ID@hive` ids for remote ones),
                                   with `idle_s` (seconds since its last request) and the
                                   parked ones (state `parked`, unloaded until a request)
POST   /v1/workers                 {"model", "hive"?, "engine"?, "device"?, "ctx_size"?, …}
DELETE /v1/workers/{id}            stop one worker, for good
POST   /v1/workers/{id}/restart    start one worker again now (also ends a crash-loop)
GET    /v1/hives                   this machine's hive and every remote hive started
GET    /v1/hives/{alias}/models    the models in a hive's store
POST   /v1/hives/{alias}/start     connect over SSH, start the hive, wait until it serves
POST   /v1/hives/{alias}/stop      stop the hive and everything it runs
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.api.workers import WorkerInfo, parse_worker_spec, spawn_error
from rbee.errors import ApiError, ConfigError, RbeeError, SshError
from rbee.queen.registry import LOCAL_HIVE
from rbee.queen.service import Queen

__all__ = ["QueenWorkers", "admin_routes", "check_hive_alias"]

_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_hive_alias(value: Any) -> str:
    """A hive alias from a request body; 400 naming the field if it cannot be one."""
    hive = value or LOCAL_HIVE
    if not isinstance(hive, str) or not _ALIAS.fullmatch(hive):
        raise ApiError(400, "hive must be a hive alias from hives.conf", param="hive")
    return hive


class QueenWorkers:
    """The worker admin of every hive (rbee.api.worker_routes.WorkerAdmin)."""

    def __init__(self, queen: Queen) -> None:
        self.queen = queen

    def worker_json(self, hive: str, info: WorkerInfo) -> dict[str, Any]:
        """A worker as the queen's API shows it: queen-wide id, live request counters."""
        out = info.to_json(hive)
        if hive != LOCAL_HIVE:
            out["id"] = f"{info.id}@{hive}"
        endpoint = self.queen.registry.endpoint(hive, info.id)
        out["outstanding"] = endpoint.outstanding if endpoint else 0
        out["dispatched"] = endpoint.dispatched if endpoint else 0
        out["idle_s"] = round(endpoint.idle_for, 1) if endpoint else None
        wanted = self.queen.desired.get(hive, info.id)
        out["parked"] = bool(wanted and wanted.parked)
        return out

    def list_workers(self) -> list[dict[str, Any]]:
        """Every worker on every hive, then the parked ones that are not running."""
        running = self.queen.workers()
        present = {(h, w.id) for h, w in running}
        listed = [self.worker_json(h, w) for h, w in running]
        for d in self.queen.desired.workers():
            if d.parked and d.key not in present:
                spec = d.spec
                info = WorkerInfo(id=d.id, model=spec.model, engine=spec.engine,
                                  device=spec.device, state="exited", context_length=spec.ctx_size,
                                  embeddings=spec.embeddings, cpu_repack=spec.cpu_repack,
                                  max_queued=spec.max_queued, threads=spec.threads)  # fmt: skip
                listed.append({**self.worker_json(d.hive, info), "state": "parked"})
        return listed

    async def spawn_worker(self, body: Any) -> dict[str, Any]:
        """Start a worker on the hive the body names (this machine by default)."""
        spec = parse_worker_spec(body)
        hive = check_hive_alias(body.get("hive"))
        name, info = await self.queen.spawn(spec, hive)
        return self.worker_json(name, info)

    async def stop_worker(self, worker_id: str) -> dict[str, Any]:
        """Stop one worker, for good."""
        name, info = await self.queen.stop_worker(worker_id)
        return self.worker_json(name, info)

    async def restart_worker(self, worker_id: str) -> dict[str, Any]:
        """Start one worker again now."""
        name, info = await self.queen.restart_worker(worker_id)
        return self.worker_json(name, info)


def _queen(request: Request) -> Queen:
    queen: Queen = request.app.state.queen
    return queen


async def list_hives(request: Request) -> Response:
    queen = _queen(request)
    local = {"name": LOCAL_HIVE, "host": "127.0.0.1", "state": "running", "pid": os.getpid(),
             "workers": len(queen.hive.workers()), "last_error": None,
             "facts": dataclasses.asdict(await queen.hive.facts())}  # fmt: skip
    remote = [h.describe() for h in queen.fleet.hives()]
    return JSONResponse(
        {"object": "list", "data": [local, *remote, *queen.fleet.describe_unlaunchable()]}
    )


async def hive_models(request: Request) -> Response:
    alias = request.path_params["alias"]
    queen = _queen(request)
    try:
        if alias == LOCAL_HIVE:
            models = [m.describe() for m in queen.hive.models()]
        else:
            models = await queen.fleet.get(alias).models()
    except RbeeError as err:
        raise spawn_error(err) from err
    return JSONResponse({"object": "list", "hive": alias, "data": models})


async def start_hive(request: Request) -> Response:
    alias = request.path_params["alias"]
    try:
        hive = await _queen(request).fleet.start(alias)
    except ConfigError as err:
        raise ApiError(400, str(err), param="alias") from err
    except SshError as err:
        raise ApiError(502, str(err), type="server_error", code="hive_unreachable") from err
    return JSONResponse(hive.describe())


async def stop_hive(request: Request) -> Response:
    alias = request.path_params["alias"]
    try:
        await _queen(request).fleet.stop(alias)
    except RbeeError as err:
        raise spawn_error(err) from err
    return JSONResponse({"name": alias, "state": "stopped"})


def admin_routes() -> list[Route]:
    """The hive routes over `app.state.queen` (the worker routes are rbee.api.worker_routes)."""
    return [
        Route("/v1/hives", list_hives, methods=["GET"]),
        Route("/v1/hives/{alias}/models", hive_models, methods=["GET"]),
        Route("/v1/hives/{alias}/start", start_hive, methods=["POST"]),
        Route("/v1/hives/{alias}/stop", stop_hive, methods=["POST"]),
    ]
