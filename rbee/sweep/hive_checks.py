"""One hive's checks, as pure functions of what was seen: the probe (or why there is none), what
the queen reports, and what should run. No I/O here: tests/test_sweep_checks.py feeds tables.

A hive or worker process is the queen's when the queen reports that very pid: a hive it runs
(under the sshd session the queen holds), and workers whose parent is that hive. Any other rbee
process of this hive is an orphan: its queen is gone (or it was started by hand).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rbee.errors import HostKeyError, RbeeError
from rbee.sweep.expect import Expected
from rbee.sweep.probe import HiveProbe, Proc
from rbee.sweep.queen_view import QueenView
from rbee.sweep.status import Check, Status, Thresholds

__all__ = ["HiveFindings", "check_hive", "owned_hive_pid"]

_LIVE = {"starting": Status.WARNING, "restarting": Status.WARNING, "ready": Status.OK}


@dataclass(frozen=True)
class HiveFindings:
    """A hive's checks and what the report and `--heal` need besides."""

    alias: str
    checks: tuple[Check, ...]
    probe: HiveProbe | None = None
    orphans: tuple[Proc, ...] = ()
    hive_pid: int | None = None
    """The hive process the queen owns there (None: none runs)."""
    vram_baseline: dict[str, int] = field(default_factory=dict)
    """Free VRAM per GPU to remember for the next sweep."""
    error: str | None = None


def owned_hive_pid(alias: str, probe: HiveProbe, queen: QueenView) -> int | None:
    """The pid of the hive process the live queen holds on this hive, if it runs there."""
    state = queen.hive(alias) if queen.up else None
    if state is None or state.get("state") != "running":
        return None
    for proc in probe.hive_procs():
        if proc.pid == state.get("pid") and proc.parent.startswith("sshd"):
            return proc.pid
    return None


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _disk(alias: str, name: str, what: str, free: tuple[str, int] | None, t: Thresholds) -> Check:
    if free is None:
        return Check(alias, name, Status.UNKNOWN, f"free space in the {what} dir not readable")
    status = (
        Status.CRITICAL
        if free[1] < t.disk_crit
        else Status.WARNING
        if free[1] < t.disk_warn
        else Status.OK
    )
    return Check(alias, name, status, f"{_gib(free[1])} free in the {what} dir ({free[0]})",
                 float(free[1]))  # fmt: skip


def _level(value: float, warn: float, crit: float) -> Status:
    return Status.CRITICAL if value > crit else Status.WARNING if value > warn else Status.OK


def _ram(alias: str, probe: HiveProbe, t: Thresholds) -> Check:
    if not probe.mem_total or probe.mem_available is None:
        return Check(alias, "ram", Status.UNKNOWN, "RAM figures not readable (no /proc/meminfo)")
    ours = sum(p.rss for p in probe.procs)
    foreign = max(0, probe.mem_total - probe.mem_available - ours)
    ratio = foreign / probe.mem_total
    detail = (f"{ratio:.0%} of {_gib(probe.mem_total)} used by other processes; rbee's "
              f"{_gib(ours)}, {_gib(probe.mem_available)} available")  # fmt: skip
    return Check(alias, "ram", _level(ratio, t.ram_warn, t.ram_crit), detail, ratio)


def _vram(
    alias: str, probe: HiveProbe, t: Thresholds, baseline: Mapping[str, int]
) -> tuple[list[Check], dict[str, int]]:
    checks: list[Check] = []
    remember: dict[str, int] = {}
    ours = {p.pid for p in probe.procs}
    idle = not probe.worker_procs()
    for gpu in probe.gpus:
        foreign = sum(
            a.used for a in probe.gpu_apps if a.gpu_uuid == gpu.uuid and a.pid not in ours
        )
        ratio = foreign / gpu.total if gpu.total else 0.0
        checks.append(Check(alias, f"vram:{gpu.index}", _level(ratio, t.vram_warn, t.vram_crit),
                            f"{ratio:.0%} of {_gib(gpu.total)} held by other processes",
                            ratio))  # fmt: skip
        before = baseline.get(gpu.uuid)
        if not idle:
            if before is not None:
                remember[gpu.uuid] = before
            continue
        if before is not None and gpu.free < before - t.vram_leak:
            checks.append(Check(alias, f"vram_baseline:{gpu.index}", Status.WARNING,
                                f"{_gib(gpu.free)} free with no worker running, "
                                f"{_gib(before)} before", float(gpu.free)))  # fmt: skip
            remember[gpu.uuid] = before
        else:
            checks.append(Check(alias, f"vram_baseline:{gpu.index}", Status.OK,
                                f"{_gib(gpu.free)} free with no worker running",
                                float(gpu.free)))  # fmt: skip
            remember[gpu.uuid] = max(gpu.free, before or 0)
    return checks, remember


def _workers(
    alias: str,
    probe: HiveProbe,
    queen: QueenView,
    expected: Expected,
    owned: int | None,
) -> list[Check]:
    """One check per worker that should run there (as the desired state says, or else as the
    queen reports)."""
    reported = {str(w.get("id", "")).partition("@")[0]: w for w in queen.workers_on(alias)}
    wanted = [w.id for w in expected.workers_on(alias)] if expected.error is None else []
    if not wanted and queen.up:
        wanted = list(reported)
    pids = {p.pid for p in probe.worker_procs() if owned is not None and p.ppid == owned}
    checks = []
    for worker_id in wanted:
        name = f"worker:{worker_id}"
        info = reported.get(worker_id)
        if not queen.up:
            checks.append(Check(alias, name, Status.CRITICAL, "down: the queen is not up"))
        elif info is None:
            checks.append(Check(alias, name, Status.CRITICAL, "missing: wanted, not running"))
        elif info.get("state") == "ready" and info.get("pid") not in pids:
            checks.append(Check(alias, name, Status.CRITICAL,
                                f"the queen says ready, but no worker process {info.get('pid')} "
                                "runs under its hive"))  # fmt: skip
        else:
            state = str(info.get("state"))
            why = f": {info['error']}" if info.get("error") and state != "ready" else ""
            detail = f"{state} (pid {info.get('pid')}, {info.get('restarts', 0)} restarts){why}"
            checks.append(Check(alias, name, _LIVE.get(state, Status.CRITICAL), detail))
    return checks


def check_hive(
    alias: str,
    result: HiveProbe | RbeeError,
    *,
    queen: QueenView,
    expected: Expected,
    version: str,
    thresholds: Thresholds,
    baseline: Mapping[str, int] | None = None,
) -> HiveFindings:
    """Every check of one hive. `version`: the rbee version the hive should run (the queen's)."""
    if isinstance(result, HostKeyError):
        check = Check(alias, "host_key", Status.CRITICAL, str(result))
        return HiveFindings(alias, (check,), error=str(result), vram_baseline=dict(baseline or {}))
    if isinstance(result, RbeeError):
        check = Check(alias, "reachable", Status.CRITICAL, str(result))
        return HiveFindings(alias, (check,), error=str(result), vram_baseline=dict(baseline or {}))
    probe = result
    checks = [
        Check(alias, "reachable", Status.OK, f"answered in {probe.seconds:.2f}s", probe.seconds),
        Check(alias, "host_key", Status.OK, "matches known_hosts"),
    ]
    fleet_runs = queen.up or bool(expected.serving and expected.serving.serve)
    wanted = alias in expected.hives and fleet_runs
    if probe.installed_version is None:
        status = Status.CRITICAL if wanted else Status.WARNING
        checks.append(
            Check(alias, "installed", status, f"rbee is not installed in {probe.install_dir}")
        )
    elif probe.installed_version != version:
        detail = f"rbee {probe.installed_version}, the queen runs {version}"
        checks.append(Check(alias, "installed", Status.WARNING, detail))
    else:
        checks.append(
            Check(alias, "installed", Status.OK, f"rbee {version} in {probe.install_dir}")
        )
    owned = owned_hive_pid(alias, probe, queen)
    if owned is not None:
        checks.append(Check(alias, "hive", Status.OK, f"running (pid {owned}), the queen's"))
    elif wanted:
        why = "" if queen.up else " (the queen is down)"
        state = queen.hive(alias) or {}
        seen = f"; the queen says {state['state']}" if state.get("state") else ""
        checks.append(Check(alias, "hive", Status.CRITICAL, f"not running{why}{seen}"))
    else:
        checks.append(Check(alias, "hive", Status.OK, "not started (not wanted)"))
    orphans = [p for p in probe.hive_procs() if p.pid != owned]
    orphans += [p for p in probe.worker_procs() if owned is None or p.ppid != owned]
    checks.append(Check(alias, "orphans", Status.WARNING if orphans else Status.OK,
                        ", ".join(f"{p.kind} pid {p.pid}" for p in orphans) or "none",
                        float(len(orphans))))  # fmt: skip
    if wanted or owned is not None:
        checks += _workers(alias, probe, queen, expected, owned)
    checks.append(_disk(alias, "disk_install", "install", probe.disk_install, thresholds))
    checks.append(_disk(alias, "disk_models", "models", probe.disk_models, thresholds))
    checks.append(_ram(alias, probe, thresholds))
    vram, remember = _vram(alias, probe, thresholds, baseline or {})
    checks += vram
    return HiveFindings(alias, tuple(checks), probe, tuple(orphans), owned, remember)
