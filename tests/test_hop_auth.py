"""Every hop authenticated: a hive's API and its workers' ask for the hive's secret (rbee.api.hop).

The threat: loopback is open to every user of a machine, and the queen's SSH forwards put every
remote hive and worker on the queen's machine's loopback. So every port the queen's process
listens on besides its own API, and every worker port on a hive's machine, must refuse a request
without the secret; with it (as the queen sends it) they serve.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from rbee.api.hop import (
    HOP_ENV,
    HopAuthMiddleware,
    hop_headers,
    new_hop_token,
    read_token_file,
    remove_token_file,
    take_env_token,
    token_path,
    write_token_file,
)
from rbee.config.settings import Paths
from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, rbee, running_queen, wait_until
from tests.hives import HiveSet, run_in, two_hives

__all__ = ["two_hives"]

SECRET = "s3cret-" + "x" * 36


@pytest.fixture(scope="module")
def guarded() -> Iterator[str]:
    """A tiny app behind the middleware, on a real uvicorn."""

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/hello", hello, methods=["GET", "POST"])])
    with http.serving(HopAuthMiddleware(app, SECRET)) as url:  # type: ignore[arg-type]
        yield url


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Bearer {SECRET}x"},
        {"authorization": f"Bearer {SECRET[:-1]}"},
        {"authorization": SECRET},
        {"authorization": f"Basic {SECRET}"},
        {"x-api-key": SECRET},
    ],
    ids=["none", "wrong", "longer", "shorter", "no-scheme", "basic", "other-header"],
)
def test_a_request_without_the_secret_is_refused_in_openais_shape(
    guarded: str, headers: dict[str, str]
) -> None:
    for method in ("GET", "POST"):
        answer = httpx.request(method, f"{guarded}/hello", headers=headers, content=b"{}")
        assert answer.status_code == 401, answer.text
        error = answer.json()["error"]
        assert error["code"] == "invalid_hop_token"
        assert error["type"] == "invalid_request_error"
        assert SECRET not in answer.text
    # A path that does not exist is refused the same way: nothing is learnt without the secret.
    assert httpx.get(f"{guarded}/nowhere", headers=headers).status_code == 401


def test_the_secret_as_a_bearer_token_is_let_through(guarded: str) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        answer = httpx.get(f"{guarded}/hello", headers={"authorization": f"{scheme} {SECRET}"})
        assert (answer.status_code, answer.text) == (200, "hello")
    assert httpx.post(f"{guarded}/hello", headers=hop_headers(SECRET)).text == "hello"
    assert hop_headers(None) == {}


def test_an_empty_secret_is_never_accepted() -> None:
    with pytest.raises(ValueError, match="empty"):
        HopAuthMiddleware(Starlette(), "")


def test_fresh_secrets_differ_and_are_long() -> None:
    tokens = {new_hop_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 for t in tokens)  # 256 bits, URL-safe base64


def test_the_secret_file_is_private_and_only_its_own_hive_removes_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "data" / "run"
    path = token_path(run_dir, "gpu-box.lan")
    write_token_file(path, SECRET)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert read_token_file(path) == SECRET
    remove_token_file(path, "another hive's secret")  # a newer hive of that name owns it
    assert path.exists()
    remove_token_file(path, SECRET)
    assert not path.exists()
    assert read_token_file(path) is None


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "", "x" * 65, "a b"])
def test_a_hive_name_that_is_no_alias_names_no_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid hive name"):
        token_path(tmp_path, name)


def test_hive_run_with_a_path_for_a_name_is_a_one_line_error(paths: Paths) -> None:
    result = rbee(paths, "hive", "run", "--name", "../../etc/x", "--port", "0", timeout=60)
    assert result.returncode != 0
    assert "--name" in result.stderr
    assert "invalid hive name" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_takes_its_secret_out_of_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOP_ENV, SECRET)
    assert take_env_token() == SECRET
    assert HOP_ENV not in os.environ  # nothing it starts inherits it
    assert take_env_token() is None


# -- the real thing: a queen, its local worker, and a hive over SSH --------------------------


def test_a_local_worker_refuses_a_caller_without_the_secret(queen: RunningQueen) -> None:
    (worker,) = queen.workers()
    url = str(worker["url"])
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for path in ("/health", "/v1/models"):
        assert http.get(f"{url}{path}").status_code == 401
    refused = http.post(f"{url}/v1/chat/completions", json=body)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_hop_token"
    # The secret is in a file only the queen's user reads, and the worker takes it.
    token_file = token_path(queen.paths.run_dir, "localhost")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert http.get(f"{url}/health", headers=queen.hop_headers).status_code == 200
    with openai.OpenAI(base_url=f"{url}/v1", api_key=queen.hop_token, max_retries=0) as direct:
        assert direct.chat.completions.create(**body).choices[0].message.content is not None
    # Through the queen, which holds the secret, nothing changes for a client.
    with openai.OpenAI(base_url=queen.base_url, api_key="unused", max_retries=0) as client:
        assert client.chat.completions.create(**body).choices[0].message.content is not None


def test_the_secret_file_goes_with_the_queen(tmp_path: Path, model_cache: Path) -> None:
    paths = make_paths(tmp_path, model_cache)
    token_file = token_path(paths.run_dir, "localhost")
    with running_queen(paths, models=()):
        first = read_token_file(token_file)
        assert first is not None
    assert not token_file.exists()
    with running_queen(paths, models=()):
        second = read_token_file(token_file)
    assert second is not None
    assert second != first


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its sockets' inodes matched in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.ssh
@pytest.mark.slow
def test_no_port_the_queen_forwards_serves_without_the_secret(
    two_hives: HiveSet, tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    env = {"RBEE_HIVE_COMMAND": f"{sys.executable} -m rbee"}
    hive = two_hives.hives[0]
    with running_queen(paths, models=(), global_args=("--hives", str(two_hives.config)),
                       env=env) as queen:  # fmt: skip

        def cli(*args: str) -> str:
            result = rbee(queen.paths, "--queen", queen.url, *args, timeout=300)
            assert result.returncode == 0, result.stderr
            return result.stdout

        assert f"hive {hive.alias} running" in cli("hive", "start", hive.alias)
        assert "ready" in cli("worker", "spawn", "--model", MODEL, "--hive", hive.alias)
        queen_port = int(queen.url.rsplit(":", 1)[1])
        # The hive's forward and the worker's: every other port the queen's process listens on.
        forwards = _listening_ports(queen.proc.pid) - {queen_port}
        assert len(forwards) >= 2, forwards
        for port in forwards:
            for path in ("/health", "/v1/workers", "/v1/models"):
                answer = http.get(f"http://127.0.0.1:{port}{path}")
                assert answer.status_code == 401, (port, path, answer.text)
                assert answer.json()["error"]["code"] == "invalid_hop_token"
            spawn = http.post(f"http://127.0.0.1:{port}/v1/workers", json={"model": MODEL})
            assert spawn.status_code == 401
        # The hive keeps its secret in its own data dir, for its own user only (the sweep's
        # --probe reads it over SSH); with it, the forwards serve.
        token_file = token_path(hive.root / ".local" / "share" / "rbee" / "run", hive.alias)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = read_token_file(token_file)
        assert token is not None
        served = [
            http.get(f"http://127.0.0.1:{port}/health", headers=hop_headers(token)).status_code
            for port in forwards
        ]
        assert served.count(200) >= 2, served
        # On the hive's machine itself, its worker's port refuses a local caller as well.
        (worker,) = [w for w in queen.workers() if w["hive"] == hive.alias]
        probe = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            "    urllib.request.urlopen(sys.argv[1], timeout=10)\n"
            "except urllib.error.HTTPError as err:\n"
            "    print(err.code)\n"
        )
        inside = run_in(hive, [sys.executable, "-c", probe, f"{worker['url']}/health"])
        assert inside.stdout.strip() == "401", inside
        # And the queen, which holds the secret, still serves through both.
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        with openai.OpenAI(base_url=queen.base_url, api_key="x", max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(**body)
            assert raw.headers["x-rbee-hive"] == hive.alias
    wait_until(lambda: not token_file.exists(), 30, "the hive to remove its secret file")


def test_the_hive_passes_no_secret_on_a_command_line(queen: RunningQueen) -> None:
    token = queen.hop_token
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert token not in ps.stdout
