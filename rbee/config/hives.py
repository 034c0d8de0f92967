"""hives.conf: the machines rbee runs hives on, as frozen `Hive`s read from an ssh_config file.

rbee reads it once here: it checks every line (each mistake reported as `FILE:LINE: message`),
lists the hive aliases (the plain names on Host lines, each hive once however many Host lines
name it), and resolves each alias with the one resolver, `rbee.config.sshresolve`, as
`ssh -G -F hives.conf ALIAS` does: Host and Match blocks in file order, the first value found
for each key wins. rbee's own `Rbee*` keys resolve the same way. asyncssh connects with that
resolution written out (`HivesConfig.asyncssh_text`), never with its own reading of the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rbee.config.asyncssh_text import connect_text
from rbee.config.hive_keys import (
    ALIAS,
    DEFAULT_HIVE_PORT,
    DEFAULT_INSTALL_DIR,
    DEFAULT_PYTHON,
    FileProblem,
    Value,
    check_directive,
    file_problem,
)
from rbee.config.settings import Paths
from rbee.config.sshconfig import Directive, read_directives
from rbee.config.sshjump import check_proxy_jump
from rbee.config.sshmatch import parse_match
from rbee.config.sshresolve import Local, SshView, resolve
from rbee.config.sshtokens import check_path_tokens
from rbee.errors import ConfigError

__all__ = ["Hive", "HivesConfig", "build_hives", "hives_path", "load_hives"]


@dataclass(frozen=True)
class Hive:
    """One machine from hives.conf, with ssh's and rbee's settings resolved for its alias."""

    alias: str
    hostname: str
    """As ssh connects to it: `%h` expanded, lowercased unless it is an address."""
    user: str
    """The user ssh logs in as: User, else the local user."""
    port: int
    identity_files: tuple[Path, ...]
    """The key files ssh tries, expanded (its default ones when no IdentityFile applies)."""
    proxy_jump: str | None
    """As `ssh -G` prints it."""
    hive_port: int
    """The hive's HTTP port on that machine (loopback there)."""
    install_dir: str
    """A path on the hive; a leading `~` is the hive user's home there, not here."""
    python: str
    backend: str
    path: Path
    """The file whose Host line first names this alias."""
    line: int
    ssh: SshView = field(compare=False, repr=False)
    """The whole resolution, as `ssh -G` reads the file."""
    known_hosts_files: tuple[Path, ...] = ()
    """UserKnownHostsFile, expanded (ssh's defaults when none applies)."""
    cpu_repack: str = "auto"
    """RbeeCpuRepack: llama.cpp's weight repacking for workers there (rbee.engines.repack)."""

    def known_hosts(self) -> Path:
        """The file its host key is verified against, and where `rbee hive trust` writes."""
        if self.known_hosts_files:
            return self.known_hosts_files[0]
        return Path("~/.ssh/known_hosts").expanduser()

    def settings(self) -> list[tuple[str, str]]:
        """Its settings as `ssh -G` prints them (lowercase keys), then rbee's own."""
        view = self.ssh
        found = [("user", view.user), ("hostname", view.hostname), ("port", str(view.port))]
        if view.host_key_alias is not None:
            found.append(("hostkeyalias", view.host_key_alias))
        found += [("identityfile", path) for path in view.identity_files]
        if view.user_known_hosts:
            found.append(("userknownhostsfile", " ".join(view.user_known_hosts)))
        if view.proxy_jump is not None:
            found.append(("proxyjump", view.proxy_jump))
        elif view.proxy_command is not None:
            found.append(("proxycommand", view.proxy_command))
        return [
            *found,
            ("rbeehiveport", str(self.hive_port)),
            ("rbeeinstalldir", self.install_dir),
            ("rbeepython", self.python),
            ("rbeebackend", self.backend),
            ("rbeecpurepack", self.cpu_repack),
        ]


@dataclass(frozen=True)
class HivesConfig:
    """Every hive in one hives.conf, in file order."""

    path: Path
    hives: tuple[Hive, ...]
    directives: tuple[Directive, ...] = field(default=(), repr=False, compare=False)
    """Every line of the file, Includes read in."""
    texts: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """What asyncssh connects to each hive with (see `asyncssh_text`)."""

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

    def asyncssh_text(self, alias: str) -> str:
        """The ssh_config text asyncssh connects to `alias` with: the resolved settings of the
        hive and its jump hosts (`rbee.config.asyncssh_text`), never asyncssh's own reading."""
        return self.texts[self.get(alias).alias]


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
    path: Path,
    directives: Iterable[Directive],
    problem: FileProblem = file_problem,
    local: Local | None = None,
) -> HivesConfig:
    """Check directives in file order, then resolve one Hive per alias (as `local` runs ssh:
    default, this process)."""
    local = local or Local.current()
    named: dict[str, list[Directive]] = {}  # alias -> the Host lines naming it
    checked: dict[int, Value] = {}  # id(directive) -> its checked value
    lines: list[Directive] = []
    for d in directives:  # one by one: the first mistake in file order is the one reported
        lines.append(d)
        if d.key == "host":
            for alias in _aliases(d):
                named.setdefault(alias, []).append(d)
        elif d.key == "match":
            parse_match(d)
        else:
            checked[id(d)] = _check(d, problem)

    def resolve_hop(host: str, user: str | None, port: int | None) -> SshView:
        return resolve(lines, host, local, user=user, port=port)

    hives: list[Hive] = []
    texts: dict[str, str] = {}
    for alias, hosts in named.items():
        view = resolve(lines, alias, local)
        for d in hosts:
            _check_reached(alias, d, view)
        hives.append(_hive(alias, hosts[0], view, checked))
        texts[alias] = connect_text(view, resolve_hop)
    return HivesConfig(path=path, hives=tuple(hives), directives=tuple(lines), texts=texts)


def _check(d: Directive, problem: FileProblem) -> Value:
    """Check one line that is neither Host nor Match; its value for the keys rbee resolves."""
    value = check_directive(d, problem)
    first = d.args[0].lower() if d.args else ""
    if d.key == "user" and first == "none":
        raise d.error(
            "User none: ssh logs in as a user called 'none', asyncssh as the local user; "
            "name the user, or leave User out for the local user"
        )
    if d.key == "canonicalizehostname" and first not in ("no", "false"):
        raise d.error(
            f"{d.keyword} {d.args[0]}: rbee does not canonicalize host names (that needs DNS "
            "to tell which blocks apply); write the full name in HostName"
        )
    if d.key in ("identityfile", "userknownhostsfile"):
        check_path_tokens(d)
    if d.key == "proxyjump":
        check_proxy_jump(d)
    return value


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
        if not ALIAS.fullmatch(pattern):
            raise d.error(
                f"invalid hive alias {pattern!r}: use letters, digits, '.', '_' and '-' "
                "(at most 64, starting with a letter or digit)"
            )
        if pattern not in found:
            found.append(pattern)
    return found


def _check_reached(alias: str, host_line: Directive, view: SshView) -> None:
    """A Host line naming `alias` inside a block that does not apply to it is a mistake: its
    settings never apply (ssh reads an Include in a block only for the hosts it applies to)."""
    outer = next((b for b in reversed(host_line.scope) if not view.blocks[b]), None)
    if outer is not None:
        raise host_line.error(
            f"Host {alias} is included inside the {outer.kind.title()} block at "
            f"{outer.path}:{outer.line}, so its settings never apply: put the Include before "
            "the first Host or Match line"
        )


def _hive(alias: str, origin: Directive, view: SshView, checked: Mapping[int, Value]) -> Hive:
    """The Hive for one resolution: ssh's settings from the view, rbee's from its lines."""

    def rbee(key: str) -> Value:
        d = view.first(key)
        return checked.get(id(d)) if d is not None else None

    def text(key: str, default: str) -> str:
        value = rbee(key)
        return value if isinstance(value, str) else default

    def number(key: str, default: int) -> int:
        value = rbee(key)
        return value if isinstance(value, int) else default

    return Hive(
        alias=alias,
        hostname=view.hostname,
        user=view.user,
        port=view.port,
        identity_files=tuple(Path(p) for p in view.identity_paths),
        proxy_jump=view.proxy_jump,
        hive_port=number("rbeehiveport", DEFAULT_HIVE_PORT),
        install_dir=text("rbeeinstalldir", DEFAULT_INSTALL_DIR),
        python=text("rbeepython", DEFAULT_PYTHON),
        backend=text("rbeebackend", "auto"),
        path=origin.path,
        line=origin.line,
        ssh=view,
        known_hosts_files=tuple(Path(p) for p in view.user_known_hosts),
        cpu_repack=text("rbeecpurepack", "auto"),
    )
