"""`rbee sweep --install-cron` / `--uninstall-cron` with the real `crontab` command.

The crontab of the user running the tests is saved first and put back afterwards, even on
failure; foreign lines must survive both operations exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee.config.settings import Paths
from rbee.errors import RbeeError
from rbee.sweep.cron import (
    BEGIN,
    END,
    cron_schedule,
    parse_every,
    remove_block,
    schedule_command,
    systemd_units,
    with_block,
)
from tests.conftest import rbee

FOREIGN = '# someone else\'s job\nMAILTO=""\n17 3 * * * /usr/bin/true --keep 50%\n'


def crontab_l() -> str:
    done = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


@pytest.fixture
def saved_crontab() -> Iterator[None]:
    if shutil.which("crontab") is None:
        pytest.skip("no `crontab` command here (Debian: apt-get install cron)")
    before = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    try:
        yield
    finally:
        if before.returncode == 0:
            subprocess.run(["crontab", "-"], input=before.stdout, text=True, check=True)
        else:
            subprocess.run(["crontab", "-r"], capture_output=True, check=False)


def test_install_and_uninstall_keep_every_foreign_line(saved_crontab: None, paths: Paths) -> None:
    subprocess.run(["crontab", "-"], input=FOREIGN, text=True, check=True)
    hives = paths.config_dir / "hives.conf"
    hives.parent.mkdir(parents=True, exist_ok=True)
    hives.write_text("Host box\n    HostName 192.0.2.1\n")
    args = ("--hives", str(hives), "sweep", "--install-cron", "--every", "10m", "--heal")
    done = rbee(paths, *args)
    assert done.returncode == 0, done.stderr
    assert "installed with crontab" in done.stdout
    table = crontab_l()
    assert table.startswith(FOREIGN)
    block = table[len(FOREIGN) :].splitlines()
    assert block[0] == BEGIN
    assert block[-1] == END
    (line,) = block[1:-1]
    assert line.startswith("*/10 * * * * ")
    assert f"--data-dir {paths.data_dir}" in line
    assert f"--hives {hives} sweep --heal" in line
    assert f">> {paths.logs_dir / 'sweep.log'} 2>&1" in line
    # Again: the block is replaced, not added.
    assert rbee(paths, *args[:-3], "--every", "1h").returncode == 0
    table = crontab_l()
    assert table.count(BEGIN) == 1
    assert "\n0 * * * * " in table
    assert table.startswith(FOREIGN)
    done = rbee(paths, "sweep", "--uninstall-cron")
    assert done.returncode == 0, done.stderr
    assert "removed the rbee sweep from" in done.stdout
    assert "(crontab)" in done.stdout
    assert crontab_l() == FOREIGN
    done = rbee(paths, "sweep", "--uninstall-cron")
    assert "no rbee sweep was scheduled" in done.stdout
    assert crontab_l() == FOREIGN
    done = rbee(paths, "sweep", "--install-cron", "--every", "7m")
    assert done.returncode == 3
    assert "--every 7m" in done.stderr
    assert crontab_l() == FOREIGN


@pytest.mark.parametrize(
    ("every", "minutes", "fields"),
    [("1m", 1, "* * * * *"), ("5m", 5, "*/5 * * * *"), ("30m", 30, "*/30 * * * *"),
     ("1h", 60, "0 * * * *"), ("6h", 360, "0 */6 * * *")],
)  # fmt: skip
def test_every(every: str, minutes: int, fields: str) -> None:
    assert parse_every(every) == minutes
    assert cron_schedule(minutes) == fields


@pytest.mark.parametrize("every", ["7m", "0m", "5", "5s", "25h", "m"])
def test_a_bad_every_names_the_flag(every: str) -> None:
    with pytest.raises(RbeeError, match=f"--every {every}"):
        parse_every(every)


def test_the_block_is_replaced_and_removed_exactly() -> None:
    text = with_block(FOREIGN.rstrip("\n"), "* * * * * a")
    assert text == f"{FOREIGN}{BEGIN}\n* * * * * a\n{END}\n"
    again = with_block(text + "# after\n", "* * * * * b")
    assert again == f"{FOREIGN}# after\n{BEGIN}\n* * * * * b\n{END}\n"
    assert remove_block(again) == (f"{FOREIGN}# after\n", True)
    assert remove_block(FOREIGN) == (FOREIGN, False)
    with pytest.raises(RbeeError, match="no `# END rbee sweep`"):
        remove_block(f"{BEGIN}\nx\n")


def test_the_systemd_timer_units_are_what_systemd_loads(tmp_path: Path) -> None:
    """Where a systemd user instance runs, the sweep goes to a timer: systemd's own checker
    (`systemd-analyze verify`, offline) loads its units without a complaint, for a command
    whose paths hold a space, a quote and a `%` (cron's and systemd's special character)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "make sysdeps installs systemd (systemd-analyze)"
    log = Path("/var/log/rbee 50%/the sweep's.log")
    argv = ["/opt/rbee venv/bin/rbee", "sweep", "--textfile", "/var/lib/node_exporter"]
    units = systemd_units(schedule_command(argv, log), 5)
    assert sorted(units) == ["rbee-sweep.service", "rbee-sweep.timer"]
    assert "OnUnitActiveSec=5min" in units["rbee-sweep.timer"]
    assert "%%" in units["rbee-sweep.service"]  # a literal % for systemd
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    done = subprocess.run(
        [analyze, "verify", "--user", *(str(tmp_path / n) for n in units)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )  # fmt: skip
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    # The same checker refuses a unit that is wrong (the check can fail).
    (tmp_path / "rbee-sweep.timer").write_text(units["rbee-sweep.timer"].replace("5min", "5xx"))
    bad = subprocess.run(
        [analyze, "verify", "--user", str(tmp_path / "rbee-sweep.timer")],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )  # fmt: skip
    assert bad.returncode != 0
