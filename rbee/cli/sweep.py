"""`rbee sweep`: check the fleet once, print the Nagios status line and table (or the JSON),
optionally heal, write the textfile, remember this sweep; or schedule it (`--install-cron`).

Exit codes are Nagios': 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. A usage or configuration error
(a bad flag, a broken hives.conf, an unknown `--hive`, a missing `--textfile` dir, another sweep
holding the lock) is UNKNOWN, said in one line on stderr.

Cron starts a fresh process for every sweep, so what only some sweeps need (healing, the
textfile, scheduling) is imported only by them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from rbee.cli.hives import selected_hives
from rbee.cli.output import emit, fail
from rbee.config.hives import HivesConfig, hives_path, load_hives
from rbee.config.settings import Paths
from rbee.errors import RbeeError
from rbee.sweep.memory import Memory, carried_over, load_memory, save_memory
from rbee.sweep.options import FORWARDED, thresholds_from
from rbee.sweep.queen_checks import QUEEN, restart_counts
from rbee.sweep.report import Report, nagios_lines, to_json
from rbee.sweep.run import Sweep, sweep_lock, sweep_once
from rbee.sweep.status import Status

__all__ = ["sweep"]


def _config(args: argparse.Namespace, paths: Paths) -> tuple[HivesConfig | None, list[str]]:
    """hives.conf and the aliases to sweep; no hives.conf at all (none named, none by default)
    is a fleet of the queen alone."""
    path = hives_path(paths, args.hives)
    if not args.hives and not args.sweep_hives and not args.group and not path.exists():
        return None, []
    config = load_hives(path)
    return config, [h.alias for h in selected_hives(args, paths, config, args.sweep_hives)]


def _cron_argv(args: argparse.Namespace, paths: Paths) -> list[str]:
    """The sweep `--install-cron` schedules: this one, its flags passed on, paths absolute."""
    argv = [sys.executable, "-m", "rbee", "--data-dir", str(paths.data_dir),
            "--config-dir", str(paths.config_dir)]  # fmt: skip
    if args.hives:
        argv += ["--hives", str(hives_path(paths, args.hives))]
    if args.inventory:
        argv += ["--inventory", str(Path(args.inventory).absolute())]
    if args.queen:
        argv += ["--queen", args.queen]
    argv.append("sweep")
    for alias in args.sweep_hives:
        argv += ["--hive", alias]
    for group in args.group:
        argv += ["--group", group]
    argv += [flag for flag, on in (("--heal", args.heal), ("--probe", args.probe)) if on]
    for flag, key in FORWARDED:
        value = getattr(args, key)
        if value is not None and value != argparse.SUPPRESS:
            text = str(Path(value).absolute()) if key in ("textfile", "state_dir") else f"{value:g}"
            argv += [flag, text]
    return argv


def _schedule(args: argparse.Namespace, paths: Paths) -> int:
    from rbee.sweep.cron import install_schedule, parse_every, uninstall_schedule  # noqa: PLC0415

    if args.uninstall_cron:
        removed = uninstall_schedule()
        emit(f"removed the rbee sweep from {removed.where} ({removed.via})" if removed
             else "no rbee sweep was scheduled")  # fmt: skip
        return 0
    minutes = parse_every(args.every)
    _config(args, paths)  # a broken hives.conf is said now, not every 5 minutes in a log
    log = paths.logs_dir / "sweep.log"
    done = install_schedule(_cron_argv(args, paths), minutes, log)
    emit(f"installed with {done.via} in {done.where}, every {args.every}; output to {log}")
    emit(f"  {done.line}")
    return 0


def _remember(
    report: Report, before: Memory | None, healed: dict[str, str], probed: bool
) -> Memory:
    swept = {QUEEN, *(h.alias for h in report.hives)}
    return Memory(
        at=report.started_at,
        status=report.status.name,
        checks={
            **carried_over(before, swept, probed),
            **{c.key: c.status.name for c in report.checks},
        },
        restarts=restart_counts(report.queen),
        queen_pid=report.queen.pid,
        vram_baseline={h.alias: h.vram_baseline for h in report.hives if h.vram_baseline},
        crash_loops_restarted={**(before.crash_loops_restarted if before else {}), **healed},
        details={c.key: c.detail[:300] for c in report.checks if c.status.name != "OK"},
    )


def _sweep(args: argparse.Namespace, paths: Paths) -> int:
    config, aliases = _config(args, paths)
    state_dir = Path(args.state_dir).absolute() if args.state_dir else paths.data_dir / "sweep"
    if args.textfile and not Path(args.textfile).is_dir():
        raise RbeeError(f"--textfile {args.textfile}: no such directory")
    thresholds = thresholds_from(args)
    with sweep_lock(state_dir):
        memory = load_memory(state_dir)
        request = Sweep(
            paths=paths,
            config=config or HivesConfig(path=hives_path(paths, args.hives), hives=()),
            hives=tuple(config.get(a) for a in aliases) if config else (),
            state_dir=state_dir,
            queen_url=args.queen,
            api_key=args.api_key,
            thresholds=thresholds,
            probe=args.probe,
        )
        report, expected = sweep_once(request, memory)
        healed: dict[str, str] = {}
        if args.heal:
            from rbee.sweep.heal import apply, plan  # noqa: PLC0415 - see the module doc

            steps = plan(report, expected, memory.crash_loops_restarted if memory else {})
            actions = apply(steps, config=request.config, expected=expected,
                            queen_url=report.queen.url, api_key=args.api_key,
                            timeout=thresholds.timeout)  # fmt: skip
            causes = {s.subject: s.cause for s in steps if s.action == "restart-worker"}
            healed = {a.subject: causes[a.subject] for a in actions if a.ok and a.subject in causes}
            report = dataclasses.replace(report, actions=tuple(actions))
        save_memory(state_dir, _remember(report, memory, healed, args.probe))
    if args.json:
        emit(json.dumps(to_json(report), indent=2))
    else:
        for line in nagios_lines(report):
            emit(line)
    if args.textfile:
        from rbee.sweep.textfile import write_textfile  # noqa: PLC0415 - see the module doc

        write_textfile(Path(args.textfile), report, time.time())
    return int(report.status)


def sweep(args: argparse.Namespace, paths: Paths) -> int:
    """Run `rbee sweep`; the exit status is the sweep's Nagios status."""
    try:
        if args.install_cron or args.uninstall_cron:
            return _schedule(args, paths)
        return _sweep(args, paths)
    except RbeeError as err:
        fail(str(err))
        return int(Status.UNKNOWN)
