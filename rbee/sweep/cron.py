"""`rbee sweep --install-cron` / `--uninstall-cron`: run the sweep on a schedule.

In the user's crontab where `crontab` exists and no systemd user instance runs (the common case
on servers), else as a systemd user timer. The crontab gets one marked block and every other
line is kept as it was; uninstalling removes exactly that block. The sweep takes its own lock
(rbee.sweep.run.sweep_lock), so two never overlap, and its output is appended to a log file.
`%` is special in crontab lines (a newline): escaped.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rbee.errors import RbeeError
from rbee.fsutil import atomic_write_text

__all__ = [
    "BEGIN",
    "END",
    "Installed",
    "cron_schedule",
    "install_schedule",
    "parse_every",
    "remove_block",
    "schedule_command",
    "systemd_units",
    "uninstall_schedule",
    "with_block",
]

BEGIN = "# BEGIN rbee sweep (managed by `rbee sweep --install-cron`; remove with --uninstall-cron)"
END = "# END rbee sweep"
UNIT = "rbee-sweep"
_EVERY = re.compile(r"([1-9][0-9]*)([mh])")


@dataclass(frozen=True)
class Installed:
    """Where the schedule went."""

    via: str
    """"crontab" or "systemd user timer"."""
    where: str
    line: str


def parse_every(text: str) -> int:
    """`--every` (`5m`, `1h`) in minutes; RbeeError naming the flag unless it divides an hour
    (minutes) or a day (hours) evenly, as cron's steps do."""
    found = _EVERY.fullmatch(text.strip())
    if found is None:
        raise RbeeError(f"--every {text}: give minutes or hours, such as 5m or 1h")
    n, unit = int(found.group(1)), found.group(2)
    if unit == "m" and 60 % n == 0:
        return n
    if unit == "h" and 24 % n == 0:
        return n * 60
    limit = "a divisor of 60 minutes" if unit == "m" else "a divisor of 24 hours"
    raise RbeeError(f"--every {text}: must be {limit} (cron runs at fixed times of the hour)")


def cron_schedule(minutes: int) -> str:
    """The five crontab time fields for every `minutes`."""
    if minutes < 60:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    hours = minutes // 60
    return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"


def schedule_command(argv: list[str], log: Path) -> str:
    """The crontab command that runs `argv`, its output appended to `log` (`%` escaped)."""
    line = " ".join(shlex.quote(a) for a in argv) + f" >> {shlex.quote(str(log))} 2>&1"
    return line.replace("%", "\\%")


def remove_block(text: str) -> tuple[str, bool]:
    """`text` without rbee's block (and whether there was one); every other line as it was."""
    lines = text.splitlines(keepends=True)
    kept, inside, found = [], False, False
    for line in lines:
        stripped = line.rstrip("\n")
        if stripped == BEGIN:
            inside, found = True, True
            continue
        if inside:
            if stripped == END:
                inside = False
            continue
        kept.append(line)
    if inside:
        raise RbeeError(f"the crontab has `{BEGIN}` with no `{END}`: fix it with `crontab -e`")
    return "".join(kept), found


def with_block(text: str, line: str) -> str:
    """`text` with rbee's block holding `line` (replacing an older block) at the end."""
    kept, _ = remove_block(text)
    if kept and not kept.endswith("\n"):
        kept += "\n"
    return f"{kept}{BEGIN}\n{line}\n{END}\n"


def _tool(name: str) -> str:
    """The full path of a program (what runs is the one on PATH now, said in errors)."""
    path = shutil.which(name)
    if path is None:
        raise RbeeError(f"`{name}` is not on PATH")
    return path


def _crontab_read() -> str:
    done = subprocess.run([_tool("crontab"), "-l"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if "no crontab" in done.stderr:
            return ""
        raise RbeeError(f"`crontab -l` failed: {done.stderr.strip()}")
    return done.stdout


def _crontab_write(text: str) -> None:
    done = subprocess.run([_tool("crontab"), "-"], input=text, capture_output=True, text=True,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise RbeeError(f"`crontab -` refused the new crontab: {done.stderr.strip()}")


def _user_systemd() -> bool:
    """True when a systemd user instance runs for this user (its private socket exists)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return shutil.which("systemctl") is not None and Path(runtime, "systemd", "private").exists()


def _use_crontab() -> bool:
    if shutil.which("crontab") and not _user_systemd():
        return True
    if _user_systemd():
        return False
    raise RbeeError("neither `crontab` nor a systemd user instance is here to run the sweep")


def _units_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def _systemctl(*args: str) -> None:
    done = subprocess.run([_tool("systemctl"), "--user", *args], capture_output=True, text=True,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise RbeeError(f"`systemctl --user {' '.join(args)}` failed: {done.stderr.strip()}")


def systemd_units(command: str, minutes: int) -> dict[str, str]:
    """The service and timer (file name → text) that run the crontab line `command` (escaped
    for cron) every `minutes` as a systemd user timer."""
    unescaped = command.replace("\\%", "%%")  # systemd's escape of % instead of cron's
    service = (f"[Unit]\nDescription=rbee sweep\n\n[Service]\nType=oneshot\n"
               f"ExecStart=/bin/sh -c {shlex.quote(unescaped)}\n")  # fmt: skip
    timer = (f"[Unit]\nDescription=rbee sweep every {minutes} min\n\n[Timer]\n"
             f"OnBootSec={minutes}min\nOnUnitActiveSec={minutes}min\n\n"
             "[Install]\nWantedBy=timers.target\n")  # fmt: skip
    return {f"{UNIT}.service": service, f"{UNIT}.timer": timer}


def install_schedule(argv: list[str], minutes: int, log: Path) -> Installed:
    """Run `argv` every `minutes`, output appended to `log`; replaces an earlier install."""
    command = schedule_command(argv, log)
    if _use_crontab():
        line = f"{cron_schedule(minutes)} {command}"
        _crontab_write(with_block(_crontab_read(), line))
        return Installed("crontab", "the crontab of this user (`crontab -l`)", line)
    units = _units_dir()
    for name, text in systemd_units(command, minutes).items():
        atomic_write_text(units / name, text)
    _systemctl("daemon-reload")
    _systemctl("enable", "--now", f"{UNIT}.timer")
    return Installed("systemd user timer", str(units / f"{UNIT}.timer"), command)


def uninstall_schedule() -> Installed | None:
    """Remove what install_schedule made; None if there was nothing to remove."""
    if _use_crontab():
        kept, found = remove_block(_crontab_read())
        if not found:
            return None
        _crontab_write(kept)
        return Installed("crontab", "the crontab of this user (`crontab -l`)", "")
    units = _units_dir()
    timer = units / f"{UNIT}.timer"
    if not timer.exists():
        return None
    _systemctl("disable", "--now", f"{UNIT}.timer")
    timer.unlink()
    (units / f"{UNIT}.service").unlink(missing_ok=True)
    _systemctl("daemon-reload")
    return Installed("systemd user timer", str(timer), "")
