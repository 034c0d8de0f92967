"""The sweep as the watchdog of last resort: a real queen daemon (`rbee queen start`) that dies is
CRITICAL and `--heal` starts it again as it was started; one stopped with `rbee queen stop` is
left stopped, and OK. No hives.conf: a fleet of the queen alone."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from rbee.config.settings import Paths
from rbee.proc import pid_alive
from rbee.queen.record import read_record
from rbee.sweep.run import sweep_lock
from tests.conftest import free_port, rbee, wait_until


def sweep(paths: Paths, *args: str) -> tuple[int, dict[str, Any]]:
    done = rbee(paths, "sweep", "--json", *args)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_a_dead_queen_is_started_again_and_a_stopped_one_left_alone(paths: Paths) -> None:
    port = str(free_port())
    started = rbee(paths, "queen", "start", "--port", port)
    assert started.returncode == 0, started.stderr
    try:
        code, document = sweep(paths)
        assert code == 0, document
        record = read_record(paths)
        assert record is not None
        os.kill(record.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(record.pid), 10, "the queen gone")
        code, document = sweep(paths)
        assert code == 2
        assert "should serve" in str(document["checks"])
        code, document = sweep(paths, "--heal")
        assert code == 2  # the status is what the sweep found; the action says what it did
        (action,) = document["actions"]
        assert action["action"] == "start-queen"
        assert action["ok"], action
        again = read_record(paths)
        assert again is not None
        assert again.pid != record.pid
        assert again.url.endswith(f":{port}")  # started as it was started
        assert sweep(paths)[0] == 0
        stopped = rbee(paths, "queen", "stop")
        assert stopped.returncode == 0, stopped.stderr
        code, document = sweep(paths, "--heal")
        assert code == 0
        assert document["actions"] == []
        assert "stopped on purpose" in str(document["checks"])
        assert read_record(paths) is None
    finally:
        record = read_record(paths)
        if record is not None:
            rbee(paths, "queen", "stop")


def test_two_sweeps_never_overlap(paths: Paths, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with sweep_lock(state):
        done = rbee(paths, "sweep", "--state-dir", str(state))
    assert done.returncode == 3
    assert f"another sweep is running (it holds {state / 'sweep.lock'})" in done.stderr
    done = rbee(paths, "sweep", "--state-dir", str(state))  # the lock is free again
    assert done.returncode == 1, done.stderr  # no queen, nothing says it should serve: WARNING
    assert done.stdout.startswith("RBEE SWEEP WARNING - 0 of 0 hives OK; queen up: not running")
