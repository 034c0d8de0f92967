"""Clients of rbee's HTTP APIs, with one way of turning an error answer into an rbee error.

`QueenClient` is what the CLI (and the TUI, and sweeps) use to talk to a queen: workers, hives,
jobs, a streamed chat. `AsyncApiClient` is what the queen uses to talk to a hive through its SSH
forward. Both read OpenAI-shaped error bodies the same way (`error_from`), so a hive's 404
`worker_not_found` is a WorkerNotFoundError in the queen, and a queen's message reaches the
user's terminal as it was written.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import httpx

from rbee.api.jobs import JobEvent
from rbee.api.sse import iter_events
from rbee.config.settings import Timeouts
from rbee.errors import (
    ApiError,
    JobFailedError,
    QueenError,
    QueenNotRunningError,
    RbeeError,
    WorkerExistsError,
    WorkerNotFoundError,
)

__all__ = ["AsyncApiClient", "QueenClient", "error_from", "error_message"]


def error_message(response: httpx.Response) -> str:
    """The message of an error answer: its OpenAI error body's, else its status and text."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"


def _error_code(response: httpx.Response) -> str | None:
    try:
        code = response.json()["error"].get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def error_from(response: httpx.Response, *, prefix: str = "") -> RbeeError:
    """The rbee error an error answer stands for (its status and code kept in an ApiError)."""
    message = prefix + error_message(response)
    code = _error_code(response)
    if code == "worker_not_found":
        return WorkerNotFoundError(message)
    if code == "worker_exists":
        return WorkerExistsError(message)
    return ApiError(response.status_code, message, code=code)


def _timeout(timeouts: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(timeouts.first_byte, connect=timeouts.connect)


class QueenClient:
    """A synchronous client of one queen; use as a context manager."""

    def __init__(self, url: str, *, api_key: str | None = None, timeouts: Timeouts = Timeouts()):
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=_timeout(timeouts), trust_env=False
        )
        self.long_timeout = httpx.Timeout(timeouts.worker_ready + 600, connect=timeouts.connect)
        """For requests that wait on slow work (model fetches, hive starts, restarts)."""

    @property
    def http(self) -> httpx.Client:
        """The underlying httpx client (for a request this client has no method for)."""
        return self._http

    def __enter__(self) -> QueenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _transport_error(self, what: str, err: httpx.HTTPError) -> QueenError:
        if isinstance(err, httpx.ConnectError):
            return QueenNotRunningError(
                f"the queen is not running at {self.url} (start it with `rbee queen start` or "
                f"`rbee up`): {err.__class__.__name__}"
            )
        return QueenError(f"{what} failed: {err!r}")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; return the JSON answer or raise QueenError with its message."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise self._transport_error(f"{method} {self.url}{path}", err) from err
        if not response.is_success:
            raise QueenError(error_message(response))
        return response.json()

    def health(self) -> dict[str, Any]:
        """GET /health."""
        result: dict[str, Any] = self.request("GET", "/health")
        return result

    def workers(self) -> list[dict[str, Any]]:
        """Every worker the queen runs."""
        result: list[dict[str, Any]] = self.request("GET", "/v1/workers")["data"]
        return result

    def hives(self) -> list[dict[str, Any]]:
        """This machine's hive and every remote hive started."""
        result: list[dict[str, Any]] = self.request("GET", "/v1/hives")["data"]
        return result

    def spawn(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start a worker (may fetch its model first, hence the long deadline)."""
        result: dict[str, Any] = self.request(
            "POST", "/v1/workers", json=body, timeout=self.long_timeout
        )
        return result

    def stop_worker(self, worker_id: str) -> dict[str, Any]:
        """Stop one worker."""
        result: dict[str, Any] = self.request("DELETE", f"/v1/workers/{worker_id}")
        return result

    def restart_worker(self, worker_id: str) -> dict[str, Any]:
        """Start one worker again and wait until it serves."""
        result: dict[str, Any] = self.request(
            "POST", f"/v1/workers/{worker_id}/restart", timeout=self.long_timeout
        )
        return result

    def stream_chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST a streaming chat completion; yield each chunk as it arrives."""
        try:
            with self._http.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}
            ) as response:
                if not response.is_success:
                    response.read()
                    raise QueenError(error_message(response))
                for chunk in iter_events(response.iter_lines()):
                    if "error" in chunk:
                        raise QueenError(str(chunk["error"].get("message", chunk["error"])))
                    yield chunk
        except httpx.HTTPError as err:
            raise self._transport_error(f"the stream from {self.url}", err) from err

    # -- jobs ----------------------------------------------------------------------------------

    def submit_job(self, operation: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/jobs: start `operation`; returns {"job_id", "kind", "state"}."""
        answer: dict[str, Any] = self.request("POST", "/v1/jobs", json={"operation": operation})
        return answer

    def get_job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}: state, result or error."""
        answer: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}")
        return answer

    def list_jobs(self) -> list[dict[str, Any]]:
        """GET /v1/jobs: every running and recently finished job."""
        data: list[dict[str, Any]] = self.request("GET", "/v1/jobs")["data"]
        return data

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}: cancel a job; returns its state after."""
        answer: dict[str, Any] = self.request("DELETE", f"/v1/jobs/{job_id}")
        return answer

    def stream_job(self, job_id: str, *, after: int = 0) -> Generator[JobEvent, None, None]:
        """Yield a job's events after `after` (its history, then live ones) until the last."""
        try:
            with self._http.stream(
                "GET", f"/v1/jobs/{job_id}/stream", params={"after": after}
            ) as response:
                if not response.is_success:
                    response.read()
                    raise QueenError(error_message(response))
                for payload in iter_events(response.iter_lines()):
                    try:
                        yield JobEvent.from_json(payload)
                    except (TypeError, ValueError) as err:
                        raise QueenError(
                            f"job {job_id}: the queen sent a bad event: {err}"
                        ) from err
        except httpx.HTTPError as err:
            raise self._transport_error(f"the stream of job {job_id} from {self.url}", err) from err

    def job_result(self, job_id: str) -> dict[str, Any]:
        """A finished job's result; JobFailedError with its error if it failed or was cancelled."""
        job = self.get_job(job_id)
        if job.get("state") == "succeeded":
            result: dict[str, Any] = job.get("result") or {}
            return result
        if job.get("state") in ("failed", "cancelled"):
            raise JobFailedError(job)
        raise QueenError(
            f"the stream of job {job_id} ended while the job is {job.get('state')}; "
            f"watch it with `rbee job watch {job_id}`"
        )


class AsyncApiClient:
    """An async client of one rbee API (the queen uses it for a hive, through its forward)."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        timeouts: Timeouts = Timeouts(),
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self._http = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(timeouts.worker_ready + 600, connect=timeouts.connect),
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close its connections."""
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; its JSON answer, or the rbee error its error answer stands for (the
        message starts with the client's name). Transport errors are httpx's own."""
        response = await self._http.request(method, path, **kwargs)
        if not response.is_success:
            raise error_from(response, prefix=f"{self.name}: ")
        return response.json()
