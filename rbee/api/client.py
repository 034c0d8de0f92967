"""The queen's HTTP API as the CLI (and later the TUI) uses it, with errors made readable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from rbee.api.sse import iter_events
from rbee.config.settings import Timeouts
from rbee.errors import QueenError, QueenNotRunningError

__all__ = ["QueenClient"]


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"


class QueenClient:
    """A synchronous client of one queen; use as a context manager."""

    def __init__(self, url: str, *, api_key: str | None = None, timeouts: Timeouts = Timeouts()):
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeouts.first_byte, connect=timeouts.connect),
            trust_env=False,
        )
        self.long_timeout = httpx.Timeout(timeouts.worker_ready + 600, connect=timeouts.connect)
        """For requests that wait on slow work (model fetches, hive starts)."""

    def __enter__(self) -> QueenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _not_running(self, err: Exception) -> QueenNotRunningError:
        return QueenNotRunningError(
            f"the queen is not running at {self.url} (start it with `rbee queen start` or "
            f"`rbee up`): {err.__class__.__name__}"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; return the JSON answer or raise QueenError with its message."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as err:
            raise self._not_running(err) from err
        except httpx.HTTPError as err:
            raise QueenError(f"{method} {self.url}{path} failed: {err!r}") from err
        if not response.is_success:
            raise QueenError(_error_message(response))
        return response.json()

    def health(self) -> dict[str, Any]:
        """GET /health."""
        result: dict[str, Any] = self.request("GET", "/health")
        return result

    def workers(self) -> list[dict[str, Any]]:
        """Every worker the queen runs."""
        result: list[dict[str, Any]] = self.request("GET", "/v1/workers")["data"]
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

    def stream_chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST a streaming chat completion; yield each chunk as it arrives."""
        try:
            with self._http.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}
            ) as response:
                if not response.is_success:
                    response.read()
                    raise QueenError(_error_message(response))
                for chunk in iter_events(response.iter_lines()):
                    if "error" in chunk:
                        raise QueenError(str(chunk["error"].get("message", chunk["error"])))
                    yield chunk
        except httpx.ConnectError as err:
            raise self._not_running(err) from err
        except httpx.HTTPError as err:
            raise QueenError(f"the stream from {self.url} broke: {err!r}") from err
