"""The model store: one folder per model id under the data dir, each with a manifest.

    models/<id>/manifest.json   {"id", "format", "filename", "size", "sha256", "source"}
    models/<id>/<filename>      the artifact itself

Files land through a temporary name and a rename, so a store never holds half a model; the sha256
in the manifest is checked again when a worker loads the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rbee.errors import ChecksumError, ModelError
from rbee.fsutil import atomic_write_text, sha256_file
from rbee.models.catalog import validate_model_id

__all__ = ["ModelStore", "StoredModel"]

_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StoredModel:
    """A model present in the store."""

    id: str
    format: str
    filename: str
    size: int
    sha256: str
    source: str
    path: Path

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (for `rbee model list` and the APIs)."""
        out = asdict(self)
        out["path"] = str(self.path)
        return out


class ModelStore:
    """Reads and writes the model store rooted at `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, model_id: str) -> Path:
        """The folder of `model_id` (the id is validated, so it cannot leave the store)."""
        return self.root / validate_model_id(model_id)

    def get(self, model_id: str) -> StoredModel | None:
        """The stored model `model_id`, or None if it is not (completely) in the store."""
        manifest = self.folder(model_id) / _MANIFEST
        try:
            raw = json.loads(manifest.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise ModelError(f"{manifest}: unreadable manifest ({err})") from err
        try:
            filename = str(raw["filename"])
            stored = StoredModel(
                id=model_id,
                format=str(raw["format"]),
                filename=filename,
                size=int(raw["size"]),
                sha256=str(raw["sha256"]),
                source=str(raw.get("source", "")),
                path=self.folder(model_id) / filename,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{manifest}: malformed manifest ({err})") from err
        if "/" in filename or "\\" in filename or filename in {"", ".", ".."}:
            raise ModelError(f"{manifest}: malformed manifest (bad filename {filename!r})")
        return stored if stored.path.is_file() else None

    def list(self) -> list[StoredModel]:
        """Every complete model in the store, sorted by id."""
        if not self.root.is_dir():
            return []
        found = []
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and (child / _MANIFEST).is_file():
                stored = self.get(child.name)
                if stored is not None:
                    found.append(stored)
        return found

    def record(
        self, model_id: str, *, fmt: str, filename: str, sha256: str, size: int, source: str
    ) -> StoredModel:
        """Write the manifest for a file already moved into the model's folder."""
        folder = self.folder(model_id)
        manifest = {
            "id": model_id,
            "format": fmt,
            "filename": filename,
            "size": size,
            "sha256": sha256,
            "source": source,
        }
        atomic_write_text(folder / _MANIFEST, json.dumps(manifest, indent=2) + "\n")
        stored = self.get(model_id)
        if stored is None:
            raise ModelError(f"{folder}: {filename} missing after it was stored")
        return stored

    @staticmethod
    def verify(stored: StoredModel, progress: Callable[[int], None] | None = None) -> None:
        """Raise ChecksumError unless the stored file matches its recorded size and sha256."""
        size = stored.path.stat().st_size
        if size != stored.size:
            raise ChecksumError(
                f"{stored.path}: size {size} does not match the recorded {stored.size}; "
                f"remove {stored.path.parent} and fetch the model again"
            )
        actual = sha256_file(stored.path, progress)
        if actual != stored.sha256:
            raise ChecksumError(
                f"{stored.path}: sha256 {actual} does not match the recorded {stored.sha256}; "
                f"remove {stored.path.parent} and fetch the model again"
            )
