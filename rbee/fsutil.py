"""Crash-safe, private file writes: a reader sees the old file or the new one, never half of one,
and nobody else on the machine reads it.

Every file rbee writes (state, keys, manifests, models, logs) is created 0600 in directories
created 0700, whatever the umask: the queen's record names its port and pid, the desired state
its fleet, and a shared machine's other users have no business reading either. A file the
operator owns and rbee only edits (known_hosts) keeps its mode, and a symlink to it stays a
symlink: the link's target is what gets replaced (`preserve=True`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "atomic_write_text",
    "atomic_writer",
    "open_private_log",
    "open_regular",
    "private_dir",
    "read_bounded",
    "read_tail",
    "sha256_file",
]

_CHUNK = 1 << 20
TAIL_BYTES = 256 * 1024
"""The most of a log's end read for a tail (its last lines are in there)."""
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> Path:
    """`path` as a directory, it and any parent it had to create made 0700 (existing ones are
    left as they are: they may be the operator's own, like ~/.ssh or /tmp)."""
    missing = []
    here = path
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    for made in missing:
        # mkdir's mode is cut by the umask, and parents=True ignores it for the parents.
        with contextlib.suppress(FileNotFoundError):
            os.chmod(made, PRIVATE_DIR)
    return path


def open_private_log(path: Path) -> BinaryIO:
    """`path` opened for appending, created 0600 (a log names models, hosts and clients)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    with contextlib.suppress(OSError):
        # An older rbee's log may be 0644; an operator's own chmod of it is lost, which is safe.
        os.fchmod(fd, PRIVATE_FILE)
    return os.fdopen(fd, "ab")


@contextlib.contextmanager
def atomic_writer(path: Path, *, preserve: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    The file is 0600. `preserve`: `path` is the operator's file: a symlink is followed and its
    target replaced (the link stays), and an existing file keeps its mode (and, for root, its
    owner)."""
    target = Path(os.path.realpath(path)) if preserve else path
    mode, owner = PRIVATE_FILE, None
    if preserve:
        with contextlib.suppress(FileNotFoundError):
            st = target.stat()
            mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    private_dir(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        if owner is not None and os.geteuid() == 0 and owner != (0, 0):
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str, *, preserve: bool = False) -> None:
    """Write `text` to `path` atomically (see `atomic_writer`)."""
    with atomic_writer(path, preserve=preserve) as f:
        f.write(text.encode())


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading, OSError unless it is a regular file.

    Opened non-blocking and checked after opening (not before, where a FIFO could be swapped
    in): a FIFO, a device or a socket named in a config or given as a model would otherwise
    block the read forever; /proc files that block (kmsg) answer EAGAIN instead."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    f = os.fdopen(fd, "rb")
    with contextlib.ExitStack() as on_error:
        on_error.callback(f.close)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or directory?)")
        on_error.pop_all()
    return f


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file `path`, OSError if it holds more than `limit` (a /proc
    file says size 0 and may go on for gigabytes, so the size is what is read, not stat)."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return data


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks; `progress` gets each chunk's size."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def read_tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file, reading only its end (blocking: call it in a
    thread); [] if it does not exist. OSError if it is not a regular file."""
    try:
        with open_regular(path) as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    found = text.splitlines()
    if size > TAIL_BYTES and found:
        found = found[1:]  # the first one is cut
    return found[-lines:] if lines else []
