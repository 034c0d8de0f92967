"""Putting one artifact of a stored model into a hive's store over SFTP: resumable and checked.

The artifact's files (one for a gguf, all of a folder's for mlx, exl2, gptq) go to
`<id>/.incoming/queen-<format>/<file>.part` on the hive, file by file; an interrupted upload
resumes from the bytes each part already has. Once all are there, the hive's own Python computes
their sha256s, which must match the queen's manifest (a bad part is removed and named). Only then
do the parts take their names, the folder moves to `<id>/<format>` and the manifest is rewritten
with the artifact added (through a temporary name as well), so the hive's store never lists an
artifact that is not whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
from collections.abc import Callable

import asyncssh

from rbee.errors import ChecksumError, ModelError, SshError
from rbee.models.manifest import MANIFEST, Entry, merge_entry, parse_manifest, render_manifest
from rbee.models.store import StoredArtifact, StoredModel
from rbee.ssh.connection import HiveConnection

__all__ = ["SHA256_SCRIPT", "upload_model"]

log = logging.getLogger(__name__)

SHA256_SCRIPT = (
    "import hashlib, sys\n"
    "for path in sys.argv[1:]:\n"
    "    h = hashlib.sha256()\n"
    "    with open(path, 'rb') as f:\n"
    "        for chunk in iter(lambda: f.read(1 << 20), b''):\n"
    "            h.update(chunk)\n"
    "    print(h.hexdigest())\n"
)
"""Prints the sha256 of each file named on its command line, one per line."""

_CHUNK = 1 << 20
_HASH_SECONDS_PER_GB = 30


def _files(artifact: StoredArtifact) -> tuple[tuple[str, int, str], ...]:
    if artifact.is_folder:
        return artifact.files
    return ((artifact.path.name, artifact.size, artifact.sha256),)


def _entry(artifact: StoredArtifact) -> Entry:
    path = artifact.format if artifact.is_folder else f"{artifact.format}/{artifact.path.name}"
    return Entry(
        format=artifact.format,
        path=path,
        size=artifact.size,
        sha256=artifact.sha256,
        source=f"queen:{artifact.source}",
        files=artifact.files,
    )


async def upload_model(
    conn: HiveConnection,
    stored: StoredModel,
    models_dir: str,
    python: str,
    progress: Callable[[int, int], None] | None = None,
    *,
    fmt: str = "gguf",
) -> None:
    """Copy `stored`'s `fmt` artifact into the hive's store at `models_dir` (absolute there)."""
    artifact = stored.artifact(fmt)
    if artifact is None:
        raise ModelError(f"model {stored.id!r} has no {fmt} artifact in the queen's store")
    folder = posixpath.join(models_dir, stored.id)
    stage = posixpath.join(folder, ".incoming", f"queen-{fmt}")
    try:
        # The hash runs between two SFTP sessions: a command waiting for a channel slot while
        # this upload holds one could wait forever if many uploads did the same.
        async with conn.sftp() as sftp:
            await _send(conn, sftp, artifact, stage, progress)
        parts, bad = await _hash(conn, artifact, stage, python)
        async with conn.sftp() as sftp:
            await _accept(sftp, conn.alias, artifact, parts, bad)
            await _install(sftp, stored.id, artifact, folder, stage)
    except (OSError, asyncssh.Error) as err:
        raise SshError(
            f"{conn.alias}: uploading the {fmt} artifact of {stored.id} failed: {err}"
        ) from err


async def _send(
    conn: HiveConnection,
    sftp: asyncssh.SFTPClient,
    artifact: StoredArtifact,
    stage: str,
    progress: Callable[[int, int], None] | None,
) -> None:
    local_root = artifact.path if artifact.is_folder else artifact.path.parent
    sent = 0
    for rel, size, _ in _files(artifact):
        part = posixpath.join(stage, rel) + ".part"
        await sftp.makedirs(posixpath.dirname(part), exist_ok=True)
        have = (await sftp.stat(part)).size if await sftp.exists(part) else 0
        have = have if have is not None and have <= size else 0
        log.info("%s: uploading %s (%d of %d bytes there)", conn.alias, rel, have, size)
        if have < size:
            async with sftp.open(part, "ab" if have else "wb") as remote:
                with (local_root / rel).open("rb") as local:
                    local.seek(have)
                    while chunk := local.read(_CHUNK):
                        await remote.write(chunk)
                        have += len(chunk)
                        if progress is not None:
                            progress(sent + have, artifact.size)
        sent += size
        if progress is not None:
            progress(sent, artifact.size)


async def _hash(
    conn: HiveConnection, artifact: StoredArtifact, stage: str, python: str
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The uploaded parts, and (file, part, sha256) of those whose sha256 is not the manifest's."""
    files = _files(artifact)
    parts = [posixpath.join(stage, rel) + ".part" for rel, _, _ in files]
    limit = 300 + _HASH_SECONDS_PER_GB * artifact.size / 1e9
    result = await conn.check([python, "-c", SHA256_SCRIPT, *parts], time_limit=limit)
    digests = result.stdout.split()
    if len(digests) != len(parts):
        raise SshError(
            f"{conn.alias}: hashing the uploaded files printed {len(digests)} sums for "
            f"{len(parts)} files: {result.stdout[-200:]!r}"
        )
    bad = [
        (rel, part, got)
        for (rel, _, want), part, got in zip(files, parts, digests, strict=True)
        if got != want
    ]
    return parts, bad


async def _accept(
    sftp: asyncssh.SFTPClient,
    alias: str,
    artifact: StoredArtifact,
    parts: list[str],
    bad: list[tuple[str, str, str]],
) -> None:
    """Drop the parts that arrived wrong (and fail), or give the parts their final names."""
    for _, part, _ in bad:
        await sftp.remove(part)
    if bad:
        names = ", ".join(f"{rel} (sha256 {got})" for rel, _, got in bad)
        raise ChecksumError(
            f"{alias}: the {artifact.format} artifact arrived with a different sha256 "
            f"than the queen's manifest for: {names}; those partial files were removed, try again"
        )
    for part in parts:
        await sftp.posix_rename(part, part.removesuffix(".part"))


async def _install(
    sftp: asyncssh.SFTPClient, model_id: str, artifact: StoredArtifact, folder: str, stage: str
) -> None:
    manifest = posixpath.join(folder, MANIFEST)
    entries: tuple[Entry, ...] = ()
    if await sftp.exists(manifest):
        async with sftp.open(manifest, "rb") as f:
            raw = await f.read()
        try:
            entries = parse_manifest(json.loads(raw), manifest)
        except ValueError as err:
            raise ModelError(f"{manifest}: unreadable manifest ({err})") from err
    target = posixpath.join(folder, artifact.format)
    trash = f"{stage}.old"
    if await sftp.exists(target):
        # Unlist the old artifact before its files go, so no entry ever names new files.
        entries = tuple(e for e in entries if e.format != artifact.format)
        await _write_manifest(sftp, folder, model_id, entries)
        if await sftp.exists(trash):
            await sftp.rmtree(trash)
        await sftp.posix_rename(target, trash)
    await sftp.posix_rename(stage, target)
    merged, replaced = merge_entry(entries, _entry(artifact))
    await _write_manifest(sftp, folder, model_id, merged)
    if await sftp.exists(trash):
        await sftp.rmtree(trash)
    if replaced is not None and "/" not in replaced.path:  # a single-file layout's GGUF
        await sftp.remove(posixpath.join(folder, replaced.path))
    with contextlib.suppress(asyncssh.SFTPError):  # not empty: another upload is staged there
        await sftp.rmdir(posixpath.dirname(stage))


async def _write_manifest(
    sftp: asyncssh.SFTPClient, folder: str, model_id: str, entries: tuple[Entry, ...]
) -> None:
    tmp = posixpath.join(folder, f"{MANIFEST}.part")
    async with sftp.open(tmp, "w") as f:
        await f.write(render_manifest(model_id, entries))
    await sftp.posix_rename(tmp, posixpath.join(folder, MANIFEST))
