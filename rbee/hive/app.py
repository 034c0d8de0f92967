"""The hive's HTTP app (loopback on its machine; the queen reaches it through an SSH forward).

GET    /health                      liveness, this machine's facts, the workers
GET    /v1/models                   the models in this hive's store, each artifact per format
GET    /v1/workers                  every worker on this hive     } rbee.api.worker_routes,
POST   /v1/workers                  {"model", "id"?, "engine"?,   } shared with the queen
                                     "device"?, "ctx_size"?, ...}  }
DELETE /v1/workers/{id}             stop one worker               }
POST   /v1/workers/{id}/restart     start one worker again        }
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee import __version__
from rbee.api.hop import HopAuthMiddleware
from rbee.api.http import EXCEPTION_HANDLERS, tail_lines
from rbee.api.worker_routes import worker_routes
from rbee.api.workers import parse_worker_spec, validate_worker_id
from rbee.errors import ApiError
from rbee.facts import Facts, read_gpu_apps
from rbee.fsutil import read_tail
from rbee.hive.service import HiveService

__all__ = ["HiveWorkers", "create_app"]


class HiveWorkers:
    """The worker admin of one hive (rbee.api.worker_routes.WorkerAdmin)."""

    def __init__(self, hive: HiveService) -> None:
        self.hive = hive

    def list_workers(self) -> list[dict[str, Any]]:
        """Every worker on this hive."""
        return [w.to_json(self.hive.name) for w in self.hive.workers()]

    async def spawn_worker(self, body: Any) -> dict[str, Any]:
        """Start a worker (`id` names it; the queen's desired state does) and wait."""
        spec = parse_worker_spec(body)
        worker_id = body.get("id")
        if worker_id is not None:
            validate_worker_id(worker_id)
        info = await self.hive.spawn(spec, worker_id)
        return info.to_json(self.hive.name)

    async def stop_worker(self, worker_id: str) -> dict[str, Any]:
        """Stop one worker."""
        return (await self.hive.stop(worker_id)).to_json(self.hive.name)

    async def restart_worker(self, worker_id: str) -> dict[str, Any]:
        """Start one worker again."""
        return (await self.hive.restart(worker_id)).to_json(self.hive.name)


def _hive(request: Request) -> HiveService:
    hive: HiveService = request.app.state.hive
    return hive


async def _gpu_processes(facts: Facts) -> dict[str, int] | None:
    """pid → bytes of GPU memory of the processes using it (its workers' among them), where
    there are NVIDIA GPUs; None elsewhere."""
    if not facts.gpus:
        return None
    found = await asyncio.to_thread(read_gpu_apps)
    return None if found is None else {str(pid): used for pid, used in found.items()}


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
            "gpu_processes": await _gpu_processes(facts),
        }
    )


async def models(request: Request) -> Response:
    stored = [m.describe() for m in _hive(request).models()]
    return JSONResponse({"object": "list", "data": stored})


async def worker_log(request: Request) -> Response:
    """The tail of one of this hive's workers' logs (the queen's dashboard shows it)."""
    hive = _hive(request)
    worker_id = request.query_params.get("worker", "")
    validate_worker_id(worker_id)
    lines = tail_lines(request)
    info = next((w for w in hive.workers() if w.id == worker_id), None)
    if info is None or not info.log_path:
        raise ApiError(404, f"no worker {worker_id!r} on hive {hive.name}", param="worker",
                       code="worker_not_found")  # fmt: skip
    path = Path(info.log_path)
    try:
        found = await asyncio.to_thread(read_tail, path, lines)
    except OSError as err:
        raise ApiError(404, f"the log of worker {worker_id} cannot be read: {err.strerror}",
                       param="worker", code="log_not_found") from None  # fmt: skip
    return JSONResponse({"object": "log", "path": str(path), "lines": found})


def create_app(hive: HiveService) -> Starlette:
    """The hive app over a running HiveService; every request must carry its hop secret."""
    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/logs", worker_log),
            *worker_routes(),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(HopAuthMiddleware, token=hive.token)],
    )
    app.state.hive = hive
    app.state.worker_admin = HiveWorkers(hive)
    return app
