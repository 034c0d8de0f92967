"""OpenSSH `ssh_config` syntax: lines to directives, with Host/Match scopes and Include expanded.

This module knows the syntax only (keywords, quoting, blocks, Include); what the keys mean is
`rbee.config.hives`' business. Lines are parsed lazily, so the first mistake in file order is the
one reported, as `FILE:LINE: message`.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rbee.errors import ConfigError

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_INCLUDE_DEPTH",
    "Block",
    "Directive",
    "Line",
    "host_matches",
    "located",
    "parse_lines",
    "read_directives",
    "split_words",
]

MAX_FILE_BYTES = 1 << 20
MAX_INCLUDE_DEPTH = 16

_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_GLOB_CHARS = frozenset("*?[")


def located(path: Path, line: int, message: str) -> ConfigError:
    """A ConfigError reading `path:line: message`."""
    return ConfigError(f"{path}:{line}: {message}")


@dataclass(frozen=True)
class Line:
    """One meaningful line of a file: its number, keyword as written, and arguments."""

    number: int
    keyword: str
    args: tuple[str, ...]

    @property
    def key(self) -> str:
        """The keyword, lowercased (keywords are case-insensitive)."""
        return self.keyword.lower()


@dataclass(frozen=True)
class Block:
    """A `Host` or `Match` line that opens a block, with where it was written."""

    kind: Literal["host", "match"]
    patterns: tuple[str, ...]
    path: Path
    line: int


@dataclass(frozen=True)
class Directive:
    """One line of the merged configuration, with the blocks it sits in (outermost first)."""

    keyword: str
    args: tuple[str, ...]
    path: Path
    line: int
    scope: tuple[Block, ...]

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
        yield Line(number, keyword, tuple(word for word, _ in words))


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
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, flags=re.DOTALL) is not None


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
    block: Block | None = None
    for line in parse_lines(text, path):
        here = scope if block is None else (*scope, block)
        directive = Directive(line.keyword, line.args, path, line.number, here)
        if line.key in ("host", "match"):
            if not line.args:
                what = "a host pattern" if line.key == "host" else "criteria (e.g. `Match all`)"
                raise directive.error(f"{line.keyword} needs {what}")
            yield Directive(line.keyword, line.args, path, line.number, scope)
            kind: Literal["host", "match"] = "host" if line.key == "host" else "match"
            block = Block(kind, line.args, path, line.number)
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
