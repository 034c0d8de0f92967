"""One asyncssh connection to one hive, with host keys always verified.

The connection reads the same hives.conf the operator can hand to `ssh -F` (asyncssh understands
HostName, User, Port, IdentityFile, ProxyJump, UserKnownHostsFile, ServerAliveInterval, ...).
Commands are argv lists quoted word by word (`rbee.ssh.argv`), and at most `MAX_CHANNELS` run at
once: sshd's MaxSessions defaults to 10 per connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh

from rbee.errors import HostKeyError, RemoteCommandError, SshError
from rbee.ssh.argv import remote_command

__all__ = ["MAX_CHANNELS", "HiveConnection", "RemoteResult", "connect_error"]

log = logging.getLogger(__name__)

MAX_CHANNELS = 8


@dataclass(frozen=True)
class RemoteResult:
    """What a command on a hive did."""

    argv: tuple[str, ...]
    exit_status: int | None
    stdout: str
    stderr: str


def connect_error(alias: str, err: BaseException) -> SshError:
    """A one-line, actionable error for a failed connection to `alias`."""
    if isinstance(err, asyncssh.HostKeyNotVerifiable):
        return HostKeyError(
            f"{alias}: the host key is not trusted ({err.reason}); if you expected this machine, "
            f"check its fingerprint with `rbee hive trust {alias}`"
        )
    if isinstance(err, asyncssh.PermissionDenied):
        return SshError(f"{alias}: authentication failed ({err.reason}); check User and "
                        "IdentityFile in hives.conf")  # fmt: skip
    if isinstance(err, TimeoutError):
        return SshError(f"{alias}: connection timed out")
    if isinstance(err, asyncssh.Error):
        return SshError(f"{alias}: SSH failed: {err.reason}")
    return SshError(f"{alias}: cannot connect: {err}")


class HiveConnection:
    """An open SSH connection to one hive; use as an async context manager."""

    def __init__(
        self,
        alias: str,
        config_path: Path,
        *,
        connect_timeout: float = 10.0,
        keepalive_interval: float = 5.0,
        keepalive_count_max: int = 3,
        known_hosts: Any = (),
    ) -> None:
        self.alias = alias
        self._config = config_path
        self._connect_timeout = connect_timeout
        self._keepalive = (keepalive_interval, keepalive_count_max)
        # () lets asyncssh take UserKnownHostsFile from the config (else ~/.ssh/known_hosts).
        self._known_hosts = known_hosts
        self._conn: asyncssh.SSHClientConnection | None = None
        self._channels = asyncio.Semaphore(MAX_CHANNELS)

    @property
    def conn(self) -> asyncssh.SSHClientConnection:
        """The asyncssh connection (for SFTP and port forwards)."""
        if self._conn is None:
            raise SshError(f"{self.alias}: not connected")
        return self._conn

    async def __aenter__(self) -> HiveConnection:
        options: dict[str, Any] = {}
        if self._known_hosts != ():
            options["known_hosts"] = self._known_hosts
        try:
            self._conn = await asyncssh.connect(
                self.alias,
                config=[str(self._config)],
                connect_timeout=self._connect_timeout,
                keepalive_interval=self._keepalive[0],
                keepalive_count_max=self._keepalive[1],
                **options,
            )
        except (OSError, asyncssh.Error, TimeoutError) as err:
            raise connect_error(self.alias, err) from err
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()

    async def run(
        self, argv: list[str], *, input: str | None = None, time_limit: float = 60.0
    ) -> RemoteResult:
        """Run `argv` on the hive and collect its output (never through a shell string)."""
        line = remote_command(argv, exec_=False)
        async with self._channels:
            try:
                result = await self.conn.run(line, input=input, check=False, timeout=time_limit)
            except asyncssh.TimeoutError as err:
                raise SshError(f"{self.alias}: `{' '.join(argv)}` timed out after {time_limit:g}s"
                               ) from err  # fmt: skip
            except (OSError, asyncssh.Error) as err:
                raise connect_error(self.alias, err) from err
        return RemoteResult(
            argv=tuple(argv),
            exit_status=result.exit_status,
            stdout=str(result.stdout or ""),
            stderr=str(result.stderr or ""),
        )

    async def check(
        self, argv: list[str], *, input: str | None = None, time_limit: float = 60.0
    ) -> RemoteResult:
        """Like run(), but a non-zero exit raises RemoteCommandError with the stderr tail."""
        result = await self.run(argv, input=input, time_limit=time_limit)
        if result.exit_status != 0:
            raise RemoteCommandError(self.alias, argv, result.exit_status, result.stderr)
        return result
