"""The queen's jobs API from the client side, over any `httpx.Client` based at the queen's URL."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import httpx

from rbee.api.jobs import JobEvent
from rbee.api.sse import iter_events
from rbee.config.settings import Timeouts
from rbee.errors import QueenError, QueenNotRunningError, RbeeError

__all__ = [
    "JobFailedError",
    "cancel_job",
    "get_job",
    "list_jobs",
    "queen_http",
    "stream_job",
    "submit_job",
]


class JobFailedError(RbeeError):
    """A job ended failed or cancelled; the message is the job's own error."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        kind, state = job.get("kind", "job"), job.get("state")
        error = job.get("error") or state
        super().__init__(
            f"{kind} was {error}" if state == "cancelled" else f"{kind} failed: {error}"
        )


def queen_http(
    url: str, *, api_key: str | None = None, timeouts: Timeouts = Timeouts()
) -> httpx.Client:
    """An httpx.Client for the queen at `url`, with rbee's deadlines (close it after use)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(timeouts.first_byte, connect=timeouts.connect),
        trust_env=False,
    )


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"


def _transport_error(http: httpx.Client, what: str, err: httpx.HTTPError) -> QueenError:
    if isinstance(err, httpx.ConnectError):
        return QueenNotRunningError(
            f"the queen is not running at {http.base_url} (start it with `rbee queen start` or "
            f"`rbee up`): {err.__class__.__name__}"
        )
    return QueenError(f"{what} {http.base_url} failed: {err!r}")


def _call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = http.request(method, path, **kwargs)
    except httpx.HTTPError as err:
        raise _transport_error(http, f"{method} {path} on", err) from err
    if not response.is_success:
        raise QueenError(_error_message(response))
    return response.json()


def submit_job(http: httpx.Client, operation: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/jobs: start `operation`; returns {"job_id", "kind", "state"}."""
    answer: dict[str, Any] = _call(http, "POST", "/v1/jobs", json={"operation": operation})
    return answer


def get_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """GET /v1/jobs/{id}: state, result or error."""
    answer: dict[str, Any] = _call(http, "GET", f"/v1/jobs/{job_id}")
    return answer


def list_jobs(http: httpx.Client) -> list[dict[str, Any]]:
    """GET /v1/jobs: every running and recently finished job."""
    data: list[dict[str, Any]] = _call(http, "GET", "/v1/jobs")["data"]
    return data


def cancel_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """DELETE /v1/jobs/{id}: cancel a job; returns its state after."""
    answer: dict[str, Any] = _call(http, "DELETE", f"/v1/jobs/{job_id}")
    return answer


def stream_job(
    http: httpx.Client, job_id: str, *, after: int = 0
) -> Generator[JobEvent, None, None]:
    """Yield a job's events after `after` (its history, then live ones) until the last."""
    try:
        with http.stream("GET", f"/v1/jobs/{job_id}/stream", params={"after": after}) as response:
            if not response.is_success:
                response.read()
                raise QueenError(_error_message(response))
            for payload in iter_events(response.iter_lines()):
                try:
                    yield JobEvent.from_json(payload)
                except (TypeError, ValueError) as err:
                    raise QueenError(f"job {job_id}: the queen sent a bad event: {err}") from err
    except httpx.HTTPError as err:
        raise _transport_error(http, f"the stream of job {job_id} from", err) from err
