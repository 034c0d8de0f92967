"""`rbee audit verify|tail`: check and read the audit log (rbee.queen.audit)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rbee.cli.output import emit, fail, note
from rbee.config.settings import Paths
from rbee.errors import RbeeError
from rbee.queen.audit import AuditBrokenError, audit_path, tail, verify

__all__ = ["audit_tail", "audit_verify"]


def _path(args: argparse.Namespace, paths: Paths) -> Path:
    return Path(args.file) if args.file else audit_path(paths)


def audit_verify(args: argparse.Namespace, paths: Paths) -> int:
    """Check the hash chain; exit 1 naming the first broken line."""
    try:
        checked = verify(_path(args, paths), expect=args.expect)
    except AuditBrokenError as err:
        return fail(f"the audit log is broken at {err}")
    emit(f"{_path(args, paths)}: {checked.entries} entries, chain intact")
    emit(f"last hash: {checked.last_hash}")
    if args.expect:
        note(f"the entry with hash {args.expect[:16]}… is in the chain")
    return 0


def audit_tail(args: argparse.Namespace, paths: Paths) -> int:
    """Print the last entries, one JSON line each."""
    path = _path(args, paths)
    try:
        lines = tail(path, args.lines)
    except FileNotFoundError:
        raise RbeeError(
            f"{path}: no audit log yet (the queen writes one at its first admin action)"
        ) from None
    except OSError as err:
        raise RbeeError(f"{path}: cannot read the audit log: {err}") from None
    for line in lines:
        emit(line)
    return 0
