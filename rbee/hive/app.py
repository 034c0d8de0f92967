"""The hive's HTTP app (loopback on its machine; the queen reaches it through an SSH forward).

    GET    /health             liveness, this machine's facts, the workers
    GET    /v1/workers         every worker on this hive
    POST   /v1/workers         {"model", "engine"?, "device"?, "ctx_size"?, "threads"?}
    DELETE /v1/workers/{id}    stop one worker
    GET    /v1/models          the models in this hive's store, each artifact per format

The worker routes are shared with the queen's app in integrated mode, where the queen runs its
local hive in-process.
"""

from __future__ import annotations

import dataclasses
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee import __version__
from rbee.api.http import EXCEPTION_HANDLERS, read_json
from rbee.api.workers import parse_worker_spec, spawn_error
from rbee.errors import ApiError, RbeeError, WorkerError
from rbee.hive.service import HiveService

__all__ = ["create_app", "worker_routes"]


def _hive(request: Request) -> HiveService:
    hive: HiveService = request.app.state.hive
    return hive


async def list_workers(request: Request) -> Response:
    hive = _hive(request)
    return JSONResponse({"object": "list", "data": [w.to_json(hive.name) for w in hive.workers()]})


async def spawn_worker(request: Request) -> Response:
    hive = _hive(request)
    spec = parse_worker_spec(await read_json(request))
    try:
        info = await hive.spawn(spec)
    except RbeeError as err:
        raise spawn_error(err) from err
    return JSONResponse(info.to_json(hive.name), status_code=201)


async def stop_worker(request: Request) -> Response:
    hive = _hive(request)
    try:
        info = await hive.stop(request.path_params["worker_id"])
    except WorkerError as err:
        raise ApiError(404, str(err), param="worker_id", code="worker_not_found") from err
    return JSONResponse(info.to_json(hive.name))


def worker_routes() -> list[Route]:
    """The worker admin routes over `app.state.hive`."""
    return [
        Route("/v1/workers", list_workers, methods=["GET"]),
        Route("/v1/workers", spawn_worker, methods=["POST"]),
        Route("/v1/workers/{worker_id}", stop_worker, methods=["DELETE"]),
    ]


async def health(request: Request) -> Response:
    hive = _hive(request)
    facts = await hive.facts()
    return JSONResponse(
        {
            "status": "ok",
            "role": "hive",
            "name": hive.name,
            "version": __version__,
            "pid": os.getpid(),
            "facts": dataclasses.asdict(facts),
            "models_dir": str(hive.paths.models_dir),
            "workers": [w.to_json(hive.name) for w in hive.workers()],
        }
    )


async def models(request: Request) -> Response:
    stored = [m.describe() for m in _hive(request).models()]
    return JSONResponse({"object": "list", "data": stored})


def create_app(hive: HiveService) -> Starlette:
    """The hive app over a running HiveService."""
    app = Starlette(
        routes=[Route("/health", health), Route("/v1/models", models), *worker_routes()],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.hive = hive
    return app
