"""Who may call the queen, and for what: API keys, scopes, per-key limits, the audit trail.

Keys come from two places. `--api-key` / `RBEE_API_KEY` is one key with every scope (who:
`api-key flag`). The keys file (rbee.config.keys, `rbee key add|list|revoke`) holds named keys,
each with its scopes and optional limits; the queen reads it again whenever it changes, so a
revoked key is refused at its next request. A queen bound to loopback with neither asks for no
key (who: `loopback (no key)`); one bound elsewhere refuses to start without one
(rbee.queen.daemon.check_exposure). Once the keys file exists, loopback asks for a key too, even
after the last key is revoked (delete the file to go back to no keys on loopback).

Which scope each route needs is `ROUTE_SCOPES`, the one table (a test fails on a route the table
does not name). A request without a valid key gets 401 `invalid_api_key`; a valid key without
the route's scope gets 403 `insufficient_scope` naming the scope; a key over its limits gets 429
`rate_limit_exceeded` with `Retry-After`. Every refusal (401, 403) and every admin action (any
method but GET on an `admin` route) is appended to the audit log (rbee.queen.audit).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rbee.api.http import error_response
from rbee.config.keys import SCOPES, KeyEntry, KeyLimits, KeysFile, load_keys, parse_key_id
from rbee.errors import ApiError, ConfigError
from rbee.queen.audit import AuditLog

__all__ = [
    "ADMIN",
    "ANONYMOUS",
    "FLAG_KEY",
    "INFERENCE",
    "METRICS",
    "PUBLIC",
    "ROUTE_SCOPES",
    "AuthMiddleware",
    "KeyRing",
    "Principal",
    "RateBucket",
    "principal_of",
    "route_scope",
]

log = logging.getLogger(__name__)

INFERENCE, ADMIN, METRICS = SCOPES
PUBLIC = ""
"""The scope of a route anyone may call: /health."""

ROUTE_SCOPES: dict[str, str] = {
    "/health": PUBLIC,
    "/metrics": METRICS,
    "/v1/models": INFERENCE,
    "/v1/models/{model:path}": INFERENCE,
    "/v1/chat/completions": INFERENCE,
    "/v1/completions": INFERENCE,
    "/v1/embeddings": INFERENCE,
    "/v1/responses": INFERENCE,
    "/v1/messages": INFERENCE,
    "/v1/messages/count_tokens": INFERENCE,
    "/v1/workers": ADMIN,
    "/v1/workers/{worker_id}": ADMIN,
    "/v1/workers/{worker_id}/restart": ADMIN,
    "/v1/hives": ADMIN,
    "/v1/hives/{alias}/models": ADMIN,
    "/v1/hives/{alias}/start": ADMIN,
    "/v1/hives/{alias}/stop": ADMIN,
    "/v1/jobs": ADMIN,
    "/v1/jobs/{job_id}": ADMIN,
    "/v1/jobs/{job_id}/stream": ADMIN,
    "/v1/policies/{model}": ADMIN,
    # The dashboard shows every worker, hive and job, and tails logs that hold prompts.
    "/v1/dashboard": ADMIN,
    "/v1/dashboard/log": ADMIN,
    # The API's description: no state, but which routes and version this is, so a key's holder.
    "/openapi.json": INFERENCE,
}
"""The scope each of the queen's routes needs, by the route's path (every method alike). A route
missing here needs `admin` (and tests/test_scopes.py fails until it is named)."""

FLAG_KEY = "api-key flag"
ANONYMOUS = "loopback (no key)"
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_AUDIT_BODY = 64 * 1024
"""How much of an admin request's body is kept to name its job kind and target."""


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a key's name (or FLAG_KEY, ANONYMOUS) and what it may do."""

    name: str
    scopes: frozenset[str]
    key_id: str | None = None
    limits: KeyLimits = field(default_factory=KeyLimits)


_EVERYTHING = frozenset(SCOPES)


def route_scope(routes: list[BaseRoute], scope: Scope) -> str | None:
    """The scope the request in `scope` needs: its route's entry in ROUTE_SCOPES (`admin` for a
    route the table misses); None when no route matches (the 404 still needs a valid key)."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            path = getattr(route, "path", "")
            return ROUTE_SCOPES.get(path, ADMIN)
    return None


def principal_of(scope: Scope) -> Principal | None:
    """The caller the middleware found for a request (None: no valid key, on /health)."""
    state = scope.get("state")
    found = state.get("principal") if isinstance(state, dict) else None
    return found if isinstance(found, Principal) else None


class KeyRing:
    """The keys file as of its last change: read again when its mtime, size or inode changes.

    A key verified once (PBKDF2, a few ms, on a thread) is remembered by its sha256 until the
    file changes, so later requests cost one hash and a constant-time compare."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._keys = KeysFile()
        self._broken: str | None = None
        self._verified: dict[str, bytes] = {}

    def current(self) -> tuple[KeysFile, str | None]:
        """The keys now, and why the file cannot be used (then no file key is accepted)."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        except OSError as err:
            # Cannot even tell whether it exists: fail closed, and look again next time.
            self._stamp, self._keys, self._verified = (-1, -1, -1), KeysFile(), {}
            self._broken = f"{self.path}: {err}"
            return self._keys, self._broken
        if stamp != self._stamp:
            self._stamp, self._verified = stamp, {}
            try:
                self._keys, self._broken = load_keys(self.path), None
            except ConfigError as err:
                # Fail closed: no file key works until the file is fixed (the flag key does).
                self._keys, self._broken = KeysFile(), str(err)
                log.error(  # noqa: TRY400 - the message says it all; no traceback
                    "the keys file cannot be used, so its keys are refused: %s", err
                )
            else:
                log.info("keys file read: %d keys", len(self._keys.entries))
        return self._keys, self._broken

    def in_use(self) -> bool:
        """Does the keys file exist? Then loopback callers need a key too, even when every key
        has been revoked (revoking the last key must not open the queen to everyone)."""
        self.current()
        return self._stamp is not None

    async def check(self, presented: bytes) -> tuple[KeyEntry | None, str]:
        """The entry `presented` is the key of, or None and why not (never the key itself)."""
        keys, broken = self.current()
        if broken is not None:
            return None, "the keys file cannot be used"
        key_id = parse_key_id(presented)
        if key_id is None:
            return None, "not an rbee key"
        entry = keys.by_id(key_id)
        if entry is None:
            return None, f"no key with id {key_id} (revoked, or never added)"
        quick = hashlib.sha256(presented).digest()
        known = self._verified.get(key_id)
        if known is not None:
            ok = hmac.compare_digest(quick, known)
        else:
            ok = await asyncio.to_thread(entry.matches, presented)
            # The file may have changed during the hash (a revoke): judge by the file as it is.
            if ok and self.current()[0].by_id(key_id) != entry:
                return None, f"no key with id {key_id} (revoked, or never added)"
            if ok:
                self._verified[key_id] = quick
        return (entry, "") if ok else (None, f"wrong secret for key id {key_id}")


@dataclass
class RateBucket:
    """A token bucket of `per_minute` tokens, refilled at `per_minute` a minute: at most a
    minute's worth at once, then the steady pace."""

    tokens: float
    stamp: float

    def take(self, per_minute: int, now: float) -> float:
        """Take one token: 0 when there was one, else the seconds until there is."""
        rate = per_minute / 60.0
        self.tokens = min(float(per_minute), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


def _headers(scope: Scope) -> list[bytes]:
    """The keys a request presents: `Authorization: Bearer`, `x-api-key` (b"" when absent)."""
    bearer = given = b""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            bearer = token.strip() if scheme.lower() == b"bearer" else b""
        elif name == b"x-api-key":
            given = value.strip()
    return [bearer, given]


def _job_summary(body: bytes) -> dict[str, str]:
    """The kind and target of an admin request's JSON body, for its audit entry."""
    try:
        raw = json.loads(body) if body else None
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    operation = raw.get("operation")
    op: dict[str, Any] = operation if isinstance(operation, dict) else raw
    found: dict[str, str] = {}
    if isinstance(op.get("kind"), str):
        found["kind"] = op["kind"][:64]
    target = op.get("alias") or op.get("model") or op.get("worker_id")
    if isinstance(target, str):
        hive = op.get("hive")
        found["target"] = (f"{target}@{hive}" if isinstance(hive, str) else target)[:130]
    return found


def _remote(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AuthMiddleware:
    """Authenticates, authorizes, limits and audits every HTTP request (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys_path: Path,
        audit: AuditLog,
        api_key: str | None = None,
        loopback: bool = True,
        refusal: Callable[[str, ApiError], Response] = lambda _, err: error_response(err),
    ) -> None:
        self.app = app
        self._flag = api_key.encode() if api_key else None
        self._loopback = loopback
        self._refusal = refusal
        self.ring = KeyRing(keys_path)
        self.audit = audit
        self._buckets: dict[str, RateBucket] = {}
        self._active: dict[str, int] = {}

    async def _identify(self, scope: Scope) -> tuple[Principal | None, str]:
        presented = _headers(scope)
        if self._flag is not None:
            # Both compared, whichever came: no answer's timing tells which one was tried.
            hits = [hmac.compare_digest(p, self._flag) for p in presented]
            if any(hits):
                return Principal(FLAG_KEY, _EVERYTHING), ""
        elif self._loopback and not self.ring.in_use():
            return Principal(ANONYMOUS, _EVERYTHING), ""
        why = "no API key"
        for candidate in presented:
            if candidate:
                entry, why = await self.ring.check(candidate)
                if entry is not None:
                    return Principal(entry.name, entry.scopes, entry.id, entry.limits), ""
        if why == "not an rbee key" and self._flag is not None:
            why = "wrong API key"
        return None, why

    def _over_limit(self, who: Principal) -> ApiError | None:
        if who.key_id is None:
            return None
        limits, loop = who.limits, asyncio.get_running_loop()
        if limits.concurrent is not None and self._active.get(who.key_id, 0) >= limits.concurrent:
            return ApiError(
                429,
                f"the key {who.name!r} has {limits.concurrent} requests in flight, its limit; "
                "retry when one ends",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after=1,
            )
        if limits.requests_per_minute is not None:
            bucket = self._buckets.setdefault(
                who.key_id, RateBucket(float(limits.requests_per_minute), loop.time())
            )
            wait = bucket.take(limits.requests_per_minute, loop.time())
            if wait > 0:
                return ApiError(
                    429,
                    f"the key {who.name!r} is limited to {limits.requests_per_minute} requests a "
                    f"minute; retry in {math.ceil(wait)} s",
                    type="rate_limit_error",
                    code="rate_limit_exceeded",
                    retry_after=wait,
                )
        return None

    async def _gate(
        self, scope: Scope, needed: str | None, who: Principal | None, why: str
    ) -> ApiError | None:
        """The refusal a request gets (401 and 403 recorded in the audit log), or None."""
        method, path = scope["method"], scope["path"][:200]
        if who is None:
            await self.audit.record(
                {
                    "event": "auth_failure",
                    "remote": _remote(scope),
                    "reason": why,
                    "method": method,
                    "path": path,
                    "status": 401,
                }
            )
            return ApiError(
                401,
                "missing or wrong API key: send `Authorization: Bearer <key>` (or `x-api-key: "
                "<key>`)",
                code="invalid_api_key",
            )
        if needed is not None and needed not in who.scopes:
            await self.audit.record(
                {
                    "event": "forbidden",
                    "who": who.name,
                    "key_id": who.key_id,
                    "remote": _remote(scope),
                    "reason": f"needs scope {needed}",
                    "method": method,
                    "path": path,
                    "status": 403,
                }
            )
            return ApiError(
                403,
                f"this API key lacks the {needed!r} scope, which {method} {path[:100]} needs; "
                f"its scopes: {', '.join(sorted(who.scopes))}",
                type="permission_error",
                code="insufficient_scope",
            )
        return self._over_limit(who)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # No websocket route exists; one added later must not slip past the keys.
            await send({"type": "websocket.close", "code": 1008})
            return
        routes: list[BaseRoute] = getattr(scope.get("app"), "routes", [])
        needed = route_scope(routes, scope)
        who, why = await self._identify(scope)
        scope.setdefault("state", {})["principal"] = who
        if needed == PUBLIC:
            await self.app(scope, receive, send)
            return
        refusal = await self._gate(scope, needed, who, why)
        if refusal is not None:
            await self._refusal(scope["path"], refusal)(scope, receive, send)
            return
        assert who is not None  # _gate refuses a request from nobody
        key_id = who.key_id
        if key_id is not None:
            self._active[key_id] = self._active.get(key_id, 0) + 1
        try:
            if needed == ADMIN and scope["method"] not in _READS:
                await self._audited(scope, receive, send, who)
            else:
                await self.app(scope, receive, send)
        finally:
            if key_id is not None:
                self._active[key_id] -= 1

    async def _audited(self, scope: Scope, receive: Receive, send: Send, who: Principal) -> None:
        """Run an admin action; its entry is written when its answer starts (so a client that
        has its answer finds the entry), or when it fails without one."""
        body = bytearray()
        written = False

        async def tee(message: Message) -> None:
            nonlocal written
            if message["type"] == "http.response.start" and not written:
                written = True
                await self.audit.record(entry(message["status"]))
            await send(message)

        async def keep() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < _AUDIT_BODY:
                body.extend(message.get("body", b"")[: _AUDIT_BODY - len(body)])
            return message

        def entry(status: int) -> dict[str, Any]:
            return {
                "event": "admin",
                "who": who.name,
                "key_id": who.key_id,
                "remote": _remote(scope),
                "method": scope["method"],
                "path": scope["path"][:200],
                **_job_summary(bytes(body)),
                "status": status,
            }

        try:
            await self.app(scope, keep, tee)
        except BaseException:
            if not written:
                written = True
                with contextlib.suppress(Exception):
                    await self.audit.record(entry(500))
            raise
