"""One host's ssh settings, resolved from ssh_config directives as OpenSSH resolves them.

`resolve()` is rbee's one resolver: `rbee hive list`, `rbee config show` and the lines asyncssh
connects with all come from it, and for each host it gives what `ssh -G -F FILE HOST` prints
(OpenSSH 9.2 and later) for HostName, User, Port, ProxyJump, IdentityFile and UserKnownHostsFile.
The rules, in file order: a Host or Match line decides whether the lines after it apply; for each
keyword the first value obtained wins (IdentityFile values add up); defaults are filled in last.
The host name gets `%h` and is lowercased (an address is written as the resolver library writes
it); UserKnownHostsFile and IdentityFile get `~`, `${VAR}` and the `%` tokens when used.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rbee.config.sshconfig import Block, Directive
from rbee.config.sshjump import Hop, Jump, a2port, parse_jump
from rbee.config.sshmatch import ascii_lower, host_matches, match_applies, parse_match
from rbee.config.sshtokens import connection_tokens, expand_path
from rbee.errors import ConfigError

__all__ = ["DEFAULT_IDENTITY_FILES", "DEFAULT_KNOWN_HOSTS", "Local", "SshView", "resolve"]

DEFAULT_IDENTITY_FILES = (
    "~/.ssh/id_rsa",
    "~/.ssh/id_ecdsa",
    "~/.ssh/id_ecdsa_sk",
    "~/.ssh/id_ed25519",
    "~/.ssh/id_ed25519_sk",
    "~/.ssh/id_xmss",
    "~/.ssh/id_dsa",
)
"""What ssh tries when no IdentityFile applies (ssh -G lists them so)."""
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
MAX_IDENTITY_FILES = 100
_BLANK = " \t\r\n"


@dataclass(frozen=True)
class Local:
    """Who rbee runs as, where: what ssh fills in for the default User, `~` and the tokens."""

    user: str
    home: str
    """What `~` and `%d` stand for ($HOME; ssh takes the password database's, the same unless
    $HOME was changed)."""
    uid: int
    hostname: str
    env: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """For `${VAR}` in paths."""

    @classmethod
    def current(cls) -> Local:
        """This process's user, home, uid, host name and environment."""
        uid = os.getuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:  # a uid without a passwd entry (some containers)
            user = os.environ.get("USER") or str(uid)
        home = os.path.expanduser("~")
        return cls(user, home, uid, socket.gethostname(), dict(os.environ))


@dataclass(frozen=True)
class SshView:
    """How one host resolves: the values ssh connects with, and the lines that gave them."""

    name: str
    """The host name as typed (the alias)."""
    hostname: str
    user: str
    port: int
    identity_files: tuple[str, ...]
    """As `ssh -G` prints them: as written (ssh's defaults if none applies; `none` kept)."""
    identity_paths: tuple[str, ...]
    """The files ssh reads keys from: `~`, `${VAR}` and tokens expanded, `none` left out."""
    identity_configured: bool
    """Whether any IdentityFile line applies (else ssh's defaults are listed)."""
    user_known_hosts: tuple[str, ...]
    """Expanded, as `ssh -G` prints them (ssh's defaults if none applies)."""
    known_hosts_configured: bool
    proxy_jump: str | None
    """As `ssh -G` prints it: `[earlier hops,][user@]host[:port]`, a numeric host in brackets."""
    hops: tuple[Hop, ...]
    """The jump hosts in the order they are connected to."""
    proxy_command: str | None
    host_key_alias: str | None
    applied: tuple[Directive, ...] = field(compare=False, repr=False)
    """Every line that applies (Host and Match lines aside), in file order."""
    lines: Mapping[str, tuple[Directive, ...]] = field(compare=False, repr=False)
    """The same lines by lowercased keyword."""
    blocks: Mapping[Block, bool] = field(compare=False, repr=False)
    """For each Host or Match block read: whether it applies."""

    def first(self, key: str) -> Directive | None:
        """The line whose value ssh takes for `key` (lowercase), if any applies."""
        found = self.lines.get(key)
        return found[0] if found else None

    def in_force(self, scope: tuple[Block, ...]) -> bool:
        """Whether lines in `scope` apply (every block around them applies)."""
        return all(self.blocks[b] for b in scope)


def resolve(
    directives: Sequence[Directive],
    name: str,
    local: Local,
    *,
    user: str | None = None,
    port: int | None = None,
) -> SshView:
    """Resolve `name` as `ssh -F FILE [-l user] [-p port] name` would."""
    state = _State(name, local, user, port)
    blocks: dict[Block, bool] = {}
    in_force: dict[tuple[Block, ...], bool] = {}  # the lines of one block share their scope
    for d in directives:
        active = in_force.get(d.scope)
        if active is None:
            active = in_force[d.scope] = all(blocks[b] for b in d.scope)
        if d.opens is not None:
            blocks[d.opens] = active and state.opens(d)
        elif active:
            state.take(d)
    return state.view(blocks)


class _State:
    """What one resolution has found so far (ssh's Options while it reads the file)."""

    def __init__(self, name: str, local: Local, user: str | None, port: int | None) -> None:
        self.name = name
        self.local = local
        self.hostname: str | None = None
        self.user = user
        self.port = port
        self.identity: list[tuple[str, Directive]] = []
        self.known_hosts: Directive | None = None
        self.proxy_command: str | None = None
        self.jump: Jump | Literal["none"] | None = None
        self.host_key_alias: str | None = None
        self.applied: list[Directive] = []

    def opens(self, d: Directive) -> bool:
        """Whether the block a Host or Match line opens applies, given what is found so far."""
        if d.key == "host":
            return host_matches(d.args, self.name)
        host = _percent_h(self.hostname, self.name) if self.hostname else self.name
        return match_applies(
            parse_match(d),
            host=host,
            original=self.name,
            user=self.user or self.local.user,
            local_user=self.local.user,
        )

    def take(self, d: Directive) -> None:
        """Take what an applying line sets, unless an earlier line set it (ssh: first wins)."""
        key = d.key
        self.applied.append(d)
        if not d.args:
            return
        first = d.args[0]
        if key == "hostname":
            self.hostname = self.hostname or first
        elif key == "user":
            self.user = self.user or first
        elif key == "port":
            self.port = self.port or _port(d, first)
        elif key == "identityfile":
            if first not in (value for value, _ in self.identity):
                if len(self.identity) >= MAX_IDENTITY_FILES:
                    raise d.error(f"more than {MAX_IDENTITY_FILES} IdentityFile values")
                self.identity.append((first, d))
        elif key == "userknownhostsfile":
            self.known_hosts = self.known_hosts or d
        elif key == "proxycommand":
            self.proxy_command = self.proxy_command or d.rest.lstrip(_BLANK + "=")
        elif key == "proxyjump":
            self._take_jump(d)
        elif key == "hostkeyalias":
            self.host_key_alias = self.host_key_alias or ascii_lower(first)

    def _take_jump(self, d: Directive) -> None:
        # As ssh: `none` holds the place of a jump; a jump needs neither a ProxyCommand nor a
        # jump found before it, and stands for `ProxyCommand none` after it.
        jump = parse_jump(d)
        if jump is None:
            self.jump = self.jump or "none"
        elif self.proxy_command is None and self.jump is None:
            self.jump = jump
            self.proxy_command = "none"

    def view(self, blocks: Mapping[Block, bool]) -> SshView:
        """The resolution: defaults filled in, the host name settled, paths expanded."""
        host = _final_host(_percent_h(self.hostname, self.name) if self.hostname else self.name)
        user = self.user or self.local.user
        port = self.port or 22
        local = self.local
        tokens = connection_tokens(
            local_host=local.hostname,
            local_user=local.user,
            uid=local.uid,
            home=local.home,
            name=self.name,
            host=host,
            port=port,
            user=user,
            host_key_alias=self.host_key_alias,
        )

        def expand(path: str, d: Directive | None) -> str:
            try:
                return expand_path(path, tokens, home=local.home, env=local.env)
            except ValueError as err:
                raise (d.error(str(err)) if d else ConfigError(str(err))) from None

        identity: list[tuple[str, Directive | None]] = [*self.identity] or [
            (path, None) for path in DEFAULT_IDENTITY_FILES
        ]
        known_hosts: list[tuple[str, Directive | None]] = (
            [(path, self.known_hosts) for path in self.known_hosts.args]
            if self.known_hosts
            else [(path, None) for path in DEFAULT_KNOWN_HOSTS]
        )
        if known_hosts and known_hosts[0][0].lower() == "none":
            known_hosts = []  # host key checking off: refused by rbee's checks before this
        jump = self.jump if isinstance(self.jump, Jump) else None
        proxy_command = self.proxy_command
        if proxy_command is not None and proxy_command.lower() == "none":
            proxy_command = None
        return SshView(
            name=self.name,
            hostname=host,
            user=user,
            port=port,
            identity_files=tuple(path for path, _ in identity),
            identity_paths=tuple(expand(p, d) for p, d in identity if p.lower() != "none"),
            identity_configured=bool(self.identity),
            user_known_hosts=tuple(expand(path, d) for path, d in known_hosts),
            known_hosts_configured=self.known_hosts is not None,
            proxy_jump=jump.shown() if jump else None,
            hops=jump.hops if jump else (),
            proxy_command=proxy_command,
            host_key_alias=self.host_key_alias,
            applied=tuple(self.applied),
            lines=_by_key(self.applied),
            blocks=dict(blocks),
        )


def _by_key(lines: list[Directive]) -> dict[str, tuple[Directive, ...]]:
    found: dict[str, list[Directive]] = {}
    for d in lines:
        found.setdefault(d.key, []).append(d)
    return {key: tuple(ds) for key, ds in found.items()}


def _percent_h(hostname: str, name: str) -> str:
    """HostName with `%h` (the name typed) and `%%` expanded, as ssh does first."""
    return re.sub(r"%([h%])", lambda m: name if m[1] == "h" else "%", hostname)


def _final_host(host: str) -> str:
    """ssh's host name after the config: an address as getnameinfo() writes it, else lowercase."""
    fast = "%" in host or ":" in host or host.strip("0123456789.") == ""
    flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    try:
        found = socket.getaddrinfo(host, "22", 0, socket.SOCK_STREAM, 0, flags)
    except (OSError, UnicodeError, ValueError):
        found = []
    if len(found) != 1:
        return host if fast else ascii_lower(host)
    try:
        written = socket.getnameinfo(found[0][4], socket.NI_NUMERICHOST)[0]
    except (OSError, UnicodeError, ValueError):
        return host
    return written if ascii_lower(written) != ascii_lower(host) else host


def _port(d: Directive, text: str) -> int:
    port = a2port(text)
    if port is None or port <= 0:
        raise d.error(f"{d.keyword} must be 1-65535, got {text!r}")
    return port
