"""What the keys of hives.conf may hold: one validator per key rbee relies on.

Any other ssh keyword is accepted as it is (asyncssh and ssh know more keys than rbee needs);
keys that start with `Rbee` are rbee's own, and an unknown one is a mistake.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from rbee.api.workers import REPACK_SETTINGS
from rbee.config.sshconfig import Directive

__all__ = [
    "ALIAS",
    "BACKENDS",
    "DEFAULT_HIVE_PORT",
    "DEFAULT_INSTALL_DIR",
    "DEFAULT_PYTHON",
    "DEFAULT_SSH_PORT",
    "RBEE_KEYS",
    "FileProblem",
    "Value",
    "check_directive",
    "file_problem",
]

ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A hive's alias: a Host name rbee accepts (it may name a file: no path comes of one)."""

DEFAULT_SSH_PORT = 22
DEFAULT_HIVE_PORT = 9000
DEFAULT_INSTALL_DIR = "~/.local/share/rbee-hive"
DEFAULT_PYTHON = "python3"
BACKENDS = ("auto", "llamacpp", "exllamav2", "mlx")

RBEE_KEYS = {
    key.lower(): key
    for key in ("RbeeHivePort", "RbeeInstallDir", "RbeePython", "RbeeBackend", "RbeeCpuRepack")
}

Value = str | int | Path | None
"""A checked value: int for ports and intervals, Path for IdentityFile, None for `none`."""

FileProblem = Callable[[Path], str | None]
"""Says what is wrong with a local file rbee must read (None when it is fine)."""

_SINGLE = frozenset(
    {
        "hostname",
        "user",
        "port",
        "identityfile",
        "proxyjump",
        "serveraliveinterval",
        "stricthostkeychecking",
        *RBEE_KEYS,
    }
)
_DIGITS = re.compile(r"[0-9]+")
_PYTHON = re.compile(r"[A-Za-z0-9_.+/-]+")
_TOKEN = re.compile(r"%(.?)")
_TRUST_HINT = "rbee always verifies host keys; trust a new hive with `rbee hive trust ALIAS`"


def file_problem(path: Path) -> str | None:
    """What keeps rbee from reading `path` as a key file, or None."""
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    if not os.access(path, os.R_OK):
        return "is not readable"
    return None


def check_directive(d: Directive, problem: FileProblem = file_problem) -> Value:
    """Check one non-block directive; return its value for the keys rbee resolves."""
    key = d.key
    if key.startswith("rbee") and key not in RBEE_KEYS:
        known = ", ".join(sorted(RBEE_KEYS.values()))
        raise d.error(f"unknown rbee key {d.keyword} (known: {known})")
    if not d.args or (key in _SINGLE and d.args == ("",)):
        raise d.error(f"{d.keyword} needs a value")
    if key in _SINGLE and len(d.args) > 1:
        shown = " ".join(repr(a) for a in d.args)
        raise d.error(f"{d.keyword} takes one value, got {len(d.args)}: {shown} (quote spaces)")
    checker = _CHECKERS.get(key)
    if checker is None:
        return None
    return checker(d, d.args[0], problem)


def _port(d: Directive, value: str, _: FileProblem) -> int:
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= 65535:
        raise d.error(f"{d.keyword} must be 1-65535, got {value!r}")
    return int(value)


def _seconds(d: Directive, value: str, _: FileProblem) -> int:
    if not _DIGITS.fullmatch(value):
        raise d.error(f"{d.keyword} must be a whole number of seconds (0 or more), got {value!r}")
    return int(value)


def _no_option_lookalike(d: Directive, value: str, what: str) -> None:
    """Values that reach an ssh argv must not read as options or hold spaces."""
    if value.startswith("-") or any(c.isspace() or not c.isprintable() for c in value):
        raise d.error(f"{d.keyword} must be {what}, got {value!r}")


def _hostname(d: Directive, value: str, _: FileProblem) -> str:
    _no_option_lookalike(d, value, "a host name or address")
    for token in _TOKEN.findall(value):
        if token not in ("h", "%"):
            raise d.error(f"{d.keyword} may only use the tokens %h and %%, got %{token}")
    return value


def _user(d: Directive, value: str, _: FileProblem) -> str | None:
    if value.lower() == "none":
        return None
    _no_option_lookalike(d, value, "a user name")
    return value


def _proxy_jump(d: Directive, value: str, _: FileProblem) -> str | None:
    if value.lower() == "none":
        return None
    what = "[user@]host[:port] hops separated by commas"
    if any(not hop for hop in value.split(",")):
        raise d.error(f"{d.keyword} must be {what}, got {value!r}")
    _no_option_lookalike(d, value, what)
    return value


def _identity_file(d: Directive, value: str, problem: FileProblem) -> Path | None:
    if value.lower() == "none":
        return None
    path = Path(os.path.expanduser(value))
    if "%" in value or "${" in value:
        return path  # ssh tokens and variables are expanded by asyncssh at connect time
    if not path.is_absolute():
        raise d.error(f"{d.keyword} must be an absolute path or start with ~/, got {value!r}")
    found = problem(path)
    if found:
        raise d.error(f"{d.keyword} {path} {found}")
    return path


def _known_hosts(d: Directive, _: str, __: FileProblem) -> Path:
    for value in d.args:
        if value.lower() == "none" or os.path.expanduser(value) == os.devnull:
            raise d.error(
                f"host key verification cannot be disabled (UserKnownHostsFile {value}): "
                + _TRUST_HINT
            )
    # The first file is where `rbee hive trust` records a key, as ssh does.
    return Path(os.path.expanduser(d.args[0]))


def _strict(d: Directive, value: str, _: FileProblem) -> None:
    lowered = value.lower()
    if lowered in ("no", "off", "false"):
        raise d.error(
            f"host key verification cannot be disabled (StrictHostKeyChecking {value}): "
            + _TRUST_HINT
        )
    if lowered not in ("yes", "true", "ask", "accept-new"):
        raise d.error(f"{d.keyword} must be yes, ask or accept-new, got {value!r}")


def _install_dir(d: Directive, value: str, _: FileProblem) -> str:
    if not value or "\0" in value or "\n" in value:
        raise d.error(f"{d.keyword} must be a path on the hive, got {value!r}")
    if value.startswith("~") and not (value == "~" or value.startswith("~/")):
        raise d.error(
            f"{d.keyword} may start with ~/ (the hive user's home) but not ~user, got {value!r}"
        )
    return value


def _python(d: Directive, value: str, _: FileProblem) -> str:
    if not _PYTHON.fullmatch(value) or value.startswith("-") or ("/" in value and value[0] != "/"):
        raise d.error(
            f"{d.keyword} must be a command name (python3) or an absolute path without spaces "
            f"or shell characters, got {value!r}"
        )
    return value


def _backend(d: Directive, value: str, _: FileProblem) -> str:
    if value.lower() not in BACKENDS:
        raise d.error(f"{d.keyword} must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value.lower()


def _cpu_repack(d: Directive, value: str, _: FileProblem) -> str:
    if value.lower() not in REPACK_SETTINGS:
        raise d.error(f"{d.keyword} must be one of {', '.join(REPACK_SETTINGS)}, got {value!r}")
    return value.lower()


_CHECKERS: dict[str, Callable[[Directive, str, FileProblem], Value]] = {
    "hostname": _hostname,
    "user": _user,
    "port": _port,
    "identityfile": _identity_file,
    "proxyjump": _proxy_jump,
    "serveraliveinterval": _seconds,
    "userknownhostsfile": _known_hosts,
    "stricthostkeychecking": _strict,
    "rbeehiveport": _port,
    "rbeeinstalldir": _install_dir,
    "rbeepython": _python,
    "rbeebackend": _backend,
    "rbeecpurepack": _cpu_repack,
}
