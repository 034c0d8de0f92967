"""Sweep benchmark: `rbee sweep` over 10 and 50 hives, cold as cron runs it, beside the same
checks done with an `ansible` ad-hoc command in the same run; the table goes to
docs/benchmarks.md (between the sweep markers).

What is measured
    50 test hives are created once with tests/hives.py (network namespaces, each with its own
    real OpenSSH sshd); for N = 10 and 50 the first N are used. Each figure is the wall time of
    one whole command, from its start to its exit:
      rbee sweep      `rbee --hives hives.conf sweep --json --hive ... ` as a fresh process (the
                      Python start-up included, as cron runs it): hives.conf read once, every
                      hive at once over its own asyncssh connection, one POSIX sh script per
                      hive (rbee.sweep.probe.HIVE_SCRIPT), the queen asked (none runs here:
                      its check is quick), the report and its memory written
      ansible script  `ansible all -i INVENTORY -m script -a "sweep.sh {{inventory_hostname}}
                      ~/install" -f N`: the very same script, copied to each hive and run there
                      (the way to run a custom check with Ansible ad hoc), with ansible-core's
                      default settings otherwise, a fresh ControlPath dir per run (cold), host
                      key checking on, forks = N
      floor           the rbee sweep command with the hive script replaced by two `echo`s:
                      what is left (Python, asyncssh, the handshakes, sshd's side included,
                      all on this machine's cores) bounds how fast any sweep could be here
    A run counts only if every hive answered (rbee: `reachable` true for every hive in the
    JSON; Ansible: exit 0 and CHANGED for every host); a failed run is reported, not timed.
    Runs are interleaved (rbee, Ansible, floor) so drift on a shared machine hits all alike,
    each after the machine has settled (bench/fanout.py's `settle`).

Needs root, ip netns, OpenSSH sshd and ansible-core (the `bench` extra). Run
`.venv/bin/python bench/sweep.py` (a few minutes on 2 cores; `--runs 1` for a quick look).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import fanout  # bench/fanout.py: its Ansible set-up and settling are shared
from benchdoc import run_main, write_section

from rbee.sweep.probe import HIVE_SCRIPT
from tests.hives import HiveSet, cleanup_stale, test_hives

START_MARK = "<!-- sweep:start -->"
END_MARK = "<!-- sweep:end -->"
SIZES = (10, 50)
RBEE = Path(sys.executable).parent / "rbee"
GOAL_SECONDS = 2.0  # 50 hives
GOAL_RATIO = 10.0
RUN_TIMEOUT = 300.0


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[sweep {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Results:
    """Wall times per (tool, N), and the failures."""

    times: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    load: list[str] = field(default_factory=list)

    def add(self, tool: str, n: int, seconds: float) -> None:
        self.times.setdefault((tool, n), []).append(seconds)


# The floor: the same `rbee sweep`, with the hive script replaced by one that reads nothing and
# prints the two lines the parser needs. What is left is Python's start, asyncssh, sshd's side of
# each connection and the report: what no script could make faster.
FLOOR = """
import sys
import rbee.sweep.probe
rbee.sweep.probe.HIVE_SCRIPT = 'echo "home $HOME"; echo "install_dir $2"'
from rbee.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _cgroup2_root() -> Path | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


class CpuMeter:
    """The CPU time (user + system) one command and every process it starts use, detached ones
    included (Ansible's ControlPersist masters): the command runs in a cgroup (v2) of its own.
    The hives' sshd processes are not in it: this is what the sweeping machine pays, which on a
    real fleet (each hive its own machine) is the part that does not run in parallel. Reads
    None where no cgroup can be made (not root, no cgroup2 mount)."""

    made = 0

    def __init__(self) -> None:
        self.dir: Path | None = None
        root = _cgroup2_root()
        if root is None or os.geteuid() != 0:
            return
        CpuMeter.made += 1
        path = root / f"rbee-bench-sweep-{os.getpid()}-{CpuMeter.made}"
        with contextlib.suppress(OSError):
            path.mkdir()
            self.dir = path

    def enter(self) -> None:
        """In the child, before exec (Popen's preexec_fn)."""
        if self.dir is not None:
            (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float | None:
        if self.dir is None:
            return None
        for line in (self.dir / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        return None

    def close(self) -> None:
        """Kill what is left in the cgroup and remove it."""
        if self.dir is None:
            return
        with contextlib.suppress(OSError):
            (self.dir / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 10
        while (self.dir / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def rbee_run(
    hive_set: HiveSet, n: int, work: Path, meter: CpuMeter, *, floor: bool = False
) -> tuple[float, float]:
    """One cold `rbee sweep` over the first n hives: its wall time, and the sweep's own time
    in it (the JSON's `seconds`: from the queen's check to the last hive's findings)."""
    aliases = [h.alias for h in hive_set.hives[:n]]
    command = [sys.executable, "-c", FLOOR] if floor else [str(RBEE)]
    argv = [*command, "--data-dir", str(work / "data"), "--config-dir", str(work / "config"),
            "--hives", str(hive_set.config), "sweep", "--json", "--state-dir",
            str(work / f"state-{n}"), "--timeout", "60"]  # fmt: skip
    for alias in aliases:
        argv += ["--hive", alias]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
                          preexec_fn=meter.enter)  # fmt: skip
    took = time.perf_counter() - started
    try:
        document = json.loads(done.stdout)
    except ValueError:
        raise fanout.RunFailed(f"rbee sweep exit {done.returncode}: {done.stderr[-300:]}") from None
    down = [h["alias"] for h in document["hives"] if not h["reachable"]]
    if len(document["hives"]) != n or down:
        raise fanout.RunFailed(f"rbee sweep: not reachable: {', '.join(down[:5])}")
    return took, float(document["seconds"])


def ansible_run(
    setup: fanout.AnsibleSetup, script: Path, n: int, expected: set[str], meter: CpuMeter
) -> float:
    """One cold `ansible -m script` over the first n hives; its wall time (its masters are
    stopped before it returns, so that the meter counts them whole)."""
    control = Path(tempfile.mkdtemp(prefix="cp-", dir=setup.home))
    setup.control_dirs.append(control)
    argv = [str(fanout.ANSIBLE), "all", "-i", str(setup.inventories[n]), "-m", "script",
            "-a", f"{script} {{{{ inventory_hostname }}}} ~/install", "-f", str(n)]  # fmt: skip
    env = fanout.ansible_env(setup, control, pipelining=False)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=setup.home, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False, preexec_fn=meter.enter)  # fmt: skip
    took = time.perf_counter() - started
    fanout.stop_masters(control)
    outcome = dict(fanout._RESULT_LINE.findall(done.stdout))
    ok = {host for host, status in outcome.items() if status == "CHANGED"}
    if done.returncode != 0 or ok != expected or done.stdout.count("install_dir ") < n:
        bad = sorted(expected - ok)[:5]
        raise fanout.RunFailed(f"ansible exit {done.returncode}, not ok: {bad}; "
                               f"{(done.stdout + done.stderr)[-300:]}")  # fmt: skip
    return took


def median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def cell(values: list[float] | None) -> str:
    if not values:
        return "failed"
    return f"{statistics.median(values):.2f} s (min {min(values):.2f}, {len(values)} runs)"


def table(results: Results, runs: int) -> str:
    rows = ["| hives | rbee sweep (cold) | of which the sweep itself | ansible -m script (cold) "
            "| Ansible / rbee | floor: rbee sweep, script reading nothing | Ansible / floor |",
            "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for n in SIZES:
        r, a = results.times.get(("rbee", n)), results.times.get(("ansible", n))
        f = results.times.get(("floor", n))
        mr, ma, mf = median(r), median(a), median(f)
        ratio = f"{ma / mr:.1f}x" if mr and ma else "n/a"
        floor_ratio = f"{ma / mf:.1f}x" if mf and ma else "n/a"
        inner = cell(results.times.get(("rbee_inner", n)))
        rows.append(f"| {n} | {cell(r)} | {inner} | {cell(a)} | {ratio} | {cell(f)} "
                    f"| {floor_ratio} |")  # fmt: skip
    cpu_rows = ["| hives | rbee sweep | ansible -m script | Ansible / rbee |",
                "|---:|---:|---:|---:|"]  # fmt: skip
    for n in SIZES:
        r, a = results.times.get(("rbee_cpu", n)), results.times.get(("ansible_cpu", n))
        mr, ma = median(r), median(a)
        ratio = f"{ma / mr:.1f}x" if mr and ma else "n/a"
        cpu_rows.append(f"| {n} | {cell(r)} | {cell(a)} | {ratio} |")
    r50, a50 = median(results.times.get(("rbee", 50))), median(results.times.get(("ansible", 50)))
    time_met = r50 is not None and r50 <= GOAL_SECONDS
    ratio_met = r50 is not None and a50 is not None and a50 / r50 >= GOAL_RATIO
    busy = f"{statistics.median(results.busy):.2f}" if results.busy else "?"
    load = f"{results.load[0]} at start, {results.load[1]} at end" if results.load else "?"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        START_MARK,
        "## Sweep: `rbee sweep` against Ansible ad hoc",
        "",
        f"Measured {stamp} by `bench/sweep.py` on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}), {runs} runs per cell, "
        "interleaved; each run a fresh process, cold (no SSH connection held or reused), as "
        "cron runs it. The same checks on both sides: rbee.sweep.probe's sh script, run by "
        "`rbee sweep` over one asyncssh connection per hive, and by `ansible all -m script` "
        "(copied to each hive and run there, forks = N, host keys checked, a fresh ControlPath "
        f"per run). The machine's busy cores when runs started (median): {busy} of "
        f'{os.cpu_count()}; load average (1 min): {load}. "Of which the sweep itself" is the '
        "JSON's `seconds` (queen check, every hive, the checks): the rest of the rbee column is "
        "the `rbee` process's start-up (Python, asyncssh's import) and its exit. The floor is "
        "the same command with the hive script replaced by two `echo`s: Python's start, "
        "asyncssh, the SSH handshakes (sshd's side of them on the same 2 cores, as every hive "
        "here shares this machine) and the report, which no script can make faster; Ansible "
        "over the floor is the most any sweep could gain here.",
        "",
        *rows,
        "",
        f"Goal: 50 hives in <= {GOAL_SECONDS:g} s: {'met' if time_met else 'NOT met'}; "
        f">= {GOAL_RATIO:g}x faster than Ansible: {'met' if ratio_met else 'NOT met'}.",
        "",
        "CPU time on the sweeping machine (user + system of the command and every process it "
        "starts, Ansible's ControlPersist masters included, measured in a cgroup of its own; "
        "the hives' sshd and scripts are not counted). On a real fleet, where each hive is its "
        "own machine, this is the part of a sweep that does not run in parallel:",
        "",
        *cpu_rows,
    ]
    if results.failures:
        lines += ["", "Failed runs (not timed):", *(f"- {f}" for f in results.failures)]
    return "\n".join([*lines, END_MARK]) + "\n"


async def settle() -> float:
    return await fanout.settle()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (3)")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args()
    cleanup_stale()
    results = Results()
    results.load.append(f"{os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="rbee-bench-sweep-") as tmp:
        base, work = Path(tmp) / "hives", Path(tmp) / "rbee"
        progress(f"creating {max(SIZES)} hives")
        with test_hives(max(SIZES), base) as hive_set:
            setup = fanout.ansible_setup(hive_set, SIZES)
            script = setup.home / "sweep.sh"
            script.write_text("#!/bin/sh\n" + HIVE_SCRIPT)
            script.chmod(0o755)
            try:
                for n in SIZES:
                    expected = {h.alias for h in hive_set.hives[:n]}
                    for run in range(args.runs):
                        for tool in ("rbee", "ansible", "floor"):
                            results.busy.append(asyncio.run(settle()))
                            meter = CpuMeter()
                            try:
                                if tool == "rbee":
                                    took, inner = rbee_run(hive_set, n, work, meter)
                                    results.add("rbee_inner", n, inner)
                                elif tool == "floor":
                                    took, _ = rbee_run(hive_set, n, work, meter, floor=True)
                                else:
                                    took = ansible_run(setup, script, n, expected, meter)
                            except (fanout.RunFailed, subprocess.TimeoutExpired) as err:
                                results.failures.append(f"{tool}, {n} hives, run {run + 1}: {err}")
                                progress(f"{tool} {n}: FAILED: {err}")
                                continue
                            finally:
                                cpu = meter.seconds()
                                meter.close()
                            results.add(tool, n, took)
                            if cpu is not None:
                                results.add(f"{tool}_cpu", n, cpu)
                            progress(f"{tool} {n} hives, run {run + 1}: {took:.2f}s")
            finally:
                for control in setup.control_dirs:
                    fanout.stop_masters(control)
    results.load.append(f"{os.getloadavg()[0]:.2f}")
    section = table(results, args.runs)
    print(section)
    if not args.no_doc:
        write_section(section, START_MARK, END_MARK)
        progress("docs/benchmarks.md updated")
    return 0


if __name__ == "__main__":
    run_main(main, progress)
