"""`rbee model list | import | download`: the catalog, the local store, and a hive's store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rbee.cli.jobs import queen_client
from rbee.cli.output import emit, fetch_progress, note, table
from rbee.config.settings import Paths
from rbee.models.catalog import (
    CATALOG,
    FORMATS,
    HubSource,
    LocalSource,
    Source,
    WheelSource,
    slug_model_id,
)
from rbee.models.detect import detect_format
from rbee.models.download import download
from rbee.models.hub import hub_settings, parse_spec
from rbee.models.local import import_path
from rbee.models.store import ModelStore, StoredArtifact

__all__ = ["FORMATS", "format_size", "model_download", "model_import", "model_list"]


def format_size(size: int) -> str:
    """Bytes as a person reads them: 98 MB, 4.2 GB, 12 KB, 512 B."""
    if size >= 10**10:
        return f"{size / 1e9:.0f} GB"
    if size >= 10**9:
        return f"{size / 1e9:.1f} GB"
    if size >= 10**6:
        return f"{size / 1e6:.0f} MB"
    return f"{size / 1e3:.0f} KB" if size >= 10**3 else f"{size} B"


def _catalog_source(source: Source) -> str:
    if isinstance(source, WheelSource):
        return f"pypi:{source.requirement}"
    if isinstance(source, HubSource):
        return f"hf:{source.repo}@{source.revision}" + (f"#{source.file}" if source.file else "")
    if isinstance(source, LocalSource):
        return f"local:{source.path}"
    return str(source)


def _hive_rows(listed: list[dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for m in listed:
        # A hive of the single-GGUF store describes its one artifact at the top level.
        for a in m.get("artifacts") or [m]:
            rows.append([m["id"], a["format"], format_size(int(a["size"])), a["sha256"][:12],
                         a.get("source", "")])  # fmt: skip
    return rows


def model_list(args: argparse.Namespace, paths: Paths) -> int:
    """Print the catalog and what the local store holds (or a hive's store, via the queen)."""
    if args.hive:
        with queen_client(args, paths) as client:
            listed = client.request("GET", f"/v1/hives/{args.hive}/models")["data"]
        if not listed:
            emit(f"no models on {args.hive} (they are uploaded when a worker needs them)")
            return 0
        table(["ID", "FORMAT", "SIZE", "SHA256", "SOURCE"], _hive_rows(listed))
        return 0
    stored = {m.id: m for m in ModelStore(paths.models_dir).list()}
    rows: list[list[object]] = []
    for model_id in sorted(set(CATALOG) | set(stored)):
        spec, have = CATALOG.get(model_id), stored.get(model_id)
        known_formats = {a.format for a in spec.artifacts} if spec else set()
        for fmt in sorted(known_formats | set(have.formats if have else ())):
            art = have.artifact(fmt) if have else None
            known = spec.artifact(fmt) if spec else None
            if art is not None:
                rows.append([model_id, fmt, format_size(art.size), "stored", art.source])
            elif known is not None:
                rows.append([model_id, fmt, format_size(known.size), "not fetched",
                             f"catalog: {_catalog_source(known.source)}"])  # fmt: skip
    table(["ID", "FORMAT", "SIZE", "STATE", "SOURCE"], rows)
    return 0


def _done(verb: str, model_id: str, artifact: StoredArtifact, origin: str) -> None:
    files = f", {len(artifact.files)} files" if artifact.is_folder else ""
    emit(
        f"{verb} {model_id} ({artifact.format}, {format_size(artifact.size)}{files}, sha256 "
        f"{artifact.sha256[:12]}) from {origin}"
    )


def model_import(args: argparse.Namespace, paths: Paths) -> int:
    """Copy a GGUF file or a model folder from this machine into the local store."""
    path = Path(args.path).expanduser()
    fmt = args.format or detect_format(path)
    model_id = args.id or slug_model_id(path.stem if path.is_file() else path.resolve().name)
    store = ModelStore(paths.models_dir)
    with fetch_progress() as progress:
        stored = import_path(store, path, model_id, fmt=fmt, replace=args.force, progress=progress)
    artifact = stored.artifact(fmt)
    assert artifact is not None
    _done("imported", stored.id, artifact, str(path))
    return 0


def model_download(args: argparse.Namespace, paths: Paths) -> int:
    """Download a GGUF file (REPO:FILE) or a model folder (REPO) from the hub into the store."""
    repo, file = parse_spec(args.spec)
    endpoint, token = hub_settings()
    note(f"downloading {args.spec} ({args.revision}) from {endpoint}")
    store = ModelStore(paths.models_dir)
    with fetch_progress() as progress:
        stored = download(
            store,
            repo,
            file=file,
            revision=args.revision,
            model_id=args.id,
            fmt=args.format,
            replace=args.force,
            progress=progress,
            endpoint=endpoint,
            token=token,
        )
    artifact = next(a for a in stored.artifacts if a.source.startswith(f"hf:{repo}@"))
    _done("downloaded", stored.id, artifact, f"{endpoint}/{repo}")
    return 0
