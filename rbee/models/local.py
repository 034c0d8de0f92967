"""`rbee model import PATH`: copy a GGUF file or a model folder from this machine into the store.

The format is told from the files (rbee.models.detect) unless given. Every file is copied into a
staging folder of the store while its sha256 is computed, then the whole artifact is listed at
once; an import that fails or is interrupted leaves nothing listed and removes what it copied.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from rbee.errors import ChecksumError, ModelError
from rbee.fsutil import atomic_writer
from rbee.models.catalog import FOLDER_FORMATS, validate_format, validate_model_id, validate_relpath
from rbee.models.detect import check_kind, detect_format
from rbee.models.gguf import check_gguf
from rbee.models.manifest import FileEntry, folder_digest
from rbee.models.store import ModelStore, StoredModel, list_files
from rbee.models.transfer import Progress, copy_hashing, no_progress

__all__ = ["import_path"]


def _listing(path: Path, fmt: str) -> list[tuple[str, Path]]:
    if fmt not in FOLDER_FORMATS:
        return [(validate_relpath(path.name, where=str(path.parent)), path)]
    listing = list_files(path)
    if not listing:
        raise ModelError(f"{path}: the folder holds no files to import")
    for rel, _ in listing:
        validate_relpath(rel, where=str(path))
    return listing


def _expect(path: Path, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise ChecksumError(
            f"{path}: sha256 {digest} does not match the expected {expected}; nothing was stored"
        )


def import_path(
    store: ModelStore,
    path: Path,
    model_id: str,
    *,
    fmt: str | None = None,
    replace: bool = False,
    progress: Progress = no_progress,
    expect_sha256: str | None = None,
) -> StoredModel:
    """Copy the model at `path` into the store as `model_id`; return the stored model.

    Refuses an id that already has an artifact of the format unless `replace`. With
    `expect_sha256` (a catalog's checksum), a copy whose sha256 differs is refused.
    """
    validate_model_id(model_id)
    path = path.expanduser()
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder")
    fmt = validate_format(fmt) if fmt else detect_format(path)
    check_kind(path, fmt)
    if fmt == "gguf":
        check_gguf(path)  # a truncated file is refused here, not when a worker maps it
    store.check_free(model_id, fmt, replace=replace)
    listing = _listing(path, fmt)
    total = sum(src.stat().st_size for _, src in listing)
    stage = f"importing {path.name} ({fmt})"
    staged = store.staging(model_id, f"import-{fmt}-{uuid.uuid4().hex[:8]}")
    try:
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            progress(stage, done, total)

        progress(stage, 0, total)
        files: list[FileEntry] = []
        for rel, src in listing:
            with src.open("rb") as f, atomic_writer(staged / rel) as out:
                size, sha = copy_hashing(f, out, advance)
            files.append((rel, size, sha))
        _expect(path, folder_digest(files) if fmt in FOLDER_FORMATS else files[0][2], expect_sha256)
        return store.record_artifact(
            model_id, fmt, staged, files, source=f"local:{path.resolve()}", replace=replace
        )
    except BaseException:
        store.discard(staged)
        raise
