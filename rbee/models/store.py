"""The model store: one folder per model id under the data dir, one artifact per format in it.

    models/<id>/manifest.json        the artifacts (rbee.models.manifest)
    models/<id>/gguf/<file>.gguf     a GGUF artifact: one file
    models/<id>/mlx/...              a folder artifact (mlx, exl2, gptq): its files
    models/<id>/.incoming/<key>/     an artifact being imported or downloaded (never listed)
    models/<id>/<file>.gguf          the single GGUF of a store written before formats (still read)

An artifact is listed once the manifest names it, and the manifest is written (atomically, under
a lock, after the files moved into place) only once every file is whole and hashed, so the store
never shows half a model. The sha256s are checked again when a worker loads an artifact.

    models/.verified/<sha256>.json   the file that last matched this sha256, as stat saw it

Hashing a file is what a load spends on a big model (seconds per GiB), and a worker loads again
after every restart. Once a file matched its sha256, its stamp (device, inode, size, mtime and
ctime in ns) is kept: a file that still has exactly that stamp was not written since, so it is not
read again. Any write, truncation, replacement or copy changes the stamp (ctime cannot be set
back), and the file is hashed in full again. A stamp is advisory: a missing or unreadable one
only means a full hash.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rbee.errors import ChecksumError, ModelError
from rbee.fsutil import atomic_write_text, private_dir, sha256_file
from rbee.models.catalog import (
    FOLDER_FORMATS,
    validate_format,
    validate_model_id,
    validate_relpath,
)
from rbee.models.manifest import (
    MANIFEST,
    Entry,
    FileEntry,
    folder_digest,
    merge_entry,
    parse_manifest,
    render_manifest,
)

__all__ = ["ModelStore", "StoredArtifact", "StoredModel", "list_files"]

_STAGING = ".incoming"
_LOCKS = ".locks"
_VERIFIED = ".verified"
STAMP_SETTLE_NS = 2_000_000_000
"""A file written less than this long ago is hashed but not stamped (see _verify_file)."""


@dataclass(frozen=True)
class StoredArtifact:
    """One format of a stored model: a file (gguf) or a folder with its files' hashes."""

    format: str
    path: Path
    size: int
    sha256: str
    source: str
    files: tuple[tuple[str, int, str], ...] = ()

    @property
    def is_folder(self) -> bool:
        """True for a folder artifact (mlx, exl2, gptq)."""
        return bool(self.files)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: the manifest entry, with the absolute path."""
        entry = Entry(self.format, str(self.path), self.size, self.sha256, self.source, self.files)
        return entry.to_json()


@dataclass(frozen=True)
class StoredModel:
    """A model present in the store, with each artifact it has (at least one)."""

    id: str
    artifacts: tuple[StoredArtifact, ...]

    def artifact(self, fmt: str) -> StoredArtifact | None:
        """This model's artifact in format `fmt`, if the store has it."""
        return next((a for a in self.artifacts if a.format == fmt), None)

    @property
    def formats(self) -> tuple[str, ...]:
        """The formats stored, sorted."""
        return tuple(sorted(a.format for a in self.artifacts))

    @property
    def size(self) -> int:
        """Bytes of all artifacts together."""
        return sum(a.size for a in self.artifacts)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (for `rbee model list` and the hive's /v1/models)."""
        return {
            "id": self.id,
            "formats": list(self.formats),
            "size": self.size,
            "artifacts": [a.describe() for a in sorted(self.artifacts, key=lambda a: a.format)],
        }


def list_files(folder: Path) -> list[tuple[str, Path]]:
    """Every regular file under `folder` (following symlinks), as (relative path, path), sorted.

    Hidden files and folders (a name starting with '.', such as .git or .cache) are left out.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for name in sorted(filenames):
            path = base / name
            if not name.startswith(".") and path.is_file():
                found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class ModelStore:
    """Reads and writes the model store rooted at `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, model_id: str) -> Path:
        """The folder of `model_id` (the id is validated, so it cannot leave the store)."""
        return self.root / validate_model_id(model_id)

    @contextlib.contextmanager
    def lock(self, model_id: str, purpose: str) -> Iterator[None]:
        """Hold the store's lock on `model_id` for `purpose` ("manifest", "fetch"), waiting for it.

        Two writers of one model (an import of mlx while a gguf downloads, two workers fetching
        the same model) take turns instead of losing each other's work. The lock files live in
        models/.locks/, so a model's own folder holds nothing but the model.
        """
        folder = self.root / _LOCKS
        private_dir(folder)
        with (folder / f"{validate_model_id(model_id)}.{purpose}").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _entries(self, model_id: str) -> tuple[Entry, ...]:
        manifest = self.folder(model_id) / MANIFEST
        try:
            raw = json.loads(manifest.read_text())
        except FileNotFoundError:
            return ()
        except (OSError, ValueError) as err:
            raise ModelError(f"{manifest}: unreadable manifest ({err})") from err
        return parse_manifest(raw, str(manifest))

    def get(self, model_id: str) -> StoredModel | None:
        """The stored model `model_id`, or None if no artifact of it is (completely) stored."""
        folder = self.folder(model_id)
        artifacts = []
        for e in self._entries(model_id):
            path = folder / e.path
            if path.is_dir() if e.files else path.is_file():
                artifacts.append(
                    StoredArtifact(e.format, path, e.size, e.sha256, e.source, e.files)
                )
        return StoredModel(model_id, tuple(artifacts)) if artifacts else None

    def list(self) -> list[StoredModel]:
        """Every model in the store with at least one complete artifact, sorted by id."""
        if not self.root.is_dir():
            return []
        found = []
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and (child / MANIFEST).is_file():
                stored = self.get(child.name)
                if stored is not None:
                    found.append(stored)
        return found

    def check_free(self, model_id: str, fmt: str, *, replace: bool = False) -> None:
        """ModelError if `model_id` already has a `fmt` artifact (unless `replace`)."""
        if replace:
            return
        stored = self.get(model_id)
        have = stored.artifact(fmt) if stored else None
        if have is not None:
            raise ModelError(
                f"model {model_id!r} already has a {fmt} artifact ({have.path}, from "
                f"{have.source or 'unknown'}); pass --force to replace it, or pick another --id"
            )

    def staging(self, model_id: str, key: str) -> Path:
        """A folder for an artifact on its way in (`key` names the transfer); never listed."""
        if "/" in key:
            raise ModelError(f"staging key {key!r} must be one name")
        validate_relpath(key)
        return private_dir(self.folder(model_id) / _STAGING / key)

    def discard(self, staged: Path) -> None:
        """Remove a staging folder (a failed or refused transfer) and what holds nothing now."""
        _remove(staged)
        for parent in (staged.parent, staged.parent.parent):
            with contextlib.suppress(OSError):
                parent.rmdir()  # only once empty

    def record_artifact(
        self,
        model_id: str,
        fmt: str,
        staged: Path,
        files: Sequence[FileEntry],
        *,
        source: str,
        replace: bool = False,
    ) -> StoredModel:
        """Move the complete, hashed files in `staged` into place and list them as `fmt`.

        `staged` is a folder from staging() holding exactly `files` ((path, size, sha256) each,
        hashed while they were written); a gguf has exactly one file. Refuses an existing
        artifact of `fmt` unless `replace`.
        """
        folder = self.folder(model_id)
        validate_format(fmt)
        files = tuple(sorted(files))
        for rel, _, _ in files:
            validate_relpath(rel, where=str(staged))
        if staged.parent != folder / _STAGING:
            raise ModelError(f"{staged} is not a staging folder of model {model_id!r}")
        if fmt in FOLDER_FORMATS:
            entry = Entry(
                fmt, fmt, sum(s for _, s, _ in files), folder_digest(files), source, files
            )
        elif len(files) == 1 and "/" not in files[0][0]:
            name, size, sha = files[0]
            entry = Entry(fmt, f"{fmt}/{name}", size, sha, source)
        else:
            raise ModelError(f"a {fmt} artifact is one file, got {[p for p, _, _ in files]}")
        _check_staged(staged, files)
        trash: list[Path] = []
        with self.lock(model_id, "manifest"):
            current = self._entries(model_id)
            if any(e.format == fmt for e in current):
                self.check_free(model_id, fmt, replace=replace)
                # Unlist the old artifact before its files go, so no entry ever names new files.
                current = tuple(e for e in current if e.format != fmt)
                atomic_write_text(folder / MANIFEST, render_manifest(model_id, current))
            target = folder / fmt
            if target.exists() or target.is_symlink():
                trash.append(folder / _STAGING / f"old-{fmt}-{uuid.uuid4().hex[:8]}")
                os.replace(target, trash[-1])
            os.replace(staged, target)
            entries, _ = merge_entry(current, entry)
            atomic_write_text(folder / MANIFEST, render_manifest(model_id, entries))
        trash.extend(self._legacy_leftovers(model_id, entries))
        for path in trash:
            _remove(path)
        with contextlib.suppress(OSError):
            (folder / _STAGING).rmdir()
        stored = self.get(model_id)
        if stored is None or stored.artifact(fmt) is None:
            raise ModelError(f"{folder}: the {fmt} artifact is missing right after it was stored")
        return stored

    def _legacy_leftovers(self, model_id: str, entries: Sequence[Entry]) -> tuple[Path, ...]:
        # A GGUF of the single-file layout sits beside the manifest; once a newer gguf artifact
        # replaced it, nothing names it any more.
        if not any(e.format == "gguf" for e in entries):
            return ()
        named = {e.path for e in entries}
        folder = self.folder(model_id)
        return tuple(p for p in folder.glob("*.gguf") if p.is_file() and p.name not in named)

    def verify(
        self, artifact: StoredArtifact, progress: Callable[[int], None] | None = None
    ) -> None:
        """Raise ChecksumError unless the artifact's files match their recorded sizes and sha256.

        A folder must hold exactly its listed files; the message names the first bad one. A file
        unchanged since it last matched (its stamp, see the module doc) is not hashed again.
        """
        fix = f"fetch it again with --force, or remove {artifact.path}"
        if not artifact.is_folder:
            self._verify_file(artifact.path, artifact.size, artifact.sha256, progress, fix)
            return
        listed = {rel for rel, _, _ in artifact.files}
        for rel, _ in list_files(artifact.path):
            if rel not in listed:
                raise ChecksumError(
                    f"{artifact.path / rel}: not part of the recorded {artifact.format} artifact; "
                    f"{fix}"
                )
        for rel, size, sha in artifact.files:
            path = artifact.path / rel
            if not path.is_file():
                raise ChecksumError(f"{path}: missing from the {artifact.format} artifact; {fix}")
            self._verify_file(path, size, sha, progress, fix)

    def _verify_file(
        self,
        path: Path,
        size: int,
        sha256: str,
        progress: Callable[[int], None] | None,
        fix: str,
    ) -> None:
        before = os.stat(path)
        if before.st_size != size:
            raise ChecksumError(
                f"{path}: size {before.st_size} does not match the recorded {size}; {fix}"
            )
        stamp_path = self.root / _VERIFIED / f"{sha256}.json"
        stamp = _stamp(path, before)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp_path.read_text()) == stamp:
                return
        actual = sha256_file(path, progress)
        if actual != sha256:
            raise ChecksumError(
                f"{path}: sha256 {actual} does not match the recorded {sha256}; {fix}"
            )
        if _stamp(path, os.stat(path)) != stamp:
            return  # written while it was read: no stamp; the next load hashes it again
        if time.time_ns() - max(before.st_mtime_ns, before.st_ctime_ns) < STAMP_SETTLE_NS:
            # Timestamps tick coarsely (a few ms on ext4): a write in the same tick as this
            # stat would leave the stamp unchanged. Only a file that has settled is stamped.
            return
        with contextlib.suppress(OSError):  # advisory: without it the next load hashes again
            private_dir(stamp_path.parent)
            atomic_write_text(stamp_path, json.dumps(stamp, sort_keys=True) + "\n")


def _stamp(path: Path, st: os.stat_result) -> dict[str, Any]:
    return {
        "path": str(path.resolve()),
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _check_staged(staged: Path, files: Sequence[FileEntry]) -> None:
    there = {rel: path.stat().st_size for rel, path in list_files(staged)}
    wanted = {rel: size for rel, size, _ in files}
    if there != wanted:
        missing = sorted(set(wanted) - set(there))
        extra = sorted(set(there) - set(wanted))
        wrong = sorted(r for r in set(wanted) & set(there) if wanted[r] != there[r])
        raise ModelError(
            f"{staged}: the staged files do not match their listing (missing {missing}, "
            f"unexpected {extra}, wrong size {wrong})"
        )
