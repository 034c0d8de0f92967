"""The dashboard's async client of the queen: the same routes and error messages as the CLI's
`QueenClient`, without blocking the TUI's event loop.

It raises the same errors as QueenClient (QueenNotRunningError saying how to start a queen,
QueenError with the queen's own message), so what the TUI shows reads like what the CLI prints.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import httpx

from rbee.api.client import error_message
from rbee.api.jobs import JobEvent
from rbee.config.settings import Timeouts
from rbee.errors import QueenError, QueenNotRunningError

__all__ = ["AsyncQueenClient"]

POLL_TIMEOUT = 3.0
"""Seconds a snapshot may take: a dashboard that waits longer shows the queen as unreachable."""


class AsyncQueenClient:
    """An async client of one queen; use as an async context manager."""

    def __init__(
        self, url: str, *, api_key: str | None = None, timeouts: Timeouts = Timeouts()
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeouts.first_byte, connect=timeouts.connect),
            trust_env=False,
        )
        self.long_timeout = httpx.Timeout(timeouts.worker_ready + 600, connect=timeouts.connect)
        """For requests that wait on slow work (a restart waits until the worker serves)."""

    async def __aenter__(self) -> AsyncQueenClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    def _transport_error(self, what: str, err: httpx.HTTPError) -> QueenError:
        if isinstance(err, httpx.ConnectError):
            return QueenNotRunningError(
                f"the queen is not running at {self.url} (start it with `rbee queen start` or "
                f"`rbee up`)"
            )
        return QueenError(f"{what} failed: {err.__class__.__name__} {err}".rstrip())

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; its JSON answer, or QueenError with the queen's message."""
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise self._transport_error(f"{method} {path}", err) from err
        if not response.is_success:
            raise QueenError(error_message(response))
        return response.json()

    async def snapshot(self) -> dict[str, Any]:
        """GET /v1/dashboard: the whole fleet in one answer."""
        result: dict[str, Any] = await self.request("GET", "/v1/dashboard", timeout=POLL_TIMEOUT)
        return result

    async def log(self, *, worker: str | None = None, hive: str | None = None) -> dict[str, Any]:
        """GET /v1/dashboard/log: the tail of a worker's log, or of a hive's."""
        params = {"worker": worker} if worker else {"hive": hive or "localhost"}
        result: dict[str, Any] = await self.request(
            "GET", "/v1/dashboard/log", params={**params, "lines": "200"}, timeout=POLL_TIMEOUT
        )
        return result

    async def submit_job(self, operation: dict[str, Any]) -> str:
        """POST /v1/jobs; the new job's id."""
        answer = await self.request("POST", "/v1/jobs", json={"operation": operation})
        return str(answer["job_id"])

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        answer: dict[str, Any] = await self.request("GET", f"/v1/jobs/{job_id}")
        return answer

    async def stop_worker(self, worker_id: str) -> dict[str, Any]:
        """DELETE /v1/workers/{id}: stop one worker for good."""
        answer: dict[str, Any] = await self.request(
            "DELETE", f"/v1/workers/{worker_id}", timeout=self.long_timeout
        )
        return answer

    async def restart_worker(self, worker_id: str) -> dict[str, Any]:
        """POST /v1/workers/{id}/restart: start it again and wait until it serves."""
        answer: dict[str, Any] = await self.request(
            "POST", f"/v1/workers/{worker_id}/restart", timeout=self.long_timeout
        )
        return answer

    async def stream_job(self, job_id: str) -> AsyncIterator[JobEvent]:
        """A job's events, its history first, until its last."""
        try:
            async with self._http.stream(
                "GET", f"/v1/jobs/{job_id}/stream", timeout=self.long_timeout
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise QueenError(error_message(response))
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators and keep-alive comments
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        yield JobEvent.from_json(json.loads(data))
                    except (TypeError, ValueError) as err:
                        raise QueenError(
                            f"job {job_id}: the queen sent a bad event: {err}"
                        ) from err
        except httpx.HTTPError as err:
            raise self._transport_error(f"the stream of job {job_id}", err) from err
