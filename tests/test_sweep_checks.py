"""The sweep's pure parts, with tables: the probe's parser, a hive's and the queen's checks,
what `--heal` plans, the Nagios output and the textfile."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rbee.api.workers import WorkerSpec
from rbee.cli.main import build_parser
from rbee.errors import HostKeyError, RbeeError, SshError
from rbee.queen.desired import DesiredWorker
from rbee.queen.serving import Serving
from rbee.sweep.expect import Expected
from rbee.sweep.heal import plan
from rbee.sweep.hive_checks import check_hive
from rbee.sweep.memory import (
    Memory,
    carried_over,
    changes,
    load_memory,
    save_memory,
    sweep_memory_path,
)
from rbee.sweep.options import thresholds_from
from rbee.sweep.probe import parse_probe
from rbee.sweep.queen_checks import check_queen
from rbee.sweep.queen_view import QueenView, parse_metrics
from rbee.sweep.report import Report, nagios_lines
from rbee.sweep.status import Check, Status, Thresholds, worst
from rbee.sweep.textfile import render_textfile

GIB = 1 << 30
HEAD = """home /h
install_dir /h/install
data_dir /h/.local/share/rbee
installed_version 0.1.0
disk_install_kib /dev/sda1 10485760
disk_models_kib /dev/sda1 10485760
mem_total_kib 10000000
mem_available_kib 9000000
"""
HIVE = (
    "proc hive 10 9 100000 sshd /h/install/venv/bin/python /h/install/venv/bin/rbee "
    "hive run --port 9000 --name a"
)
WORKER = (
    "proc worker 11 10 200000 rbee-hive /h/install/venv/bin/python -m rbee "
    "--data-dir /h/.local/share/rbee worker run --model m --parent-pid 10"
)
T = Thresholds()
SPEC = WorkerSpec(model="m")


def queen(**hive: Any) -> QueenView:
    workers = ({"id": "m-1@a", "hive": "a", "state": "ready", "pid": 11, "restarts": 0},)
    state = {"a": {"name": "a", "state": "running", "pid": 10, **hive}}
    return QueenView(url="http://q", up=True, pid=1, version="0.1.0", workers=workers,
                     hives=state, queue_depth=0)  # fmt: skip


WANTED = Expected(frozenset({"a"}), (DesiredWorker("a", "m-1", SPEC),), Serving(True, ("x",)))


def statuses(text: str, view: QueenView, expected: Expected = WANTED) -> dict[str, Status]:
    found = check_hive("a", parse_probe(text), queen=view, expected=expected, version="0.1.0",
                       thresholds=T)  # fmt: skip
    return {c.name: c.status for c in found.checks if c.status != Status.OK}


def test_the_probe_parser_reads_every_line() -> None:
    gpus = "gpu 0, GPU-1, 24576, 20000\ngpu_app GPU-1, 99, 4096\n"
    text = f"{HEAD}{HIVE}\n{WORKER}\nhome_of 10 /h\n{gpus}"
    probe = parse_probe(text, 0.5)
    assert probe.installed_version == "0.1.0"
    assert probe.disk_models == ("/dev/sda1", 10 * GIB)
    assert [p.pid for p in probe.hive_procs()] == [10]
    assert probe.worker_procs()[0].parent_pid_arg == 10
    assert probe.gpus[0].total == 24576 << 20
    assert probe.gpu_apps[0].pid == 99
    with pytest.raises(RbeeError, match="sweep script"):
        parse_probe("nothing\n")
    with pytest.raises(RbeeError, match="unexpected line"):
        parse_probe(f"{HEAD}proc hive x\n")


@pytest.mark.parametrize(
    ("lines", "view", "expected", "bad"),
    [
        ([HIVE, WORKER], queen(), WANTED, {}),
        # another HOME's hive process is another machine's (test hives share a process table)
        ([HIVE, WORKER, "home_of 10 /other"], queen(), WANTED,
         {"hive": Status.CRITICAL, "orphans": Status.WARNING, "worker:m-1": Status.CRITICAL}),
        ([WORKER], queen(state="lost"), WANTED,
         {"hive": Status.CRITICAL, "orphans": Status.WARNING, "worker:m-1": Status.CRITICAL}),
        ([HIVE, WORKER], queen(pid=12), WANTED,
         {"hive": Status.CRITICAL, "orphans": Status.WARNING, "worker:m-1": Status.CRITICAL}),
        ([], QueenView(url=None, up=False), Expected(frozenset({"a"}), (), Serving(False, ())), {}),
        ([HIVE], QueenView(url=None, up=False), Expected(frozenset({"a"}), (), None),
         {"orphans": Status.WARNING}),
        ([HIVE], queen(), WANTED, {"worker:m-1": Status.CRITICAL}),
    ],
)  # fmt: skip
def test_hive_checks(lines: list[str], view: QueenView, expected: Expected, bad: dict[str, Status]
                     ) -> None:  # fmt: skip
    assert statuses(HEAD + "".join(f"{line}\n" for line in lines), view, expected) == bad


def test_installed_disk_ram_and_unreachable() -> None:
    old = HEAD.replace("installed_version 0.1.0", "installed_version 0.0.9")
    assert statuses(old + HIVE + "\n" + WORKER, queen()) == {"installed": Status.WARNING}
    full = HEAD.replace("disk_models_kib /dev/sda1 10485760", "disk_models_kib /dev/sda1 100")
    assert statuses(full + HIVE + "\n" + WORKER, queen()) == {"disk_models": Status.CRITICAL}
    busy = HEAD.replace("mem_available_kib 9000000", "mem_available_kib 1200000")
    assert statuses(busy + HIVE + "\n" + WORKER, queen()) == {"ram": Status.WARNING}
    for err, name in ((HostKeyError("a: changed"), "host_key"), (SshError("a: timed out"),
                                                                    "reachable")):  # fmt: skip
        found = check_hive("a", err, queen=queen(), expected=WANTED, version="0.1.0", thresholds=T)
        assert [(c.name, c.status) for c in found.checks] == [(name, Status.CRITICAL)]


def test_vram_foreign_use_and_baseline() -> None:
    gpus = "gpu 0, GPU-1, 10000, 8000\ngpu_app GPU-1, 99, 2000\n"
    found = check_hive("a", parse_probe(HEAD + HIVE + "\n" + gpus), queen=queen(),
                       expected=Expected(frozenset({"a"}), (), None), version="0.1.0",
                       thresholds=T, baseline={"GPU-1": 9800 << 20})  # fmt: skip
    named = {c.name: c for c in found.checks}
    assert named["vram:0"].status == Status.WARNING  # 20% held by pid 99, not rbee's
    assert named["vram_baseline:0"].status == Status.WARNING  # 1.8 GiB short of its baseline
    assert found.vram_baseline == {"GPU-1": 9800 << 20}


def test_queen_checks() -> None:
    down = QueenView(url="http://q", up=False, error="refused")

    def one(view: QueenView, serving: Serving | None, **last: Any) -> list[tuple[str, Status]]:
        expected = Expected(frozenset(), (), serving)
        args = {"last_restarts": None, "last_pid": None, **last}
        return [(c.name, c.status) for c in check_queen(view, expected, T, **args)
                if c.status != Status.OK]  # fmt: skip

    assert one(down, Serving(True, ("rbee",))) == [("up", Status.CRITICAL)]
    assert one(down, Serving(False, ())) == []
    assert one(down, None) == [("up", Status.WARNING)]
    assert one(queen(), None) == []
    assert one(queen(), None, last_restarts={"m-1@a": 0}, last_pid=2) == [("up", Status.WARNING)]
    worker = {"id": "m-1@a", "hive": "a", "state": "ready", "restarts": 2}
    restarted = dataclasses.replace(queen(), workers=(worker,))
    assert one(restarted, None, last_restarts={"m-1@a": 1}) == [("restarts", Status.WARNING)]
    assert one(dataclasses.replace(queen(), queue_depth=65), None) == [
        ("queue_depth", Status.CRITICAL)
    ]
    text = '# TYPE rbee_worker_queued_requests gauge\nrbee_worker_queued_requests{worker="a"} 3\n'
    assert parse_metrics(text + 'rbee_worker_queued_requests{worker="b"} 4\n') == 7


def report_of(view: QueenView, text: str, expected: Expected = WANTED) -> Report:
    hive = check_hive("a", parse_probe(text), queen=view, expected=expected, version="0.1.0",
                      thresholds=T)  # fmt: skip
    return Report(started_at="t", seconds=0.2, queen=view, hives=(hive,),
                  queen_checks=tuple(check_queen(view, expected, T, last_restarts=None,
                                                 last_pid=None)))  # fmt: skip


def test_heal_plans_only_what_it_may() -> None:
    orphan = HEAD + HIVE + "\n" + WORKER + "\n" + HIVE.replace("10 9", "20 1") + "\n"
    steps = plan(report_of(queen(), orphan), WANTED, {})
    assert [(s.action, s.subject) for s in steps] == [("stop-orphan", "20")]
    missing = dataclasses.replace(queen(), workers=())
    steps = plan(report_of(missing, HEAD + HIVE + "\n"), WANTED, {})
    assert [(s.action, s.subject) for s in steps] == [("start-worker", "m-1@a")]
    hive_down = plan(report_of(queen(state="lost"), HEAD), WANTED, {})
    assert [(s.action, s.subject) for s in hive_down] == [("start-hive", "a")]
    down = QueenView(url=None, up=False)
    assert [s.action for s in plan(report_of(down, HEAD), WANTED, {})] == ["start-queen"]
    stopped = Expected(frozenset({"a"}), (), Serving(False, ("x",)))
    assert plan(report_of(down, HEAD, stopped), stopped, {}) == []
    worker = {"id": "m-1@a", "hive": "a", "pid": 11, "state": "crash-loop", "error": "OOM"}
    looping = dataclasses.replace(queen(), workers=(worker,))
    report = report_of(looping, HEAD + HIVE + "\n" + WORKER)
    assert [(s.action, s.cause) for s in plan(report, WANTED, {})] == [("restart-worker", "OOM")]
    assert plan(report, WANTED, {"m-1@a": "OOM"}) == []  # never twice for one cause
    changed = check_hive("a", HostKeyError("a: changed"), queen=queen(), expected=WANTED,
                         version="0.1.0", thresholds=T)  # fmt: skip
    host_key = Report(started_at="t", seconds=0.1, queen=queen(), queen_checks=(),
                      hives=(changed,))  # fmt: skip
    assert plan(host_key, WANTED, {}) == []


def test_nagios_output_and_textfile() -> None:
    report = report_of(queen(), HEAD + HIVE + "\n" + WORKER + "\n" + HIVE.replace("10 9", "20 1"))
    first, *rest = nagios_lines(report)
    assert first.startswith("RBEE SWEEP WARNING - 0 of 1 hives OK; a orphans: hive pid 20 | ")
    assert "'a_orphans'=1;0;;0" in first
    assert f"'a_disk_models'={10 * GIB}B;{T.disk_warn}:;{T.disk_crit}:;0" in first
    assert rest[0].split() == ["TARGET", "CHECK", "STATUS", "DETAIL"]
    families = {f.name: f for f in text_string_to_metric_families(render_textfile(report, 5.0))}
    assert families["rbee_sweep_status"].samples[0].value == 1
    assert families["rbee_sweep_orphans"].samples[0].value == 1
    checks = {(s.labels["target"], s.labels["check"]): s.value
              for s in families["rbee_sweep_check_status"].samples}  # fmt: skip
    assert checks[("a", "orphans")] == 1


def test_worst_and_changes() -> None:
    assert worst([Status.OK, Status.UNKNOWN, Status.WARNING]) == Status.WARNING
    assert worst([Status.UNKNOWN, Status.OK]) == Status.UNKNOWN
    assert worst([]) == Status.OK
    before = Memory(at="t0", status="OK", checks={"a/x": "OK", "b/y": "OK", "a/probe:m": "OK"})
    now = [Check("a", "x", Status.WARNING, "")]
    kept = carried_over(before, {"a"}, probed=False)
    assert kept == {"b/y": "OK", "a/probe:m": "OK"}
    compared = dataclasses.replace(before, checks={"a/x": "OK"})
    assert [(c.target, c.check, c.before, c.after) for c in changes(now, compared)] == [
        ("a", "x", "OK", "WARNING")
    ]
    assert changes(now, None) == []


def test_flags_give_thresholds_and_usage_errors_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["sweep", "--disk-warn", "4", "--ram-crit", "95", "--timeout", "3"])
    t = thresholds_from(args)
    assert (t.disk_warn, t.ram_crit, t.timeout) == (4 * GIB, 0.95, 3.0)
    for argv, said in [
        (["sweep", "--ram-warn", "95"], "--ram-warn 95 and --ram-crit 90"),
        (["sweep", "--queue-warn", "100"], "--queue-warn 100 and --queue-crit 64"),
    ]:
        with pytest.raises(RbeeError, match=said):
            thresholds_from(parser.parse_args(argv))
    for bad in (["sweep", "--nope"], ["sweep", "--ram-warn", "101"], ["sweep", "--timeout", "x"]):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(bad)
        assert exited.value.code == 3
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_memory_keeps_what_each_failed_check_said(tmp_path: Path) -> None:
    memory = Memory(at="2026-12-07T05:00:00+00:00", status="CRITICAL",
                    checks={"queen/up": "OK", "gpu1/reachable": "CRITICAL"},
                    details={"gpu1/reachable": "gpu1: connection refused"})  # fmt: skip
    save_memory(tmp_path, memory)
    assert load_memory(tmp_path) == memory
    # A memory an older rbee wrote has no details: it loads, with none.
    raw = json.loads(sweep_memory_path(tmp_path).read_text())
    del raw["details"]
    sweep_memory_path(tmp_path).write_text(json.dumps(raw))
    loaded = load_memory(tmp_path)
    assert loaded is not None
    assert loaded.details == {}
    assert loaded.checks == memory.checks
