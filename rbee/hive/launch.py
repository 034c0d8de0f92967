"""Starting a worker process, afresh or from the hive's standby.

Every worker process, and every standby, starts the same way: in its own session (so its group can
be stopped whole), its output appended to a log, with two pipes passed down: it writes its ready
line on one, and EOF on the other (the lifeline, whose write end only the hive holds) tells it the
hive is gone. The standby keeper (`Standby`) holds one such process started ahead of need, with
`rbee worker standby` instead of `rbee worker run`; handing it an order turns it into a worker
that is indistinguishable to the supervisor from one started afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rbee.fsutil import open_private_log
from rbee.proc import stop_process_group
from rbee.worker.standby import Order

__all__ = ["STANDBY_DELAY", "Launched", "Standby", "launch"]

log = logging.getLogger(__name__)

STANDBY_DELAY = 3.0
"""Seconds after a standby is taken before the next one starts: its imports (half a second of a
core) should not compete with the worker that just started and its first requests."""


@dataclass
class Launched:
    """A started process and the hive's ends of its two pipes."""

    proc: asyncio.subprocess.Process
    ready: int
    """The read end of the ready pipe (the hive's)."""
    lifeline: int
    """The write end of the lifeline pipe (the hive's); closing it stops the process."""
    child_ready: int
    """The ready pipe's descriptor number in the child, for its command line."""
    child_lifeline: int

    def close_pipes(self) -> None:
        """Close the hive's ends (the process, if alive, sees its lifeline end)."""
        for fd in (self.ready, self.lifeline):
            with contextlib.suppress(OSError):
                os.close(fd)


async def launch(
    argv_for: Callable[[int, int], list[str]],
    log_path: Path,
    *,
    standby: bool = False,
    env: Mapping[str, str] | None = None,
) -> Launched:
    """Start `argv_for(ready_fd, lifeline_fd)` as a worker process (or a standby: its stdin a
    pipe for the order), with `env` (None: this process's); OSError if it cannot be started."""
    ready_r, ready_w = os.pipe()
    life_r, life_w = os.pipe()
    os.set_inheritable(life_w, False)
    os.set_inheritable(ready_r, False)
    argv = argv_for(ready_w, life_r)
    try:
        with open_private_log(log_path) as log_file:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if standby else asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(ready_w, life_r),
                start_new_session=True,
                env=None if env is None else dict(env),
            )
    except OSError:
        os.close(life_w)
        os.close(ready_r)
        raise
    finally:
        os.close(ready_w)
        os.close(life_r)
    return Launched(proc, ready_r, life_w, child_ready=ready_w, child_lifeline=life_r)


class Standby:
    """At most one standby worker process for a hive, started again after each use.

    `argv_for(ready_fd, lifeline_fd)` is the standby's command line; `grace` the seconds between
    TERM and KILL when it is stopped.
    """

    def __init__(
        self, argv_for: Callable[[int, int], list[str]], log_path: Path, grace: float
    ) -> None:
        self._argv_for = argv_for
        self._log_path = log_path
        self._grace = grace
        self._spare: Launched | None = None
        self._starting: asyncio.Task[None] | None = None
        self._later: asyncio.TimerHandle | None = None
        self._closed = False

    def fill(self, delay: float = 0.0) -> None:
        """Have a standby ready (started now, or after `delay` seconds) unless one is."""
        if self._closed or self._spare is not None or self._starting is not None:
            return
        if self._later is not None:
            self._later.cancel()
        loop = asyncio.get_running_loop()
        self._later = loop.call_later(delay, self._start)

    def _start(self) -> None:
        self._later = None
        if self._closed or self._spare is not None or self._starting is not None:
            return
        self._starting = asyncio.ensure_future(self._launch())

    async def _launch(self) -> None:
        try:
            self._spare = await launch(self._argv_for, self._log_path, standby=True)
            log.info("standby worker started (pid %d)", self._spare.proc.pid)
        except OSError as err:
            log.warning("could not start a standby worker (workers start afresh): %s", err)
        finally:
            self._starting = None
        if self._closed and self._spare is not None:
            await self._stop(self._spare)
            self._spare = None

    async def take(self, order_for: Callable[[Launched], Order]) -> Launched | None:
        """The standby, handed the order `order_for(it)`, now a worker; None if there is none
        alive (then start one afresh). A new standby follows after STANDBY_DELAY."""
        if self._starting is not None:
            await asyncio.shield(self._starting)
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        self.fill(STANDBY_DELAY)
        stdin = spare.proc.stdin
        try:
            if spare.proc.returncode is not None or stdin is None:
                raise ConnectionResetError(f"it exited with {spare.proc.returncode}")
            stdin.write(order_for(spare).to_line())
            await stdin.drain()
            stdin.close()
        except (OSError, RuntimeError) as err:
            log.warning("the standby worker (pid %d) is gone (%s); starting afresh",
                        spare.proc.pid, err)  # fmt: skip
            await self._stop(spare)
            return None
        return spare

    async def close(self) -> None:
        """Stop the standby (if any) and start no other."""
        self._closed = True
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        spare, self._spare = self._spare, None
        if spare is not None:
            await self._stop(spare)

    async def _stop(self, spare: Launched) -> None:
        spare.close_pipes()
        if spare.proc.stdin is not None:
            spare.proc.stdin.close()  # EOF: a waiting standby exits by itself at once
        await stop_process_group(spare.proc, self._grace)
