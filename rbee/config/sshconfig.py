"""OpenSSH `ssh_config` syntax: lines to directives, with Host/Match scopes and Include expanded.

This module knows the syntax only (keywords, quoting, blocks, Include); what the keys mean is
`rbee.config.hives`' business. Lines are parsed lazily, so the first mistake in file order is the
one reported, as `FILE:LINE: message`. `host_text` cuts a parsed file down to what applies to one
host, so asyncssh need not parse every hive's lines for every connection.
"""

from __future__ import annotations

import functools
import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rbee.errors import ConfigError

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_INCLUDE_DEPTH",
    "MAX_JUMP_HOSTS",
    "Block",
    "Directive",
    "Line",
    "host_matches",
    "host_text",
    "located",
    "parse_lines",
    "read_directives",
    "split_words",
]

MAX_FILE_BYTES = 1 << 20
MAX_INCLUDE_DEPTH = 16
MAX_JUMP_HOSTS = 8
"""host_text() gives up (None) on more jump hosts than this behind one hive."""

_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_GLOB_CHARS = frozenset("*?[")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def located(path: Path, line: int, message: str) -> ConfigError:
    """A ConfigError reading `path:line: message`."""
    return ConfigError(f"{path}:{line}: {message}")


@dataclass(frozen=True)
class Line:
    """One meaningful line of a file: its number, keyword as written, and arguments."""

    number: int
    keyword: str
    args: tuple[str, ...]
    text: str = ""
    """The line as written, without surrounding blanks (asyncssh tokenizes it its own way)."""

    @property
    def key(self) -> str:
        """The keyword, lowercased (keywords are case-insensitive)."""
        return self.keyword.lower()

    @property
    def rest(self) -> str:
        """The arguments as written: the text after the keyword and its `=` if any."""
        rest = self.text[len(self.keyword) :].lstrip()
        return rest[1:].lstrip() if rest.startswith("=") else rest


@dataclass(frozen=True)
class Block:
    """A `Host` or `Match` line that opens a block, with where it was written."""

    kind: Literal["host", "match"]
    patterns: tuple[str, ...]
    path: Path
    line: int
    criteria: str = ""
    """The arguments as written (a Match line's criteria, as asyncssh reads them)."""


@dataclass(frozen=True)
class Directive:
    """One line of the merged configuration, with the blocks it sits in (outermost first)."""

    keyword: str
    args: tuple[str, ...]
    path: Path
    line: int
    scope: tuple[Block, ...]
    text: str = ""
    """The line as written, without surrounding blanks."""

    @property
    def key(self) -> str:
        """The keyword, lowercased."""
        return self.keyword.lower()

    def error(self, message: str) -> ConfigError:
        """A ConfigError located at this directive."""
        return located(self.path, self.line, message)


def split_words(text: str) -> list[tuple[str, bool]]:
    """Split arguments as ssh does; each word says if it starts with an unquoted `#`."""
    # Whitespace separates words; "double" and 'single' quotes group them; a backslash escapes a
    # quote, a backslash or a space and is kept before anything else. ValueError if a quote is
    # left open.
    words: list[tuple[str, bool]] = []
    word: list[str] = []
    in_word = comment = False
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"' and text[i + 1 : i + 2] in ('"', "\\"):
                i += 1
                word.append(text[i])
            else:
                word.append(ch)
        elif ch.isspace():
            if in_word:
                words.append(("".join(word), comment))
                word, in_word, comment = [], False, False
        else:
            if not in_word:
                in_word, comment = True, ch == "#"
            if ch in "\"'":
                quote = ch
            elif ch == "\\" and text[i + 1 : i + 2] in ('"', "'", "\\", " ", "\t"):
                i += 1
                word.append(text[i])
            else:
                word.append(ch)
        i += 1
    if quote:
        raise ValueError(f"unterminated {quote} quote")
    if in_word:
        words.append(("".join(word), comment))
    return words


def parse_lines(text: str, path: Path) -> Iterator[Line]:
    """The keyword lines of one file's text, skipping blanks and `#` comments."""
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "\0" in stripped:
            raise located(path, number, "NUL character in line")
        keyword = re.split(r"[\s=]", stripped, maxsplit=1)[0]
        if not _KEYWORD.fullmatch(keyword):
            raise located(path, number, f"expected `Keyword value`, got {stripped!r}")
        rest = stripped[len(keyword) :].lstrip()
        if rest.startswith("="):
            rest = rest[1:]
        try:
            words = split_words(rest)
        except ValueError as err:
            raise located(path, number, f"{keyword}: {err}") from None
        for word, is_comment in words:
            if is_comment:
                raise located(
                    path,
                    number,
                    f"comment after a value ({word!r}): put comments on their own line "
                    "(asyncssh would read it as part of the value)",
                )
        yield Line(number, keyword, tuple(word for word, _ in words), stripped)


def host_matches(patterns: tuple[str, ...], name: str) -> bool:
    """Whether a `Host` line's patterns select `name`: any positive match and no negated one."""
    positive = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _wildcard_match(pattern[1:] if negated else pattern, name):
            if negated:
                return False
            positive = True
    return positive


def _wildcard_match(pattern: str, name: str) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return pattern == name
    return _wildcard_regex(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=1024)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, flags=re.DOTALL)


def host_text(directives: Sequence[Directive], alias: str) -> str | None:
    """What applies to connecting to `alias`, as ssh_config text for asyncssh; or None.

    asyncssh parses its whole config file for every connection, which at 50 hives costs more
    than the key exchange. This text holds only the lines that can apply: Host blocks are decided
    here (for `alias`, and for each jump host its ProxyJump names, each in its own section behind
    `Match originalhost NAME`); Match blocks stay for asyncssh to evaluate; every line is copied
    as written, so asyncssh reads each value exactly as in the file. Includes are already read in
    (relative paths from the including file's folder, as everywhere in rbee).

    None where only the whole file is faithful: CanonicalizeHostname on (asyncssh would read the
    file again for the canonical name), a Match block inside another one (through Include), or
    jump hosts that are not plain names or more than MAX_JUMP_HOSTS.
    """
    runs: list[tuple[tuple[Block, ...], list[Directive]]] = []  # consecutive lines of one block
    for d in directives:
        if runs and runs[-1][0] is d.scope:
            runs[-1][1].append(d)
            continue
        if sum(b.kind == "match" for b in d.scope) > 1:
            return None
        runs.append((d.scope, [d]))
    lines: list[str] = []
    names, seen = [alias], set[str]()
    while names:
        name = names.pop(0)
        if name in seen:
            continue
        if len(seen) > MAX_JUMP_HOSTS or not _PLAIN_NAME.fullmatch(name):
            return None
        seen.add(name)
        found = _section(runs, name)
        if found is None:
            return None
        lines += found[0]
        names += found[1]
    return "\n".join(lines) + "\n"


def _section(
    runs: list[tuple[tuple[Block, ...], list[Directive]]], name: str
) -> tuple[list[str], list[str]] | None:
    """The lines that apply to `name` behind `Match originalhost`, and the jump hosts they name;
    None if they turn CanonicalizeHostname on."""
    guard = f"Match originalhost {name}"
    lines, jumps = [guard], []
    current: Block | None = None
    for scope, run in runs:
        if not all(host_matches(b.patterns, name) for b in scope if b.kind == "host"):
            continue
        match = next((b for b in scope if b.kind == "match"), None)
        for d in run:
            key = d.key
            if key in ("host", "match") or key.startswith("rbee"):
                continue  # block lines are decided here or copied below; rbee keys are rbee's
            if key == "canonicalizehostname" and "".join(d.args[:1]).lower() not in ("no", "false"):
                return None
            if match is not current:  # each Match line as often as asyncssh meets it
                lines.append(f"{guard} {match.criteria}" if match else guard)
                current = match
            lines.append(d.text)
            if key == "proxyjump" and d.args and d.args[0].lower() != "none":
                jumps += [_jump_host(hop) for hop in d.args[0].split(",")]
    return lines, jumps


def _jump_host(hop: str) -> str:
    """The host of a `[user@]host[:port]` ProxyJump hop, split as asyncssh splits it."""
    host = hop.rsplit("@", 1)[-1]
    return host.rsplit(":", 1)[0] if ":" in host else host


def read_directives(path: Path) -> Iterator[Directive]:
    """Every directive of `path` in file order, with Include files read in place."""
    # Host and Match lines are yielded too, in the scope around them; the lines after them carry
    # their block in `scope`. As in ssh, an included file starts in the scope of its Include line,
    # and the including file goes on in its own block afterwards.
    yield from _read(path, (), (), None)


def _read(
    path: Path,
    scope: tuple[Block, ...],
    stack: tuple[Path, ...],
    origin: Directive | None,
) -> Iterator[Directive]:
    text = _read_text(path, origin)
    stack = (*stack, path.resolve())
    here = scope  # one tuple per block, shared by its lines (callers may key caches on it)
    for line in parse_lines(text, path):
        directive = Directive(line.keyword, line.args, path, line.number, here, line.text)
        if line.key in ("host", "match"):
            if not line.args:
                what = "a host pattern" if line.key == "host" else "criteria (e.g. `Match all`)"
                raise directive.error(f"{line.keyword} needs {what}")
            yield Directive(line.keyword, line.args, path, line.number, scope, line.text)
            kind: Literal["host", "match"] = "host" if line.key == "host" else "match"
            here = (*scope, Block(kind, line.args, path, line.number, line.rest))
        elif line.key == "include":
            if not line.args:
                raise directive.error("Include needs a file name or pattern")
            for included in _include_paths(directive):
                if included.resolve() in stack:
                    chain = " -> ".join(str(p) for p in (*stack, included.resolve()))
                    raise directive.error(f"Include loop: {chain}")
                if len(stack) > MAX_INCLUDE_DEPTH:
                    raise directive.error(
                        f"Include nested more than {MAX_INCLUDE_DEPTH} levels deep"
                    )
                yield from _read(included, here, stack, directive)
        else:
            yield directive


def _include_paths(directive: Directive) -> Iterator[Path]:
    """The files one Include line names: `~` expanded, relative to the including file's folder."""
    for arg in directive.args:
        expanded = os.path.expanduser(arg)
        if _GLOB_CHARS.isdisjoint(expanded):
            named = directive.path.parent / expanded
            if not named.exists():
                raise directive.error(f"Include file not found: {named}")
            yield named
            continue
        if not os.path.isabs(expanded):
            expanded = os.path.join(glob.escape(str(directive.path.parent)), expanded)
        for match in sorted(glob.glob(expanded)):
            if Path(match).is_file():
                yield Path(match)


def _read_text(path: Path, origin: Directive | None) -> str:
    """A config file's text; errors point at the Include line that named it, if any."""

    def error(message: str) -> ConfigError:
        return origin.error(message) if origin else ConfigError(message)

    try:
        if not path.is_file():
            raise error(f"{path} is not a file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise error(f"{path} is larger than 1 MiB; is it really an ssh config file?")
        data = path.read_bytes()
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path} is not UTF-8 text (byte {err.start})") from None
