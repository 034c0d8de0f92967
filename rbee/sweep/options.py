"""`rbee sweep`'s command line. Kept here (argparse only, imported by rbee.cli.main) so that the
flags and their defaults sit beside the thresholds they set.

A usage error exits 3, UNKNOWN, as a Nagios plugin must (argparse's own 2 would read CRITICAL):
the sweep's parser says what is wrong in one line and exits 3, unknown arguments included.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from rbee.errors import RbeeError
from rbee.sweep.status import Status, Thresholds

__all__ = ["add_sweep_parser", "thresholds_from"]

_GIB = 1 << 30
_DEFAULTS = Thresholds()


class _NagiosParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with Nagios' UNKNOWN."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(int(Status.UNKNOWN))

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:  # the top-level parser would say so and exit 2
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


def _number(kind: str, low: float, high: float = float("inf")) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{kind} must be {low:g} to {high:g}, got {text}")
        return value

    return parse


def add_sweep_parser(commands: Any, handler: Any) -> argparse.ArgumentParser:
    """Add `rbee sweep` to the subcommands `commands`, run by `handler`."""
    p: argparse.ArgumentParser = commands.add_parser(
        "sweep",
        help="check every hive at once over SSH, and the queen (Nagios exit codes)",
        description="Check every hive (or --hive/--group) at once over SSH, and the queen. "
        "Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (a usage or configuration error too).",
    )
    p.__class__ = _NagiosParser
    p.add_argument(
        "--hive",
        dest="sweep_hives",
        action="append",
        default=[],
        metavar="ALIAS",
        help="a hive to sweep (repeatable; default: every hive in hives.conf)",
    )
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME",
        help="a group's hives, from the inventory (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON report (docs/sweep.md)")
    p.add_argument(
        "--textfile",
        metavar="DIR",
        help="also write DIR/rbee_sweep.prom for node_exporter (atomically)",
    )
    p.add_argument(
        "--heal",
        action="store_true",
        help="do what the checks call for (never about a host key), saying each action",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="also time one generated token through each ready worker",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the last sweep is remembered (default: DATA_DIR/sweep)",
    )
    t = _DEFAULTS
    p.add_argument(
        "--timeout",
        type=_number("--timeout", 0.1, 600),
        default=t.timeout,
        metavar="SECONDS",
        help=f"deadline per hive, connecting included ({t.timeout:g})",
    )
    p.add_argument(
        "--disk-warn",
        type=_number("--disk-warn", 0),
        default=t.disk_warn / _GIB,
        metavar="GIB",
        help=f"free GiB in the install or model dir below which it "
        f"is WARNING ({t.disk_warn / _GIB:g})",
    )
    p.add_argument(
        "--disk-crit",
        type=_number("--disk-crit", 0),
        default=t.disk_crit / _GIB,
        metavar="GIB",
        help=f"... CRITICAL ({t.disk_crit / _GIB:g})",
    )
    p.add_argument(
        "--ram-warn",
        type=_number("--ram-warn", 0, 100),
        default=t.ram_warn * 100,
        metavar="PCT",
        help=f"%% of RAM used by processes not rbee's above which it "
        f"is WARNING ({t.ram_warn * 100:g})",
    )
    p.add_argument(
        "--ram-crit",
        type=_number("--ram-crit", 0, 100),
        default=t.ram_crit * 100,
        metavar="PCT",
        help=f"... CRITICAL ({t.ram_crit * 100:g})",
    )
    p.add_argument(
        "--vram-warn",
        type=_number("--vram-warn", 0, 100),
        default=t.vram_warn * 100,
        metavar="PCT",
        help=f"%% of a GPU's memory held by processes not rbee's above "
        f"which it is WARNING ({t.vram_warn * 100:g})",
    )
    p.add_argument(
        "--vram-crit",
        type=_number("--vram-crit", 0, 100),
        default=t.vram_crit * 100,
        metavar="PCT",
        help=f"... CRITICAL ({t.vram_crit * 100:g})",
    )
    p.add_argument(
        "--queue-warn",
        type=_number("--queue-warn", 0),
        default=t.queue_warn,
        metavar="N",
        help=f"queued requests above which it is WARNING ({t.queue_warn})",
    )
    p.add_argument(
        "--queue-crit",
        type=_number("--queue-crit", 0),
        default=t.queue_crit,
        metavar="N",
        help=f"... CRITICAL ({t.queue_crit})",
    )
    p.add_argument(
        "--probe-warn",
        type=_number("--probe-warn", 0),
        default=t.probe_warn,
        metavar="SECONDS",
        help=f"--probe: seconds for one token above which it is WARNING ({t.probe_warn:g})",
    )
    p.add_argument(
        "--probe-crit",
        type=_number("--probe-crit", 0),
        default=t.probe_crit,
        metavar="SECONDS",
        help=f"... CRITICAL ({t.probe_crit:g})",
    )
    cron = p.add_mutually_exclusive_group()
    cron.add_argument(
        "--install-cron",
        action="store_true",
        help="run this sweep (with these flags) on a schedule: the crontab, or a "
        "systemd user timer where systemd runs",
    )
    cron.add_argument(
        "--uninstall-cron", action="store_true", help="remove exactly what --install-cron installed"
    )
    p.add_argument("--every", default="5m", help="--install-cron: how often (5m; 1m-60m, 1h-24h)")
    p.set_defaults(handler=handler)  # fmt: skip
    return p


def thresholds_from(args: argparse.Namespace) -> Thresholds:
    """The thresholds the flags give; RbeeError naming both flags where a WARNING level would
    come after its CRITICAL one."""
    for warn, crit, low in (("disk_warn", "disk_crit", True), ("ram_warn", "ram_crit", False),
                            ("vram_warn", "vram_crit", False), ("queue_warn", "queue_crit", False),
                            ("probe_warn", "probe_crit", False)):  # fmt: skip
        w, c = getattr(args, warn), getattr(args, crit)
        if (w < c) if low else (w > c):
            flags = f"--{warn.replace('_', '-')} {w:g} and --{crit.replace('_', '-')} {c:g}"
            order = "above" if low else "below"
            raise RbeeError(f"{flags}: the WARNING level must be {order} the CRITICAL one")
    return Thresholds(
        timeout=args.timeout,
        disk_warn=int(args.disk_warn * _GIB),
        disk_crit=int(args.disk_crit * _GIB),
        ram_warn=args.ram_warn / 100,
        ram_crit=args.ram_crit / 100,
        vram_warn=args.vram_warn / 100,
        vram_crit=args.vram_crit / 100,
        queue_warn=int(args.queue_warn),
        queue_crit=int(args.queue_crit),
        probe_warn=args.probe_warn,
        probe_crit=args.probe_crit,
    )


FORWARDED = (
    ("--timeout", "timeout"), ("--disk-warn", "disk_warn"), ("--disk-crit", "disk_crit"),
    ("--ram-warn", "ram_warn"), ("--ram-crit", "ram_crit"), ("--vram-warn", "vram_warn"),
    ("--vram-crit", "vram_crit"), ("--queue-warn", "queue_warn"), ("--queue-crit", "queue_crit"),
    ("--probe-warn", "probe_warn"), ("--probe-crit", "probe_crit"),
    ("--textfile", "textfile"), ("--state-dir", "state_dir"),
)  # fmt: skip
"""The valued flags `--install-cron` passes on to the scheduled sweep (as they were given)."""
