"""Putting a model from the queen's store into a hive's store over SFTP: resumable and checked.

The file goes to `<id>/<file>.part` on the hive; an interrupted upload resumes from the size the
part already has. Once complete, the hive's own Python computes the sha256, which must match the
queen's manifest; only then is the part renamed and the manifest written (through a temporary name
as well), so the hive's store never shows a model that is not whole.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable

import asyncssh

from rbee.errors import ChecksumError, SshError
from rbee.models.store import StoredModel
from rbee.ssh.connection import HiveConnection

__all__ = ["SHA256_SCRIPT", "upload_model"]

log = logging.getLogger(__name__)

SHA256_SCRIPT = (
    "import hashlib, sys\n"
    "h = hashlib.sha256()\n"
    "with open(sys.argv[1], 'rb') as f:\n"
    "    for chunk in iter(lambda: f.read(1 << 20), b''):\n"
    "        h.update(chunk)\n"
    "print(h.hexdigest())\n"
)
_CHUNK = 1 << 20


async def upload_model(
    conn: HiveConnection,
    stored: StoredModel,
    models_dir: str,
    python: str,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Copy `stored` into the hive's store at `models_dir` (an absolute path on the hive)."""
    folder = posixpath.join(models_dir, stored.id)
    target = posixpath.join(folder, stored.filename)
    part = target + ".part"
    try:
        async with conn.conn.start_sftp_client() as sftp:
            await sftp.makedirs(folder, exist_ok=True)
            done = (await sftp.stat(part)).size if await sftp.exists(part) else 0
            done = done if done is not None and done <= stored.size else 0
            log.info("%s: uploading %s (%d of %d bytes there)", conn.alias, stored.filename,
                     done, stored.size)  # fmt: skip
            async with sftp.open(part, "ab" if done else "wb") as remote:
                with stored.path.open("rb") as local:
                    local.seek(done)
                    while chunk := local.read(_CHUNK):
                        await remote.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, stored.size)
            result = await conn.check([python, "-c", SHA256_SCRIPT, part], time_limit=300)
            digest = result.stdout.strip()
            if digest != stored.sha256:
                await sftp.remove(part)
                raise ChecksumError(
                    f"{conn.alias}: {stored.filename} arrived with sha256 {digest}, expected "
                    f"{stored.sha256}; the partial file was removed, try again"
                )
            await sftp.posix_rename(part, target)
            manifest = {"id": stored.id, "format": stored.format, "filename": stored.filename,
                        "size": stored.size, "sha256": stored.sha256,
                        "source": f"queen:{stored.source}"}  # fmt: skip
            tmp = posixpath.join(folder, "manifest.json.part")
            async with sftp.open(tmp, "w") as f:
                await f.write(json.dumps(manifest, indent=2) + "\n")
            await sftp.posix_rename(tmp, posixpath.join(folder, "manifest.json"))
    except (OSError, asyncssh.Error) as err:
        raise SshError(f"{conn.alias}: uploading {stored.filename} failed: {err}") from err
