"""CORS on the queen: off unless origins are set; preflights without the API key, the key still
required on the requests themselves (a real queen, started with `--cors-origin` flags)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import http
from tests.conftest import RunningQueen, make_paths, rbee, running_queen

pytestmark = pytest.mark.slow

KEY = "s3cret"
ALLOWED = "https://app.example"


@pytest.fixture(scope="module")
def cors_queen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningQueen]:
    """A queen with an API key and two allowed origins (no model: none is needed here)."""
    paths = make_paths(tmp_path_factory.mktemp("cors"), None)
    flags = ("--cors-origin", "HTTPS://App.Example:443", "--cors-origin", "http://localhost:3000")
    with running_queen(paths, *flags, models=(), global_args=("--api-key", KEY)) as queen:
        yield queen


def preflight(queen: RunningQueen, origin: str, **headers: str) -> httpx.Response:
    return httpx.options(
        f"{queen.base_url}/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
            **headers,
        },
        timeout=http.TIMEOUT,
    )


def test_a_preflight_from_an_allowed_origin_needs_no_key(cors_queen: RunningQueen) -> None:
    # The flag's origin was written in capitals with the default port; browsers send neither.
    r = preflight(cors_queen, ALLOWED, **{"Access-Control-Request-Private-Network": "true"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert r.headers["access-control-allow-private-network"] == "true"
    assert preflight(cors_queen, "http://localhost:3000").status_code == 200


def test_a_preflight_from_another_origin_is_refused(cors_queen: RunningQueen) -> None:
    for origin in ("https://evil.example", "http://localhost:3001", "https://app.example.org"):
        r = preflight(cors_queen, origin)
        assert r.status_code == 400, origin
        assert "access-control-allow-origin" not in r.headers


def test_requests_still_need_the_key_and_pages_can_read_the_answer(
    cors_queen: RunningQueen,
) -> None:
    url = f"{cors_queen.base_url}/models"
    refused = http.get(url, headers={"Origin": ALLOWED})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert refused.headers["access-control-allow-origin"] == ALLOWED  # the page sees why
    answered = http.get(url, headers={"Origin": ALLOWED, "Authorization": f"Bearer {KEY}"})
    assert answered.status_code == 200
    assert answered.headers["access-control-allow-origin"] == ALLOWED
    assert "x-rbee-worker" in answered.headers["access-control-expose-headers"].lower()
    other = http.get(
        url, headers={"Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"}
    )
    assert other.status_code == 200  # CORS is the browser's rule; the key is the queen's
    assert "access-control-allow-origin" not in other.headers


def test_a_bad_origin_flag_is_one_clear_line(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    done = rbee(paths, "queen", "run", "--port", "0", "--cors-origin", "https://app.example/")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "rbee: error: --cors-origin: 'https://app.example/' is not an origin (an origin has no "
        "path, drop '/')"
    ]
