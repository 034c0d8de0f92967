"""The standby worker's order: what a hive writes to it, read back through the same CLI parser as
`rbee worker run`, and a standby process refusing a bad order or leaving on EOF.

The standby in a running hive (it becomes the worker, another follows, it goes with its hive) is
tested in tests/test_hive_daemon.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rbee.api.workers import WorkerSpec
from rbee.cli.main import build_parser
from rbee.errors import RbeeError
from rbee.hive.argv import standby_argv, worker_argv
from rbee.worker.standby import Order

RUN = ("--data-dir", "/d", "worker", "run", "--model", "m")


def test_an_order_goes_over_one_line_and_back() -> None:
    order = Order(RUN, "/logs/worker-m-1.log", {"PATH": "/bin", "X": "a b\nc"})
    line = order.to_line()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert Order.from_line(line) == order


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json\n", "unreadable order"),
        (b'{"argv": []}\n', "unreadable order"),
        (b'{"argv": ["hive", "run"], "log": "/l", "env": {}}\n', "must be `rbee worker run`"),
        (b'{"argv": ["worker", "run", 3], "log": "/l", "env": {}}\n', "must be `rbee worker run`"),
        (b'{"argv": ["worker", "run"], "log": "", "env": {}}\n', "needs a log path"),
        (b'{"argv": ["worker", "run"], "log": "/l", "env": {"A": 1}}\n', "env must map"),
    ],
)
def test_a_bad_order_is_refused_naming_the_problem(line: bytes, problem: str) -> None:
    with pytest.raises(RbeeError, match=problem):
        Order.from_line(line)


def test_the_order_is_parsed_as_rbee_worker_run() -> None:
    spec = WorkerSpec("smollm2-135m", engine="llamacpp", device="cpu", ctx_size=2048,
                      threads=3, max_queued=4)  # fmt: skip
    argv = worker_argv(spec, data_dir="/d", ready_fd=7, lifeline_fd=9, parent_pid=42)
    assert argv[1:3] == ["-m", "rbee"]
    args = build_parser().parse_args(argv[3:])  # what the hive sends: after `python -m rbee`
    assert (args.model, args.engine, args.device, args.ctx_size, args.threads) == (
        "smollm2-135m", "llamacpp", "cpu", 2048, 3
    )  # fmt: skip
    assert (args.ready_fd, args.lifeline_fd, args.parent_pid, args.max_queued) == (7, 9, 42, 4)
    assert args.handler.name == "worker_run"


def test_standby_argv() -> None:
    argv = standby_argv(data_dir="/d", engine="mlx", parent_pid=42, python="/py")
    assert argv == ["/py", "-m", "rbee", "--data-dir", "/d", "worker", "standby",
                    "--engine", "mlx", "--parent-pid", "42"]  # fmt: skip
    args = build_parser().parse_args(argv[3:])
    assert (args.engine, args.parent_pid, args.handler.name) == ("mlx", 42, "worker_standby")


def standby(tmp_path: Path) -> subprocess.Popen[bytes]:
    argv = standby_argv(data_dir=str(tmp_path), engine="llamacpp", parent_pid=os.getpid(),
                        python=sys.executable)  # fmt: skip
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip


def test_a_standby_leaves_quietly_on_eof(tmp_path: Path) -> None:
    proc = standby(tmp_path)
    out, _ = proc.communicate(b"", timeout=60)
    assert proc.returncode == 0
    assert b"Traceback" not in out


def test_a_standby_refuses_a_bad_order_with_one_line(tmp_path: Path) -> None:
    proc = standby(tmp_path)
    out, _ = proc.communicate(b'{"argv": ["hive", "run"], "log": "/l", "env": {}}\n', timeout=60)
    assert proc.returncode == 1
    assert b"rbee: error: standby: an order must be `rbee worker run` arguments" in out
    assert b"Traceback" not in out
