"""Moving model bytes: copy while hashing, and report progress as the bytes go."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import IO

__all__ = ["CHUNK", "Progress", "copy_hashing", "no_progress"]

Progress = Callable[[str, int, int | None], None]
"""Called as progress(stage, done, total) while a fetch runs; total is None when unknown."""

CHUNK = 1 << 20


def no_progress(stage: str, done: int, total: int | None) -> None:
    """A Progress that shows nothing."""
    del stage, done, total


def copy_hashing(
    src: IO[bytes], dst: IO[bytes], on_chunk: Callable[[int], None] | None = None
) -> tuple[int, str]:
    """Copy `src` to `dst` in 1 MiB chunks; return (bytes copied, their sha256)."""
    digest = hashlib.sha256()
    done = 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        done += len(chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))
    return done, digest.hexdigest()
