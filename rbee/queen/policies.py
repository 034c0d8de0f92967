"""Per-model policies (idle TTL, autoload) read and set on a running queen, and kept.

GET /v1/policies/{model}   {"model", "autoload", "idle_ttl", "remote", "own"}: the policy the
                           queen applies to the model now (`own`: the model has its own, from
                           rbee.toml or set here; else the defaults of [limits])
PUT /v1/policies/{model}   {"autoload"?, "idle_ttl"?} → the policy after; what is left out keeps
                           its value

rbee.toml's `[models."ID"]` tables are read when the queen starts; this is how `rbee apply` sets
a playbook's policy without a restart. A policy set here is kept in `DATA_DIR/policies.json`
(beside the desired state, written atomically) and applied again when the queen starts, over
rbee.toml's table for that model: the newest word wins, and a second `rbee apply` after a restart
changes nothing. The autoloader reads the policy at each decision, so a change counts from the
next request or parking round. `autoload: true` also lets a request load the model on a started
remote hive that stores it, as `autoload = true` in a model's own table of rbee.toml does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.api.http import read_json
from rbee.config.limits import ModelPolicy
from rbee.errors import ApiError, ModelError
from rbee.models.catalog import validate_model_id
from rbee.queen.policy_store import policies_path, save_policy
from rbee.queen.service import Queen

__all__ = ["policy_routes"]


def _model(request: Request) -> str:
    try:
        return validate_model_id(request.path_params["model"])
    except ModelError as err:
        raise ApiError(400, str(err), param="model") from None


def _describe(queen: Queen, model: str) -> dict[str, Any]:
    limits = queen.autoloader.limits
    policy = limits.policy(model)
    return {"model": model, "autoload": policy.autoload, "idle_ttl": policy.idle_ttl,
            "remote": policy.remote, "own": model in limits.models}  # fmt: skip


async def get_policy(request: Request) -> Response:
    queen: Queen = request.app.state.queen
    return JSONResponse(_describe(queen, _model(request)))


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if kind is bool and not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false", param=name)
    if kind is float and (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ApiError(400, f"{name} must be a number of seconds, 0 or more", param=name)
    return value


async def put_policy(request: Request) -> Response:
    queen: Queen = request.app.state.queen
    model = _model(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for key in body:
        if key not in ("autoload", "idle_ttl"):
            raise ApiError(400, f"{str(key)[:40]} is not a policy field (autoload, idle_ttl)",
                           param=str(key)[:40])  # fmt: skip
    autoload = _field(body, "autoload", bool)
    idle_ttl = _field(body, "idle_ttl", float)
    limits = queen.autoloader.limits
    old = limits.policy(model)
    new = ModelPolicy(
        autoload=old.autoload if autoload is None else autoload,
        idle_ttl=old.idle_ttl if idle_ttl is None else float(idle_ttl),
        remote=old.remote if autoload is None else autoload,
    )
    # Kept first: a policy the queen applies is one it will apply again after a restart.
    await asyncio.to_thread(save_policy, policies_path(queen.paths.data_dir), model, new)
    # Limits is frozen: the autoloader gets a new one (it reads `limits` at every decision).
    queen.autoloader.limits = dataclasses.replace(limits, models={**limits.models, model: new})
    return JSONResponse(_describe(queen, model))


def policy_routes() -> list[Route]:
    """The policy routes over `app.state.queen`."""
    return [
        Route("/v1/policies/{model}", get_policy, methods=["GET"]),
        Route("/v1/policies/{model}", put_policy, methods=["PUT"]),
    ]
