"""Placing a worker: the formats a model has where, and the spawn spec the hive decides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rbee.api.workers import WorkerSpec
from rbee.errors import SelectionError, UnknownModelError
from rbee.facts import Facts, Gpu
from rbee.models.store import ModelStore
from rbee.placement import facts_from_json, model_formats, place
from tests.conftest import MODEL


def _facts(**changes: object) -> Facts:
    base = Facts(
        os="linux", arch="x86_64", hostname="box", python="3.11.7", python_path="/usr/bin/python3",
        cpu_count=8, mem_total=32 << 30, mem_available=16 << 30, disk_free=1 << 40, gpus=(),
        apple_chip=None, engines=("llama_cpp", "mlx"),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_formats_from_the_store_and_the_catalog(model_cache: Path, tmp_path: Path) -> None:
    stored = model_formats(ModelStore(model_cache), MODEL)
    assert stored.formats == frozenset({"gguf"})
    assert stored.gguf_mlx_readable  # read from the stored file's header: Q4_1
    fetchable = model_formats(ModelStore(tmp_path), MODEL)
    assert fetchable.formats == frozenset({"gguf"})
    assert fetchable.gguf_mlx_readable  # from the catalog's quantization, before any fetch
    remote = model_formats(None, "my-exl2", elsewhere=["exl2"])
    assert remote.formats == frozenset({"exl2"})
    assert not remote.gguf_mlx_readable


def test_unknown_model_lists_what_exists(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match=f"known models: {MODEL}"):
        model_formats(ModelStore(tmp_path), "nope")


def test_place_decides_auto_and_keeps_the_rest(model_cache: Path) -> None:
    formats = model_formats(ModelStore(model_cache), MODEL)
    spec = WorkerSpec(model=MODEL, ctx_size=2048, threads=3)
    placed, choice = place(spec, _facts(), formats, hive="box")
    assert placed == WorkerSpec(MODEL, "llamacpp", "cpu", 2048, 3, cpu_repack="on")
    assert choice.format == "gguf"
    mlx, _ = place(dataclasses.replace(spec, engine="mlx"), _facts(), formats, hive="box")
    assert (mlx.engine, mlx.device) == ("mlx", "cpu")


def test_embedding_workers_run_llamacpp(model_cache: Path) -> None:
    formats = model_formats(ModelStore(model_cache), MODEL)
    mac = _facts(os="darwin", arch="arm64", apple_chip="Apple M2")
    placed, _ = place(WorkerSpec(MODEL, embeddings=True), mac, formats, hive="mac")
    assert (placed.engine, placed.device) == ("llamacpp", "metal:0")
    with pytest.raises(SelectionError, match="does not serve embeddings"):
        place(WorkerSpec(MODEL, engine="mlx", embeddings=True), mac, formats, hive="mac")


def test_facts_round_trip_through_json() -> None:
    facts = _facts(gpus=(Gpu(0, "RTX 4090", 24 << 30, 20 << 30, "550.54"),))
    assert facts_from_json(dataclasses.asdict(facts)) == facts
    with pytest.raises(ValueError, match="lack engines"):
        facts_from_json({k: v for k, v in dataclasses.asdict(facts).items() if k != "engines"})
    with pytest.raises(TypeError):
        facts_from_json(None)
