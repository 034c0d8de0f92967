"""`rbee worker standby`: a worker process started ahead of need, waiting to be told what to run.

Starting a worker is mostly starting Python: the interpreter, the worker's modules and the
engine's library take half a second before the model's first byte is read, about as long as a
small model takes to load. A hive keeps one standby (rbee.hive.standby): a process that has done
all that and waits on stdin. When a worker is wanted, the hive writes one JSON line, the order:

    {"argv": [... the `rbee` arguments of `rbee worker run` ...],
     "log": "/path/to/worker-ID.log", "env": {... the environment to run with ...}}

and the standby becomes that worker: it sends its output to the worker's log, takes the
environment it would have been started with, and runs the same command line through the same
parser, so a worker from a standby and one started afresh are configured by one code path. The
ready and lifeline pipes named in that argv are the ones the hive gave the standby at its start.

A standby holds to the same shutdown layers as any worker: its own process group, the parent
death signal armed before anything else, and EOF on stdin (the hive gone, or done with it) ends it
at once. Its process name (`comm`, what `top` shows) is `rbee-standby` while it waits and
`rbee-worker` once it runs a worker.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rbee.errors import RbeeError
from rbee.proc import arm_parent_death_signal, set_process_name

__all__ = ["STANDBY_NAME", "Order", "wait_for_order"]

log = logging.getLogger(__name__)

STANDBY_NAME = "rbee-standby"


@dataclass(frozen=True)
class Order:
    """What a hive asks its standby to become."""

    argv: tuple[str, ...]
    """`rbee`'s arguments (after `python -m rbee`) for `rbee worker run`."""
    log: str
    env: dict[str, str]

    def to_line(self) -> bytes:
        """The order as the one line the hive writes to the standby's stdin."""
        body = {"argv": list(self.argv), "log": self.log, "env": self.env}
        return json.dumps(body).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Order:
        """Parse an order line; RbeeError naming what is wrong."""
        try:
            raw: Any = json.loads(line)
            argv, path, env = raw["argv"], raw["log"], raw["env"]
        except (ValueError, KeyError, TypeError) as err:
            raise RbeeError(f"standby: unreadable order {line[:200]!r}: {err}") from None
        if not (
            isinstance(argv, list)
            and all(isinstance(a, str) for a in argv)
            and "worker" in argv
            and "run" in argv
        ):
            raise RbeeError(f"standby: an order must be `rbee worker run` arguments, got {argv!r}")
        if not isinstance(path, str) or not path:
            raise RbeeError(f"standby: an order needs a log path, got {path!r}")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise RbeeError("standby: an order's env must map names to strings")
        return cls(tuple(argv), path, env)


def wait_for_order(engine: str, parent_pid: int | None, run: Callable[[Sequence[str]], int]) -> int:
    """Import `engine`'s library, wait for the order on stdin, then `run` its argv; the exit code
    (0 when stdin closes with no order: the hive is gone or stopped its standby)."""
    if parent_pid is not None:
        arm_parent_death_signal(parent_pid)
    set_process_name(STANDBY_NAME)
    # What a worker imports, imported now rather than once a worker is wanted. (Not at the top:
    # the hive imports this module for Order, and has no use for a worker's modules.)
    from rbee.engines.factory import preload_engine  # noqa: PLC0415
    from rbee.worker import daemon  # noqa: F401, PLC0415

    preload_engine(engine)
    line = sys.stdin.buffer.readline()
    if not line:
        return 0
    order = Order.from_line(line)
    _become(order)
    return run(order.argv)


def _become(order: Order) -> None:
    """Take the order's log as stdout and stderr, and its environment."""
    fd = os.open(order.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # a log is private
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(order.env)
    # The worker reads nothing from stdin: leave the hive's pipe, as a worker started afresh
    # has /dev/null there.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    log.info("standby %d: becoming `rbee %s`", os.getpid(), " ".join(order.argv))
