"""A stored model's manifest: its artifacts, one per format, read, checked and merged as JSON.

    models/<id>/manifest.json
    {"id": "m", "artifacts": [
      {"format": "gguf", "path": "gguf/M.Q4_1.gguf", "size": N, "sha256": "...", "source": "..."},
      {"format": "mlx", "path": "mlx", "size": N, "sha256": "<folder digest>", "source": "...",
       "files": [{"path": "config.json", "size": N, "sha256": "..."}, ...]}]}

Paths are relative to the model's folder. The manifest of the single-GGUF store that came before
(the file beside it) still reads, as one gguf artifact:

    {"id", "format", "filename", "size", "sha256", "source"}

A folder's sha256 is the sha256 of its canonical listing, one line `<sha256> <size> <path>\\n`
per file sorted by path: one hash names a whole folder, and the per-file hashes kept beside it say
which file is bad. Everything here is pure: the store does the reading and writing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rbee.errors import ModelError
from rbee.models.catalog import FOLDER_FORMATS, FORMATS, relpath_problem

__all__ = [
    "MANIFEST",
    "RESERVED",
    "Entry",
    "FileEntry",
    "folder_digest",
    "merge_entry",
    "parse_manifest",
    "render_manifest",
]

MANIFEST = "manifest.json"
RESERVED = frozenset({MANIFEST, ".incoming"})
"""Names in a model's folder that are the store's own, never an artifact's path."""

FileEntry = tuple[str, int, str]
"""One file of a folder artifact: (relative path, size, sha256)."""

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Entry:
    """One artifact as the manifest records it (path relative to the model's folder)."""

    format: str
    path: str
    size: int
    sha256: str
    source: str
    files: tuple[FileEntry, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The manifest's JSON form of this entry."""
        out: dict[str, Any] = {
            "format": self.format,
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "source": self.source,
        }
        if self.files:
            out["files"] = [{"path": p, "size": s, "sha256": h} for p, s, h in self.files]
        return out


def folder_digest(files: Iterable[FileEntry]) -> str:
    """The sha256 that names a folder: over `<sha256> <size> <path>` lines sorted by path."""
    listing = "".join(f"{h} {s} {p}\n" for p, s, h in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()


def _sha(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ValueError(f"{what} is not a sha256 ({value!r})")
    return value


def _size(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} is not a size ({value!r})")
    return value


def _path(value: object, what: str) -> str:
    problem = relpath_problem(value)
    if problem is not None:
        raise ValueError(f"bad {what} {value!r}: {problem}")
    assert isinstance(value, str)
    return value


def _entry(raw: Any) -> Entry:
    fmt = raw["format"]
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    path = _path(raw["path"], "path")
    if path.split("/")[0] in RESERVED:
        raise ValueError(f"path {path!r} is the store's own")
    files: tuple[FileEntry, ...] = ()
    if fmt in FOLDER_FORMATS:
        listed = raw.get("files")
        if not isinstance(listed, list) or not listed:
            raise ValueError(f"the {fmt} artifact lists no files")
        files = tuple(
            (
                _path(f["path"], "file path"),
                _size(f["size"], "file size"),
                _sha(f["sha256"], "file sha256"),
            )
            for f in listed
        )
        if len({p for p, _, _ in files}) != len(files):
            raise ValueError(f"the {fmt} artifact lists a file twice")
    entry = Entry(
        format=fmt,
        path=path,
        size=_size(raw["size"], "size"),
        sha256=_sha(raw["sha256"], "sha256"),
        source=str(raw.get("source", "")),
        files=files,
    )
    if files and (
        entry.sha256 != folder_digest(files) or entry.size != sum(s for _, s, _ in files)
    ):
        raise ValueError(f"the {fmt} artifact's size or sha256 does not match its files")
    return entry


def _legacy_entry(raw: Any) -> Entry:
    filename = raw["filename"]
    if not isinstance(filename, str) or "/" in filename:
        raise ValueError(f"bad filename {filename!r}")
    if raw["format"] in FOLDER_FORMATS:
        raise ValueError(f"a single-file manifest cannot hold a {raw['format']} folder")
    return _entry(
        {
            "format": raw["format"],
            "path": filename,
            "size": raw["size"],
            "sha256": raw["sha256"],
            "source": raw.get("source", ""),
        }
    )


def _entries(raw: object) -> tuple[Entry, ...]:
    if not isinstance(raw, dict):
        raise TypeError("not a JSON object")
    if "artifacts" not in raw:
        return (_legacy_entry(raw),)
    listed = raw["artifacts"]
    if not isinstance(listed, list):
        raise TypeError("artifacts is not a list")
    return tuple(_entry(a) for a in listed)


def parse_manifest(raw: object, where: str) -> tuple[Entry, ...]:
    """The artifacts of a manifest (either layout); ModelError naming `where` if malformed."""
    try:
        entries = _entries(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelError(f"{where}: malformed manifest ({err})") from err
    formats = [e.format for e in entries]
    if len(set(formats)) != len(formats):
        raise ModelError(f"{where}: malformed manifest (a format is listed twice)")
    return entries


def render_manifest(model_id: str, entries: Sequence[Entry]) -> str:
    """The manifest's text for `entries` (sorted by format, so rewrites are stable)."""
    body = {
        "id": model_id,
        "artifacts": [e.to_json() for e in sorted(entries, key=lambda e: e.format)],
    }
    return json.dumps(body, indent=2) + "\n"


def merge_entry(entries: Sequence[Entry], entry: Entry) -> tuple[tuple[Entry, ...], Entry | None]:
    """`entries` with `entry` added, replacing the one of its format; and the one replaced."""
    replaced = next((e for e in entries if e.format == entry.format), None)
    kept = tuple(e for e in entries if e.format != entry.format)
    return (*kept, entry), replaced
