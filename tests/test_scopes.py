"""Scopes: the one table of which route needs which scope (complete, or this fails), and a real
queen serving the real model to keys with different scopes and limits."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from starlette.routing import BaseRoute, Route

from rbee.config.keys import SCOPES, KeyLimits, add_key, keys_path
from rbee.config.settings import Paths
from rbee.queen.app import create_app
from rbee.queen.auth import (
    ADMIN,
    INFERENCE,
    METRICS,
    PUBLIC,
    ROUTE_SCOPES,
    RateBucket,
    route_scope,
)
from rbee.queen.service import Queen, QueenOptions
from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, running_queen, wait_until


def _app_routes(tmp_path: Path) -> list[Route]:
    app = create_app(Queen(Paths(tmp_path / "config", tmp_path / "data"), QueenOptions()))
    routes = [r for r in app.routes if isinstance(r, Route)]
    assert len(routes) == len(app.routes), "a route that is not a Route: classify it by hand"
    return routes


def test_every_route_of_the_queen_has_a_scope(tmp_path: Path) -> None:
    # A new route must be named in ROUTE_SCOPES (rbee.queen.auth) before this passes again.
    unclassified = sorted({r.path for r in _app_routes(tmp_path)} - ROUTE_SCOPES.keys())
    assert unclassified == [], f"routes without a scope in ROUTE_SCOPES: {unclassified}"


def test_the_scope_table_names_only_routes_that_exist(tmp_path: Path) -> None:
    stale = sorted(ROUTE_SCOPES.keys() - {r.path for r in _app_routes(tmp_path)})
    assert stale == []
    assert set(ROUTE_SCOPES.values()) <= {PUBLIC, *SCOPES}


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/health", PUBLIC),
        ("/metrics", METRICS),
        ("/v1/chat/completions", INFERENCE),
        ("/v1/messages", INFERENCE),
        ("/v1/models", INFERENCE),
        ("/v1/workers", ADMIN),
        ("/v1/jobs/{job_id}/stream", ADMIN),
        ("/v1/hives/{alias}/start", ADMIN),
        ("/v1/dashboard/log", ADMIN),
    ],
)
def test_the_routes_that_matter_most_have_the_scope_they_should(path: str, scope: str) -> None:
    assert ROUTE_SCOPES[path] == scope


def test_a_route_missing_from_the_table_needs_admin_and_no_route_needs_only_a_key() -> None:
    async def nothing(request: object) -> None:
        raise AssertionError

    routes: list[BaseRoute] = [Route("/v1/new-thing", nothing), Route("/metrics", nothing)]

    def scope(path: str, method: str = "GET") -> dict[str, object]:
        return {"type": "http", "path": path, "method": method, "root_path": ""}

    assert route_scope(routes, scope("/v1/new-thing")) == ADMIN
    assert route_scope(routes, scope("/metrics")) == METRICS
    # A method the route does not take still needs the route's scope (before its 405).
    assert route_scope(routes, scope("/metrics", "DELETE")) == METRICS
    assert route_scope(routes, scope("/v1/elsewhere")) is None


@pytest.mark.parametrize(
    ("per_minute", "times", "waits"),
    [
        # A minute's worth at once, then the steady pace.
        (2, [0.0, 0.0, 0.0], [0.0, 0.0, 30.0]),
        (2, [0.0, 0.0, 30.0], [0.0, 0.0, 0.0]),
        (60, [0.0] * 61, [0.0] * 60 + [1.0]),
        (1, [0.0, 15.0, 60.0], [0.0, 45.0, 0.0]),
    ],
)
def test_a_rate_bucket_lets_a_minutes_worth_through_then_paces(
    per_minute: int, times: list[float], waits: list[float]
) -> None:
    bucket = RateBucket(float(per_minute), 0.0)
    got = [bucket.take(per_minute, t) for t in times]
    assert got == pytest.approx(waits)


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[tuple[RunningQueen, dict[str, str]]]:
    """A queen with the real model and keys of each scope, some with limits."""
    paths = make_paths(tmp_path_factory.mktemp("scopes"), model_cache)
    keys = {
        name: add_key(keys_path(paths), name, scopes, limits)[0]
        for name, scopes, limits in (
            ("chat", ["inference"], KeyLimits()),
            ("ops", ["admin"], KeyLimits()),
            ("prom", ["metrics"], KeyLimits()),
            ("slow", ["inference"], KeyLimits(requests_per_minute=2)),
            ("single", ["inference"], KeyLimits(concurrent=1)),
        )
    }
    with running_queen(paths) as q:
        yield q, keys


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.slow
def test_an_inference_key_chats_but_cannot_spawn(
    keyed: tuple[RunningQueen, dict[str, str]],
) -> None:
    q, keys = keyed
    with openai.OpenAI(base_url=q.base_url, api_key=keys["chat"], max_retries=0) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert answer.choices[0].message.content
        assert [m.id for m in client.models.list().data] == [MODEL]
    spawn = http.post(f"{q.url}/v1/workers", headers=_bearer(keys["chat"]), json={"model": MODEL})
    assert spawn.status_code == 403
    error = spawn.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert "'admin'" in error["message"]
    assert keys["chat"] not in spawn.text
    assert set(error) == {"message", "type", "param", "code"}
    job = http.post(
        f"{q.url}/v1/jobs",
        headers=_bearer(keys["chat"]),
        json={"operation": {"kind": "worker.spawn", "model": MODEL}},
    )
    assert job.status_code == 403
    assert http.get(f"{q.url}/metrics", headers=_bearer(keys["chat"])).status_code == 403
    # The Anthropic endpoint answers in Anthropic's body; the official client raises its error.
    with (
        anthropic.Anthropic(base_url=q.url, api_key=keys["prom"], max_retries=0) as claude,
        pytest.raises(anthropic.PermissionDeniedError),
    ):
        claude.messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}]
        )


@pytest.mark.slow
def test_admin_and_metrics_keys_reach_only_their_routes(
    keyed: tuple[RunningQueen, dict[str, str]],
) -> None:
    q, keys = keyed
    ops, prom = _bearer(keys["ops"]), _bearer(keys["prom"])
    assert http.get(f"{q.url}/v1/workers", headers=ops).status_code == 200
    assert http.get(f"{q.url}/v1/dashboard", headers=ops).status_code == 200
    assert http.get(f"{q.url}/metrics", headers=ops).status_code == 403
    assert http.get(f"{q.base_url}/models", headers=ops).status_code == 403
    assert http.get(f"{q.url}/metrics", headers=prom).status_code == 200
    assert http.get(f"{q.url}/v1/workers", headers=prom).status_code == 403
    with (
        openai.OpenAI(base_url=q.base_url, api_key=keys["ops"], max_retries=0) as client,
        pytest.raises(openai.PermissionDeniedError),
    ):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    # An unknown path still needs a valid key (the 404 lists the routes).
    assert http.get(f"{q.url}/v1/nothing").status_code == 401
    assert http.get(f"{q.url}/v1/nothing", headers=prom).status_code == 404


@pytest.mark.slow
def test_a_key_over_its_rate_gets_429_with_retry_after(
    keyed: tuple[RunningQueen, dict[str, str]],
) -> None:
    q, keys = keyed
    slow = _bearer(keys["slow"])
    assert http.get(f"{q.base_url}/models", headers=slow).status_code == 200
    assert http.get(f"{q.base_url}/models", headers=slow).status_code == 200
    refused = http.get(f"{q.base_url}/models", headers=slow)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "2 requests a minute" in refused.json()["error"]["message"]
    # Another key is not held back by this one's limit.
    assert http.get(f"{q.base_url}/models", headers=_bearer(keys["chat"])).status_code == 200
    with (
        openai.OpenAI(base_url=q.base_url, api_key=keys["slow"], max_retries=0) as client,
        pytest.raises(openai.RateLimitError),
    ):
        client.models.list()


class HeldRequest:
    """A chat request held open by its own client: headers and half the body sent on a plain
    socket, the rest when the test says. In flight for as long as the test needs, however fast
    the model is; and an answer the queen sends early (a refusal) can be seen at once."""

    FIRST = b'{"model": "%s", ' % MODEL.encode()
    REST = b'"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}'

    def __init__(self, base_url: str, key: str) -> None:
        url = httpx.URL(base_url)
        assert url.port is not None
        self.sock = socket.create_connection((url.host, url.port), timeout=60)
        head = (f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.FIRST) + len(self.REST)}\r\n\r\n")  # fmt: skip
        self.sock.sendall(head.encode() + self.FIRST)

    def answered(self) -> bool:
        """True once the queen has sent anything back (or closed the connection)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def finish(self) -> int:
        """Send the rest of the body; the answer's status."""
        self.sock.sendall(self.REST)
        status_line = self.sock.makefile("rb").readline()
        return int(status_line.split()[1])

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_a_key_over_its_concurrency_gets_429_until_its_request_ends(
    keyed: tuple[RunningQueen, dict[str, str]],
) -> None:
    q, keys = keyed
    single = _bearer(keys["single"])
    refused: list[httpx.Response] = []

    def second_refused() -> bool:
        r = http.get(f"{q.base_url}/models", headers=single)
        refused[:] = [r]
        return r.status_code == 429

    # The held request must be the one in flight: if a probe reached the queen first, the held
    # one is refused at once (its answer comes before its body is done), and it is tried again.
    for _ in range(5):
        held = HeldRequest(q.base_url, keys["single"])
        wait_until(lambda held=held: held.answered() or second_refused(), 60,
                   "a second request to be refused, or the held one answered")  # fmt: skip
        if not held.answered():
            break
        held.close()
        wait_until(lambda: not second_refused(), 10, "the key free again")
    else:
        pytest.fail("the held request was refused in each of 5 tries")
    try:
        assert refused[0].headers["retry-after"] == "1"
        assert "in flight" in refused[0].json()["error"]["message"]
        # Another key is not held back.
        assert http.get(f"{q.base_url}/models", headers=_bearer(keys["chat"])).status_code == 200
        assert not held.answered()  # still in flight
        assert held.finish() == 200
    finally:
        held.close()
    wait_until(lambda: not second_refused(), 10, "the key free once the request ended")
    assert refused[0].status_code == 200
