"""What asyncssh connects with: one host's resolution written out as ssh_config text.

asyncssh reads its configuration from files, decides Host and Match blocks its own way, and
parses the whole file for every connection (20 ms for 50 hives, each time). So it is handed the
resolver's answer instead (`rbee.config.sshresolve`): for the host, and for each jump host its
ProxyJump names, a `Match originalhost NAME` section holding the resolved HostName, User, Port,
ProxyJump or ProxyCommand, HostKeyAlias, IdentityFile and UserKnownHostsFile (paths expanded),
then every other line that applies, as written, in file order (asyncssh applies its own rule per
key to them, as it would on the whole file).

A jump host given as a bare name keeps that name; one with a user, a port or an address is given
a name of its own (`ALIAS+jump1`), so asyncssh finds the section resolved for exactly that hop.
As in ssh, only the first jump host's own ProxyJump is followed (later ones are reached through
the hops before them).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from rbee.config.sshjump import Hop
from rbee.config.sshresolve import SshView
from rbee.errors import ConfigError

__all__ = ["MAX_JUMP_HOSTS", "Resolver", "connect_text"]

MAX_JUMP_HOSTS = 8
"""The most jump hosts one connection may go through (a longer chain is most likely a loop)."""

Resolver = Callable[[str, str | None, int | None], SshView]
"""Resolves a jump host: (host, user or None, port or None), as `ssh -l user -p port host`."""

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_WRITTEN_HERE = frozenset(
    {
        "host",
        "match",
        "include",
        "hostname",
        "user",
        "port",
        "proxyjump",
        "proxycommand",
        "hostkeyalias",
        "identityfile",
        "userknownhostsfile",
    }
)


def connect_text(view: SshView, resolve_hop: Resolver) -> str:
    """The ssh_config text asyncssh connects to `view.name` with (jump hosts included)."""
    sections: dict[str, tuple[list[str], bool]] = {}  # name -> (lines, jump hosts followed)
    names: dict[Hop, str] = {}  # each distinct hop has one name in the text

    def name_of(hop: Hop) -> str:
        if hop not in names:
            plain = hop.user is None and hop.port is None and _PLAIN_NAME.fullmatch(hop.host)
            named = sum(name.startswith(f"{view.name}+") for name in names.values())
            names[hop] = hop.host if plain else f"{view.name}+jump{named + 1}"
        return names[hop]

    def visit(name: str, hop_view: SshView, follow: bool, chain: tuple[str, ...]) -> None:
        hop_names = [name_of(hop) for hop in hop_view.hops]
        sections[name] = (_section(name, hop_view, hop_names if follow else None), follow)
        if len(sections) > MAX_JUMP_HOSTS + 1:
            raise _chain_error(view, f"goes through more than {MAX_JUMP_HOSTS} jump hosts")
        if not follow:
            return
        for index, (hop, hop_name) in enumerate(zip(hop_view.hops, hop_names, strict=True)):
            first = index == 0  # only the first hop's own ProxyJump is followed, as in ssh
            if first and hop_name in chain:
                loop = " -> ".join(_shown(n, names) for n in (*chain, hop_name))
                raise _chain_error(
                    view,
                    f"loops through its jump hosts ({loop}); end the chain with "
                    "`ProxyJump none` in the last jump host's block",
                )
            known = sections.get(hop_name)
            if known is None or (first and not known[1]):
                visit(
                    hop_name,
                    resolve_hop(hop.host, hop.user, hop.port),
                    first,
                    (*chain, hop_name) if first else (hop_name,),
                )

    visit(view.name, view, True, (view.name,))
    return "".join("\n".join(lines) + "\n" for lines, _ in sections.values())


def _shown(name: str, names: dict[Hop, str]) -> str:
    """A hop as written in ProxyJump, for messages."""
    for hop, given in names.items():
        if given == name:
            user = f"{hop.user}@" if hop.user else ""
            port = f":{hop.port}" if hop.port else ""
            return f"{user}{hop.host}{port}"
    return name


def _section(name: str, view: SshView, hop_names: list[str] | None) -> list[str]:
    """One host's lines behind `Match originalhost NAME`; `hop_names` None: a later jump host,
    whose own ProxyJump or ProxyCommand is not used."""
    lines = [
        f"Match originalhost {name}",
        f"Hostname {_arg(view.hostname, percent=True)}",
        f"User {_arg(view.user)}",
        f"Port {view.port}",
    ]
    if hop_names:
        lines.append(f"ProxyJump {','.join(hop_names)}")
    elif hop_names is not None and view.proxy_command is not None:
        lines.append(f"ProxyCommand {view.proxy_command}")
    if view.host_key_alias is not None:
        lines.append(f"HostKeyAlias {_arg(view.host_key_alias)}")
    if view.identity_configured:
        paths = [f"IdentityFile {_arg(p, percent=True)}" for p in view.identity_paths]
        lines += paths or ["IdentityFile none"]
    if view.known_hosts_configured:
        lines.append("UserKnownHostsFile " + " ".join(_arg(p) for p in view.user_known_hosts))
    lines += [
        d.text for d in view.applied if d.key not in _WRITTEN_HERE and not d.key.startswith("rbee")
    ]
    return lines


def _arg(value: str, *, percent: bool = False) -> str:
    """`value` as one argument asyncssh reads back as it is (`%` doubled where it expands)."""
    return shlex.quote(value.replace("%", "%%") if percent else value)


def _chain_error(view: SshView, what: str) -> ConfigError:
    line = view.first("proxyjump")
    message = f"ProxyJump of {view.name} {what}"
    return line.error(message) if line else ConfigError(message)
