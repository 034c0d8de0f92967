"""Which Host and Match blocks apply to a host, decided as OpenSSH decides them.

`Host` patterns are matched against the name typed (case-sensitive, `*` and `?`, `!` excludes);
`Match` criteria against what is resolved when the Match line is read: `host` is the HostName
found so far (else the name typed), `originalhost` the name typed, `user` the User found so far
(else the local user), `localuser` the local user; host patterns are compared in lower case and
take comma-separated lists. `canonical`, `final` and `exec` are refused: deciding them needs DNS
or running a command, and rbee decides from the file alone.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from rbee.config.sshconfig import Directive
from rbee.errors import ConfigError

__all__ = ["Criterion", "host_matches", "match_applies", "parse_match", "pattern_list_matches"]

SUPPORTED = ("all", "host", "originalhost", "user", "localuser")
_SSH_BLANK = " \t\r\n"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_MAX_SUBPATTERN = 1023  # ssh gives up on (does not match) longer comma-separated patterns


def ascii_lower(text: str) -> str:
    """`text` with A-Z lowered, as ssh lowers host names (other letters are left alone)."""
    return text.translate(_ASCII_LOWER)


def wildcard_matches(name: str, pattern: str) -> bool:
    """ssh's match_pattern(): `*` is any run of characters, `?` any one, the rest literal."""
    if "*" not in pattern and "?" not in pattern:
        return pattern == name
    return _wildcard_regex(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=1024)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, flags=re.DOTALL)


def host_matches(patterns: tuple[str, ...], name: str) -> bool:
    """Whether a `Host` line's patterns select `name`: any positive match and no negated one."""
    positive = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if wildcard_matches(name, pattern[1:] if negated else pattern):
            if negated:
                return False
            positive = True
    return positive


def pattern_list_matches(value: str, patterns: str, *, lower: bool) -> bool:
    """ssh's match_pattern_list() == 1: a comma-separated list with `!` exclusions."""
    positive = False
    for written in patterns.split(","):
        negated = written.startswith("!")
        sub = written[1:] if negated else written
        if len(sub) >= _MAX_SUBPATTERN:
            return False
        if wildcard_matches(value, ascii_lower(sub) if lower else sub):
            if negated:
                return False
            positive = True
    return positive


@dataclass(frozen=True)
class Criterion:
    """One criterion of a Match line: `[!]attribute pattern` (`all` has no pattern)."""

    attribute: str
    """all, host, originalhost, user or localuser."""
    pattern: str
    negated: bool


def _strdelim(text: str | None) -> tuple[str | None, str | None]:
    """ssh's strdelim(): the next word of a Match line and the rest, split at blanks, one `=` or
    a double-quoted part (None, None: an unclosed quote)."""
    if text is None:
        return None, None
    found = re.search(r'[ \t\r\n"=]', text)
    if found is None:
        return text, None
    at = found.start()
    if text[at] == '"':
        unquoted = text[:at] + text[at + 1 :]
        close = unquoted.find('"', at)
        if close < 0:
            return None, None
        return unquoted[:close], unquoted[close + 1 :].lstrip(_SSH_BLANK)
    rest = text[at + 1 :].lstrip(_SSH_BLANK)
    if text[at] != "=" and rest.startswith("="):
        rest = rest[1:].lstrip(_SSH_BLANK)
    return text[:at], rest


def parse_match(d: Directive) -> tuple[Criterion, ...]:
    """The criteria of a Match line, read as ssh reads them; ConfigError for what ssh refuses and
    for what rbee cannot decide (canonical, final, exec)."""
    criteria: list[Criterion] = []
    rest: str | None = d.rest
    attributes = 0
    while True:
        word, rest = _strdelim(rest)
        if not word or word.startswith("#"):
            break
        negated = word.startswith("!")
        attribute = word[1:] if negated else word
        lowered = attribute.lower()
        if lowered == "all":
            after, _ = _strdelim(rest)
            if attributes > 1 or (after and not after.startswith("#")):
                raise d.error("Match all cannot be combined with other criteria")
            criteria.append(Criterion("all", "", negated))
            return tuple(criteria)
        attributes += 1
        if lowered in ("canonical", "final"):
            raise d.error(
                f"Match {attribute}: rbee does not canonicalize host names (that needs DNS), so "
                "it cannot tell which lines apply; use Match host or originalhost"
            )
        if lowered == "exec":
            raise d.error(
                "Match exec: rbee does not run commands to read hives.conf; use Match host, "
                "originalhost, user or localuser"
            )
        if lowered not in SUPPORTED:
            raise d.error(
                f"unsupported Match criterion {attribute!r} (rbee supports {', '.join(SUPPORTED)})"
            )
        pattern, rest = _strdelim(rest)
        if not pattern or pattern.startswith("#"):
            raise d.error(f"Match {attribute} needs a pattern")
        criteria.append(Criterion(lowered, pattern, negated))
    if attributes == 0:
        raise d.error("Match needs criteria (e.g. `Match all`)")
    return tuple(criteria)


def match_applies(
    criteria: tuple[Criterion, ...], *, host: str, original: str, user: str, local_user: str
) -> bool:
    """Whether a Match line applies: every criterion holds (each `!` one fails to)."""
    for c in criteria:
        if c.attribute == "all":
            holds = True
        elif c.attribute == "host":
            holds = pattern_list_matches(ascii_lower(host), c.pattern, lower=True)
        elif c.attribute == "originalhost":
            holds = pattern_list_matches(ascii_lower(original), c.pattern, lower=True)
        elif c.attribute == "user":
            holds = pattern_list_matches(user, c.pattern, lower=False)
        elif c.attribute == "localuser":
            holds = pattern_list_matches(local_user, c.pattern, lower=False)
        else:  # parse_match() lets no other through
            raise ConfigError(f"unsupported Match criterion {c.attribute!r}")
        if holds == c.negated:
            return False
    return True
