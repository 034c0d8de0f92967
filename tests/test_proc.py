"""rbee.proc: a session lowers its own CPU weight (autogroup), in a real process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rbee.proc import lower_session_priority

SCRIPT = """
from pathlib import Path
from rbee.proc import lower_session_priority

def session_nice():
    return int(Path("/proc/self/autogroup").read_text().split()[-1])

before = session_nice()
changed = lower_session_priority(5)
middle = session_nice()
lower_session_priority(30)
print(changed, before, middle, session_nice())
"""

AUTOGROUP = Path("/proc/self/autogroup").exists() and bool(Path("/proc/self/autogroup").read_text())


@pytest.mark.skipif(
    not AUTOGROUP,
    reason="sessions are not scheduled as groups here (autogroup off: the file reads empty)",
)
def test_a_session_lowers_its_own_weight_and_no_other() -> None:
    mine = Path("/proc/self/autogroup").read_text().split()[-1]
    # In a session of its own, as a worker is started.
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
        start_new_session=True,
    )  # fmt: skip
    changed, *nices = done.stdout.split()
    before, middle, after = map(int, nices)
    assert changed == "True"
    assert middle == min(19, before + 5)
    assert after == 19  # capped at the lowest weight there is
    assert Path("/proc/self/autogroup").read_text().split()[-1] == mine  # ours is untouched


@pytest.mark.parametrize("content", ["", "garbage\n"], ids=["autogroup off", "unreadable"])
def test_without_autogroup_nothing_changes_and_nothing_fails(tmp_path: Path, content: str) -> None:
    """Where sessions are not scheduled as groups (`noautogroup`, sched_autogroup_enabled=0, as
    on some CI machines), /proc/self/autogroup reads empty: the call changes nothing, says so and
    leaves the process's own nice value alone."""
    autogroup = tmp_path / "autogroup"
    autogroup.write_text(content)
    before = os.getpriority(os.PRIO_PROCESS, 0)
    assert lower_session_priority(5, autogroup) is False
    assert autogroup.read_text() == content
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
