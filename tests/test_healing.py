"""A fleet that heals itself, on real processes: a real queen, real workers running the real model,
real signals, the official openai client.

Crashes mid-stream (SIGSEGV, SIGKILL) end the stream with an error event and the worker comes
back; five quick crashes are a crash-loop that a 503 names; a hung worker is noticed and killed;
an engine that crashes during warm-up fails its spawn with the signal's name; stops stick and are
idempotent; a cancelled spawn leaves nothing; the queen's SIGTERM ends open streams properly.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rbee.api.client import QueenClient
from rbee.worker.daemon import SESSION_NICENESS
from rbee.worker.runner import COMPUTE_NICENESS
from rbee.worker.warmup import CRASH_ENV
from tests import http
from tests.conftest import (
    MODEL,
    RunningQueen,
    make_paths,
    rbee,
    running_queen,
    wait_until,
    worker_pids,
)

pytestmark = pytest.mark.slow

COUNTING = {"model": MODEL, "prompt": "Count from 1 to 1000: 1, 2, 3, 4,", "temperature": 0}


@pytest.fixture
def fresh(tmp_path: Path, model_cache: Path) -> Iterator[RunningQueen]:
    """A queen of its own with one worker of the default model (this test may break it)."""
    with running_queen(make_paths(tmp_path, model_cache)) as queen:
        yield queen


def only_worker(queen: RunningQueen) -> dict[str, Any]:
    (worker,) = queen.workers()
    return worker


def ready_again(queen: RunningQueen, old_pid: object) -> bool:
    worker = only_worker(queen)
    return worker["state"] == "ready" and worker["pid"] != old_pid


def stream_lines_after_killing(queen: RunningQueen, sig: int) -> list[str]:
    """Start a long stream, kill its worker with `sig` after the first chunk; every line after."""
    pid = int(only_worker(queen)["pid"])
    lines: list[str] = []
    with http.stream(
        "POST",
        f"{queen.base_url}/completions",
        json={**COUNTING, "max_tokens": 2000, "stream": True},
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                continue
            lines.append(line)
            if len(lines) == 1:
                os.kill(pid, sig)
    return lines


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL], ids=["SIGSEGV", "SIGKILL"])
def test_a_worker_that_dies_mid_stream_ends_it_with_an_error_and_comes_back(
    fresh: RunningQueen, sig: int
) -> None:
    old_pid = only_worker(fresh)["pid"]
    lines = stream_lines_after_killing(fresh, sig)
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error"
    assert "broke" in error["message"]
    # The next request is answered: it waits for the worker the hive starts again.
    with openai.OpenAI(base_url=fresh.base_url, api_key="x", max_retries=0) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
    assert answer.choices[0].message.content
    worker = only_worker(fresh)
    assert worker["state"] == "ready"
    assert worker["pid"] != old_pid
    assert worker["restarts"] == 1
    assert worker["last_exit"] == signal.Signals(sig).name
    assert worker["last_exit_at"] is not None
    assert http.get(f"{fresh.url}/health").json()["status"] == "ok"
    listed = rbee(fresh.paths, "--queen", fresh.url, "worker", "list")
    assert f"{signal.Signals(sig).name} " in listed.stdout


def test_five_quick_crashes_are_a_crash_loop_that_a_503_names(fresh: RunningQueen) -> None:
    worker_id = only_worker(fresh)["id"]
    for crash in range(5):
        wait_until(
            lambda: only_worker(fresh)["state"] == "ready", 60, f"ready before crash {crash}"
        )
        os.kill(int(only_worker(fresh)["pid"]), signal.SIGSEGV)
        if crash < 4:  # a restarting worker is waited for, not refused
            wait_until(lambda: only_worker(fresh)["state"] != "ready", 10, "the crash to show")
    wait_until(lambda: only_worker(fresh)["state"] == "crash-loop", 30, "the crash-loop")
    started = time.monotonic()
    refused = http.post(f"{fresh.base_url}/completions", json={**COUNTING, "max_tokens": 2})
    assert time.monotonic() - started < 5  # at once, not after a timeout
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "worker_unavailable")
    assert "crash-loop: 5 crashes in 10 minutes" in error["message"]
    assert "SIGSEGV" in error["message"]
    assert f"rbee worker restart {worker_id}" in error["message"]
    health = http.get(f"{fresh.url}/health").json()
    assert health["status"] == "degraded"
    (problem,) = health["problems"]
    assert (problem["worker"], problem["state"]) == (worker_id, "crash-loop")
    restarted = rbee(fresh.paths, "--queen", fresh.url, "worker", "restart", worker_id)
    assert restarted.returncode == 0, restarted.stderr
    assert f"worker {worker_id} ready again" in restarted.stdout
    ok = http.post(f"{fresh.base_url}/completions", json={**COUNTING, "max_tokens": 2})
    assert ok.status_code == 200, ok.text
    health = http.get(f"{fresh.url}/health").json()
    assert (health["status"], health["problems"]) == ("ok", [])


def test_a_hung_worker_is_noticed_killed_and_started_again(fresh: RunningQueen) -> None:
    old_pid = int(only_worker(fresh)["pid"])
    os.kill(old_pid, signal.SIGSTOP)
    stopped = time.monotonic()
    wait_until(lambda: only_worker(fresh)["state"] != "ready", 15, "the hive to notice the hang")
    assert time.monotonic() - stopped < 12  # seconds, not the 120 s first-byte deadline
    worker = only_worker(fresh)
    assert worker["last_exit"] == "SIGKILL"
    assert "did not answer its health check" in worker["error"]
    wait_until(lambda: ready_again(fresh, old_pid), 60, "the worker to come back")


def test_an_engine_that_crashes_in_warm_up_fails_the_spawn_naming_the_signal(
    tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    with running_queen(paths, models=(), env={CRASH_ENV: "SIGSEGV"}) as queen:
        result = rbee(paths, "--queen", queen.url, "worker", "spawn", "--model", MODEL)
        assert result.returncode == 1
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("rbee: error:")]
        assert "crashed with SIGSEGV before it was ready" in line
        assert "(llamacpp on cpu)" in line
        assert "warm-up" in line  # the log's last lines say where it was
        assert queen.workers() == []
        assert worker_pids(paths) == []
        health = http.get(f"{queen.url}/health").json()
        assert (health["status"], health["problems"]) == ("ok", [])
        desired = json.loads((paths.data_dir / "desired.json").read_text())
        assert desired["hives"]["localhost"]["workers"] == []


def test_stopping_a_worker_twice_at_once_is_one_stop(fresh: RunningQueen) -> None:
    worker_id = only_worker(fresh)["id"]
    answers: list[httpx.Response] = []

    def stop() -> None:
        answers.append(http.delete(f"{fresh.url}/v1/workers/{worker_id}"))

    threads = [threading.Thread(target=stop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert {a.json()["id"] for a in answers} == {worker_id}
    again = http.delete(f"{fresh.url}/v1/workers/{worker_id}")
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "worker_not_found"
    assert fresh.workers() == []


def test_stops_stick_and_local_workers_come_back_after_a_queen_restart(
    tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    with running_queen(paths, models=()) as queen:
        for _ in range(2):
            spawned = rbee(paths, "--queen", queen.url, "worker", "spawn", "--model", MODEL)
            assert spawned.returncode == 0, spawned.stderr
        assert sorted(w["id"] for w in queen.workers()) == [f"{MODEL}-1", f"{MODEL}-2"]
        stopped = rbee(paths, "--queen", queen.url, "worker", "stop", f"{MODEL}-1")
        assert stopped.returncode == 0, stopped.stderr
    assert worker_pids(paths, standby=True) == []
    with running_queen(paths, models=()) as queen:
        wait_until(
            lambda: [(w["id"], w["state"]) for w in queen.workers()] == [(f"{MODEL}-2", "ready")],
            60,
            "the desired worker to come back (and only it)",
        )
        time.sleep(2)  # the reconciler has looked again: still only the one that was kept
        assert [w["id"] for w in queen.workers()] == [f"{MODEL}-2"]
        assert len(worker_pids(paths)) == 1
        # On a busy CPU the worker's compute weighs less than the queen: its engine threads are
        # niced, and where the kernel weighs sessions first (autogroup), its whole session is.
        (worker,) = worker_pids(paths)
        assert COMPUTE_NICENESS in thread_nices(worker)
        assert thread_nices(queen.proc.pid) == {os.getpriority(os.PRIO_PROCESS, 0)}
        if AUTOGROUP:
            assert session_nice(worker) == SESSION_NICENESS
            assert session_nice(queen.proc.pid) == session_nice(os.getpid())


AUTOGROUP = Path("/proc/self/autogroup").exists() and bool(Path("/proc/self/autogroup").read_text())
"""The kernel schedules this process by session (autogroup): a worker lowers its session's weight.
The file reads empty where it does not apply (a process in a cpu cgroup of its own: containers)."""


def session_nice(pid: int) -> int:
    """The nice value of a process's session (its autogroup: "/autogroup-12 nice 0")."""
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


def thread_nices(pid: int) -> set[int]:
    """The nice values of a process's threads (field 19 of /proc/PID/task/TID/stat)."""
    return {
        int(stat.read_text().rpartition(")")[2].split()[16])
        for stat in Path(f"/proc/{pid}/task").glob("*/stat")
    }


def test_a_cancelled_spawn_leaves_nothing_behind(tmp_path: Path, model_cache: Path) -> None:
    paths = make_paths(tmp_path, model_cache)
    with running_queen(paths, models=()) as queen, QueenClient(queen.url) as client:
        job = client.submit_job({"kind": "worker.spawn", "model": MODEL})
        wait_until(lambda: worker_pids(paths) != [], 30, "the worker process to start")
        cancelled = client.cancel_job(job["job_id"])
        assert cancelled["state"] == "cancelled"
        wait_until(lambda: worker_pids(paths) == [], 10, "the started worker to be stopped")
        assert queen.workers() == []
        desired = json.loads((paths.data_dir / "desired.json").read_text())
        assert desired["hives"]["localhost"]["workers"] == []
        time.sleep(2)  # nothing brings it back either
        assert worker_pids(paths) == []


def test_sigterm_ends_open_streams_with_an_error_event_and_done(
    tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    with running_queen(paths) as queen, httpx.Client(timeout=http.TIMEOUT) as keep_alive:
        assert keep_alive.get(f"{queen.url}/health").status_code == 200  # a connection kept open
        lines: list[str] = []
        with http.stream(
            "POST",
            f"{queen.base_url}/completions",
            json={**COUNTING, "max_tokens": 3000, "stream": True},
        ) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 1:
                    queen.proc.send_signal(signal.SIGTERM)
                    # New connections are refused; a request on one kept open gets a 503.
                    time.sleep(0.5)
                    refused = keep_alive.post(f"{queen.base_url}/completions",
                                              json={**COUNTING, "max_tokens": 2})  # fmt: skip
                    assert refused.status_code == 503
                    assert refused.json()["error"]["code"] == "shutting_down"
                    assert refused.headers["Retry-After"] == "5"
        assert queen.proc.wait(30) == 0
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert "the queen is shutting down" in error["message"]
    assert len(lines) > 10  # the stream went on during the grace period
    log = (paths.data_dir / "test-queen.log").read_text()
    assert "Traceback" not in log
    assert "CancelledError" not in log
    assert worker_pids(paths, standby=True) == []


def test_operations_that_cannot_work_are_refused_at_once(tmp_path: Path, model_cache: Path) -> None:
    paths = make_paths(tmp_path, model_cache)
    with running_queen(paths, "--no-autoload", models=()) as queen:
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"kind": "worker.spawn", "model": "nope"}, 404, "model_not_found"),
            ({"kind": "worker.spawn", "model": MODEL, "hive": "gpu-box"}, 404, "hive_not_found"),
            ({"kind": "worker.spawn", "model": MODEL, "engine": "exllamav2"}, 400,
             "engine_unavailable"),
            ({"kind": "hive.stop", "alias": "gpu-box"}, 404, "hive_not_found"),
        ]  # fmt: skip
        for operation, status, code in cases:
            answer = http.post(f"{queen.url}/v1/jobs", json={"operation": operation})
            assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), operation
        assert http.get(f"{queen.url}/v1/jobs").json()["data"] == []  # no job was started
        spawn = http.post(f"{queen.url}/v1/workers", json={"model": MODEL, "hive": "gpu-box"})
        assert spawn.status_code == 404
        assert "rbee hive start gpu-box" in spawn.json()["error"]["message"]
        assert http.delete(f"{queen.url}/v1/workers/x@gpu-box").status_code == 404
        bad = http.delete(f"{queen.url}/v1/workers/a..b")
        assert (bad.status_code, bad.json()["error"]["param"]) == (400, "id")
        unknown = http.post(f"{queen.base_url}/completions", json={**COUNTING, "max_tokens": 2})
        assert unknown.status_code == 404  # not wanted anywhere, not loaded on demand


def test_a_request_waiting_in_a_dying_workers_queue_is_answered_elsewhere(
    tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    with running_queen(paths, models=(MODEL, MODEL)) as queen:
        first, second = sorted(queen.workers(), key=lambda w: str(w["id"]))
        long = {**COUNTING, "max_tokens": 600, "stream": True}
        results: dict[str, list[str]] = {}

        def stream(name: str, body: dict[str, Any], started: threading.Event) -> None:
            lines: list[str] = []
            try:
                path = "chat/completions" if "messages" in body else "completions"
                # c waits for b's 600 tokens on the other worker: minutes on a loaded machine.
                slow = httpx.Timeout(300, connect=5)
                with http.stream("POST", f"{queen.base_url}/{path}", json=body,
                                 timeout=slow) as response:  # fmt: skip
                    started.set()
                    lines.extend(line for line in response.iter_lines() if line)
            except httpx.HTTPError as err:
                lines.append(f"client error: {err!r}")
            results[name] = lines

        def start(name: str, body: dict[str, Any], *, headers: bool = True) -> threading.Thread:
            started = threading.Event()
            thread = threading.Thread(target=stream, args=(name, body, started))
            thread.start()
            if headers:
                assert started.wait(60)
            return thread

        # a keeps the first worker busy, b the second; c waits in the first worker's queue.
        threads = [start("a", long), start("b", long)]
        wait_until(lambda: all(w["outstanding"] == 1 for w in queen.workers()), 10, "a and b")
        # A chat stream opens with a role chunk before any token: the queen holds it back.
        short = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                 "max_tokens": 8, "stream": True}  # fmt: skip
        # (the queen answers c only once its first token comes: no headers to wait for)
        threads.append(start("c", short, headers=False))
        wait_until(
            lambda: next(w for w in queen.workers() if w["id"] == first["id"])["outstanding"] == 2,
            10,
            "c to wait behind a",
        )
        os.kill(int(first["pid"]), signal.SIGKILL)
        for t in threads:
            t.join(320)
        assert "broke" in results["a"][-2]  # a was being generated: it ends with an error event
        c = results["c"]
        assert c[-1] == "data: [DONE]"
        assert all('"error"' not in line for line in c), c
        assert any('"finish_reason":' in line for line in c), c
        assert '"role":"assistant"' in c[0]
        assert second["id"] != first["id"]
