"""rbee.proc: a session lowers its own CPU weight (autogroup), in a real process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import os
from pathlib import Path
from rbee.proc import lower_session_priority
before = int(Path("/proc/self/autogroup").read_text().split()[-1])
lower_session_priority(5)
middle = int(Path("/proc/self/autogroup").read_text().split()[-1])
lower_session_priority(30)
print(before, middle, int(Path("/proc/self/autogroup").read_text().split()[-1]))
"""


@pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(), reason="the kernel has no autogroup scheduling"
)
def test_a_session_lowers_its_own_weight_and_no_other() -> None:
    mine = Path("/proc/self/autogroup").read_text().split()[-1]
    # In a session of its own, as a worker is started.
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
        start_new_session=True,
    )  # fmt: skip
    before, middle, after = map(int, done.stdout.split())
    assert middle == min(19, before + 5)
    assert after == 19  # capped at the lowest weight there is
    assert Path("/proc/self/autogroup").read_text().split()[-1] == mine  # ours is untouched
