"""What rbee lets out: files private whatever the umask, /health's details only with the key,
error bodies without internal addresses, and no model download over a plain-http hub that is not
on this machine. A real queen (with the real model) for the files and /health; a real uvicorn for
the error bodies.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.api.http import EXCEPTION_HANDLERS, scrub_addresses
from rbee.config.settings import Paths
from rbee.errors import ApiError, ModelError, ModelFetchError, RbeeError
from rbee.fsutil import atomic_write_text, open_private_log, private_dir
from rbee.models.hub import ALLOW_HTTP_VAR, DEFAULT_ENDPOINT, HubClient, hub_settings
from tests import http
from tests.conftest import MODEL, make_paths, rbee, running_queen
from tests.http import serving

KEY = "s3cret-key"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_files_and_dirs_are_private_whatever_the_umask(tmp_path: Path) -> None:
    with umask(0):
        state = tmp_path / "data" / "run" / "state.json"
        atomic_write_text(state, "{}")
        with open_private_log(tmp_path / "data" / "logs" / "x.log") as log:
            log.write(b"line\n")
        deep = private_dir(tmp_path / "a" / "b" / "c")
    assert mode(state) == 0o600
    assert mode(state.parent) == 0o700
    assert mode(tmp_path / "data") == 0o700
    assert mode(tmp_path / "data" / "logs" / "x.log") == 0o600
    assert [mode(p) for p in (deep, deep.parent, deep.parent.parent)] == [0o700] * 3
    # An older log left world-readable is made private when it is opened again.
    old = tmp_path / "old.log"
    old.write_text("")
    old.chmod(0o644)
    open_private_log(old).close()
    assert mode(old) == 0o600


@pytest.fixture(scope="module")
def keyed_queen(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[tuple[Paths, str]]:
    """A queen with an API key and a worker, started under a permissive umask."""
    paths = make_paths(tmp_path_factory.mktemp("keyed"), model_cache)
    with umask(0o022), running_queen(paths, global_args=("--api-key", KEY)) as queen:
        yield paths, queen.url


def test_a_running_queen_writes_nothing_others_can_read(keyed_queen: tuple[Paths, str]) -> None:
    paths, _ = keyed_queen
    logs = sorted(paths.logs_dir.glob("*.log"))
    assert any(p.name.startswith("worker-") for p in logs), logs
    checked = [paths.logs_dir, paths.run_dir, *logs, *paths.run_dir.iterdir()]
    checked += list(paths.data_dir.glob("*.json"))
    assert {p.name: oct(mode(p)) for p in checked} == {
        p.name: oct(0o700 if p.is_dir() else 0o600) for p in checked
    }


def test_health_says_only_ok_without_the_key(keyed_queen: tuple[Paths, str]) -> None:
    _, url = keyed_queen
    bare = http.get(f"{url}/health")
    assert bare.status_code == 200
    assert bare.json() == {"status": "ok"}
    wrong = http.get(f"{url}/health", headers={"authorization": "Bearer nope"})
    assert wrong.json() == {"status": "ok"}
    full = http.get(f"{url}/health", headers={"authorization": f"Bearer {KEY}"}).json()
    assert full["role"] == "queen"
    assert full["pid"] > 0
    assert full["models"] == [MODEL]


def test_queen_status_without_the_key_says_it_runs(keyed_queen: tuple[Paths, str]) -> None:
    paths, url = keyed_queen
    bare = rbee(paths, "--queen", url, "queen", "status")
    assert bare.returncode == 0, bare.stderr
    assert "queen running at" in bare.stdout
    assert "API key" in bare.stdout
    keyed = rbee(paths, "--queen", url, "--api-key", KEY, "queen", "status")
    assert "pid" in keyed.stdout


def test_server_errors_name_no_internal_address() -> None:
    async def relayed(request: Request) -> Response:
        raise ApiError(
            502,
            "worker w1 (hive gpu1) failed: ConnectError: [Errno 111] Connect call failed "
            "('127.0.0.1', 9301) at http://127.0.0.1:9301/v1/chat/completions via 10.1.2.3:22",
            type="server_error",
        )

    async def own(request: Request) -> Response:
        raise RbeeError("cannot reach http://[::1]:9000/health")

    async def client_error(request: Request) -> Response:
        raise ApiError(400, "your url http://127.0.0.1:1/x is not allowed", param="url")

    app = Starlette(
        routes=[Route("/a", relayed), Route("/b", own), Route("/c", client_error)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    with serving(app) as url:
        a, b, c = (http.get(f"{url}/{p}") for p in "abc")
    assert a.status_code == 502
    message = a.json()["error"]["message"]
    assert "worker w1 (hive gpu1) failed: ConnectError" in message
    for internal in ("127.0.0.1", "9301", "10.1.2.3"):
        assert internal not in message
    assert b.status_code == 500
    assert "::1" not in b.json()["error"]["message"]
    # A 4xx echoes what the client sent itself: left as it is.
    assert "http://127.0.0.1:1/x" in c.json()["error"]["message"]


def test_scrubbing_leaves_public_urls_and_versions() -> None:
    text = "see https://huggingface.co/x/y (rbee 1.2.3.4) and worker w-9"
    assert scrub_addresses(text) == text


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({}, False),
        ({"HF_ENDPOINT": "https://mirror.example"}, False),
        ({"HF_ENDPOINT": "http://127.0.0.1:8080"}, False),  # on this machine: nobody on the way
        ({"HF_ENDPOINT": "http://localhost:8080/"}, False),
        ({"HF_ENDPOINT": "http://mirror.example"}, True),
        ({"HF_ENDPOINT": "http://10.0.0.9:8080"}, True),
        ({"HF_ENDPOINT": "http://mirror.example", ALLOW_HTTP_VAR: "0"}, True),
        ({"HF_ENDPOINT": "http://mirror.example", ALLOW_HTTP_VAR: "1"}, False),
    ],
)
def test_a_plain_http_hub_is_refused_unless_allowed(env: dict[str, str], refused: bool) -> None:
    if not refused:
        endpoint, _ = hub_settings(env)
        assert endpoint == env.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
        return
    with pytest.raises(ModelError) as caught:
        hub_settings(env)
    assert "$HF_ENDPOINT" in str(caught.value)
    assert f"${ALLOW_HTTP_VAR}=1" in str(caught.value)


def test_model_download_from_a_plain_http_hub_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A TEST-NET address: were it contacted, the command would hang for the connect timeout.
    monkeypatch.setenv("HF_ENDPOINT", "http://192.0.2.1:8080")
    paths = make_paths(tmp_path, None)
    began = time.monotonic()
    result = rbee(paths, "model", "download", "org/repo")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"${ALLOW_HTTP_VAR}=1" in result.stderr
    assert time.monotonic() - began < 30
    assert list(paths.models_dir.iterdir()) == []


def test_an_https_hub_redirecting_to_plain_http_is_refused() -> None:
    """The check every response of a hub client passes (redirects included): pure, on the
    request each response answers."""
    with HubClient("https://hub.example") as hub:
        hub._no_downgrade(httpx.Response(200, request=httpx.Request("GET", "https://cdn.x/a")))
        with pytest.raises(ModelFetchError, match="redirected to plain http"):
            hub._no_downgrade(httpx.Response(200, request=httpx.Request("GET", "http://cdn.x/a")))
    with HubClient("http://127.0.0.1:1") as local:  # a plain-http endpoint: nothing to downgrade
        local._no_downgrade(httpx.Response(200, request=httpx.Request("GET", "http://cdn.x/a")))
