"""Placing a worker on a hive: which artifacts a model has there, and the engine choice.

The hive runs this before it fetches or spawns anything (and the queen runs it for a remote hive
before it uploads a model there), so an impossible request is refused with its reason and a
fallback is explained, whichever side asked.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from rbee.api.workers import WorkerSpec
from rbee.engines.repack import choose_cpu_repack
from rbee.engines.select import AUTO, Choice, ModelFormats, select_engine
from rbee.errors import ModelError, SelectionError, UnknownModelError
from rbee.facts import Facts, Gpu
from rbee.models.catalog import CATALOG, validate_model_id
from rbee.models.gguf import MLX_FILE_TYPES, mlx_reads
from rbee.models.store import ModelStore

__all__ = ["facts_from_json", "model_formats", "place"]

log = logging.getLogger(__name__)


def facts_from_json(raw: Any) -> Facts:
    """Facts as a hive's /health reports them (dataclasses.asdict); TypeError/ValueError if not."""
    if not isinstance(raw, dict):
        raise TypeError("the hive's facts are not a JSON object")
    fields = dataclasses.fields(Facts)
    missing = {f.name for f in fields if f.default is dataclasses.MISSING} - raw.keys()
    if missing:
        raise ValueError(f"the hive's facts lack {', '.join(sorted(missing))}")
    values = {f.name: raw[f.name] for f in fields if f.name in raw}
    values["gpus"] = tuple(Gpu(**g) for g in raw["gpus"])
    values["engines"] = tuple(str(e) for e in raw["engines"])
    values["engine_problems"] = tuple(
        (str(module), str(why)) for module, why in raw.get("engine_problems", ())
    )
    values["cpu_flags"] = tuple(str(flag) for flag in raw.get("cpu_flags", ()))
    return Facts(**values)


def model_formats(
    store: ModelStore | None, model_id: str, *, elsewhere: Iterable[str] = ()
) -> ModelFormats:
    """The formats `model_id` has in `store`, in the catalog, and `elsewhere` (another store).

    UnknownModelError when it has none anywhere.
    """
    validate_model_id(model_id)
    formats = set(elsewhere)
    mlx_gguf = False
    stored = store.get(model_id) if store is not None else None
    if stored is not None:
        formats.update(stored.formats)
        gguf = stored.artifact("gguf")
        if gguf is not None:
            try:
                mlx_gguf = mlx_reads(gguf.path)
            except ModelError as err:
                log.warning("%s", err)
    spec = CATALOG.get(model_id)
    if spec is not None:
        formats.update(a.format for a in spec.artifacts)
        gguf_spec = spec.artifact("gguf")
        if stored is None or stored.artifact("gguf") is None:
            mlx_gguf = gguf_spec is not None and gguf_spec.quantization in MLX_FILE_TYPES
    if not formats:
        known = sorted({*CATALOG, *(m.id for m in (store.list() if store else []))})
        raise UnknownModelError(model_id, known)
    return ModelFormats(model_id, frozenset(formats), gguf_mlx_readable=mlx_gguf)


def place(
    spec: WorkerSpec, facts: Facts, formats: ModelFormats, *, hive: str
) -> tuple[WorkerSpec, Choice]:
    """`spec` with its engine and device decided, and the choice (format, note) behind it.

    Embeddings are served by llama.cpp only, so an embedding worker picks it by default. A
    llama.cpp worker's weight repacking is decided here too, by the CPU's flags, when it is auto.
    """
    engine = spec.engine
    if spec.embeddings:
        if engine not in (AUTO, "llamacpp"):
            raise SelectionError(
                f"engine {engine} does not serve embeddings; embedding workers run llamacpp"
            )
        engine = "llamacpp"
    choice = select_engine(facts, formats, engine=engine, device=spec.device, hive=hive)
    if choice.note:
        log.info("%s: %s: %s", hive, spec.model, choice.note)
    repack = spec.cpu_repack
    if choice.engine == "llamacpp":
        repack = choose_cpu_repack(repack, facts).setting
    placed = dataclasses.replace(
        spec, engine=choice.engine, device=choice.device, cpu_repack=repack
    )
    return placed, choice
