"""The audit log: every admin action and every refused caller, append-only, hash-chained.

`DATA_DIR/audit.jsonl` (0600) holds one JSON object per line. Each entry carries `seq` (its line
number), `prev` (the previous entry's `hash`; 64 zeros for the first) and `hash`, the sha256 of
the entry's canonical JSON (sorted keys, no spaces) without `hash`. A line is written exactly in
that canonical form, so `rbee audit verify` finds any edited byte (the line's hash or form no
longer matches) and any deleted or inserted line (the next line's `prev` or `seq` no longer
matches), and names the first such line as FILE:LINE. Cutting lines off the end leaves a valid,
shorter chain: `verify` prints the last hash, and `--expect HASH` checks that an entry recorded
earlier (elsewhere) is still there.

Entries name who acted (a key's name, `api-key flag`, `loopback (no key)`, or the local user for
`rbee key` commands), what (method, path, a job's kind and target) and the outcome (status); a
refused caller's entry names its address and the reason. A presented key is never written.

Writes: each entry is one `write` to a file opened O_APPEND, under an exclusive `flock`, after
reading the last line for its hash (so the queen and `rbee key` commands, separate processes, can
both append without breaking the chain), then `fsync`ed: the log is low-volume (admin actions,
refusals), and an entry that a crash could lose is worth little as evidence. The queen does this
on one thread of its own (`AuditLog`), so a slow disk delays only the requests being audited,
never the event loop or the threads other requests use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import hashlib
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rbee.config.settings import Paths
from rbee.errors import RbeeError
from rbee.fsutil import PRIVATE_FILE, private_dir

__all__ = [
    "GENESIS",
    "AuditBrokenError",
    "AuditLog",
    "Verified",
    "append_entry",
    "audit_path",
    "canonical",
    "seal",
    "tail",
    "verify",
]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
"""The `prev` of the first entry."""
_TAIL_CHUNK = 8192


def audit_path(paths: Paths) -> Path:
    """Where the queen and `rbee key` append their entries."""
    return paths.data_dir / "audit.jsonl"


class AuditBrokenError(RbeeError):
    """The chain is broken: the message names FILE:LINE and what is wrong there."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}")


def canonical(entry: dict[str, Any]) -> str:
    """The one text form of an entry: what is hashed and what is written."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def seal(fields: dict[str, Any], *, prev: str, seq: int, ts: float) -> dict[str, Any]:
    """The entry to append after the one whose hash is `prev` (pure: the chain's one rule)."""
    entry = {k: v for k, v in fields.items() if k not in ("seq", "prev", "hash", "ts")}
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
    entry.update(seq=seq, ts=when, prev=prev)
    entry["hash"] = _digest(entry)
    return entry


def _last_line(fd: int) -> bytes:
    """The file's last line (without its newline); b"" for an empty file."""
    end = os.lseek(fd, 0, os.SEEK_END)
    data = b""
    pos = end
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
        if data.rstrip(b"\n").count(b"\n") >= 1:
            break
    return data.rstrip(b"\n").rsplit(b"\n", 1)[-1]


def _chain_head(last: bytes) -> tuple[str, int]:
    """The `prev` and `seq` for the entry after `last`; a torn or edited last line still gets
    a successor (whose `prev` then cannot match: `verify` reports the line)."""
    if not last:
        return GENESIS, 1
    try:
        raw = json.loads(last)
        return str(raw["hash"]), int(raw["seq"]) + 1
    except (ValueError, KeyError, TypeError):
        return hashlib.sha256(last).hexdigest(), 0


def append_entry(path: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Append one entry to the log (blocking: locks, writes, fsyncs); return it sealed."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = _last_line(fd)
        prev, seq = _chain_head(last)
        entry = seal(fields, prev=prev, seq=seq, ts=time.time())
        line = canonical(entry).encode() + b"\n"
        end = os.lseek(fd, 0, os.SEEK_END)
        if end and os.pread(fd, 1, end - 1) != b"\n":
            line = b"\n" + line  # a torn last line stays torn, but on a line of its own
        os.write(fd, line)
        os.fsync(fd)
        return entry
    finally:
        os.close(fd)  # also drops the lock


@dataclass(frozen=True)
class Verified:
    """An intact chain: how many entries, and the last one's hash (record it elsewhere)."""

    entries: int
    last_hash: str
    found_expected: bool


def verify(path: Path, expect: str | None = None) -> Verified:
    """Check every line of the log; AuditBrokenError names the first line that is wrong.

    `expect`: a hash recorded earlier, which must still be in the chain (cutting lines off the
    end leaves a chain that is valid but shorter)."""
    prev, seq, found = GENESIS, 0, False
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise AuditBrokenError(path, 0, "no audit log here") from None
    with f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                raise AuditBrokenError(path, number, "the last line is cut short (no newline)")
            try:
                entry = json.loads(raw)
            except ValueError:
                raise AuditBrokenError(path, number, "not a JSON line") from None
            if not isinstance(entry, dict):
                raise AuditBrokenError(path, number, "not a JSON object")
            if raw[:-1].decode(errors="replace") != canonical(entry):
                raise AuditBrokenError(
                    path, number, "the line was rewritten (not its canonical form)"
                )
            if entry.get("hash") != _digest(entry):
                raise AuditBrokenError(
                    path, number, "the entry was edited (its hash does not match)"
                )
            if entry.get("prev") != prev:
                raise AuditBrokenError(
                    path, number, "an entry before this one was deleted, added or edited (prev)"
                )
            if entry.get("seq") != seq + 1:
                raise AuditBrokenError(
                    path, number, f"seq is {entry.get('seq')}, expected {seq + 1}"
                )
            prev, seq = entry["hash"], seq + 1
            found = found or prev == expect
    if expect is not None and not found:
        raise AuditBrokenError(
            path, seq, f"the entry with hash {expect[:16]}… is gone: lines were cut off the end"
        )
    return Verified(entries=seq, last_hash=prev, found_expected=found)


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of the log."""
    with path.open("r", encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in deque(f, maxlen=lines)]


class AuditLog:
    """The queen's writer: appends on one thread of its own, in the order entries come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def record(self, fields: dict[str, Any]) -> None:
        """Append an entry; an entry that cannot be written is logged, and the request goes on
        (a full disk must not take the API down with it)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, append_entry, self.path, fields)
        except OSError as err:
            log.error(  # noqa: TRY400 - the OSError says it all; no traceback
                "cannot write the audit log %s: %s; lost entry: %s", self.path, err, fields
            )
