"""The queen's HTTP app: the OpenAI endpoint for every model on every hive, and the admin API.

GET    /health                      liveness, a summary, and `degraded` with the problems (a
                                     desired worker missing, restarting or in crash-loop)
GET    /metrics                     Prometheus text format (docs/api.md, "Metrics")
GET    /v1/models                   models with a ready worker, and those a request loads
                                     (`"loaded": false`: stored or parked, rbee.queen.autoload)
GET    /v1/models/{id}              one entry of that list (404 model_not_found)
POST   /v1/chat/completions         routed to a worker, streamed token by token
POST   /v1/completions              same, for text completions
POST   /v1/embeddings               routed to a worker loaded for embeddings (`--embeddings`)
POST   /v1/responses                OpenAI's Responses API (stateless), mapped onto chat
                                     completions and back (rbee.queen.shapes)
POST   /v1/messages                 Anthropic's Messages API, the same way
POST   /v1/messages/count_tokens    a prompt's tokens, counted by a worker of its model
GET    /v1/workers                  every worker the queen started
POST   /v1/workers                  {"model", "engine"?, "device"?, "ctx_size"?, "threads"?,
                                     "embeddings"?}
DELETE /v1/workers/{id}             stop one worker
POST   /v1/workers/{id}/restart     start one worker again
GET    /openapi.json                this API as an OpenAPI 3.1 document (rbee.queen.openapi)

Browsers on the origins of the `cors_origins` setting (none by default) may call every route:
CORS preflights are answered before the API key is asked for; the requests themselves need it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee import __version__
from rbee.api import responses
from rbee.api.http import (
    AccessLogMiddleware,
    parse_json,
    read_body,
)
from rbee.api.openai import (
    ChatRequest,
    CompletionRequest,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
    parse_off_loop,
)
from rbee.api.worker_routes import worker_routes
from rbee.config.keys import keys_path
from rbee.errors import ApiError
from rbee.models.catalog import CATALOG
from rbee.net import is_loopback
from rbee.queen.admin import QueenWorkers, admin_routes
from rbee.queen.audit import AuditLog, audit_path
from rbee.queen.auth import AuthMiddleware, principal_of
from rbee.queen.dashboard import dashboard_routes
from rbee.queen.job_ops import JOB_CHECKS, JOB_RUNNERS
from rbee.queen.jobs_routes import job_routes
from rbee.queen.metrics import take_snapshot
from rbee.queen.openapi import openapi_routes
from rbee.queen.policies import policy_routes
from rbee.queen.service import LOCAL_HIVE, Queen
from rbee.queen.shapes import QUEEN_EXCEPTION_HANDLERS, key_refusal, shape_routes

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_EXPOSED_HEADERS = (
    "Retry-After",
    "X-Rbee-Worker",
    "X-Rbee-Hive",
    "X-Rbee-Queued-Ms",
    "X-Rbee-Load-Ms",
)
"""Answer headers a browser page may read besides CORS's safelisted ones."""


def _queen(request: Request) -> Queen:
    queen: Queen = request.app.state.queen
    return queen


async def health(request: Request) -> Response:
    if principal_of(request.scope) is None:
        # Liveness for anyone (a load balancer, `rbee queen start` waiting for it); the pid,
        # hives, models and problems only for a caller the auth middleware let in.
        return JSONResponse({"status": "ok"})
    queen = _queen(request)
    workers = [w for _, w in queen.workers()]
    problems = queen.problems()
    return JSONResponse(
        {
            "status": "degraded" if problems else "ok",
            "role": "queen",
            "version": __version__,
            "pid": os.getpid(),
            "hives": [LOCAL_HIVE, *(h.name for h in queen.fleet.hives() if h.state != "stopped")],
            "workers": {
                "total": len(workers),
                "ready": sum(1 for w in workers if w.state == "ready"),
            },
            "models": list(queen.registry.served_models()),
            "problems": problems,
        }
    )


async def metrics(request: Request) -> Response:
    queen = _queen(request)
    fleet = queen.fleet.running().values()
    snapshot = await take_snapshot(queen.registry, fleet, queen.relay.worker_health)
    return Response(queen.metrics.render(snapshot), media_type=CONTENT_TYPE_LATEST)


async def _model_entries(request: Request) -> list[dict[str, Any]]:
    """The entries of `GET /v1/models`: models with a ready worker, then those a request loads.

    `created` is when the model was stored on this machine, or else when this queen first
    listed it; either way the same on every call.
    """
    queen = _queen(request)
    first_listed: dict[str, int] = request.app.state.first_listed
    served = queen.registry.served_models()
    stored = await asyncio.to_thread(queen.stored_models)
    now = int(time.time())

    def entry(model: str, ctx: int, loaded: bool) -> dict[str, Any]:
        created = first_listed.setdefault(model, stored.get(model, now))
        return {"id": model, "created": created, "context_length": ctx, "loaded": loaded}

    entries = [entry(m, ctx, True) for m, ctx in served.items()]
    candidates = {*queen.desired.models(), *stored}
    for model in sorted(candidates - served.keys()):
        ctx = queen.known_models(embeddings=False).get(model) or queen.loadable_context(
            model, embeddings=False
        )
        if ctx is not None:
            entries.append(entry(model, ctx, False))
    return entries


async def models(request: Request) -> Response:
    return JSONResponse(responses.model_list(await _model_entries(request)))


async def model_entry(request: Request) -> Response:
    wanted: str = request.path_params["model"]
    entries = await _model_entries(request)
    found = [e for e in entries if e["id"] == wanted]
    if not found:
        listing = ", ".join(e["id"] for e in entries) or "none"
        raise ApiError(
            404,
            f"the model {wanted[:100]!r} does not exist or cannot be served; models: {listing}",
            param="model",
            code="model_not_found",
        )
    return JSONResponse(responses.model_list(found)["data"][0])


def _not_loadable(queen: Queen, model: str, *, embeddings: bool) -> str:
    """Why a request for `model` cannot load it, and what to do (for the 404's message)."""
    name = model[:100]
    flag = " --embeddings" if embeddings else ""
    if model in CATALOG and not queen.autoloader.stored_here(model):
        return (
            f"the model {name!r} is in the catalog but not stored on this machine; get it with "
            f"`rbee model download {name}` (a request never downloads a model)"
        )
    if queen.autoloader.stored_here(model):
        return (
            f"the model {name!r} is stored but not loaded on demand (autoload is off: "
            f"--no-autoload, RBEE_AUTOLOAD or rbee.toml); start a worker with "
            f"`rbee worker spawn --model {name}{flag}`"
        )
    return ""


def check_servable(
    queen: Queen, parsed: ChatRequest | CompletionRequest, max_param: str = "max_tokens"
) -> None:
    """Refuse a generation request the queen cannot serve: 404 when no worker serves its model
    and none can be loaded, 400 when its max tokens (the field `max_param`) fill the context."""
    served = queen.registry.served_models(embeddings=False)
    context = (
        served.get(parsed.model)
        or queen.known_models(embeddings=False).get(parsed.model)
        or queen.loadable_context(parsed.model, embeddings=False)
    )
    if context is None:
        name = parsed.model[:100]
        why = _not_loadable(queen, parsed.model, embeddings=False)
        if parsed.model in queen.known_models(embeddings=True):
            message = (
                f"the model {name!r} has only workers loaded for embeddings (--embeddings); "
                f"start one for chat and completions with `rbee worker spawn --model {name}`"
            )
        elif why:
            message = why
        else:
            listing = ", ".join(served) or "none (start one with `rbee worker spawn --model ID`)"
            message = (
                f"the model {name!r} does not exist or has no ready worker; "
                f"available models: {listing}"
            )
        raise ApiError(404, message, param="model", code="model_not_found")
    wanted = parsed.sampling.max_tokens
    if wanted is not None and wanted >= context:
        raise ApiError(
            400,
            f"{max_param} is too large: {wanted}. The context of {parsed.model} is {context} "
            "tokens, prompt included",
            param=max_param,
            code="context_length_exceeded",
        )


def _generation_route(
    path: str, parse: Callable[[Any], ChatRequest | CompletionRequest]
) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        queen = _queen(request)
        raw = await read_body(request)
        parsed = await parse_off_loop(parse, parse_json(raw))
        check_servable(queen, parsed)
        return await queen.relay.forward(request, parsed.model, path, raw, parsed.stream)

    return endpoint


async def embeddings(request: Request) -> Response:
    queen = _queen(request)
    raw = await read_body(request)
    parsed = parse_embedding_request(parse_json(raw))
    known = parsed.model in queen.known_models(embeddings=True)
    if not known and queen.loadable_context(parsed.model, embeddings=True) is None:
        name = parsed.model[:100]
        why = _not_loadable(queen, parsed.model, embeddings=True)
        if why:
            raise ApiError(404, why, param="model", code="model_not_found")
        if parsed.model in queen.known_models(embeddings=False):
            where = f"the model {name!r} has no worker loaded for embeddings"
        else:
            loaded = ", ".join(queen.registry.served_models(embeddings=True)) or "none"
            where = (
                f"the model {name!r} does not exist or has no ready worker loaded for "
                f"embeddings (models loaded for embeddings: {loaded})"
            )
        raise ApiError(
            404,
            f"{where}; start one with `rbee worker spawn --model {name} --embeddings`",
            param="model",
            code="model_not_found",
        )
    return await queen.relay.forward(
        request, parsed.model, "/v1/embeddings", raw, stream=False, embeddings=True
    )


def create_app(queen: Queen) -> Starlette:
    """The queen app over a running Queen (the daemon owns the Queen's lifetime)."""
    api_key = queen.options.api_key
    # The access log is outermost: it sees every answer, a refused API key's included.
    middleware = [Middleware(AccessLogMiddleware)]
    origins = queen.options.limits.cors_origins
    if origins:
        if "*" in origins and not api_key:
            log.warning(
                "cors_origins is '*' and the queen has no API key: any web page a browser on "
                "this machine opens can use this queen's API, its admin routes included"
            )
        # Outside the API key check: a browser's preflight (OPTIONS) never carries the key.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["*"],
                expose_headers=_EXPOSED_HEADERS,
                allow_private_network=True,
            )
        )
    # Keys, scopes, per-key limits and the audit log (rbee.queen.auth), inside CORS.
    middleware.append(
        Middleware(
            AuthMiddleware,
            keys_path=keys_path(queen.paths),
            audit=AuditLog(audit_path(queen.paths)),
            api_key=api_key,
            loopback=is_loopback(queen.options.host),
            refusal=key_refusal,
        )
    )
    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/v1/models", models),
            # Ids have no '/' (rbee.models.catalog); a path still answers model_not_found.
            Route("/v1/models/{model:path}", model_entry),
            Route(
                "/v1/chat/completions",
                _generation_route("/v1/chat/completions", parse_chat_request),
                methods=["POST"],
            ),
            Route(
                "/v1/completions",
                _generation_route("/v1/completions", parse_completion_request),
                methods=["POST"],
            ),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            *shape_routes(check_servable),
            *worker_routes(),
            *admin_routes(),
            *job_routes(),
            *policy_routes(),
            *dashboard_routes(),
            *openapi_routes(),
        ],
        middleware=middleware,
        exception_handlers=QUEEN_EXCEPTION_HANDLERS,
    )
    app.state.queen = queen
    app.state.first_listed = {}
    app.state.worker_admin = QueenWorkers(queen)
    app.state.jobs = queen.jobs
    app.state.job_runners = JOB_RUNNERS
    app.state.job_checks = JOB_CHECKS
    return app
