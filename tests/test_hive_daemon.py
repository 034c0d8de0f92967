"""`rbee hive run` on this machine: its API, and every way it stops taking its workers with it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rbee.api.hop import hop_headers
from rbee.config.settings import Paths
from rbee.hive.launch import STANDBY_DELAY
from rbee.proc import pid_alive
from rbee.worker.daemon import WORKER_NAME
from rbee.worker.standby import STANDBY_NAME
from tests import http
from tests.conftest import MODEL, rbee_env, wait_until, worker_pids

pytestmark = pytest.mark.slow


@dataclass
class RunningHive:
    proc: subprocess.Popen[str]
    url: str
    headers: dict[str, str]
    """Its hop secret, from its ready line, as the queen sends it (rbee.api.hop)."""

    def heartbeat(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("hb\n")
        self.proc.stdin.flush()


@contextlib.contextmanager
def hive(
    paths: Paths, lease: float, *, standby: bool = False, env: dict[str, str] | None = None
) -> Iterator[RunningHive]:
    """`rbee hive run --port 0` with a pipe for stdin (`env`: its environment, rbee_env's by
    default); killed after the test if still running."""
    argv = [sys.executable, "-m", "rbee", "hive", "run", "--port", "0", "--lease", str(lease),
            "--name", "test-hive", *(["--standby"] if standby else [])]  # fmt: skip
    with (paths.data_dir / "hive.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env or rbee_env(paths), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready"
        url = f"http://127.0.0.1:{ready['port']}"
        yield RunningHive(proc, url, hop_headers(ready["token"]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in worker_pids(paths, standby=True):
            os.kill(pid, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def spawn(h: RunningHive) -> dict[str, object]:
    r = http.post(f"{h.url}/v1/workers", json={"model": MODEL}, headers=h.headers)
    assert r.status_code == 201, r.text
    worker: dict[str, object] = r.json()
    return worker


def test_hive_api_and_lease(paths: Paths) -> None:
    # The lease must outlast a spawn and a first answer on a loaded 2-core machine.
    with hive(paths, lease=6) as h:
        assert http.get(f"{h.url}/health").status_code == 401  # without its secret
        health = http.get(f"{h.url}/health", headers=h.headers).json()
        assert (health["role"], health["name"]) == ("hive", "test-hive")
        assert health["facts"]["cpu_count"] == os.cpu_count()
        models = http.get(f"{h.url}/v1/models", headers=h.headers).json()["data"]
        assert [m["id"] for m in models] == [MODEL]
        h.heartbeat()
        worker = spawn(h)
        h.heartbeat()
        assert worker["state"] == "ready"
        assert worker["hive"] == "test-hive"
        answer = http.post(f"{worker['url']}/v1/completions", headers=h.headers,
                           json={"model": MODEL, "prompt": "Hi", "max_tokens": 3})  # fmt: skip
        assert answer.status_code == 200
        # The hive reads its workers' logs for the queen (the dashboard's log pane).
        log = http.get(f"{h.url}/v1/logs", params={"worker": worker["id"], "lines": 50},
                       headers=h.headers).json()  # fmt: skip
        assert log["path"] == worker["log_path"]
        assert any("serving on 127.0.0.1" in line for line in log["lines"])
        assert len(log["lines"]) <= 50
        for params, status in (({"worker": "nope"}, 404), ({"worker": "../x"}, 400),
                               ({"worker": worker["id"], "lines": "5000"}, 400)):  # fmt: skip
            refused = http.get(f"{h.url}/v1/logs", params=params, headers=h.headers)
            assert refused.status_code == status, refused.text
        # Heartbeats keep it alive past the lease...
        for _ in range(8):
            h.heartbeat()
            time.sleep(1)
        assert h.proc.poll() is None
        # ...and silence ends it, workers first.
        assert h.proc.wait(6 + 15) == 0
        wait_until(lambda: worker_pids(paths) == [], 5, "the hive's worker to be gone")
    assert "no heartbeat" in (paths.data_dir / "hive.log").read_text()


def test_a_lapsed_lease_ends_everything_within_the_lease(paths: Paths) -> None:
    # Even a worker that cannot act on SIGTERM (stopped here; in life, one busy streaming to a
    # queen that is gone) is gone within the lease of the last heartbeat, not the lease plus the
    # 5 s TERM-to-KILL grace.
    lease = 6.0
    with hive(paths, lease=lease) as h:
        beating = threading.Event()
        beating.set()

        def beat() -> None:
            while beating.is_set():
                h.heartbeat()
                time.sleep(0.5)

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        try:
            pid = spawn(h)["pid"]
            assert isinstance(pid, int)
            os.kill(pid, signal.SIGSTOP)
        finally:
            beating.clear()
            beater.join()
        last_beat = time.monotonic()
        assert h.proc.wait(lease + 15) == 0
        wait_until(lambda: not pid_alive(pid), lease + 15, "the stopped worker to be killed")
        assert time.monotonic() - last_beat <= lease
    assert "no heartbeat" in (paths.data_dir / "hive.log").read_text()


@pytest.mark.parametrize("how", ["eof", "sighup"])
def test_once_the_queen_is_gone_a_deaf_worker_is_not_waited_for(paths: Paths, how: str) -> None:
    # EOF and a hang-up mean the queen is gone: the 5 s TERM-to-KILL grace would only delay the
    # end, so a worker that does not act on SIGTERM is killed after 0.5 s.
    with hive(paths, lease=30) as h:
        pid = spawn(h)["pid"]
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGSTOP)
        told = time.monotonic()
        if how == "eof":
            assert h.proc.stdin is not None
            h.proc.stdin.close()
        else:
            h.proc.send_signal(signal.SIGHUP)
        assert h.proc.wait(15) == 0
        wait_until(lambda: not pid_alive(pid), 15, f"the stopped worker to be killed after {how}")
        assert time.monotonic() - told < 4  # the normal grace alone is 5 s


@pytest.mark.parametrize("how", ["eof", "sighup", "sigterm", "sigkill"])
def test_every_way_the_hive_stops_takes_its_workers(paths: Paths, how: str) -> None:
    with hive(paths, lease=30) as h:
        pid = spawn(h)["pid"]
        assert isinstance(pid, int)
        if how == "eof":
            assert h.proc.stdin is not None
            h.proc.stdin.close()
        else:
            h.proc.send_signal({"sighup": signal.SIGHUP, "sigterm": signal.SIGTERM,
                                "sigkill": signal.SIGKILL}[how])  # fmt: skip
        code = h.proc.wait(15)
        assert code == (-signal.SIGKILL if how == "sigkill" else 0)
        wait_until(lambda: not pid_alive(pid), 5, f"the worker to exit after {how}")


def test_bad_requests_to_the_hive(paths: Paths) -> None:
    with hive(paths, lease=0) as h:
        r = http.post(f"{h.url}/v1/workers", json={"model": "../x"}, headers=h.headers)
        assert r.status_code == 400
        assert "invalid model id" in r.json()["error"]["message"]
        r = http.post(f"{h.url}/v1/workers", json={"model": "nope"}, headers=h.headers)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"
        cuda_only = {"model": MODEL, "engine": "exllamav2"}
        r = http.post(f"{h.url}/v1/workers", json=cuda_only, headers=h.headers)
        assert r.status_code == 400
        assert "runs on CUDA only" in r.json()["error"]["message"]
        r = http.delete(f"{h.url}/v1/workers/nope", headers=h.headers)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "worker_not_found"
        h.proc.send_signal(signal.SIGTERM)
        assert h.proc.wait(15) == 0


# --- the standby worker (rbee.worker.standby) ---------------------------------------------------


def waiting_standbys(paths: Paths) -> list[int]:
    """Standby processes of this data dir still waiting for their order."""
    return sorted(set(worker_pids(paths, standby=True)) - set(worker_pids(paths)))


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_the_standby_becomes_the_worker_and_another_takes_its_place(paths: Paths) -> None:
    with hive(paths, lease=0, standby=True) as h:
        wait_until(lambda: len(waiting_standbys(paths)) == 1, 30, "the standby to start")
        (standby,) = waiting_standbys(paths)
        assert comm(standby) == STANDBY_NAME
        argv = Path(f"/proc/{standby}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--engine") + 1] == b"llamacpp"  # this hive's facts: a CPU
        worker = spawn(h)
        assert worker["state"] == "ready"
        assert worker["pid"] == standby  # the standby itself runs the worker now
        assert comm(standby) == WORKER_NAME
        answer = http.post(f"{worker['url']}/v1/completions", headers=h.headers,
                           json={"model": MODEL, "prompt": "Hi", "max_tokens": 3})  # fmt: skip
        assert answer.status_code == 200
        assert answer.json()["usage"]["completion_tokens"] == 3
        log = Path(str(worker["log_path"])).read_text()
        assert f"standby {standby}: becoming `rbee --data-dir" in log
        assert "worker run --model smollm2-135m" in log
        assert "warm-up done" in log  # the worker's own lines follow in its own log
        # A new standby follows, once the worker has had the machine to itself for a while.
        wait_until(lambda: len(waiting_standbys(paths)) == 1, STANDBY_DELAY + 30,
                   "a new standby")  # fmt: skip
        (again,) = waiting_standbys(paths)
        assert again != standby
        # A worker started from the standby restarts like any other after a crash: afresh.
        os.kill(standby, signal.SIGKILL)
        wait_until(lambda: worker_pids(paths) not in ([], [standby]), 30, "the restart")
        everyone = worker_pids(paths, standby=True)
        h.proc.send_signal(signal.SIGTERM)
        assert h.proc.wait(15) == 0
        wait_until(lambda: not any(pid_alive(p) for p in everyone), 5, "every process to exit")
    assert "Traceback" not in (paths.data_dir / "hive.log").read_text()


def test_a_standby_that_died_is_passed_over(paths: Paths) -> None:
    with hive(paths, lease=0, standby=True) as h:
        wait_until(lambda: len(waiting_standbys(paths)) == 1, 30, "the standby to start")
        (standby,) = waiting_standbys(paths)
        os.kill(standby, signal.SIGKILL)
        wait_until(lambda: not pid_alive(standby), 5, "the standby to die")
        worker = spawn(h)
        assert worker["state"] == "ready"
        assert worker["pid"] != standby
        wait_until(lambda: len(waiting_standbys(paths)) == 1, STANDBY_DELAY + 30,
                   "a new standby")  # fmt: skip
    log = (paths.data_dir / "hive.log").read_text()
    assert f"the standby worker (pid {standby}) is gone" in log


@pytest.mark.parametrize("how", ["eof", "sigkill"])
def test_the_waiting_standby_goes_with_its_hive(paths: Paths, how: str) -> None:
    with hive(paths, lease=30, standby=True) as h:
        wait_until(lambda: len(waiting_standbys(paths)) == 1, 30, "the standby to start")
        (standby,) = waiting_standbys(paths)
        if how == "eof":
            assert h.proc.stdin is not None
            h.proc.stdin.close()
        else:
            h.proc.send_signal(signal.SIGKILL)
        h.proc.wait(15)
        wait_until(lambda: not pid_alive(standby), 5, f"the standby to exit after {how}")
