"""Shared fixtures: the real default model (fetched once), data dirs, and real running queens."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee.api.hop import hop_headers, read_token_file, token_path
from rbee.config.settings import Paths
from rbee.models.catalog import DEFAULT_MODEL_ID
from rbee.models.sources import ensure_model
from rbee.models.store import ModelStore
from rbee.proc import pid_alive
from rbee.worker.standby import STANDBY_NAME
from tests import http

ROOT = Path(__file__).resolve().parent.parent
MODEL = DEFAULT_MODEL_ID


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """A store holding the real default model, fetched once per machine (kept in .cache/)."""
    root = Path(os.environ.get("RBEE_TEST_MODEL_CACHE", ROOT / ".cache" / "models"))
    ensure_model(ModelStore(root), MODEL)
    return root


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_paths(base: Path, model_cache: Path | None) -> Paths:
    """Config and data dirs under `base`, the data dir's store linked to the shared model."""
    paths = Paths(config_dir=base / "config", data_dir=base / "data")
    paths.models_dir.mkdir(parents=True)
    if model_cache is not None:
        (paths.models_dir / MODEL).symlink_to(model_cache / MODEL, target_is_directory=True)
    return paths


@pytest.fixture
def paths(tmp_path: Path, model_cache: Path) -> Paths:
    """Fresh dirs for one test, with the default model in the store."""
    return make_paths(tmp_path, model_cache)


def rbee_env(paths: Paths) -> dict[str, str]:
    """The environment for an `rbee` subprocess confined to `paths`."""
    env = dict(os.environ)
    env.update(
        RBEE_DATA_DIR=str(paths.data_dir),
        RBEE_CONFIG_DIR=str(paths.config_dir),
        PYTHONUNBUFFERED="1",
    )
    env.pop("RBEE_API_KEY", None)
    env.pop("RBEE_QUEEN_URL", None)
    return env


def rbee(paths: Paths, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `rbee` CLI to completion."""
    return subprocess.run(
        [sys.executable, "-m", "rbee", *args],
        env=rbee_env(paths),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class RunningQueen:
    """A real queen process serving the real model."""

    proc: subprocess.Popen[bytes]
    url: str
    paths: Paths

    @property
    def base_url(self) -> str:
        """The OpenAI base URL."""
        return f"{self.url}/v1"

    def workers(self) -> list[dict[str, object]]:
        """The queen's worker list."""
        data: list[dict[str, object]] = http.get(f"{self.url}/v1/workers").json()["data"]
        return data

    @property
    def hop_token(self) -> str:
        """The hop secret its local workers ask for, from the file the queen's hive keeps for
        its user (rbee.api.hop)."""
        token = read_token_file(token_path(self.paths.run_dir, "localhost"))
        assert token is not None, "the queen's hive keeps no secret file"
        return token

    @property
    def hop_headers(self) -> dict[str, str]:
        """The headers a test sends to one of its local workers directly."""
        return hop_headers(self.hop_token)

    def worker_health(self, worker: Mapping[str, object]) -> dict[str, Any]:
        """One of its local workers' own /health, asked directly (with the hop secret)."""
        answer = http.get(f"{worker['url']}/health", headers=self.hop_headers)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found


def wait_until(predicate: object, timeout: float, what: str) -> None:
    """Poll `predicate` until it is true; fail the test with `what` after `timeout` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def healthy(url: str) -> bool:
    """True once `url`/health answers 200."""
    try:
        return http.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running_queen(
    paths: Paths,
    *extra: str,
    models: tuple[str, ...] = (MODEL,),
    global_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[RunningQueen]:
    """Start `rbee queen run` in the foreground as a child; stop it after."""
    port = free_port()
    argv = [sys.executable, "-m", "rbee", *global_args, "queen", "run", "--port", str(port), *extra]
    for m in models:
        argv += ["--model", m]
    log_path = paths.data_dir / "test-queen.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, env={**rbee_env(paths), **(env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"queen did not start: {log_path.read_text()}")
            time.sleep(0.05)
        yield RunningQueen(proc=proc, url=url, paths=paths)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def queen(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[RunningQueen]:
    """One real queen with one worker of the default model, shared by a test module."""
    paths = make_paths(tmp_path_factory.mktemp("queen"), model_cache)
    with running_queen(paths) as q:
        yield q


def worker_pids(paths: Paths, *, standby: bool = False) -> list[int]:
    """Pids of live worker processes started with this data dir: `rbee worker run`, or a standby
    that became a worker. `standby`: standbys still waiting too (rbee.worker.standby), i.e. every
    process that must be gone once its hive is."""
    found = []
    needle = str(paths.data_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            waiting = (entry / "comm").read_text().strip() == STANDBY_NAME
        except OSError:
            continue
        role = b"run" in argv or (b"standby" in argv and (standby or not waiting))
        if b"worker" in argv and role and needle in argv and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
