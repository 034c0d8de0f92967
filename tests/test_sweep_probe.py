"""The sweep's hive script (rbee.sweep.probe.HIVE_SCRIPT), run here by sh against real processes:
the /proc path (Linux) and the ps path (where there is no /proc) find the same rbee processes,
with the same fields, and nothing else: not another hive's, not another data dir's workers, not
another user's, not the script's own."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee.sweep.probe import HIVE_SCRIPT, HiveProbe, Proc, parse_probe

LINUX_TEST = "[ -r /proc/self/status ]"
PS_SCRIPT = HIVE_SCRIPT.replace(LINUX_TEST, "false")
SLEEP = "import time; time.sleep(120)"


def test_the_script_chooses_its_path_by_proc() -> None:
    assert HIVE_SCRIPT.count(LINUX_TEST) == 1  # the ps variant below differs in this alone


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Stand-in rbee processes: what matters to the script is their command lines, owners and
    parents. Each is a Python that sleeps, with rbee's arguments after `-c CODE`."""
    data = tmp_path / "data"
    home = tmp_path / "home"
    home.mkdir()
    started: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, *args: str) -> None:
        started[name] = subprocess.Popen(
            [sys.executable, "-c", SLEEP, *args], env={"HOME": str(home), "PATH": "/usr/bin"}
        )

    try:
        start("hive", "hive", "run", "--port", "9000", "--name", "hx")
        start("worker", "--data-dir", str(data), "worker", "run", "--model", "m")
        start("other_hive", "hive", "run", "--port", "9001", "--name", "hx2")
        start("other_data", "--data-dir", f"{data}-2", "worker", "run", "--model", "m")
        if os.geteuid() == 0:  # another user's hive of the same name: not this user's
            started["nobody"] = subprocess.Popen(
                ["/bin/sh", "-c", "sleep 120; :", "sh", "hive", "run", "--name", "hx"],
                user=65534, group=65534, cwd="/",
            )  # fmt: skip
        time.sleep(0.3)  # each has exec'd
        yield started
    finally:
        for proc in started.values():
            proc.kill()
            proc.wait()


def pid(proc: Proc) -> int:
    return proc.pid


def probe(script: str, tmp_path: Path) -> HiveProbe:
    done = subprocess.run(
        ["sh", "-c", script, "rbee-sweep", "hx", str(tmp_path / "install")],
        env={"HOME": str(tmp_path / "home"), "RBEE_DATA_DIR": str(tmp_path / "data"),
             "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert done.stderr == ""
    return parse_probe(done.stdout)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="no /proc on this system")
def test_proc_and_ps_find_the_same_processes(
    processes: dict[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    from_proc = probe(HIVE_SCRIPT, tmp_path)
    from_ps = probe(PS_SCRIPT, tmp_path)
    # /proc's glob is in text order, ps's in pid order.
    from_proc = dataclasses.replace(from_proc, procs=tuple(sorted(from_proc.procs, key=pid)))
    from_ps = dataclasses.replace(from_ps, procs=tuple(sorted(from_ps.procs, key=pid)))
    # The same processes, fields and homes; RSS and free memory are read at different moments.
    assert [dataclasses.replace(p, rss=0) for p in from_proc.procs] == [
        dataclasses.replace(p, rss=0) for p in from_ps.procs
    ]
    for a, b in zip(from_proc.procs, from_ps.procs, strict=True):
        assert abs(a.rss - b.rss) <= a.rss // 10
    assert from_proc.homes == from_ps.homes
    assert dataclasses.replace(from_proc, procs=(), mem_available=0, disk_install=None,
                               disk_models=None) == dataclasses.replace(
        from_ps, procs=(), mem_available=0, disk_install=None, disk_models=None)  # fmt: skip
    found = {p.pid: p for p in from_proc.procs}
    hive, worker = processes["hive"], processes["worker"]
    assert set(found) == {hive.pid, worker.pid}
    me = os.getpid()
    parent = Path(f"/proc/{me}/comm").read_text().strip()
    assert found[hive.pid].kind == "hive"
    assert found[worker.pid].kind == "worker"
    for proc in found.values():
        assert proc.ppid == me
        assert proc.parent == parent
        assert proc.rss > 1 << 20  # a Python: megabytes, in bytes
        assert proc.args.startswith(f"{sys.executable} -c {SLEEP} ")
    assert found[hive.pid].args.endswith(" hive run --port 9000 --name hx")
    assert from_proc.hive_procs() == [found[hive.pid]]
    assert from_proc.homes == {hive.pid: str(tmp_path / "home")}
    assert from_proc.data_dir == str(tmp_path / "data")
    # The rest of the script ran too.
    assert from_proc.mem_total is not None
    assert from_proc.mem_total > 0
    assert from_proc.disk_install is not None


def test_with_no_rbee_process_the_script_lists_none(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    for script in (HIVE_SCRIPT, PS_SCRIPT):
        found = probe(script, tmp_path)
        assert found.procs == ()
        assert found.homes == {}
