"""Paths in ssh_config as OpenSSH expands them: `~`, then `${VAR}` and `%` tokens.

ssh expands IdentityFile and UserKnownHostsFile values so (9.2's tokens: %% %C %d %h %i %k %L %l
%n %p %r %u); an unknown token, a lone `%` or an unset variable is an error.
"""

from __future__ import annotations

import hashlib
import pwd
import re
from collections.abc import Mapping

from rbee.config.sshconfig import Directive

__all__ = ["PATH_TOKENS", "check_path_tokens", "connection_tokens", "expand_path"]

PATH_TOKENS = "CdhikLlnpru"
"""The `%` tokens ssh expands in IdentityFile and UserKnownHostsFile (and `%%`)."""
_TOKEN = re.compile(r"%(.?)", flags=re.DOTALL)


def check_path_tokens(d: Directive) -> None:
    """Refuse `%` tokens ssh does not know in IdentityFile or UserKnownHostsFile values."""
    known = ", ".join(f"%{t}" for t in sorted(PATH_TOKENS, key=str.lower))
    for value in d.args:
        for letter in _TOKEN.findall(value):
            if letter == "":
                raise d.error(f"{d.keyword} {value!r} ends with a lone % (write %% for a %)")
            if letter != "%" and letter not in PATH_TOKENS:
                raise d.error(
                    f"{d.keyword} may use the tokens %%, {known}; got %{letter} in {value!r}"
                )


def connection_tokens(
    *,
    local_host: str,
    local_user: str,
    uid: int,
    home: str,
    name: str,
    host: str,
    port: int,
    user: str,
    host_key_alias: str | None,
) -> dict[str, str]:
    """The `%` tokens of one connection, as ssh fills them in."""
    connection = local_host + host + str(port) + user
    return {
        "C": hashlib.sha1(connection.encode()).hexdigest(),  # noqa: S324 (ssh's %C is SHA-1)
        "d": home,
        "h": host,
        "i": str(uid),
        "k": host_key_alias or name,
        "L": local_host.split(".", 1)[0],
        "l": local_host,
        "n": name,
        "p": str(port),
        "r": user,
        "u": local_user,
    }


def expand_path(value: str, tokens: Mapping[str, str], *, home: str, env: Mapping[str, str]) -> str:
    """A path as ssh expands it: `~` first, then `${VAR}` and `%` tokens, left to right;
    ValueError for an unknown token, an unset variable or an unknown `~user`."""
    value = _tilde(value, home)
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("${", i):
            end = value.find("}", i + 2)
            if end < 0 or end == i + 2:
                raise ValueError(f"bad ${{VAR}} in {value!r}")
            var = value[i + 2 : end]
            if var not in env:
                raise ValueError(f"{value!r} uses ${{{var}}}, which is not set")
            out.append(env[var])
            i = end + 1
        elif value[i] == "%":
            letter = value[i + 1 : i + 2]
            if letter == "%":
                out.append("%")
            elif letter in tokens:
                out.append(tokens[letter])
            else:
                raise ValueError(f"unknown token %{letter} in {value!r}")
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _tilde(value: str, home: str) -> str:
    """ssh's tilde_expand(): `~` and `~/path` are the home folder, `~user/path` that user's."""
    if not value.startswith("~"):
        return value
    who, slash, path = value[1:].partition("/")
    path = path.lstrip("/") if slash else ""
    if who:
        try:
            home = pwd.getpwnam(who).pw_dir
        except KeyError:
            raise ValueError(f"no such user {who!r} in {value!r}") from None
    return home + ("" if home.endswith("/") else "/") + path
