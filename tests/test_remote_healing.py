"""Healing across SSH: two namespace hives with real sshd, driven by a real queen.

A remote worker's crash reaches the queen at once (the hive reports it on the session the queen
holds) and requests go to the other replica meanwhile; a fault in one hive's handling puts that
hive in `error` and leaves the queen and the other hive serving; stops stick across a hive's
restart and the queen's; a cancelled remote spawn leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rbee.api.client import QueenClient
from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, running_queen, wait_until
from tests.hives import HiveSet, pids_in, two_hives
from tests.test_remote_hives import cli, queen_for, rbee_pids_in, start_both

__all__ = ["two_hives"]

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

PROMPT = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}


def workers_on(queen: RunningQueen, hive: str) -> list[dict[str, Any]]:
    return [w for w in queen.workers() if w["hive"] == hive]


def worker_processes(hive_set: HiveSet, alias: str) -> list[int]:
    """`rbee worker run` processes in a hive's namespace."""
    found = []
    for pid in pids_in(hive_set[alias]):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and b"run" in argv:
            found.append(pid)
    return found


def hive_process(hive_set: HiveSet, alias: str) -> int:
    for pid in pids_in(hive_set[alias]):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"hive" in argv and b"run" in argv:
            return pid
    raise AssertionError(f"no `rbee hive run` on {alias}")


@pytest.fixture
def fleet(two_hives: HiveSet, tmp_path: Path, model_cache: Path) -> Any:
    with queen_for(two_hives, make_paths(tmp_path, model_cache)) as queen:
        yield queen
    for hive in two_hives:
        wait_until(lambda hive=hive: rbee_pids_in(hive) == [], 20, f"{hive.alias} to be empty")


def test_a_remote_crash_reaches_the_queen_at_once_and_requests_go_elsewhere(
    fleet: RunningQueen, two_hives: HiveSet
) -> None:
    start_both(fleet)
    for _ in range(2):  # one each: hive1 is next in line
        assert http.post(f"{fleet.base_url}/completions", json=PROMPT).status_code == 200
    (victim,) = workers_on(fleet, "hive1")
    os.kill(int(victim["pid"]), signal.SIGKILL)
    killed = time.monotonic()
    # Requests sent right away are answered (by hive2, or retried there), never a 502.
    for _ in range(3):
        r = http.post(f"{fleet.base_url}/completions", json=PROMPT)
        assert r.status_code == 200, r.text
    wait_until(lambda: workers_on(fleet, "hive1")[0]["pid"] != victim["pid"], 5,
               "the queen to see the crash")  # fmt: skip
    seen = time.monotonic() - killed
    assert seen < 1.0, f"the queen learnt of the crash after {seen:.2f}s"
    wait_until(lambda: workers_on(fleet, "hive1")[0]["state"] == "ready", 60, "hive1 back")
    back = workers_on(fleet, "hive1")[0]
    assert (back["restarts"], back["last_exit"]) == (1, "SIGKILL")
    # It serves again, through a new forward (the restarted worker listens on another port).
    before = back["dispatched"]
    for _ in range(4):
        assert http.post(f"{fleet.base_url}/completions", json=PROMPT).status_code == 200
    assert workers_on(fleet, "hive1")[0]["dispatched"] > before


def test_a_fault_in_one_hive_stays_there(
    two_hives: HiveSet, tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    # hive1 runs a hive that says it is ready on port "nope": the queen cannot read that.
    wrapper = tmp_path / "hive-command"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case " $* " in\n'
        '  *" --name hive1 "*)\n'
        "    echo '{\"event\": broken'\n"
        '    echo \'{"event": "ready", "port": "nope", "pid": 1}\'\n'
        "    exec sleep 600 ;;\n"
        f'  *) exec {sys.executable} -m rbee "$@" ;;\n'
        "esac\n"
    )
    wrapper.chmod(0o755)
    # A desired state that also wants a worker of a model that exists nowhere, on hive2.
    spec = {"model": MODEL, "engine": "llamacpp", "device": "cpu", "cpu_repack": "on"}
    desired = {
        "version": 2,
        "hives": {
            "localhost": {"workers": []},
            "hive1": {"workers": []},
            "hive2": {"workers": [{"id": f"{MODEL}-1", "spec": spec},
                                  {"id": "ghost-1", "spec": {"model": "ghost"}}]},
        },
    }  # fmt: skip
    (paths.data_dir / "desired.json").write_text(json.dumps(desired))
    env = {"RBEE_HIVE_COMMAND": str(wrapper)}
    with running_queen(paths, models=(), global_args=("--hives", str(two_hives.config)),
                       env=env) as queen:  # fmt: skip

        def settled() -> bool:
            hives = {h["name"]: h for h in http.get(f"{queen.url}/v1/hives").json()["data"]}
            ready = [w for w in workers_on(queen, "hive2") if w["state"] == "ready"]
            return hives["hive1"]["state"] == "error" and len(ready) == 1

        wait_until(settled, 120, "hive1 in error, hive2 serving")
        hives = {h["name"]: h for h in http.get(f"{queen.url}/v1/hives").json()["data"]}
        assert "internal error" in hives["hive1"]["last_error"]
        assert "nope" in hives["hive1"]["last_error"]
        r = http.post(f"{queen.base_url}/completions", json=PROMPT)
        assert r.status_code == 200, r.text
        health = http.get(f"{queen.url}/health").json()
        assert health["status"] == "degraded"
        problems = {p["worker"]: p for p in health["problems"]}
        assert "unknown model 'ghost'" in problems["ghost-1"]["error"]
        ghost = http.post(f"{queen.base_url}/completions", json={**PROMPT, "model": "ghost"})
        assert ghost.status_code == 503
        assert "ghost-1@hive2 could not start" in ghost.json()["error"]["message"]
        # hive1 is tried again with backoff, and fails the same way: the queen stays up.
        log = paths.data_dir / "test-queen.log"
        wait_until(lambda: log.read_text().count("hive1: unexpected error") >= 2, 30,
                   "hive1 to be retried")  # fmt: skip
        assert "broken event line" in log.read_text()
        assert queen.proc.poll() is None


def test_stops_stick_across_a_hive_restart_and_a_queen_restart(
    two_hives: HiveSet, tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    with queen_for(two_hives, paths) as queen:
        start_both(queen)
        cli(queen, "worker", "spawn", "--model", MODEL, "--hive", "hive1")
        ids = sorted(w["id"] for w in workers_on(queen, "hive1"))
        assert ids == [f"{MODEL}-1@hive1", f"{MODEL}-2@hive1"]
        assert "stopped" in cli(queen, "worker", "stop", f"{MODEL}-1@hive1")
        # The hive process dies: the queen reconnects and brings back what is wanted, only that.
        os.kill(hive_process(two_hives, "hive1"), signal.SIGKILL)

        def back() -> bool:
            workers = workers_on(queen, "hive1")
            return [(w["id"], w["state"]) for w in workers] == [(f"{MODEL}-2@hive1", "ready")]

        wait_until(back, 90, "hive1 back with only the worker still wanted")
    for hive in two_hives:
        wait_until(lambda hive=hive: rbee_pids_in(hive) == [], 20, f"{hive.alias} to stop")
    with queen_for(two_hives, paths) as queen:

        def restored() -> bool:
            ready = sorted(w["id"] for w in queen.workers() if w["state"] == "ready")
            return ready == [f"{MODEL}-1@hive2", f"{MODEL}-2@hive1"]

        wait_until(restored, 120, "the restarted queen to bring back what is wanted")
        time.sleep(2)
        assert len(worker_processes(two_hives, "hive1")) == 1


def test_a_cancelled_remote_spawn_leaves_nothing_behind(
    fleet: RunningQueen, two_hives: HiveSet
) -> None:
    cli(fleet, "hive", "start", "hive2")
    with QueenClient(fleet.url) as client:
        job = client.submit_job({"kind": "worker.spawn", "model": MODEL, "hive": "hive2"})
        wait_until(lambda: worker_processes(two_hives, "hive2") != [], 120,
                   "the worker to start on hive2")  # fmt: skip
        assert client.cancel_job(job["job_id"])["state"] == "cancelled"
    wait_until(lambda: worker_processes(two_hives, "hive2") == [], 20,
               "what the cancelled spawn started to stop")  # fmt: skip
    time.sleep(3)  # the reconciler has looked again: nothing comes back
    assert worker_processes(two_hives, "hive2") == []
    assert workers_on(fleet, "hive2") == []
    desired = json.loads((fleet.paths.data_dir / "desired.json").read_text())
    assert desired["hives"]["hive2"]["workers"] == []
