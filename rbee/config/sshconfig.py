"""OpenSSH `ssh_config` syntax: lines to directives, with Host/Match scopes and Include expanded.

This module knows the syntax only (keywords, quoting, blocks, Include), split as OpenSSH splits
it; what the keys mean and which blocks apply to a host is `rbee.config.sshresolve`'s business.
Lines are parsed lazily, so the first mistake in file order is the one reported, as
`FILE:LINE: message`.
"""

from __future__ import annotations

import errno
import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rbee.errors import ConfigError
from rbee.fsutil import read_bounded

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_INCLUDE_DEPTH",
    "Block",
    "Directive",
    "Line",
    "located",
    "parse_lines",
    "read_directives",
    "split_words",
]

MAX_FILE_BYTES = 1 << 20
MAX_INCLUDE_DEPTH = 16
"""As OpenSSH: the file given plus 16 levels of Include."""

_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_GLOB_CHARS = frozenset("*?[")
_BLANK = " \t\r\n"  # what ssh skips around keywords (its WHITESPACE)


def located(path: Path, line: int, message: str) -> ConfigError:
    """A ConfigError reading `path:line: message`."""
    return ConfigError(f"{path}:{line}: {message}")


def _rest(text: str, keyword: str) -> str:
    """The arguments as written: what follows the keyword, its blanks and one `=`."""
    rest = text[len(keyword) :].lstrip(_BLANK)
    return rest[1:].lstrip(_BLANK) if rest.startswith("=") else rest


@dataclass(frozen=True)
class Line:
    """One meaningful line of a file: its number, keyword as written, and arguments."""

    number: int
    keyword: str
    args: tuple[str, ...]
    text: str = ""
    """The line as written, without surrounding blanks."""

    @property
    def key(self) -> str:
        """The keyword, lowercased (keywords are case-insensitive)."""
        return self.keyword.lower()

    @property
    def rest(self) -> str:
        """The arguments as written: the text after the keyword and its `=` if any."""
        return _rest(self.text, self.keyword)


@dataclass(frozen=True, eq=False)
class Block:
    """A `Host` or `Match` block as read, once per time its line is read (an Include read twice
    makes two), so blocks compare by identity."""

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
    """The blocks around this line: one per file level that has opened one, outermost first.
    The line applies to a host when each of them applied when its Host or Match line was read."""
    text: str = ""
    """The line as written, without surrounding blanks."""
    opens: Block | None = None
    """For a Host or Match line: the block it starts (the lines after it carry it in `scope`)."""

    @property
    def key(self) -> str:
        """The keyword, lowercased."""
        return self.keyword.lower()

    @property
    def rest(self) -> str:
        """The arguments as written (ProxyJump, ProxyCommand and Match read them so in ssh)."""
        return _rest(self.text, self.keyword)

    def error(self, message: str) -> ConfigError:
        """A ConfigError located at this directive."""
        return located(self.path, self.line, message)


def split_words(text: str) -> list[tuple[str, bool]]:
    """Split arguments as ssh does; each word says if it starts with an unquoted `#`."""
    # As OpenSSH's argv_split(): spaces and tabs separate words; "double" and 'single' quotes
    # group them; a backslash escapes a quote or a backslash anywhere, a space outside quotes, and
    # is kept before anything else. ValueError if a quote is left open.
    words: list[tuple[str, bool]] = []
    i, end = 0, len(text)
    while i < end:
        if text[i] in " \t":
            i += 1
            continue
        comment = text[i] == "#"
        word: list[str] = []
        quote = ""
        while i < end:
            ch, after = text[i], text[i + 1 : i + 2]
            if ch == "\\" and (after in ("'", '"', "\\") or (after == " " and not quote)):
                i += 1
                word.append(after)
            elif not quote and ch in " \t":
                break
            elif not quote and ch in "\"'":
                quote = ch
            elif quote and ch == quote:
                quote = ""
            else:
                word.append(ch)
            i += 1
        if quote:
            raise ValueError(f"unterminated {quote} quote")
        words.append(("".join(word), comment))
    return words


def parse_lines(text: str, path: Path) -> Iterator[Line]:
    """The keyword lines of one file's text, skipping blanks and `#` comments."""
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.rstrip(_BLANK + "\f").lstrip(_BLANK)
        if not stripped or stripped.startswith("#"):
            continue
        if "\0" in stripped:
            raise located(path, number, "NUL character in line")
        keyword = re.split(r"[\s=]", stripped, maxsplit=1)[0]
        if not _KEYWORD.fullmatch(keyword):
            raise located(path, number, f"expected `Keyword value`, got {stripped!r}")
        try:
            words = split_words(_rest(stripped, keyword))
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


def read_directives(path: Path, home: Path | None = None) -> Iterator[Directive]:
    """Every directive of `path` in file order, with Include files read in place.

    As ssh does for `ssh -F FILE`, a relative Include is read from `home`/.ssh and a leading `~`
    is `home` (default: $HOME).
    """
    # Host and Match lines are yielded too, in the scope around them, with the block they open;
    # the lines after them carry that block in `scope`. As in ssh, an included file starts in the
    # scope of its Include line, and the including file goes on in its own block afterwards.
    yield from _read(path, (), (), None, Path.home() if home is None else home)


def _read(
    path: Path,
    scope: tuple[Block, ...],
    stack: tuple[Path, ...],
    origin: Directive | None,
    home: Path,
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
            kind: Literal["host", "match"] = "host" if line.key == "host" else "match"
            block = Block(kind, line.args, path, line.number)
            yield Directive(line.keyword, line.args, path, line.number, scope, line.text, block)
            here = (*scope, block)
        elif line.key == "include":
            if not line.args:
                raise directive.error("Include needs a file name or pattern")
            for included in _include_paths(directive, home):
                if included.resolve() in stack:
                    chain = " -> ".join(str(p) for p in (*stack, included.resolve()))
                    raise directive.error(f"Include loop: {chain}")
                if len(stack) > MAX_INCLUDE_DEPTH:
                    raise directive.error(
                        f"Include nested more than {MAX_INCLUDE_DEPTH} levels deep"
                    )
                yield from _read(included, here, stack, directive, home)
        else:
            yield directive


def _include_paths(directive: Directive, home: Path) -> Iterator[Path]:
    """The files one Include line names, as ssh finds them for a user's config: relative to
    ~/.ssh, `~` expanded, globs in sorted order."""
    for arg in directive.args:
        if not arg:
            raise directive.error("Include needs a file name or pattern, got ''")
        if arg == "~" or arg.startswith("~/"):
            pattern = glob.escape(str(home)) + arg[1:]
            named = Path(str(home) + arg[1:])
        elif arg.startswith("~"):
            pattern = os.path.expanduser(arg)
            named = Path(pattern)
        elif os.path.isabs(arg):
            pattern, named = arg, Path(arg)
        else:
            pattern = os.path.join(glob.escape(str(home / ".ssh")), arg)
            named = home / ".ssh" / arg
        if _GLOB_CHARS.isdisjoint(arg):
            if not named.exists():
                raise directive.error(f"Include file not found: {named}")
            yield named
            continue
        for match in sorted(glob.glob(pattern)):
            if Path(match).is_file():
                yield Path(match)


def _read_text(path: Path, origin: Directive | None) -> str:
    """A config file's text; errors point at the Include line that named it, if any."""

    def error(message: str) -> ConfigError:
        return origin.error(message) if origin else ConfigError(message)

    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except OSError as err:
        if err.errno == errno.EFBIG:
            raise error(f"{path} is larger than 1 MiB; is it really an ssh config file?") from None
        if err.errno == errno.EINVAL:
            raise error(f"{path} is not a file") from None
        raise error(f"cannot read {path}: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path} is not UTF-8 text (byte {err.start})") from None
