"""ProxyJump values, read as OpenSSH reads them: `none`, or `[user@]host[:port]` hops.

ssh takes the rest of the line (not split into words), drops a `#` comment, and splits the hops
at commas; each hop is `[user@]host[:port]` (an IPv6 address in brackets) or
`ssh://[user@]host[:port]`. Every hop is checked, the last one is parsed: it is the host ssh
connects to first-hand, and `ssh -G` prints it normalized after the earlier hops as written.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote

from rbee.config.sshconfig import Directive

__all__ = ["Hop", "Jump", "a2port", "check_proxy_jump", "parse_jump"]

_BLANK = " \t\r\n"


@dataclass(frozen=True)
class Hop:
    """One `[user@]host[:port]` jump host of a ProxyJump."""

    user: str | None
    host: str
    port: int | None


@dataclass(frozen=True)
class Jump:
    """A ProxyJump other than `none`: its hops in the order they are connected to."""

    hops: tuple[Hop, ...]
    earlier: str | None
    """The hops before the last one, as written (ssh -G prints them so)."""

    def shown(self) -> str:
        """As `ssh -G` prints it: `[earlier hops,][user@]host[:port]`, a numeric host in []."""
        last = self.hops[-1]
        numeric = ":" in last.host or last.host.strip("0123456789.") == ""
        host = f"[{last.host}]" if numeric else last.host
        user = f"{last.user}@" if last.user is not None else ""
        port = f":{last.port}" if last.port else ""
        return ("" if self.earlier is None else f"{self.earlier},") + f"{user}{host}{port}"


def parse_jump(d: Directive) -> Jump | None:
    """A ProxyJump line's value (None for `none`); ConfigError for what ssh cannot parse."""
    text = d.rest.lstrip(_BLANK + "=")  # the rest of the line, as ssh reads it
    if text.lower() == "none":
        return None
    text = text.split("#", 1)[0].rstrip()
    hops = tuple(_hop(d, part) for part in text.split(","))
    return Jump(hops, text[: text.rindex(",")] if "," in text else None)


def check_proxy_jump(d: Directive) -> None:
    """Refuse a ProxyJump ssh cannot parse (ssh checks every one, applying or not)."""
    parse_jump(d)


def a2port(text: str) -> int | None:
    """ssh's a2port(): a number 0-65535 or a TCP service name; None if neither."""
    if re.fullmatch(r"[ \t]*[+-]?[0-9]+", text):
        port = int(text)
        return port if 0 <= port <= 65535 else None
    try:
        return socket.getservbyname(text, "tcp")
    except (OSError, UnicodeError, ValueError):
        return None


def _hop(d: Directive, text: str) -> Hop:
    hop = _uri_hop(text) if text.startswith("ssh://") else _plain_hop(text)
    if hop is None:
        raise d.error(f"{d.keyword}: invalid jump host {text!r} (use [user@]host[:port])")
    return hop


def _plain_hop(text: str) -> Hop | None:
    user: str | None = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user:
            return None
    split = _host_port(text, ":")
    if split is None:
        return None
    host, _, after = split
    port = None
    if after:
        port = a2port(after)
        if port is None or port <= 0:
            return None
    return Hop(user, host, port)


def _uri_hop(text: str) -> Hop | None:
    rest = text[len("ssh://") :]
    user: str | None = None
    if "@" in rest:
        info, _, rest = rest.partition("@")
        info = info.split(";", 1)[0]
        if not info or not re.fullmatch(r"(?:[^%]|%[0-9A-Fa-f]{2})*", info):
            return None
        user = unquote(info.replace("+", " "))
    split = _host_port(rest, ":/")
    if split is None:
        return None
    host, delimiter, after = split
    if not _valid_domain(host):
        return None
    host = host.removesuffix(".")
    port = None
    if after and delimiter == ":":
        port_text, slash, path = after.partition("/")
        port = a2port(port_text)
        if port is None or port <= 0:
            return None
        after = path if slash else ""
    if after:
        return None  # a path: not allowed in a jump host
    return Hop(user, host, port)


def _host_port(text: str, delimiters: str) -> tuple[str, str, str] | None:
    """ssh's hpdelim(): the host (brackets dropped), the delimiter after it and what follows;
    None if malformed."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        at = close + 1
    else:
        at = next((i for i, c in enumerate(text) if c in ":/"), len(text))
    delimiter = text[at : at + 1]
    if delimiter and delimiter not in delimiters:
        return None
    host = text[:at]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return None
    return host, delimiter, text[at + 1 :]


def _valid_domain(host: str) -> bool:
    """ssh's valid_domain(): letters, digits, `.`, `-` and `_`, no `..`, not starting oddly."""
    return (
        host[:1].isascii()
        and host[:1].isalnum()
        and ".." not in host
        and re.fullmatch(r"[A-Za-z0-9._-]+", host) is not None
    )
