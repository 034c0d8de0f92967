"""One asyncssh connection to one hive, with host keys always verified.

The connection reaches the machine `ssh -F hives.conf ALIAS` reaches: rbee resolves each alias as
OpenSSH does (rbee.config.sshresolve: Host and Match blocks, Include, tokens, first value wins),
and asyncssh reads that resolution, written out for the one alias and its jump hosts
(`HivesConfig.asyncssh_text`, in a 0600 temporary file while it connects), never the whole file:
its own reading of Match differs from ssh's, and parsing every hive's lines for each connection
would cost 20 ms for 50 hives.
Commands are argv lists quoted word by word (`rbee.ssh.argv`).

At most `MAX_CHANNELS` channels are open on a connection at once (sshd's MaxSessions defaults to 10
sessions per connection): every command, SFTP session, long-lived process and forwarded TCP
connection holds a slot while it is open, and waits for one when none is free. Forwarded
connections (requests relayed to the hive and its workers) may hold at most `MAX_FORWARDED` of
them, so however busy the workers are, the hive's own session and the queen's commands and uploads
still find a free slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncssh

from rbee.config.hives import HivesConfig
from rbee.errors import HostKeyError, RemoteCommandError, SshError
from rbee.ssh.argv import remote_command
from rbee.ssh.forward import PortForward

__all__ = [
    "CIPHER_PREFERENCE",
    "MAX_CHANNELS",
    "MAX_FORWARDED",
    "HiveConnection",
    "RemoteResult",
    "connect_error",
    "expand_home",
]

log = logging.getLogger(__name__)

_OPEN_TRIES = 8
T = TypeVar("T")

MAX_CHANNELS = 8
# Forwarded TCP connections' share of MAX_CHANNELS: with the hive's own session open, two slots
# stay for commands and SFTP.
MAX_FORWARDED = 5

# Last, so any Ciphers line of hives.conf wins (the first value found is the one used): the
# AES-GCM ciphers first, the rest of asyncssh's default list after them, nothing left out. AES-GCM
# is in OpenSSH's default list too; in asyncssh it costs less CPU per packet than
# chacha20-poly1305, which builds a cipher object for every packet.
CIPHER_PREFERENCE = "Match all\nCiphers ^aes128-gcm@openssh.com,aes256-gcm@openssh.com\n"


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


def expand_home(path: str, home: str) -> str:
    """`~` or `~/...` made `home` or `home/...`; any other path as it is."""
    if path == "~":
        return home
    if path.startswith("~/"):
        return posixpath.join(home, path[2:])
    return path


@contextlib.contextmanager
def asyncssh_config_file(alias: str, source: Path, text: str | None) -> Iterator[Path]:
    """A file for asyncssh to read while it connects to `alias`: `text`, rbee's resolution of
    the alias in `source` (hives.conf; `HivesConfig.asyncssh_text`) with rbee's cipher
    preference, written 0600 and removed after; `source` itself when there is no `text`."""
    if text is None:
        yield source
        return
    with tempfile.NamedTemporaryFile(
        "w", prefix=f"rbee-ssh-{alias}-", suffix=".conf", encoding="utf-8"
    ) as file:  # mode 0600, and gone when closed
        file.write(f"# {source}: the lines for {alias}\n{text}")
        file.write(CIPHER_PREFERENCE)
        file.flush()
        yield Path(file.name)


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
        config_text: str | None = None,
    ) -> None:
        self.alias = alias
        self._config = config_path
        # asyncssh reads config from files only: the text goes to a private file while connecting.
        self._config_text = config_text
        self._connect_timeout = connect_timeout
        self._keepalive = (keepalive_interval, keepalive_count_max)
        # () lets asyncssh take UserKnownHostsFile from the config (else ~/.ssh/known_hosts).
        self._known_hosts = known_hosts
        self._conn: asyncssh.SSHClientConnection | None = None
        self._channels = asyncio.Semaphore(MAX_CHANNELS)
        self._forwarded = asyncio.Semaphore(MAX_FORWARDED)
        self.channels_in_use = 0
        """How many channel slots are held now."""
        self.channels_peak = 0
        """The most slots ever held at once on this connection."""
        self._home: str | None = None

    @classmethod
    def of(
        cls,
        config: HivesConfig,
        alias: str,
        *,
        connect_timeout: float = 10.0,
        keepalive_interval: float = 5.0,
        keepalive_count_max: int = 3,
    ) -> HiveConnection:
        """A connection to hive `alias` that hands asyncssh rbee's resolution of that alias
        (`HivesConfig.asyncssh_text`)."""
        hive = config.get(alias)
        return cls(
            hive.alias,
            config.path,
            connect_timeout=connect_timeout,
            keepalive_interval=keepalive_interval,
            keepalive_count_max=keepalive_count_max,
            config_text=config.asyncssh_text(alias),
        )

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
            with self._config_file() as config:
                self._conn = await asyncssh.connect(
                    self.alias,
                    config=[str(config)],
                    connect_timeout=self._connect_timeout,
                    keepalive_interval=self._keepalive[0],
                    keepalive_count_max=self._keepalive[1],
                    **options,
                )
        except (OSError, asyncssh.Error, TimeoutError) as err:
            raise connect_error(self.alias, err) from err
        return self

    def _config_file(self) -> contextlib.AbstractContextManager[Path]:
        """The file asyncssh reads while it connects (jump hosts included), removed after."""
        return asyncssh_config_file(self.alias, self._config, self._config_text)

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

    @contextlib.asynccontextmanager
    async def channel(self) -> AsyncIterator[None]:
        """Hold one of the connection's `MAX_CHANNELS` slots: open a channel only inside this."""
        async with self._channels:
            self.channels_in_use += 1
            self.channels_peak = max(self.channels_peak, self.channels_in_use)
            try:
                yield
            finally:
                self.channels_in_use -= 1

    async def open_session(self, opener: Callable[[], Awaitable[T]]) -> T:
        """Open a session channel with `opener`, again after a moment if sshd refuses it.

        sshd counts a session until it has reaped its process, a little after the channel has
        closed on this side: on a busy hive, a slot freed here may not be free there yet, and
        sshd answers "open failed" (MaxSessions). That is worth a few short waits, not an error.
        """
        delay = 0.05
        for _ in range(_OPEN_TRIES - 1):
            try:
                return await opener()
            except asyncssh.ChannelOpenError as err:
                log.debug("%s: sshd refused a session (%s); again in %.2fs", self.alias, err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        return await opener()

    @contextlib.asynccontextmanager
    async def sftp(self) -> AsyncIterator[asyncssh.SFTPClient]:
        """An SFTP session, holding a channel slot while it is open."""
        async with self.channel():
            client = await self.open_session(self.conn.start_sftp_client)
            async with client as sftp:
                yield sftp

    async def forward(self, port: int) -> PortForward:
        """Forward a new local port on 127.0.0.1 to `port` on the hive's 127.0.0.1; each connection
        to it holds a channel slot (and one of the `MAX_FORWARDED`) while it is open."""

        def open_channel(
            factory: Callable[[], asyncssh.SSHTCPSession[bytes]],
        ) -> Awaitable[tuple[asyncssh.SSHTCPChannel[bytes], asyncssh.SSHTCPSession[bytes]]]:
            return self.conn.create_connection(factory, "127.0.0.1", port)

        return await PortForward.start(f"{self.alias}:{port}", self._forward_slot, open_channel)

    @contextlib.asynccontextmanager
    async def _forward_slot(self) -> AsyncIterator[None]:
        async with self._forwarded, self.channel():
            yield

    async def resolve(self, path: str) -> str:
        """`path` as the hive names it: a leading `~` is the hive user's home there (asked once
        per connection). The one place rbee expands `~` for a hive."""
        if not (path == "~" or path.startswith("~/")):
            return path
        if self._home is None:
            home = (await self.check(["sh", "-c", 'printf %s "$HOME"'])).stdout
            if not home.startswith("/"):
                raise SshError(f"{self.alias}: the hive user's $HOME is {home!r}, not a path")
            self._home = home
        return expand_home(path, self._home)

    async def run(
        self, argv: list[str], *, input: str | None = None, time_limit: float = 60.0
    ) -> RemoteResult:
        """Run `argv` on the hive and collect its output (never through a shell string)."""
        line = remote_command(argv, exec_=False)
        async with self.channel():
            try:
                result = await self.open_session(
                    lambda: self.conn.run(line, input=input, check=False, timeout=time_limit)
                )
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
