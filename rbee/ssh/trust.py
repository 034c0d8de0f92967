"""Trusting a hive's host key: an explicit, visible step (`rbee hive trust ALIAS`).

rbee never connects to a hive whose key is unknown or changed. To trust a new hive, rbee fetches
the key the server offers (without authenticating), shows its SHA256 fingerprint, and only after
the operator confirms it appends a line to the known_hosts file that hive is verified against.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh

from rbee.errors import SshError
from rbee.fsutil import atomic_write_text
from rbee.ssh.connection import asyncssh_config_file, connect_error

__all__ = ["HostKey", "fetch_host_key", "known_hosts_line", "record_host_key"]


class HostKey:
    """A server's public host key, as offered by `host`:`port`."""

    def __init__(self, host: str, port: int, key: asyncssh.SSHKey) -> None:
        self.host = host
        self.port = port
        self.key = key

    @property
    def fingerprint(self) -> str:
        """The key's SHA256 fingerprint, as `ssh-keygen -l` prints it."""
        return str(self.key.get_fingerprint("sha256"))

    @property
    def algorithm(self) -> str:
        """The key type, e.g. ssh-ed25519."""
        return self.key.get_algorithm()


async def fetch_host_key(
    alias: str,
    config_path: Path,
    *,
    host: str,
    port: int,
    config_text: str | None = None,
    limit: float = 10.0,
) -> HostKey:
    """The host key `alias` (at host:port) offers, fetched without trusting or authenticating;
    asyncssh reads `config_text` (rbee's resolution of the alias) when given, as it does when it
    connects (rbee.ssh.connection)."""
    try:
        async with asyncio.timeout(limit):
            with asyncssh_config_file(alias, config_path, config_text) as config:
                key = await asyncssh.get_server_host_key(alias, config=[str(config)])
    except (OSError, asyncssh.Error, TimeoutError) as err:
        raise connect_error(alias, err) from err
    if key is None:
        raise SshError(f"{alias}: the server offered no host key")
    return HostKey(host, port, key)


def known_hosts_line(host: str, port: int, key: asyncssh.SSHKey) -> str:
    """The known_hosts entry for `key` at host:port (OpenSSH's `[host]:port` form off port 22)."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.export_public_key('openssh').decode().strip()}\n"


def record_host_key(known_hosts: Path, host: str, port: int, key: asyncssh.SSHKey) -> bool:
    """Append the entry unless it is there already (atomically); True if it was added."""
    line = known_hosts_line(host, port, key)
    try:
        current = known_hosts.read_text()
    except FileNotFoundError:
        current = ""
    if line in current.splitlines(keepends=True) or line.rstrip("\n") in current.splitlines():
        return False
    if current and not current.endswith("\n"):
        current += "\n"
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(known_hosts, current + line)
    return True
