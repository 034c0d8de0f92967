"""The queen's admin API: workers on every hive, and the hives themselves.

GET    /v1/workers              every worker on every hive (`ID@hive` ids for remote ones)
    POST   /v1/workers              {"model", "hive"?, "engine"?, "device"?, "ctx_size"?, …}
DELETE /v1/workers/{id}         stop one worker
GET    /v1/hives                this machine's hive and every remote hive started
POST   /v1/hives/{alias}/start  connect over SSH, start the hive, wait until it serves
POST   /v1/hives/{alias}/stop   stop the hive and everything it runs
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.api.http import read_json
from rbee.api.workers import WorkerInfo, parse_worker_spec, spawn_error
from rbee.errors import ApiError, ConfigError, RbeeError, SshError, WorkerError
from rbee.queen.registry import LOCAL_HIVE
from rbee.queen.service import Queen

__all__ = ["admin_routes"]

_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _queen(request: Request) -> Queen:
    queen: Queen = request.app.state.queen
    return queen


def _worker_json(queen: Queen, hive: str, info: WorkerInfo) -> dict[str, Any]:
    out = info.to_json(hive)
    if hive != LOCAL_HIVE:
        out["id"] = f"{info.id}@{hive}"
    endpoint = queen.registry.endpoint(hive, info.id)
    out["outstanding"] = endpoint.outstanding if endpoint else 0
    out["dispatched"] = endpoint.dispatched if endpoint else 0
    return out


async def list_workers(request: Request) -> Response:
    queen = _queen(request)
    workers = queen.workers()
    return JSONResponse({"object": "list", "data": [_worker_json(queen, h, w) for h, w in workers]})


async def spawn_worker(request: Request) -> Response:
    body = await read_json(request)
    spec = parse_worker_spec(body)
    hive = body.get("hive") or LOCAL_HIVE
    if not isinstance(hive, str) or not _ALIAS.fullmatch(hive):
        raise ApiError(400, "hive must be a hive alias from hives.conf", param="hive")
    try:
        name, info = await _queen(request).spawn(spec, hive)
    except RbeeError as err:
        raise spawn_error(err) from err
    return JSONResponse(_worker_json(_queen(request), name, info), status_code=201)


async def stop_worker(request: Request) -> Response:
    try:
        name, info = await _queen(request).stop_worker(request.path_params["worker_id"])
    except WorkerError as err:
        raise ApiError(404, str(err), param="worker_id", code="worker_not_found") from err
    return JSONResponse(_worker_json(_queen(request), name, info))


async def list_hives(request: Request) -> Response:
    queen = _queen(request)
    local = {"name": LOCAL_HIVE, "host": "127.0.0.1", "state": "running", "pid": os.getpid(),
             "workers": len(queen.hive.workers()), "last_error": None,
             "facts": dataclasses.asdict(await queen.hive.facts())}  # fmt: skip
    remote = [h.describe() for h in queen.fleet.hives()]
    return JSONResponse({"object": "list", "data": [local, *remote]})


async def hive_models(request: Request) -> Response:
    alias = request.path_params["alias"]
    queen = _queen(request)
    if alias == LOCAL_HIVE:
        models = [m.describe() for m in queen.hive.models()]
    else:
        try:
            models = await queen.fleet.get(alias).models()
        except WorkerError as err:
            raise ApiError(404, str(err), param="alias", code="hive_not_found") from err
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
    queen = _queen(request)
    try:
        await queen.fleet.stop(alias)
    except WorkerError as err:
        raise ApiError(404, str(err), param="alias", code="hive_not_found") from err
    return JSONResponse({"name": alias, "state": "stopped"})


def admin_routes() -> list[Route]:
    """The admin routes over `app.state.queen`."""
    return [
        Route("/v1/workers", list_workers, methods=["GET"]),
        Route("/v1/workers", spawn_worker, methods=["POST"]),
        Route("/v1/workers/{worker_id}", stop_worker, methods=["DELETE"]),
        Route("/v1/hives", list_hives, methods=["GET"]),
        Route("/v1/hives/{alias}/models", hive_models, methods=["GET"]),
        Route("/v1/hives/{alias}/start", start_hive, methods=["POST"]),
        Route("/v1/hives/{alias}/stop", stop_hive, methods=["POST"]),
    ]
