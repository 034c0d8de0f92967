"""Process plumbing shared by the roles: parent-death signals, lifelines, stopping process groups.

A child started by rbee must never outlive the process that started it (see DESIGN.md, "Cascading
shutdown"). Three layers make that so: its own process group (so it can be stopped whole),
`PR_SET_PDEATHSIG` on Linux (re-checked with getppid, since the parent may already be gone), and a
lifeline pipe whose EOF means "your parent is gone" on every OS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "arm_parent_death_signal",
    "lower_session_priority",
    "pid_alive",
    "set_process_name",
    "stop_process_group",
    "watch_lifeline",
]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def arm_parent_death_signal(expected_parent: int | None, sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` when the parent dies; exit now if it is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    # The parent may have died between our fork and the prctl: then we were re-parented already.
    if expected_parent is not None and os.getppid() != expected_parent:
        log.warning("parent %d is gone before start; exiting", expected_parent)
        raise SystemExit(1)


def set_process_name(name: str) -> None:
    """Name this process for `top` and `ps -o comm` (Linux: at most 15 bytes; elsewhere: no-op)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def lower_session_priority(increment: int, autogroup: Path = Path("/proc/self/autogroup")) -> bool:
    """Lower the CPU weight of this process's whole session against other sessions (Linux).

    With autogroup scheduling (the default of desktop and server kernels), the kernel shares the
    CPU between sessions first and between a session's threads second, so a thread's own nice
    value only ranks it inside its session. A worker is a session of its own: this is the one
    knob that makes the queen, the hive and the user's shell win the CPU back from its compute
    threads the moment they wake. It is best effort and says whether it changed anything: without
    autogroup (`noautogroup`, sched_autogroup_enabled=0: the file reads empty) or in a cpu cgroup
    other than the root one (where it does not apply) threads are weighed one by one, and the
    engine thread's own nice value (rbee.worker.runner) does the job.
    """
    if not increment or not sys.platform.startswith("linux"):
        return False
    try:
        # "/autogroup-123 nice 0": a session may raise its own nice value, never lower it.
        current = int(autogroup.read_text().split()[-1])
        autogroup.write_text(str(min(19, current + increment)))
    except (OSError, ValueError, IndexError) as err:
        log.debug("session priority left as it is (no autogroup here): %s", err)
        return False
    return True


def watch_lifeline(fd: int, on_eof: Callable[[], None]) -> Callable[[], None]:
    """Call `on_eof` (on the running loop) once the lifeline pipe `fd` reaches EOF.

    Returns a function that stops watching. The pipe carries no data; the parent holding its write
    end is all it says, and the kernel closes that end whatever way the parent dies.
    """
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            on_eof()

    loop.add_reader(fd, readable)

    def stop() -> None:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(fd)

    return stop


def pid_alive(pid: int) -> bool:
    """True if a process `pid` exists and is not a zombie (an exited, unreaped process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


async def stop_process_group(proc: asyncio.subprocess.Process, grace: float) -> int:
    """TERM the process group led by `proc`, KILL it after `grace` seconds; return the exit code.

    The whole group is signalled, so whatever the process started is stopped with it.
    """
    pgid = proc.pid
    if proc.returncode is None:
        _signal_group(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("process %d ignored SIGTERM for %.1fs; killing its group", pgid, grace)
            _signal_group(pgid, signal.SIGKILL)
            await proc.wait()
    # Anything left in the group (a grandchild that outlived its parent) goes too.
    _signal_group(pgid, signal.SIGKILL)
    assert proc.returncode is not None
    return proc.returncode
