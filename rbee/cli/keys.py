"""`rbee key add|list|revoke`: the queen's API keys file (rbee.config.keys).

These edit CONFIG_DIR/keys.json directly (no queen needed); a running queen reads the file again
at its next request. `add` prints the key once, on stdout, and nowhere else: it is not stored.
Each change is recorded in the audit log under the local user's name.
"""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from rbee.cli.output import emit, note, table
from rbee.config.keys import KeyLimits, add_key, keys_path, load_keys, revoke_key
from rbee.config.settings import Paths
from rbee.queen.audit import append_entry, audit_path

__all__ = ["key_add", "key_list", "key_revoke"]


def _who() -> str:
    try:
        return f"local user {getpass.getuser()} (rbee key)"
    except (KeyError, OSError):
        return "local user (rbee key)"


def _record(paths: Paths, fields: dict[str, Any]) -> None:
    try:
        append_entry(audit_path(paths), fields)
    except OSError as err:
        note(f"warning: the change is made but not in the audit log: {err}")


def key_add(args: argparse.Namespace, paths: Paths) -> int:
    """Create a key, print it once."""
    limits = KeyLimits(args.rpm, args.concurrent)
    key, entry = add_key(keys_path(paths), args.name, args.scope or ["inference"], limits)
    _record(
        paths,
        {
            "event": "key_added",
            "who": _who(),
            "key": entry.name,
            "key_id": entry.id,
            "scopes": sorted(entry.scopes),
            "limits": limits.describe(),
        },
    )
    emit(key)
    note(
        f"key {entry.name!r} (id {entry.id}, scopes {', '.join(sorted(entry.scopes))}) added; "
        "this is the only time it is shown: keep it now"
    )
    return 0


def key_list(args: argparse.Namespace, paths: Paths) -> int:
    """The keys, without their secrets (the file holds none)."""
    keys = load_keys(keys_path(paths))
    if not keys.entries:
        note(f"no keys in {keys_path(paths)} (add one with `rbee key add NAME --scope SCOPE`)")
        return 0
    table(
        ("NAME", "ID", "SCOPES", "LIMITS", "CREATED"),
        [
            (e.name, e.id, ",".join(sorted(e.scopes)), e.limits.describe(), e.created)
            for e in keys.entries
        ],
    )
    return 0


def key_revoke(args: argparse.Namespace, paths: Paths) -> int:
    """Remove a key; a running queen refuses it from its next request on."""
    entry = revoke_key(keys_path(paths), args.key)
    _record(
        paths,
        {"event": "key_revoked", "who": _who(), "key": entry.name, "key_id": entry.id},
    )
    note(f"key {entry.name!r} (id {entry.id}) revoked")
    if not load_keys(keys_path(paths)).entries:
        note(
            f"no keys left: a queen still asks every caller for a key while {keys_path(paths)} "
            "exists (delete it to let loopback callers in without one)"
        )
    return 0
