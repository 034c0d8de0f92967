"""The hop secret: what a hive's and its workers' HTTP APIs ask of every caller.

A hive listens on its machine's loopback, and so do its workers; the queen's SSH forwards put
every remote hive and worker on the queen's machine's loopback as well. Loopback is open to every
local user of both machines, so neither API trusts a caller for where it connects from: each
hive draws a fresh secret when it starts (a new one every session), and every request to the
hive or to one of its workers must carry it as `Authorization: Bearer SECRET` (compared in
constant time) or get 401 `invalid_hop_token`.

Where the secret goes, and nowhere else:
- to the queen, in the hive's ready line on the SSH session the queen holds (never argv, where
  `ps` shows it to everyone);
- to the hive's workers, in their environment (`RBEE_HOP_TOKEN`, which the worker removes from
  its own at start); /proc/PID/environ is readable by the same user only;
- to `DATA_DIR/run/hive-NAME.token`, 0600 in a 0700 directory, for the same user's tools (`rbee
  sweep --probe` reads it over SSH; `curl -H "Authorization: Bearer $(cat …)"` when debugging);
  removed when the hive stops.

The queen's own hive (integrated mode) runs in the queen's process and has no HTTP API; its
workers ask for its secret all the same. A worker started by hand (`rbee worker run` with no
`RBEE_HOP_TOKEN`) asks for nothing and says so in its log.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from rbee.config.hive_keys import ALIAS
from rbee.errors import ApiError
from rbee.fsutil import atomic_write_text, read_bounded

if TYPE_CHECKING:  # the sweep reads secrets with this module and imports no web framework
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "HOP_ENV",
    "HopAuthMiddleware",
    "hop_headers",
    "new_hop_token",
    "read_token_file",
    "remove_token_file",
    "take_env_token",
    "token_path",
    "write_token_file",
]

HOP_ENV = "RBEE_HOP_TOKEN"
_PREFIX = b"bearer "


def new_hop_token() -> str:
    """A fresh secret: 256 random bits, URL-safe text."""
    return secrets.token_urlsafe(32)


def hop_headers(token: str | None) -> dict[str, str]:
    """The headers that carry `token` (none for None: a peer that asks for nothing)."""
    return {} if token is None else {"authorization": f"Bearer {token}"}


def take_env_token() -> str | None:
    """The secret the hive gave this worker in its environment, removed from it so nothing this
    process starts inherits it; None when there is none."""
    return os.environ.pop(HOP_ENV, "") or None


def token_path(run_dir: Path, hive: str) -> Path:
    """Where the hive named `hive` keeps its secret for the same user's tools (ValueError for a
    name that is not an alias: no path may come of one)."""
    if not ALIAS.fullmatch(hive):
        raise ValueError(f"invalid hive name {hive!r}: letters, digits, '.', '_' and '-' only")
    return run_dir / f"hive-{hive}.token"


def write_token_file(path: Path, token: str) -> None:
    """Write the secret to `path`, 0600 in a 0700 directory, atomically."""
    atomic_write_text(path, token + "\n")


def read_token_file(path: Path) -> str | None:
    """The secret in `path`; None when there is no such file (the hive is not running)."""
    try:
        text = read_bounded(path, 1024).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return None
    return text or None


def remove_token_file(path: Path, token: str) -> None:
    """Remove `path` if it still holds `token` (a newer hive of the same name may own it now)."""
    with contextlib.suppress(OSError):
        if read_token_file(path) == token:
            path.unlink()


class HopAuthMiddleware:
    """Refuse every HTTP request that does not carry the hop secret (401 `invalid_hop_token`).

    Pure ASGI, outside everything else, so no route, error handler or body read runs first.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("a hop secret cannot be empty")
        self.app = app
        self._expected = _PREFIX + token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._carries_token(scope):
            await self.app(scope, receive, send)
            return
        from rbee.api.http import error_response  # noqa: PLC0415 - see the imports

        refusal = ApiError(
            401,
            "this API is the queen's: it asks for the hive's secret, which only the queen that "
            "started the hive holds (send requests to the queen instead)",
            code="invalid_hop_token",
        )
        await error_response(refusal)(scope, receive, send)

    def _carries_token(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                # Constant time over the whole value; the scheme's case is compared as well,
                # through a lower-cased copy of that part only.
                given = value[: len(_PREFIX)].lower() + value[len(_PREFIX) :]
                return hmac.compare_digest(given, self._expected)
        return False
