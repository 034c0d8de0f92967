"""Command lines that cross SSH: argv lists, every word quoted, never a shell string from input.

sshd hands a command to the remote user's shell as one string, so an argv must be joined with each
word `shlex.quote`d. Nothing in rbee builds that string any other way.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

__all__ = ["ENV_NAME", "remote_command"]

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def remote_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    exec_: bool = True,
) -> str:
    """The shell line that runs `argv` (optionally in `cwd`, with `env`) on the remote side.

    `exec` replaces the remote shell with the command, so signals (SIGHUP from a PTY hang-up)
    reach it directly.
    """
    if not argv:
        raise ValueError("an empty command cannot be run")
    words = [shlex.quote(word) for word in argv]
    if env:
        for name in env:
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"invalid environment variable name {name!r}")
        words = ["env", *(shlex.quote(f"{k}={v}") for k, v in env.items()), *words]
    line = " ".join(words)
    if exec_:
        line = f"exec {line}"
    if cwd is not None:
        line = f"cd {shlex.quote(cwd)} && {line}"
    return line
