"""hives.conf: the machines rbee runs hives on, as frozen `Hive`s read from an ssh_config file.

rbee reads it once here to check it (each mistake reported as `FILE:LINE: message`), to list the
hive aliases, and to resolve its own `Rbee*` keys; asyncssh takes the standard keys when it
connects, from the lines that apply to that hive (`HivesConfig.asyncssh_text`: asyncssh would
otherwise parse the whole file for every connection). Resolution follows ssh: going through the
Host blocks in file order, the first value found for each key wins, so defaults go in a `Host *`
block at the end. Match blocks are left to asyncssh.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rbee.config.hive_keys import (
    DEFAULT_HIVE_PORT,
    DEFAULT_INSTALL_DIR,
    DEFAULT_PYTHON,
    DEFAULT_SSH_PORT,
    FileProblem,
    Value,
    check_directive,
    file_problem,
)
from rbee.config.settings import Paths
from rbee.config.sshconfig import Block, Directive, host_matches, host_text, read_directives
from rbee.errors import ConfigError

__all__ = ["Hive", "HivesConfig", "build_hives", "hives_path", "load_hives"]

_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Hive:
    """One machine from hives.conf, with ssh's and rbee's settings resolved for its alias."""

    alias: str
    hostname: str
    user: str | None
    """None: the local user name (asyncssh decides)."""
    port: int
    identity_files: tuple[Path, ...]
    proxy_jump: str | None
    hive_port: int
    """The hive's HTTP port on that machine (loopback there)."""
    install_dir: str
    """A path on the hive; a leading `~` is the hive user's home there, not here."""
    python: str
    backend: str
    path: Path
    """The file whose Host line first names this alias."""
    line: int
    user_known_hosts: Path | None = None
    """The first UserKnownHostsFile, if hives.conf sets one."""
    cpu_repack: str = "auto"
    """RbeeCpuRepack: llama.cpp's weight repacking for workers there (rbee.engines.repack)."""

    def known_hosts(self) -> Path:
        """The file its host key is verified against, and where `rbee hive trust` writes."""
        return self.user_known_hosts or Path("~/.ssh/known_hosts").expanduser()


@dataclass(frozen=True)
class HivesConfig:
    """Every hive in one hives.conf, in file order."""

    path: Path
    hives: tuple[Hive, ...]
    directives: tuple[Directive, ...] = field(default=(), repr=False, compare=False)
    """Every line of the file, Includes read in (for `asyncssh_text`)."""

    @property
    def aliases(self) -> tuple[str, ...]:
        """The hive aliases, in file order."""
        return tuple(h.alias for h in self.hives)

    def get(self, alias: str) -> Hive:
        """The hive called `alias`; ConfigError naming the known aliases if there is none."""
        for hive in self.hives:
            if hive.alias == alias:
                return hive
        known = ", ".join(self.aliases) or "none"
        raise ConfigError(f"unknown hive {alias!r} (hives in {self.path}: {known})")

    def asyncssh_text(self, alias: str) -> str | None:
        """The lines asyncssh needs to connect to `alias`; None: give it the whole file."""
        return host_text(self.directives, alias) if self.directives else None


def hives_path(paths: Paths, flag: str | None) -> Path:
    """Where hives.conf is: the `--hives` flag (or $RBEE_HIVES), else the config dir's."""
    if flag:
        return Path(flag).expanduser().absolute()
    return paths.config_dir / "hives.conf"


def load_hives(path: Path) -> HivesConfig:
    """Read, check and resolve a hives.conf; ConfigError on the first mistake."""
    if not path.exists():
        raise ConfigError(
            f"no hives.conf at {path}: start from the example "
            f"(cp hives.conf.example {path}) or point --hives or $RBEE_HIVES at one"
        )
    return build_hives(path, read_directives(path))


def build_hives(
    path: Path, directives: Iterable[Directive], problem: FileProblem = file_problem
) -> HivesConfig:
    """Check directives in file order and resolve one Hive per alias."""
    first_seen: dict[str, Directive] = {}
    settings: list[tuple[Directive, Value]] = []
    lines: list[Directive] = []
    for d in directives:  # one by one: the first mistake in file order is the one reported
        lines.append(d)
        if d.key == "host":
            for alias in _aliases(d):
                if not _applies(d.scope, alias):
                    outer = d.scope[-1]
                    raise d.error(
                        f"Host {alias} is included inside the {outer.kind.title()} block at "
                        f"{outer.path}:{outer.line}, so its settings never apply: put the "
                        "Include before the first Host or Match line"
                    )
                if alias in first_seen:
                    first = _where(first_seen[alias], d)
                    raise d.error(f"duplicate Host {alias} (first at {first})")
                first_seen[alias] = d
        elif d.key != "match":
            settings.append((d, check_directive(d, problem)))
    hives = tuple(_resolve(alias, d, settings) for alias, d in first_seen.items())
    return HivesConfig(path=path, hives=hives, directives=tuple(lines))


def _aliases(d: Directive) -> list[str]:
    """The hive aliases a Host line names (its plain patterns), each checked."""
    found = []
    for pattern in d.args:
        if "," in pattern:
            raise d.error(f"Host patterns are separated by spaces, not commas: {pattern!r}")
        if pattern in ("", "!"):
            raise d.error(f"empty Host pattern {pattern!r}")
        if pattern.startswith("!") or "*" in pattern or "?" in pattern:
            continue
        if not _ALIAS.fullmatch(pattern):
            raise d.error(
                f"invalid hive alias {pattern!r}: use letters, digits, '.', '_' and '-' "
                "(at most 64, starting with a letter or digit)"
            )
        found.append(pattern)
    return found


def _where(first: Directive, here: Directive) -> str:
    return f"line {first.line}" if first.path == here.path else f"{first.path}:{first.line}"


def _applies(scope: tuple[Block, ...], alias: str) -> bool:
    return all(b.kind == "host" and host_matches(b.patterns, alias) for b in scope)


def _resolve(alias: str, origin: Directive, settings: list[tuple[Directive, Value]]) -> Hive:
    """ssh's rule for one alias: the first value of each key wins; IdentityFiles add up."""
    first: dict[str, Value] = {}
    identity_files: list[Path] = []
    applies: dict[int, bool] = {}  # by id(): the lines of one block share their scope tuple
    for d, value in settings:
        ok = applies.get(id(d.scope))
        if ok is None:
            ok = applies[id(d.scope)] = _applies(d.scope, alias)
        if not ok:
            continue
        if d.key == "identityfile":
            if isinstance(value, Path) and value not in identity_files:
                identity_files.append(value)
        elif d.key not in first:
            first[d.key] = value

    def text(key: str, default: str) -> str:
        value = first.get(key, default)
        return value if isinstance(value, str) else default

    def number(key: str, default: int) -> int:
        value = first.get(key, default)
        return value if isinstance(value, int) else default

    def optional(key: str) -> str | None:
        value = first.get(key)
        return value if isinstance(value, str) else None

    known = first.get("userknownhostsfile")
    hostname = re.sub(r"%([h%])", lambda m: alias if m[1] == "h" else "%", text("hostname", alias))
    return Hive(
        alias=alias,
        hostname=hostname,
        user=optional("user"),
        port=number("port", DEFAULT_SSH_PORT),
        identity_files=tuple(identity_files),
        proxy_jump=optional("proxyjump"),
        hive_port=number("rbeehiveport", DEFAULT_HIVE_PORT),
        install_dir=text("rbeeinstalldir", DEFAULT_INSTALL_DIR),
        python=text("rbeepython", DEFAULT_PYTHON),
        backend=text("rbeebackend", "auto"),
        path=origin.path,
        line=origin.line,
        user_known_hosts=known if isinstance(known, Path) else None,
        cpu_repack=text("rbeecpurepack", "auto"),
    )
