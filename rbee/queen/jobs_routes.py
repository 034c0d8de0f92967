"""The jobs API, over `app.state.jobs` (a JobManager) and `app.state.job_runners`.

POST   /v1/jobs                 {"operation": {"kind", ...}} → 202 {"job_id", "kind", "state"};
                                4xx at once if the operation cannot work (its kind's check)
GET    /v1/jobs                 every running and recently finished job
GET    /v1/jobs/{id}            state, result or error, event count
GET    /v1/jobs/{id}/stream     SSE: history then live events, `data: [DONE]` after the last
DELETE /v1/jobs/{id}            cancel

A stream client that goes away only stops following: the job keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.api import sse
from rbee.api.http import ClosingStreamingResponse, read_json
from rbee.api.jobs import OPERATION_PARSERS, OperationParser, parse_operation
from rbee.api.workers import spawn_error
from rbee.errors import ApiError, RbeeError
from rbee.queen.jobs import Job, JobManager, RunnerFactory

__all__ = ["job_routes"]

KEEPALIVE = 15.0
"""Seconds of silence after which a stream sends an SSE comment, so idle timeouts do not fire."""
CANCEL_WAIT = 5.0
"""How long DELETE waits for a cancelled job to wind down before answering."""

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _manager(request: Request) -> JobManager:
    jobs: JobManager = request.app.state.jobs
    return jobs


def _job(request: Request) -> Job:
    job_id: str = request.path_params["job_id"]
    job = _manager(request).get(job_id)
    if job is None:
        raise ApiError(
            404,
            f"no job {job_id[:80]!r} (unknown, or finished long ago; see `rbee job list`)",
            param="job_id",
            code="job_not_found",
        )
    return job


async def _events(job: Job, after: int) -> AsyncIterator[bytes]:
    seq = after
    while True:
        try:
            async with asyncio.timeout(KEEPALIVE):
                events = await job.next_events(seq)
        except TimeoutError:
            yield b": keepalive\n\n"
            continue
        if not events:
            break
        for event in events:
            yield sse.encode(event.to_json())
        seq = events[-1].seq
        if events[-1].final:
            break
    yield sse.DONE


def job_routes(parsers: Mapping[str, OperationParser] = OPERATION_PARSERS) -> list[Route]:
    """The jobs routes, accepting the kinds in `parsers` that have a runner in the app state."""

    async def submit(request: Request) -> Response:
        runners: Mapping[str, RunnerFactory] = request.app.state.job_runners
        accepted = {kind: parse for kind, parse in parsers.items() if kind in runners}
        operation = parse_operation(await read_json(request), accepted)
        check = getattr(request.app.state, "job_checks", {}).get(operation.kind)
        if check is not None:
            try:
                await check(operation, request.app.state)
            except RbeeError as err:
                raise spawn_error(err) from err
        runner = runners[operation.kind](operation, request.app.state)
        job = _manager(request).submit(operation, runner)
        return JSONResponse(
            {"job_id": job.id, "kind": job.kind, "state": job.state},
            status_code=202,
            headers={"Location": f"/v1/jobs/{job.id}"},
        )

    async def list_jobs(request: Request) -> Response:
        data = [job.to_json() for job in _manager(request).jobs()]
        return JSONResponse({"object": "list", "data": data})

    async def get_job(request: Request) -> Response:
        return JSONResponse(_job(request).to_json())

    async def stream(request: Request) -> Response:
        job = _job(request)
        raw = request.query_params.get("after", "0")
        after = int(raw) if raw.isascii() and raw.isdigit() else -1
        if after < 0:
            raise ApiError(400, f"after must be an event number, got {raw[:40]!r}", param="after")
        return ClosingStreamingResponse(
            _events(job, after), media_type="text/event-stream", headers=_SSE_HEADERS
        )

    async def cancel(request: Request) -> Response:
        job = _job(request)
        _manager(request).cancel(job.id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT):
                await job.wait()
        return JSONResponse(job.to_json())

    return [
        Route("/v1/jobs", submit, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}", cancel, methods=["DELETE"]),
        Route("/v1/jobs/{job_id}/stream", stream, methods=["GET"]),
    ]
