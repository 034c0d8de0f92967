"""The worker admin routes, one set for every role that has workers: a hive (its own) and the
queen (every hive's). Each app puts a `WorkerAdmin` in `app.state.worker_admin`.

    GET    /v1/workers                 every worker, with its state, restarts and last exit
    POST   /v1/workers                 start one; 201 with the worker once it serves
    DELETE /v1/workers/{id}            stop one (a second stop at once waits for the first)
    POST   /v1/workers/{id}/restart    start one again now (also ends a crash-loop)

Errors are OpenAI error bodies with their own status (rbee.api.workers.spawn_error).
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.api.http import read_json
from rbee.api.workers import spawn_error
from rbee.errors import RbeeError

__all__ = ["WorkerAdmin", "worker_routes"]


class WorkerAdmin(Protocol):
    """What the worker routes act on; every answer is the JSON of one worker (or a list)."""

    def list_workers(self) -> list[dict[str, Any]]:
        """Every worker."""
        ...

    async def spawn_worker(self, body: Any) -> dict[str, Any]:
        """Parse `body` (400 naming the field), start the worker, wait until it serves."""
        ...

    async def stop_worker(self, worker_id: str) -> dict[str, Any]:
        """Stop one worker and forget it."""
        ...

    async def restart_worker(self, worker_id: str) -> dict[str, Any]:
        """Start one worker again and wait until it serves."""
        ...


def _admin(request: Request) -> WorkerAdmin:
    admin: WorkerAdmin = request.app.state.worker_admin
    return admin


async def _list(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _admin(request).list_workers()})


async def _spawn(request: Request) -> Response:
    body = await read_json(request)
    try:
        worker = await _admin(request).spawn_worker(body)
    except RbeeError as err:
        raise spawn_error(err) from err
    return JSONResponse(worker, status_code=201)


async def _stop(request: Request) -> Response:
    try:
        worker = await _admin(request).stop_worker(request.path_params["worker_id"])
    except RbeeError as err:
        raise spawn_error(err) from err
    return JSONResponse(worker)


async def _restart(request: Request) -> Response:
    try:
        worker = await _admin(request).restart_worker(request.path_params["worker_id"])
    except RbeeError as err:
        raise spawn_error(err) from err
    return JSONResponse(worker)


def worker_routes() -> list[Route]:
    """The worker admin routes over `app.state.worker_admin`."""
    return [
        Route("/v1/workers", _list, methods=["GET"]),
        Route("/v1/workers", _spawn, methods=["POST"]),
        Route("/v1/workers/{worker_id}", _stop, methods=["DELETE"]),
        Route("/v1/workers/{worker_id}/restart", _restart, methods=["POST"]),
    ]
