"""Cancellation and cascading shutdown, observed on real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from rbee.config.settings import Paths
from rbee.proc import pid_alive
from tests import http
from tests.conftest import (
    MODEL,
    RunningQueen,
    free_port,
    healthy,
    rbee,
    rbee_env,
    running_queen,
    wait_until,
    worker_pids,
)

pytestmark = pytest.mark.slow

COUNTING = {"model": MODEL, "prompt": "Count from 1 to 1000: 1, 2, 3, 4,", "temperature": 0}


def worker_stats(queen: RunningQueen) -> dict[str, object]:
    worker = queen.workers()[0]
    stats: dict[str, object] = queen.worker_health(worker)["stats"]
    return stats


def test_stream_disconnect_stops_generation(queen: RunningQueen) -> None:
    before = worker_stats(queen)
    with http.stream(
        "POST",
        f"{queen.base_url}/completions",
        json={**COUNTING, "max_tokens": 2000, "stream": True},
    ) as response:
        received = 0
        for line in response.iter_lines():
            if line.startswith("data:"):
                received += 1
            if received == 3:
                break
    # The client is gone; the worker must notice within a token or two.
    wait_until(
        lambda: worker_stats(queen)["cancelled"] == before["cancelled"] + 1,
        10,
        "the worker to cancel the generation",
    )
    last = worker_stats(queen)["last_finish"]
    assert isinstance(last, dict)
    assert last["reason"] == "cancelled"
    assert last["completion_tokens"] < 3 + 10, last
    assert worker_stats(queen)["active"] == 0


def test_non_stream_disconnect_stops_generation(queen: RunningQueen) -> None:
    before = worker_stats(queen)
    with pytest.raises(httpx.ReadTimeout):
        http.post(
            f"{queen.base_url}/completions",
            json={**COUNTING, "max_tokens": 2000},
            timeout=httpx.Timeout(0.5, connect=5),
        )
    wait_until(
        lambda: worker_stats(queen)["cancelled"] == before["cancelled"] + 1,
        10,
        "the worker to cancel the generation",
    )
    last = worker_stats(queen)["last_finish"]
    assert isinstance(last, dict)
    assert last["completion_tokens"] < 1000, last


def test_queen_stop_leaves_no_worker(paths: Paths) -> None:
    port = str(free_port())
    started = rbee(paths, "queen", "start", "--port", port)
    assert started.returncode == 0, started.stderr
    try:
        spawned = rbee(paths, "worker", "spawn", "--model", MODEL)
        assert spawned.returncode == 0, spawned.stderr
        assert "ready" in spawned.stdout
        listed = rbee(paths, "worker", "list")
        assert MODEL in listed.stdout
        assert "ready" in listed.stdout
        status = rbee(paths, "queen", "status")
        assert status.returncode == 0
        assert MODEL in status.stdout
        pids = worker_pids(paths)
        assert len(pids) == 1
        twice = rbee(paths, "queen", "start", "--port", str(free_port()))
        assert twice.returncode == 1
        assert "already running" in twice.stderr
    finally:
        stopped = rbee(paths, "queen", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert worker_pids(paths, standby=True) == []
    assert not pid_alive(pids[0])
    assert not (paths.run_dir / "queen.json").exists()
    after = rbee(paths, "queen", "status")
    assert after.returncode == 1
    assert "not running" in after.stderr


@contextlib.contextmanager
def rbee_up(paths: Paths) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`rbee up` as a child process; killed after the test if the test left it running."""
    port = free_port()
    with (paths.data_dir / "up.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rbee", "up", "--port", str(port)],
            env=rbee_env(paths),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url) or proc.poll() is not None, 120, "rbee up to serve")
        assert proc.poll() is None, (paths.data_dir / "up.log").read_text()
        wait_until(lambda: len(worker_pids(paths)) == 1, 30, "the worker to start")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in worker_pids(paths, standby=True):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_rbee_up_stops_everything(paths: Paths, sig: signal.Signals) -> None:
    with rbee_up(paths) as (proc, url):
        r = http.post(f"{url}/v1/completions", json={**COUNTING, "max_tokens": 4})
        assert r.status_code == 200
        pids = worker_pids(paths, standby=True)
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        assert worker_pids(paths, standby=True) == []
        assert not any(pid_alive(p) for p in pids)
    output = (paths.data_dir / "up.log").read_text()
    assert "no worker is left running" in output
    assert "Traceback" not in output


def test_sigkill_of_the_hive_takes_its_workers(paths: Paths) -> None:
    # In integrated mode the hive lives in the queen process: SIGKILL gives it no chance to
    # clean up, so the workers' own layers (PDEATHSIG, lifeline) must end them.
    with rbee_up(paths) as (proc, _):
        pids = worker_pids(paths, standby=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 5, "the orphaned worker to exit")


def test_lifeline_alone_stops_a_worker(paths: Paths) -> None:
    # No PDEATHSIG here (no --parent-pid): only the lifeline pipe tells the worker to go.
    ready_r, ready_w = os.pipe()
    life_r, life_w = os.pipe()
    argv = [
        sys.executable,
        "-m",
        "rbee",
        "--data-dir",
        str(paths.data_dir),
        "worker",
        "run",
        "--model",
        MODEL,
        "--ready-fd",
        str(ready_w),
        "--lifeline-fd",
        str(life_r),
    ]
    proc = subprocess.Popen(
        argv,
        pass_fds=(ready_w, life_r),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=rbee_env(paths),
    )
    os.close(ready_w)
    os.close(life_r)
    try:
        with os.fdopen(ready_r, "rb") as ready:
            line = ready.readline()
        assert b"port" in line
        assert proc.poll() is None
        os.close(life_w)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_stop_via_cli(paths: Paths) -> None:
    with running_queen(paths, models=()) as q:
        env_args = ("--queen", q.url)
        spawned = rbee(paths, *env_args, "worker", "spawn", "--model", MODEL)
        assert spawned.returncode == 0, spawned.stderr
        worker_id = q.workers()[0]["id"]
        pid = q.workers()[0]["pid"]
        stopped = rbee(paths, *env_args, "worker", "stop", str(worker_id))
        assert stopped.returncode == 0, stopped.stderr
        assert q.workers() == []
        assert isinstance(pid, int)
        assert not pid_alive(pid)
        again = rbee(paths, *env_args, "worker", "stop", str(worker_id))
        assert again.returncode == 1
        assert "no worker" in again.stderr
