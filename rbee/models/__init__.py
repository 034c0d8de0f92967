"""Model catalog, store and sources."""

from rbee.models.catalog import (
    CATALOG,
    DEFAULT_MODEL_ID,
    Artifact,
    ModelSpec,
    WheelSource,
    lookup,
    validate_model_id,
)
from rbee.models.store import ModelStore, StoredModel

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL_ID",
    "Artifact",
    "ModelSpec",
    "ModelStore",
    "StoredModel",
    "WheelSource",
    "lookup",
    "validate_model_id",
]
