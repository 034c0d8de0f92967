"""`rbee model download REPO[:FILE]`: a hub repo's file or folder into the store, checked.

The listing pins the revision to one commit, so every file of a folder comes from the same commit
and a resumed file is the same file. Each file grows as `<name>.part` in a staging folder of the
store (rbee.models.store), resumed with `Range: bytes=N-` after an interruption, whether in this
run (a few retries) or the next one; once whole it must match the hub's LFS sha256 (weights) or
git blob sha1 (small files kept in git). A mismatch refuses the whole download and keeps nothing.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from functools import partial
from pathlib import Path

import httpx

from rbee.errors import ChecksumError, ModelError, ModelFetchError
from rbee.fsutil import private_dir
from rbee.models.catalog import (
    FOLDER_FORMATS,
    slug_model_id,
    validate_format,
    validate_model_id,
    validate_relpath,
    validate_repo,
)
from rbee.models.detect import check_kind, detect_folder_format
from rbee.models.hub import REVISION, HubClient, HubFile, HubListing, hub_settings
from rbee.models.manifest import FileEntry, folder_digest
from rbee.models.store import ModelStore, StoredModel
from rbee.models.transfer import CHUNK, Progress, no_progress

__all__ = ["download"]

log = logging.getLogger(__name__)


def _hashes(path: Path) -> tuple[str, str]:
    """The sha256 of a file and its git blob sha1 (sha1 of `blob <size>\\0` + content)."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _check(file: HubFile, path: Path, where: str) -> str:
    """The sha256 of the downloaded `path`; ChecksumError unless it is the listed file."""
    size = path.stat().st_size
    sha256, sha1 = _hashes(path)
    if size != file.size:
        problem = f"{size} bytes arrived, the hub lists {file.size}"
    elif file.sha256 is not None and sha256 != file.sha256:
        problem = f"sha256 {sha256}, but the hub's lfs sha256 is {file.sha256}"
    elif file.sha256 is None and file.blob_id is not None and sha1 != file.blob_id:
        problem = f"git blob sha1 {sha1}, but the hub's is {file.blob_id}"
    else:
        return sha256
    raise ChecksumError(f"{where}: {file.path}: {problem}; refused, nothing was stored")


def _select(listing: HubListing, file: str | None, where: str) -> list[HubFile]:
    if file is not None:
        found = listing.file(file)
        if found is None:
            ggufs = [f.path for f in listing.files if f.path.endswith(".gguf")]
            known = f" (GGUF files there: {', '.join(ggufs[:8])})" if ggufs else ""
            raise ModelFetchError(f"{where} has no file {file!r}{known}")
        return [found]
    chosen = [f for f in listing.files if not any(p.startswith(".") for p in f.path.split("/"))]
    names = {f.path for f in chosen}
    ggufs = sorted(n for n in names if n.endswith(".gguf"))
    if ggufs and "config.json" not in names:
        raise ModelFetchError(
            f"{where} holds GGUF files: download one as {listing.repo}:FILE "
            f"(e.g. {listing.repo}:{ggufs[0]}; files: {', '.join(ggufs[:8])})"
        )
    if not chosen:
        raise ModelFetchError(f"{where} has no files to download")
    return chosen


def download(
    store: ModelStore,
    repo: str,
    *,
    file: str | None = None,
    revision: str = "main",
    model_id: str | None = None,
    fmt: str | None = None,
    replace: bool = False,
    progress: Progress = no_progress,
    endpoint: str | None = None,
    token: str | None = None,
    attempts: int = 3,
    expect_sha256: str | None = None,
) -> StoredModel:
    """Download `repo` (one `file`, a GGUF; or the whole repo, a model folder) into the store.

    The id defaults to a slug of the repo's name. An interrupted transfer is retried `attempts`
    times in this call, each resuming where the last stopped; what arrived stays staged, so the
    same call later resumes too. `endpoint`/`token` default to $HF_ENDPOINT/$HF_TOKEN.
    """
    validate_repo(repo)
    if file is not None:
        validate_relpath(file, where=f"hub repo {repo}")
    if not REVISION.fullmatch(revision):
        raise ModelError(f"invalid revision {revision!r}")
    model_id = validate_model_id(model_id) if model_id else slug_model_id(repo)
    if file is not None:
        fmt = validate_format(fmt or "gguf")
        if fmt in FOLDER_FORMATS:
            raise ModelError(f"{repo}:{file}: a {fmt} model is a folder; leave out :FILE")
        if not file.endswith(".gguf"):
            raise ModelError(f"{repo}:{file}: only a .gguf file downloads alone")
    elif fmt is not None and validate_format(fmt) not in FOLDER_FORMATS:
        raise ModelError(f"{repo}: a {fmt} model is one file: download it as {repo}:FILE")
    if fmt is not None:
        store.check_free(model_id, fmt, replace=replace)
    default_endpoint, default_token = hub_settings()
    endpoint = (endpoint or default_endpoint).rstrip("/")
    token = token if token is not None else default_token
    with HubClient(endpoint, token) as client:
        listing = client.listing(repo, revision)
        where = f"{repo}@{revision} at {endpoint}"
        chosen = _select(listing, file, where)
        key = hashlib.sha256(f"{repo}\0{listing.commit}\0{file or ''}".encode()).hexdigest()
        staged = store.staging(model_id, f"hub-{key[:16]}")
        for stale in staged.parent.glob("hub-*"):
            if stale != staged:  # an earlier download of another revision: it cannot resume
                shutil.rmtree(stale, ignore_errors=True)
        try:
            files = _fetch_all(
                client,
                listing=listing,
                chosen=chosen,
                staged=staged,
                file=file,
                progress=progress,
                attempts=attempts,
                where=where,
            )
        except ChecksumError:
            store.discard(staged)
            raise
    if fmt is None:
        fmt = detect_folder_format(staged)
        if fmt is None:
            raise ModelError(
                f"{where}: cannot tell the model format of the downloaded folder; run the same "
                f"command with --format ({', '.join(sorted(FOLDER_FORMATS))}): it will not "
                "download again"
            )
    target = staged / files[0][0] if fmt not in FOLDER_FORMATS else staged
    try:
        check_kind(target, fmt)
    except ModelError:
        store.discard(staged)
        raise
    digest = folder_digest(files) if fmt in FOLDER_FORMATS else files[0][2]
    if expect_sha256 is not None and digest != expect_sha256:
        store.discard(staged)
        raise ChecksumError(
            f"{where}: sha256 {digest} does not match the expected {expect_sha256}; refused, "
            "nothing was stored"
        )
    source = f"hf:{repo}@{listing.commit}" + (f"#{file}" if file else "")
    return store.record_artifact(model_id, fmt, staged, files, source=source, replace=replace)


def _report(progress: Progress, stage: str, base: int, total: int, done: int) -> None:
    progress(stage, base + done, total)


def _fetch_all(
    client: HubClient,
    *,
    listing: HubListing,
    chosen: list[HubFile],
    staged: Path,
    file: str | None,
    progress: Progress,
    attempts: int,
    where: str,
) -> list[FileEntry]:
    total = sum(f.size for f in chosen)
    stage = f"downloading {listing.repo}" + (f":{file}" if file else "")
    finished = 0
    entries: list[FileEntry] = []
    progress(stage, 0, total)
    for hub_file in chosen:
        # One GGUF is stored under its own name; a folder keeps the repo's relative paths.
        rel = hub_file.path.rsplit("/", 1)[-1] if file else hub_file.path
        final = staged / rel
        part = final.with_name(final.name + ".part")
        if final.is_file():  # whole and checked in an earlier run: just hash it again
            final.replace(part)
        private_dir(final.parent)
        for attempt in range(1, max(1, attempts) + 1):
            try:
                client.fetch(
                    listing, hub_file, part, partial(_report, progress, stage, finished, total)
                )
                break
            except httpx.TransportError as err:
                got = part.stat().st_size if part.exists() else 0
                if attempt >= attempts:
                    raise ModelFetchError(
                        f"{where}: downloading {hub_file.path} broke off after {got} of "
                        f"{hub_file.size} bytes ({err or type(err).__name__}); run the same "
                        "command again to resume"
                    ) from err
                log.warning("%s: %s broke off at %d bytes (%s); resuming", where, hub_file.path,
                            got, err)  # fmt: skip
                time.sleep(min(0.5 * 2**attempt, 5.0))
        sha256 = _check(hub_file, part, where)
        part.replace(final)
        entries.append((rel, hub_file.size, sha256))
        finished += hub_file.size
    return entries
