"""The queen's API keys file: who may call it, with which scopes and limits.

`CONFIG_DIR/keys.json` (0600, replaced atomically) holds one entry per key: its id, name, scopes,
optional limits and a salted PBKDF2-SHA256 hash of the key. The key itself is shown once, by
`rbee key add`, and never stored. A key reads `rbee_<id>_<secret>`: the prefix makes a leaked key
easy to recognize (and to scan for), the 8 hex digit id is stored in clear so a request's key is
checked against one entry, not hashed against all of them. The id is not a secret (`rbee key
list` shows it); the 43 characters after it (256 random bits) are.

Why PBKDF2 with few iterations: the secret is random, not a password, so a slow hash adds no
protection against guessing it; the salt and hash only keep the file from being a list of working
keys. The queen hashes a key once, then remembers the key's sha256 until the file changes
(rbee.queen.auth).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbee.config.settings import Paths
from rbee.errors import ConfigError
from rbee.fsutil import PRIVATE_FILE, atomic_write_text, private_dir

__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "KeyEntry",
    "KeyLimits",
    "KeysFile",
    "add_key",
    "hash_key",
    "keys_path",
    "load_keys",
    "new_key",
    "parse_key_id",
    "revoke_key",
]

SCOPES = ("inference", "admin", "metrics")
"""`inference`: the OpenAI (and Anthropic) endpoints and the model list; `admin`: workers, hives,
jobs and the dashboard; `metrics`: /metrics. The table of routes is rbee.queen.auth.ROUTE_SCOPES."""
KEY_PREFIX = "rbee_"
ITERATIONS = 10_000
_VERSION = 1
_ID = re.compile(r"[0-9a-f]{8}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY = re.compile(r"rbee_([0-9a-f]{8})_[A-Za-z0-9_-]{20,100}")


def keys_path(paths: Paths) -> Path:
    """Where the queen and `rbee key` keep the keys."""
    return paths.config_dir / "keys.json"


@dataclass(frozen=True)
class KeyLimits:
    """What one key may ask of the queen at once; None: no limit."""

    requests_per_minute: int | None = None
    concurrent: int | None = None

    def describe(self) -> str:
        """For `rbee key list`."""
        parts = []
        if self.requests_per_minute is not None:
            parts.append(f"{self.requests_per_minute}/min")
        if self.concurrent is not None:
            parts.append(f"{self.concurrent} at once")
        return ", ".join(parts) or "-"


@dataclass(frozen=True)
class KeyEntry:
    """One key as the file holds it: never the key, only its salted hash."""

    id: str
    name: str
    scopes: frozenset[str]
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    iterations: int = ITERATIONS
    created: str = ""
    limits: KeyLimits = KeyLimits()

    def matches(self, key: bytes) -> bool:
        """Is `key` this entry's key? (PBKDF2, then a constant-time compare.)"""
        return hmac.compare_digest(hash_key(key, self.salt, self.iterations), self.digest)

    def to_json(self) -> dict[str, Any]:
        """The entry as the file stores it."""
        limits = {
            k: v
            for k, v in (
                ("requests_per_minute", self.limits.requests_per_minute),
                ("concurrent", self.limits.concurrent),
            )
            if v is not None
        }
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "kdf": "pbkdf2_sha256",
            "iterations": self.iterations,
            "salt": self.salt.hex(),
            "hash": self.digest.hex(),
            "created": self.created,
            "limits": limits,
        }


@dataclass(frozen=True)
class KeysFile:
    """Every key of the file, by id."""

    entries: tuple[KeyEntry, ...] = ()

    def by_id(self, key_id: str) -> KeyEntry | None:
        """The entry with this id, if any."""
        return next((e for e in self.entries if e.id == key_id), None)

    def find(self, name_or_id: str) -> KeyEntry | None:
        """The entry with this name, else this id."""
        by_name = next((e for e in self.entries if e.name == name_or_id), None)
        return by_name or self.by_id(name_or_id)


def hash_key(key: bytes, salt: bytes, iterations: int = ITERATIONS) -> bytes:
    """The stored hash of a key."""
    return hashlib.pbkdf2_hmac("sha256", key, salt, iterations)


def parse_key_id(key: bytes) -> str | None:
    """The id of a key in rbee's format, else None (a key from elsewhere, or garbage)."""
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError:
        return None
    found = _KEY.fullmatch(text)
    return found.group(1) if found else None


def check_name(name: str) -> str:
    """A key's name: it appears in the audit log and `rbee key list`, so it is kept plain."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"key name {name[:80]!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Scopes from the command line or the file; ConfigError naming a wrong one."""
    found = frozenset(scopes)
    if not found:
        raise ConfigError(f"a key needs at least one scope: {', '.join(SCOPES)}")
    unknown = sorted(found - set(SCOPES))
    if unknown:
        raise ConfigError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    return found


def new_key(
    name: str, scopes: Iterable[str], limits: KeyLimits = KeyLimits(), *, taken: Iterable[str] = ()
) -> tuple[str, KeyEntry]:
    """A fresh key and its entry; the key is returned to be shown once and then forgotten."""
    used = set(taken)
    key_id = secrets.token_hex(4)
    while key_id in used:
        key_id = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    entry = KeyEntry(
        id=key_id,
        name=check_name(name),
        scopes=check_scopes(scopes),
        salt=salt,
        digest=hash_key(key.encode(), salt),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        limits=limits,
    )
    return key, entry


def _limit(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ConfigError(f"{where} must be a whole number of 1 or more, got {raw!r}")
    return raw


def _entry(raw: Any, where: str) -> KeyEntry:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object")

    def text(name: str, pattern: re.Pattern[str] | None = None) -> str:
        value = raw.get(name)
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise ConfigError(f"{where}.{name} is missing or malformed")
        return value

    try:
        salt, digest = bytes.fromhex(text("salt")), bytes.fromhex(text("hash"))
    except ValueError:
        raise ConfigError(f"{where}: salt and hash must be hex") from None
    iterations = raw.get("iterations", ITERATIONS)
    if raw.get("kdf", "pbkdf2_sha256") != "pbkdf2_sha256" or _limit(iterations, where) is None:
        raise ConfigError(f"{where}: only kdf pbkdf2_sha256 with iterations >= 1 is understood")
    scopes = raw.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ConfigError(f"{where}.scopes must be a list of scopes")
    try:
        checked = check_scopes(scopes)
        name = check_name(text("name"))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    limits = raw.get("limits") or {}
    if not isinstance(limits, dict):
        raise ConfigError(f"{where}.limits must be an object")
    return KeyEntry(
        id=text("id", _ID),
        name=name,
        scopes=checked,
        salt=salt,
        digest=digest,
        iterations=iterations,
        created=str(raw.get("created", "")),
        limits=KeyLimits(
            _limit(limits.get("requests_per_minute"), f"{where}.limits.requests_per_minute"),
            _limit(limits.get("concurrent"), f"{where}.limits.concurrent"),
        ),
    )


def parse_keys(text: str, source: str) -> KeysFile:
    """The keys of a file's text; ConfigError naming `source` and the entry that is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}:{err.lineno}: not valid JSON: {err.msg}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise ConfigError(f'{source}: expected {{"version": 1, "keys": [...]}}')
    entries = tuple(_entry(e, f"{source}: keys[{i}]") for i, e in enumerate(raw["keys"]))
    for label, values in (("id", [e.id for e in entries]), ("name", [e.name for e in entries])):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"{source}: two keys have the {label} {twice[0]!r}")
    return KeysFile(entries)


def load_keys(path: Path) -> KeysFile:
    """The keys in `path`; none when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return KeysFile()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the keys file: {err}") from None
    return parse_keys(text, str(path))


def _dump(keys: KeysFile) -> str:
    body = {"version": _VERSION, "keys": [e.to_json() for e in keys.entries]}
    return json.dumps(body, indent=2) + "\n"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the keys file's lock: two `rbee key` commands at once must not lose each other's
    edit (each reads, changes and replaces the whole file)."""
    private_dir(path.parent)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_key(
    path: Path, name: str, scopes: Iterable[str], limits: KeyLimits
) -> tuple[str, KeyEntry]:
    """Add a key to the file; return the key (to show once) and its entry."""
    with _locked(path):
        keys = load_keys(path)
        if keys.find(name) is not None:
            raise ConfigError(f"a key named {name!r} exists already (`rbee key revoke {name}`)")
        key, entry = new_key(name, scopes, limits, taken=[e.id for e in keys.entries])
        atomic_write_text(path, _dump(KeysFile((*keys.entries, entry))))
    return key, entry


def revoke_key(path: Path, name_or_id: str) -> KeyEntry:
    """Remove a key from the file by name or id; a running queen refuses it at its next use."""
    with _locked(path):
        keys = load_keys(path)
        entry = keys.find(name_or_id)
        if entry is None:
            known = ", ".join(e.name for e in keys.entries) or "none"
            raise ConfigError(f"no key named {name_or_id[:80]!r} (keys: {known})")
        atomic_write_text(path, _dump(KeysFile(tuple(e for e in keys.entries if e != entry))))
    return entry
