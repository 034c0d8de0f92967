"""A sweep's report in its three forms: the Nagios plugin output (status line with perfdata,
then the table as long output), the JSON document (`schema.json`, docs/sweep.md), and the
figures of the textfile (rbee.sweep.textfile).

Nagios conventions: the exit code is the status (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), the
first line says it, and perfdata follows a `|` as `'label'=value[UOM];warn;crit;min;max`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rbee.sweep.hive_checks import HiveFindings
from rbee.sweep.memory import Change
from rbee.sweep.queen_view import QueenView
from rbee.sweep.status import Check, Status, Thresholds, worst

__all__ = ["SCHEMA_ID", "Action", "Report", "nagios_lines", "perfdata", "to_json"]

SCHEMA_ID = "rbee.sweep/1"
"""The `schema` of the JSON document; bumped on any change that is not an addition."""


@dataclass(frozen=True)
class Action:
    """What `--heal` did (or tried) about a check."""

    target: str
    action: str
    ok: bool
    detail: str
    subject: str = ""
    """What it acted on: a worker's id, an orphan's pid (empty for the queen)."""


@dataclass(frozen=True)
class Report:
    """One sweep, whole."""

    started_at: str
    seconds: float
    queen: QueenView
    hives: tuple[HiveFindings, ...]
    queen_checks: tuple[Check, ...]
    changes: tuple[Change, ...] = ()
    actions: tuple[Action, ...] = ()
    previous_at: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def checks(self) -> list[Check]:
        """Every check: the queen's, then each hive's."""
        return [*self.queen_checks, *(c for h in self.hives for c in h.checks)]

    @property
    def status(self) -> Status:
        """The sweep's status: its worst check's."""
        return worst(c.status for c in self.checks)

    def summary(self) -> str:
        """The status line's text after the status."""
        bad = [c for c in self.checks if c.status != Status.OK]
        ok = sum(1 for h in self.hives if all(c.status == Status.OK for c in h.checks))
        head = f"{ok} of {len(self.hives)} hives OK"
        if not bad:
            return head + ("; queen up" if self.queen.up else "")
        bad.sort(key=lambda c: -c.status.rank)
        shown = "; ".join(f"{c.target} {c.name}: {c.detail}" for c in bad[:3])
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        return f"{head}; {shown}{more}"


def _label(text: str) -> str:
    return "'" + text.replace("'", "_").replace("=", "_") + "'"


def _number(value: float) -> str:
    return f"{value:.6g}" if not float(value).is_integer() else str(int(value))


def perfdata(report: Report) -> str:
    """The perfdata: the fleet's counts, the queen's figures, each hive's figures."""
    t = report.thresholds
    by = {s: sum(1 for c in report.checks if c.status == s) for s in Status}
    ok = sum(1 for h in report.hives if all(c.status == Status.OK for c in h.checks))
    items = [
        f"'hives'={len(report.hives)};;;0",
        f"'hives_ok'={ok};;;0;{len(report.hives)}",
        f"'checks_warning'={by[Status.WARNING]};;;0",
        f"'checks_critical'={by[Status.CRITICAL]};;;0",
        f"'sweep_time'={report.seconds:.3f}s;;;0",
    ]
    for check in report.queen_checks:
        if check.value is None:
            continue
        if check.name == "queue_depth":
            items.append(f"'queen_queue_depth'={_number(check.value)};{t.queue_warn};"
                         f"{t.queue_crit};0")  # fmt: skip
        elif check.name in ("restarts", "workers_ready", "up"):
            items.append(f"{_label('queen_' + check.name)}={_number(check.value)};;;0")
    for hive in report.hives:
        for check in hive.checks:
            if check.value is None:
                continue
            label = _label(f"{hive.alias}_{check.name}")
            if check.name.startswith("disk_"):
                items.append(f"{label}={_number(check.value)}B;{t.disk_warn}:;{t.disk_crit}:;0")
            elif check.name == "ram":
                items.append(f"{label}={check.value * 100:.1f}%;{t.ram_warn * 100:g};"
                             f"{t.ram_crit * 100:g};0;100")  # fmt: skip
            elif check.name.startswith("vram:"):
                items.append(f"{label}={check.value * 100:.1f}%;{t.vram_warn * 100:g};"
                             f"{t.vram_crit * 100:g};0;100")  # fmt: skip
            elif check.name == "reachable":
                items.append(f"{label}={check.value:.3f}s;;{t.timeout:g};0")
            elif check.name.startswith("probe:"):
                items.append(f"{label}={check.value:.3f}s;{t.probe_warn:g};{t.probe_crit:g};0")
            elif check.name == "orphans":
                items.append(f"{label}={_number(check.value)};0;;0")
    return " ".join(items)


def nagios_lines(report: Report) -> list[str]:
    """The plugin output: the status line with perfdata, then a line per check, the changes
    since the last sweep and the actions taken."""
    lines = [f"RBEE SWEEP {report.status.name} - {report.summary()} | {perfdata(report)}"]
    rows = [(c.target, c.name, c.status.name, c.detail) for c in report.checks]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(_HEAD)]
    for row in (_HEAD, *rows):
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if report.previous_at is not None:
        if report.changes:
            lines.append(f"changed since the last sweep ({report.previous_at}):")
            lines += [f"  {c.target} {c.check}: {c.before or 'new'} -> {c.after or 'gone'}"
                      for c in report.changes]  # fmt: skip
        else:
            lines.append(f"no change since the last sweep ({report.previous_at})")
    for action in report.actions:
        lines.append(f"heal: {action.target}: {action.action}: "
                     f"{'done' if action.ok else 'FAILED'}: {action.detail}")  # fmt: skip
    return lines


_HEAD = ("TARGET", "CHECK", "STATUS", "DETAIL")


def _hive_json(hive: HiveFindings) -> dict[str, Any]:
    probe = hive.probe
    return {
        "alias": hive.alias,
        "status": worst(c.status for c in hive.checks).name,
        "reachable": probe is not None,
        "error": hive.error,
        "seconds": probe.seconds if probe else None,
        "installed_version": probe.installed_version if probe else None,
        "install_dir": probe.install_dir if probe else None,
        "hive_pid": hive.hive_pid,
        "orphans": [
            {"kind": p.kind, "pid": p.pid, "ppid": p.ppid, "args": p.args} for p in hive.orphans
        ],
        "disk_free_bytes": {
            "install": probe.disk_install[1] if probe and probe.disk_install else None,
            "models": probe.disk_models[1] if probe and probe.disk_models else None,
        },
        "ram": {
            "total_bytes": probe.mem_total if probe else None,
            "available_bytes": probe.mem_available if probe else None,
            "rbee_bytes": sum(p.rss for p in probe.procs) if probe else None,
        },
        "gpus": [
            {"index": g.index, "uuid": g.uuid, "total_bytes": g.total, "free_bytes": g.free}
            for g in (probe.gpus if probe else ())
        ],
    }


def to_json(report: Report) -> dict[str, Any]:
    """The JSON document (its schema: rbee/sweep/schema.json, described in docs/sweep.md)."""
    queen = report.queen
    return {
        "schema": SCHEMA_ID,
        "status": report.status.name,
        "exit_code": int(report.status),
        "summary": report.summary(),
        "started_at": report.started_at,
        "seconds": round(report.seconds, 4),
        "previous_at": report.previous_at,
        "queen": {
            "url": queen.url,
            "up": queen.up,
            "error": queen.error,
            "pid": queen.pid,
            "version": queen.version,
            "workers_total": len(queen.workers),
            "workers_ready": sum(1 for w in queen.workers if w.get("state") == "ready"),
            "queue_depth": queen.queue_depth,
        },
        "hives": [_hive_json(h) for h in report.hives],
        "checks": [
            {
                "target": c.target,
                "check": c.name,
                "status": c.status.name,
                "detail": c.detail,
                "value": c.value,
            }
            for c in report.checks
        ],
        "changes": [
            {"target": c.target, "check": c.check, "before": c.before, "after": c.after}
            for c in report.changes
        ],
        "actions": [
            {"target": a.target, "action": a.action, "ok": a.ok, "detail": a.detail}
            for a in report.actions
        ],
    }
