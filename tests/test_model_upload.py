"""Uploading artifacts to a hive over SFTP: a file and a folder, resumed, checked there, merged.

The hive is a real sshd in a network namespace (tests/hives.py); the hive's store is a folder on
this machine, so the test reads it back with the same ModelStore a hive uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee.errors import ChecksumError
from rbee.models.store import ModelStore, StoredModel
from rbee.ssh.connection import MAX_CHANNELS, HiveConnection
from rbee.ssh.upload import upload_model
from tests.hives import HiveSet, cleanup_stale, require_hives, test_hives

pytestmark = pytest.mark.ssh

GGUF = b"GGUF" + bytes(range(256)) * 40
MLX = {
    "config.json": b'{"quantization": {"bits": 4}}',
    "model.safetensors": bytes(range(256)) * 64,
    "tok/tokenizer.json": b"{}",
}


@pytest.fixture(scope="module")
def one_hive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HiveSet]:
    require_hives()
    cleanup_stale()
    with test_hives(1, tmp_path_factory.mktemp("hive")) as hive_set:
        yield hive_set


def queen_store(root: Path, model_id: str) -> StoredModel:
    """The queen's store with `model_id` in gguf and mlx."""
    store = ModelStore(root)
    for fmt, files in (("gguf", {"m.Q4.gguf": GGUF}), ("mlx", MLX)):
        staged = store.staging(model_id, fmt)
        for rel, data in files.items():
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged / rel).write_bytes(data)
        listing = [(r, len(d), hashlib.sha256(d).hexdigest()) for r, d in files.items()]
        store.record_artifact(model_id, fmt, staged, listing, source=f"test:{fmt}")
    stored = store.get(model_id)
    assert stored is not None
    return stored


async def upload(hives: HiveSet, stored: StoredModel, fmt: str, models: Path) -> list[int]:
    seen: list[int] = []
    async with HiveConnection(hives[0].alias, hives.config) as conn:
        await upload_model(conn, stored, str(models), sys.executable,
                           lambda done, total: seen.append(done), fmt=fmt)  # fmt: skip
    return seen


async def test_a_file_and_a_folder_reach_the_hive_whole(one_hive: HiveSet, tmp_path: Path) -> None:
    stored = queen_store(tmp_path / "queen", "m")
    hive_models = one_hive[0].root / "models-1"
    seen = await upload(one_hive, stored, "mlx", hive_models)
    assert seen[-1] == sum(len(d) for d in MLX.values())
    await upload(one_hive, stored, "gguf", hive_models)

    there = ModelStore(hive_models).get("m")
    assert there is not None
    assert there.formats == ("gguf", "mlx")
    for fmt in ("gguf", "mlx"):
        artifact, mine = there.artifact(fmt), stored.artifact(fmt)
        assert artifact is not None
        assert mine is not None
        assert (artifact.sha256, artifact.files) == (mine.sha256, mine.files)
        assert artifact.source == f"queen:test:{fmt}"
        ModelStore(hive_models).verify(artifact)
    files = [p.relative_to(hive_models).as_posix() for p in hive_models.rglob("*") if p.is_file()]
    files = [f for f in files if not f.startswith(".verified/")]  # the store's own stamps
    assert sorted(files) == [
        "m/gguf/m.Q4.gguf",
        "m/manifest.json",
        "m/mlx/config.json",
        "m/mlx/model.safetensors",
        "m/mlx/tok/tokenizer.json",
    ]


async def test_an_upload_resumes_and_a_bad_part_is_named_and_removed(
    one_hive: HiveSet, tmp_path: Path
) -> None:
    stored = queen_store(tmp_path / "queen", "m")
    hive_models = one_hive[0].root / "models-2"
    stage = hive_models / "m" / ".incoming" / "queen-mlx"
    stage.mkdir(parents=True)
    weights = MLX["model.safetensors"]
    # Half of the file is there already, but not the right half: a resumed upload sends only the
    # rest, so the hive's check must catch it.
    (stage / "model.safetensors.part").write_bytes(b"\xff" * (len(weights) // 2))
    with pytest.raises(ChecksumError, match=r"model\.safetensors \(sha256 [0-9a-f]{64}\).*removed"):
        await upload(one_hive, stored, "mlx", hive_models)
    assert ModelStore(hive_models).get("m") is None
    assert not (stage / "model.safetensors.part").exists()

    # A good half resumes: only the other half is sent.
    (stage / "model.safetensors.part").write_bytes(weights[: len(weights) // 2])
    (stage / "config.json.part").unlink()
    await upload(one_hive, stored, "mlx", hive_models)
    there = ModelStore(hive_models).get("m")
    assert there is not None
    mlx = there.artifact("mlx")
    assert mlx is not None
    ModelStore(hive_models).verify(mlx)
    assert not (hive_models / "m" / ".incoming").exists()


async def test_an_old_single_gguf_store_on_the_hive_is_kept_and_replaced(
    one_hive: HiveSet, tmp_path: Path
) -> None:
    stored = queen_store(tmp_path / "queen", "m")
    hive_models = one_hive[0].root / "models-3"
    old = hive_models / "m"
    old.mkdir(parents=True)
    (old / "Old.gguf").write_bytes(b"GGUF-old")
    (old / "manifest.json").write_text(json.dumps({
        "id": "m", "format": "gguf", "filename": "Old.gguf", "size": 8,
        "sha256": hashlib.sha256(b"GGUF-old").hexdigest(), "source": "pypi:x"}))  # fmt: skip
    await upload(one_hive, stored, "mlx", hive_models)
    there = ModelStore(hive_models).get("m")
    assert there is not None
    assert there.formats == ("gguf", "mlx")
    old_gguf = there.artifact("gguf")
    assert old_gguf is not None
    assert old_gguf.path == old / "Old.gguf"

    await upload(one_hive, stored, "gguf", hive_models)
    there = ModelStore(hive_models).get("m")
    assert there is not None
    new_gguf = there.artifact("gguf")
    assert new_gguf is not None
    assert new_gguf.path == old / "gguf" / "m.Q4.gguf"
    assert not (old / "Old.gguf").exists()
    ModelStore(hive_models).verify(new_gguf)


async def test_more_uploads_at_once_than_channels(one_hive: HiveSet, tmp_path: Path) -> None:
    # Each upload needs an SFTP session and then a command (the hash on the hive): holding the
    # first while waiting for the second, MAX_CHANNELS uploads at once would wait forever.
    count = MAX_CHANNELS + 2
    stored = [queen_store(tmp_path / "queen", f"m{i}") for i in range(count)]
    hive_models = one_hive[0].root / "models-many"
    async with HiveConnection(one_hive[0].alias, one_hive.config) as conn:
        async with asyncio.timeout(120):
            await asyncio.gather(*(
                upload_model(conn, s, str(hive_models), sys.executable, fmt="gguf") for s in stored
            ))  # fmt: skip
        assert conn.channels_peak == MAX_CHANNELS
    there = ModelStore(hive_models)
    assert sorted(m.id for m in there.list()) == sorted(f"m{i}" for i in range(count))
