"""Trusting a hive's host key: an explicit, visible step (`rbee hive trust ALIAS`).

rbee never connects to a hive whose key is unknown or changed. To trust a new hive, rbee fetches
the key the server offers (without authenticating), shows its SHA256 fingerprint, and only after
the operator confirms it appends a line to the known_hosts file that hive is verified against.

A key that differs from the one known_hosts holds for that host is not a new hive: it is a
reinstalled machine, a regenerated key, or someone in the middle. `host_key_status` tells the
two apart, so the CLI can show the old and new fingerprints and require its own flag; replacing
removes the old entries (`replace_host_key`), so the old key is no longer trusted either.

known_hosts is the operator's file: edits keep its mode, and when it is a symlink its target is
rewritten (atomically) and the link stays.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncssh

from rbee.errors import HostKeyError, SshError
from rbee.fsutil import atomic_write_text
from rbee.ssh.connection import asyncssh_config_file, connect_error

__all__ = [
    "HostKey",
    "KnownEntry",
    "TrustStatus",
    "fetch_host_key",
    "host_key_status",
    "known_hosts_line",
    "known_hosts_name",
    "record_host_key",
    "replace_host_key",
]

MAX_KNOWN_HOSTS_BYTES = 16 << 20
"""A known_hosts file larger than this is not one (it is read whole, to edit it)."""


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


def known_hosts_name(host: str, port: int) -> str:
    """The name known_hosts files `host`:`port` under (OpenSSH's `[host]:port` off port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_line(host: str, port: int, key: asyncssh.SSHKey) -> str:
    """The known_hosts entry for `key` at host:port (OpenSSH's `[host]:port` form off port 22)."""
    name = known_hosts_name(host, port)
    return f"{name} {key.export_public_key('openssh').decode().strip()}\n"


@dataclass(frozen=True)
class KnownEntry:
    """A known_hosts line that names a host: where it is, and the key it holds."""

    line: int
    """1-based."""
    key_type: str
    fingerprint: str
    """SHA256 fingerprint, or a note when the line's key cannot be read."""
    by_pattern: bool
    """True when the host matched a wildcard pattern, not its own name (or its hash)."""


@dataclass(frozen=True)
class TrustStatus:
    """What known_hosts says about a key a host offers."""

    state: Literal["known", "new", "changed"]
    others: tuple[KnownEntry, ...] = ()
    """When changed: the entries for that host holding other keys."""


def _matches_hashed(pattern: str, name: str) -> bool:
    """OpenSSH's HashKnownHosts form, `|1|salt|HMAC-SHA1(salt, name)` (both base64)."""
    try:
        magic, salt, digest = pattern[1:].split("|")
        salt_bytes, digest_bytes = base64.b64decode(salt), base64.b64decode(digest)
    except (ValueError, binascii.Error):
        return False
    mac = hmac.new(salt_bytes, name.encode(), hashlib.sha1).digest()
    return magic == "1" and hmac.compare_digest(mac, digest_bytes)


def _wildcard(pattern: str) -> re.Pattern[str]:
    """An OpenSSH host pattern as a regex: `*` and `?` are wildcards, all else literal (`[` too,
    as in `[host]:2222`)."""
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    )


def _match(patterns: str, name: str) -> Literal["name", "pattern", None]:
    """How a line's host field matches `name`: by the name itself (or its hash), by a wildcard
    pattern, or not at all (a matching `!negation` rules the line out, as in OpenSSH)."""
    if patterns.startswith("|"):
        return "name" if _matches_hashed(patterns, name) else None
    found: Literal["name", "pattern", None] = None
    for word in patterns.lower().split(","):
        negated = word.startswith("!")
        pattern = word.removeprefix("!")
        exact = pattern == name.lower()
        if not exact and not _wildcard(pattern).fullmatch(name.lower()):
            continue
        if negated:
            return None
        if found != "name":
            found = "name" if exact else "pattern"
    return found


def _read(known_hosts: Path) -> str:
    try:
        with known_hosts.open("rb") as f:
            raw = f.read(MAX_KNOWN_HOSTS_BYTES + 1)
    except FileNotFoundError:
        return ""
    if len(raw) > MAX_KNOWN_HOSTS_BYTES:
        raise HostKeyError(
            f"{known_hosts}: larger than {MAX_KNOWN_HOSTS_BYTES} bytes; not a known_hosts file"
        )
    return raw.decode("utf-8", "replace")


def _entries(text: str, name: str) -> list[tuple[int, str, asyncssh.SSHKey | None, bool]]:
    """(line number, key type, key or None if unreadable, by pattern) of each plain entry
    naming `name` (@cert-authority and @revoked lines are left to asyncssh)."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if len(words) < 3 or words[0].startswith(("#", "@")):
            continue
        how = _match(words[0], name)
        if how is None:
            continue
        try:
            key: asyncssh.SSHKey | None = asyncssh.import_public_key(f"{words[1]} {words[2]}")
        except (asyncssh.KeyImportError, ValueError):
            key = None
        found.append((number, words[1], key, how == "pattern"))
    return found


def _same(a: asyncssh.SSHKey | None, b: asyncssh.SSHKey) -> bool:
    return a is not None and a.public_data == b.public_data


def host_key_status(known_hosts: Path, host: str, port: int, key: asyncssh.SSHKey) -> TrustStatus:
    """Whether `key` at host:port is already trusted, new (no entry names the host) or changed
    (entries name the host, none with this key)."""
    entries = _entries(_read(known_hosts), known_hosts_name(host, port))
    if any(_same(entry_key, key) for _, _, entry_key, _ in entries):
        return TrustStatus("known")
    if not entries:
        return TrustStatus("new")
    others = tuple(
        KnownEntry(
            line=number,
            key_type=key_type,
            fingerprint=str(entry_key.get_fingerprint("sha256")) if entry_key else "(unreadable)",
            by_pattern=by_pattern,
        )
        for number, key_type, entry_key, by_pattern in entries
    )
    return TrustStatus("changed", others)


def record_host_key(known_hosts: Path, host: str, port: int, key: asyncssh.SSHKey) -> bool:
    """Append the entry unless the key is trusted already (atomically); True if it was added."""
    current = _read(known_hosts)
    name = known_hosts_name(host, port)
    if any(_same(entry_key, key) for _, _, entry_key, _ in _entries(current, name)):
        return False
    if current and not current.endswith("\n"):
        current += "\n"
    atomic_write_text(known_hosts, current + known_hosts_line(host, port, key), preserve=True)
    return True


def _without(line: str, name: str) -> str | None:
    """`line` with `name` taken out of its host list; None when nothing of it is left."""
    words = line.split(None, 1)
    if words[0].startswith("|"):
        return None
    kept = [p for p in words[0].split(",") if p.lower() != name.lower()]
    return f"{','.join(kept)} {words[1]}" if kept else None


def replace_host_key(known_hosts: Path, host: str, port: int, key: asyncssh.SSHKey) -> list[int]:
    """Remove every other key known_hosts holds for host:port and record `key`, in one atomic
    write; the line numbers removed (or edited, when a line names other hosts too).

    A wildcard entry (`*.lan ssh-ed25519 ...`) also vouches for other hosts: it is not edited,
    and the replacement is refused naming its line."""
    current = _read(known_hosts)
    name = known_hosts_name(host, port)
    entries = _entries(current, name)
    shared = [number for number, _, entry_key, by in entries if by and not _same(entry_key, key)]
    if shared:
        raise HostKeyError(
            f"{known_hosts}:{shared[0]}: a wildcard entry holds another key for {name}; "
            "edit that line by hand (it covers other hosts too)"
        )
    drop = {number for number, _, entry_key, _ in entries if not _same(entry_key, key)}
    lines = current.splitlines(keepends=True)
    out = []
    for number, line in enumerate(lines, start=1):
        if number not in drop:
            out.append(line)
            continue
        left = _without(line.rstrip("\n"), name)
        if left is not None:
            out.append(left + "\n")
    text = "".join(out)
    if text and not text.endswith("\n"):
        text += "\n"
    if not any(_same(entry_key, key) for _, _, entry_key, _ in entries):
        text += known_hosts_line(host, port, key)
    atomic_write_text(known_hosts, text, preserve=True)
    return sorted(drop)
