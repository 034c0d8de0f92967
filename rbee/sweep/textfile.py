"""`--textfile DIR`: the sweep as `DIR/rbee_sweep.prom`, for node_exporter's textfile collector.

Written to a temporary file in DIR and renamed over the old one (node_exporter must never read
half a file), and made readable by all (0644): node_exporter runs as another user, and the file
holds only figures and host aliases. DIR must exist: creating it here would make it private.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from rbee.errors import RbeeError
from rbee.fsutil import atomic_write_text
from rbee.sweep.report import Report

__all__ = ["TEXTFILE_NAME", "render_textfile", "write_textfile"]

TEXTFILE_NAME = "rbee_sweep.prom"
_READABLE = 0o644


def render_textfile(report: Report, finished: float) -> str:
    """The metrics in Prometheus' text format; `finished`: epoch seconds the sweep ended."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    gauge("rbee_sweep_status", "The sweep's Nagios status (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)"
          ).set(int(report.status))  # fmt: skip
    gauge("rbee_sweep_last_run_timestamp_seconds", "When the sweep ended").set(finished)
    gauge("rbee_sweep_duration_seconds", "How long the sweep took").set(report.seconds)
    check = gauge("rbee_sweep_check_status", "Each check's status (0 OK .. 3 UNKNOWN)",
                  ("target", "check"))  # fmt: skip
    for c in report.checks:
        check.labels(c.target, c.name).set(int(c.status))
    gauge("rbee_sweep_queen_up", "1 if the queen answered").set(1 if report.queen.up else 0)
    if report.queen.queue_depth is not None:
        gauge("rbee_sweep_queen_queue_depth", "Requests waiting in the workers' queues").set(
            report.queen.queue_depth
        )
    up = gauge("rbee_sweep_hive_up", "1 if the hive answered the sweep", ("hive",))
    disk = gauge("rbee_sweep_disk_free_bytes", "Free bytes where rbee keeps its files",
                 ("hive", "dir"))  # fmt: skip
    orphans = gauge("rbee_sweep_orphans", "rbee processes whose queen is gone", ("hive",))
    seconds = gauge("rbee_sweep_hive_seconds", "How long the hive took to answer", ("hive",))
    ram = gauge("rbee_sweep_foreign_ram_ratio", "Share of RAM used by processes not rbee's",
                ("hive",))  # fmt: skip
    for hive in report.hives:
        up.labels(hive.alias).set(0 if hive.probe is None else 1)
        if hive.probe is None:
            continue
        orphans.labels(hive.alias).set(len(hive.orphans))
        seconds.labels(hive.alias).set(hive.probe.seconds)
        for name, free in (
            ("install", hive.probe.disk_install),
            ("models", hive.probe.disk_models),
        ):
            if free is not None:
                disk.labels(hive.alias, name).set(free[1])
        for c in hive.checks:
            if c.name == "ram" and c.value is not None:
                ram.labels(hive.alias).set(c.value)
    return generate_latest(registry).decode()


def write_textfile(directory: Path, report: Report, finished: float) -> Path:
    """Write DIR/rbee_sweep.prom atomically; RbeeError naming the flag if DIR is not usable."""
    if not directory.is_dir():
        raise RbeeError(f"--textfile {directory}: no such directory")
    path = directory / TEXTFILE_NAME
    try:
        atomic_write_text(path, render_textfile(report, finished))
        os.chmod(path, _READABLE)
    except OSError as err:
        raise RbeeError(f"--textfile {directory}: cannot write {TEXTFILE_NAME}: {err}") from err
    return path
