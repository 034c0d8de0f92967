"""The store with several artifacts per model: layout, manifests old and new, verification, names.

Nothing can leave the store: every name is checked by one validator; a half-written artifact is
never listed; a folder's files each carry their sha256, so verification names the bad one.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from rbee.errors import ChecksumError, ModelError
from rbee.models.catalog import relpath_problem, slug_model_id, validate_relpath
from rbee.models.manifest import folder_digest
from rbee.models.store import ModelStore, StoredModel


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stage_files(store: ModelStore, model_id: str, files: dict[str, bytes]) -> Path:
    """Write `files` into a staging folder, as an import or download does."""
    staged = store.staging(model_id, "test")
    for rel, data in files.items():
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_bytes(data)
    return staged


def record(
    store: ModelStore, model_id: str, fmt: str, files: dict[str, bytes], **kwargs: object
) -> StoredModel:
    staged = stage_files(store, model_id, files)
    listing = [(rel, len(data), sha(data)) for rel, data in files.items()]
    return store.record_artifact(model_id, fmt, staged, listing, source="test:", **kwargs)  # type: ignore[arg-type]


MLX = {"config.json": b'{"quantization": {"bits": 4}}', "model.safetensors": b"weights" * 100,
       "sub/tokenizer.json": b"{}"}  # fmt: skip


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "good", ["a", "model.gguf", "sub/dir/file.json", "a b.txt", ".gitattributes"]
)
def test_safe_relative_paths(good: str) -> None:
    assert relpath_problem(good) is None
    assert validate_relpath(good) == good


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/./b", "'.'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("..", "'..'"),
        ("a\\..\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("x" * 1025, "longer"),
        (5, "empty"),
    ],
)
def test_unsafe_relative_paths_are_refused(bad: object, why: str) -> None:
    problem = relpath_problem(bad)
    assert problem is not None
    assert why in problem
    with pytest.raises(ModelError, match="refusing file name"):
        validate_relpath(bad, where="listing")


@pytest.mark.parametrize(
    ("repo", "slug"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("mlx-community/Qwen2.5-0.5B-Instruct-4bit", "qwen2.5-0.5b-instruct-4bit"),
        ("turboderp/Llama-3.1-8B-Instruct-exl2", "llama-3.1-8b-instruct-exl2"),
        ("gpt2", "gpt2"),
        ("o/_Weird__Name_", "weird__name"),
    ],
)
def test_model_id_slug_of_a_repo(repo: str, slug: str) -> None:
    assert slug_model_id(repo) == slug


def test_folder_digest_is_canonical() -> None:
    files = [("b.json", 2, "0" * 64), ("a.safetensors", 10, "1" * 64)]
    listing = f"{'1' * 64} 10 a.safetensors\n{'0' * 64} 2 b.json\n"
    assert folder_digest(files) == hashlib.sha256(listing.encode()).hexdigest()
    assert folder_digest(reversed(files)) == folder_digest(files)
    assert folder_digest([("b.json", 3, "0" * 64), files[1]]) != folder_digest(files)


# --- layout and manifests ---------------------------------------------------------------------


def test_a_model_holds_one_artifact_per_format(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    record(store, "m", "gguf", {"m.Q4.gguf": b"GGUF1234"})
    stored = record(store, "m", "mlx", MLX)
    assert stored.formats == ("gguf", "mlx")
    gguf, mlx = stored.artifact("gguf"), stored.artifact("mlx")
    assert gguf is not None
    assert mlx is not None
    assert gguf.path == tmp_path / "m" / "gguf" / "m.Q4.gguf"
    assert not gguf.is_folder
    assert mlx.path == tmp_path / "m" / "mlx"
    assert mlx.is_folder
    assert (mlx.path / "sub" / "tokenizer.json").read_bytes() == b"{}"
    assert mlx.files == tuple(sorted((r, len(d), sha(d)) for r, d in MLX.items()))
    assert mlx.sha256 == folder_digest(mlx.files)
    assert mlx.size == sum(len(d) for d in MLX.values())
    store.verify(gguf)
    store.verify(mlx)
    assert not (tmp_path / "m" / ".incoming").exists()
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert [a["format"] for a in manifest["artifacts"]] == ["gguf", "mlx"]
    assert manifest["artifacts"][0]["path"] == "gguf/m.Q4.gguf"
    assert manifest["artifacts"][1]["files"][0] == {
        "path": "config.json", "size": len(MLX["config.json"]), "sha256": sha(MLX["config.json"])
    }  # fmt: skip
    described = stored.describe()
    assert described["formats"] == ["gguf", "mlx"]
    assert described["size"] == stored.size
    assert [a["format"] for a in described["artifacts"]] == ["gguf", "mlx"]
    assert len(described["artifacts"][1]["files"]) == 3
    assert [m.id for m in store.list()] == ["m"]


def test_an_existing_artifact_is_refused_unless_replaced(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    record(store, "m", "gguf", {"old.gguf": b"GGUF-old"})
    with pytest.raises(ModelError, match=r"already has a gguf artifact.*--force"):
        record(store, "m", "gguf", {"new.gguf": b"GGUF-new"})
    stored = record(store, "m", "gguf", {"new.gguf": b"GGUF-new"}, replace=True)
    gguf = stored.artifact("gguf")
    assert gguf is not None
    assert gguf.path.name == "new.gguf"
    assert sorted(p.name for p in (tmp_path / "m").rglob("*") if p.is_file()) == [
        "manifest.json", "new.gguf"
    ]  # fmt: skip


def test_a_staged_artifact_is_never_listed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    stage_files(store, "m", MLX)
    assert store.get("m") is None
    assert store.list() == []
    record(store, "other", "gguf", {"x.gguf": b"GGUF"})
    stage_files(store, "other", {"config.json": b"{}"})
    stored = store.get("other")
    assert stored is not None
    assert stored.formats == ("gguf",)


def test_staged_files_must_match_their_listing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    staged = stage_files(store, "m", {"config.json": b"{}", "extra.bin": b"x"})
    with pytest.raises(ModelError, match=r"unexpected \['extra.bin'\]"):
        store.record_artifact("m", "mlx", staged, [("config.json", 2, sha(b"{}"))], source="")
    assert store.get("m") is None


def legacy_store(tmp_path: Path, payload: bytes) -> ModelStore:
    """A store as the single-GGUF layout wrote it (and as existing data dirs and hives hold)."""
    folder = tmp_path / "old-model"
    folder.mkdir(parents=True)
    (folder / "Old.Q4_1.gguf").write_bytes(payload)
    (folder / "manifest.json").write_text(json.dumps({
        "id": "old-model", "format": "gguf", "filename": "Old.Q4_1.gguf", "size": len(payload),
        "sha256": sha(payload), "source": "pypi:x==1#y"}))  # fmt: skip
    return ModelStore(tmp_path)


def test_an_old_single_gguf_manifest_still_reads(tmp_path: Path) -> None:
    payload = b"GGUF" + b"\x01" * 64
    store = legacy_store(tmp_path, payload)
    stored = store.get("old-model")
    assert stored is not None
    gguf = stored.artifact("gguf")
    assert gguf is not None
    assert gguf.path == tmp_path / "old-model" / "Old.Q4_1.gguf"
    assert (gguf.size, gguf.sha256, gguf.source) == (len(payload), sha(payload), "pypi:x==1#y")
    store.verify(gguf)
    assert [m.id for m in store.list()] == ["old-model"]


def test_adding_a_format_to_an_old_model_keeps_its_gguf(tmp_path: Path) -> None:
    payload = b"GGUF" + b"\x02" * 64
    store = legacy_store(tmp_path, payload)
    stored = record(store, "old-model", "mlx", MLX)
    assert stored.formats == ("gguf", "mlx")
    gguf = stored.artifact("gguf")
    assert gguf is not None
    assert gguf.path == tmp_path / "old-model" / "Old.Q4_1.gguf"
    store.verify(gguf)
    # Replacing the old gguf moves it into the new layout, and the old file goes.
    stored = record(store, "old-model", "gguf", {"New.gguf": b"GGUF-new"}, replace=True)
    assert not (tmp_path / "old-model" / "Old.Q4_1.gguf").exists()
    assert stored.formats == ("gguf", "mlx")


@pytest.mark.parametrize(
    "manifest",
    [
        {"id": "m", "format": "gguf", "filename": "../../etc/passwd", "size": 1,
         "sha256": "0" * 64},
        {"id": "m", "format": "gguf", "filename": "/etc/passwd", "size": 1, "sha256": "0" * 64},
        {"id": "m", "artifacts": [{"format": "gguf", "path": "../x.gguf", "size": 1,
                                   "sha256": "0" * 64}]},
        {"id": "m", "artifacts": [{"format": "gguf", "path": "/abs.gguf", "size": 1,
                                   "sha256": "0" * 64}]},
        {"id": "m", "artifacts": [{"format": "mlx", "path": "mlx", "size": 1,
                                   "sha256": folder_digest([("../../x", 1, "0" * 64)]),
                                   "files": [{"path": "../../x", "size": 1,
                                              "sha256": "0" * 64}]}]},
        {"id": "m", "artifacts": [{"format": "zip", "path": "zip", "size": 1, "sha256": "0" * 64}]},
        {"id": "m", "artifacts": [{"format": "gguf", "path": "manifest.json", "size": 1,
                                   "sha256": "0" * 64}]},
        {"id": "m", "artifacts": [{"format": "gguf", "path": "x.gguf", "size": 1,
                                   "sha256": "not-hex"}]},
        {"id": "m", "artifacts": [{"format": "mlx", "path": "mlx", "size": 1, "sha256": "0" * 64,
                                   "files": [{"path": "a", "size": 1, "sha256": "0" * 64}]}]},
        {"id": "m", "artifacts": "nope"},
        ["not", "an", "object"],
    ],
)  # fmt: skip
def test_a_manifest_cannot_point_outside_the_store_or_lie(tmp_path: Path, manifest: object) -> None:
    store = ModelStore(tmp_path)
    store.folder("m").mkdir()
    (store.folder("m") / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="malformed manifest"):
        store.get("m")


# --- verification ------------------------------------------------------------------------------


def test_verify_names_the_bad_file_of_a_folder(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    mlx = record(store, "m", "mlx", MLX).artifact("mlx")
    assert mlx is not None
    seen: list[int] = []
    store.verify(mlx, progress=seen.append)
    assert sum(seen) == mlx.size

    weights = mlx.path / "model.safetensors"
    weights.write_bytes(b"Weights" + MLX["model.safetensors"][7:])  # same size, other bytes
    with pytest.raises(ChecksumError, match=r"model\.safetensors: sha256 .* does not match"):
        store.verify(mlx)
    weights.write_bytes(MLX["model.safetensors"][:-1])
    with pytest.raises(ChecksumError, match=r"model\.safetensors: size \d+ does not match"):
        store.verify(mlx)
    weights.unlink()
    with pytest.raises(ChecksumError, match=r"model\.safetensors: missing"):
        store.verify(mlx)
    weights.write_bytes(MLX["model.safetensors"])
    store.verify(mlx)
    (mlx.path / "sub" / "injected.py").write_text("print('hi')")
    with pytest.raises(ChecksumError, match=r"injected\.py: not part of the recorded mlx"):
        store.verify(mlx)


def test_a_verified_file_is_not_hashed_again_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rbee.models.store.STAMP_SETTLE_NS", 0)
    store = ModelStore(tmp_path)
    gguf = record(store, "m", "gguf", {"m.gguf": b"GGUF" + b"x" * 5000}).artifact("gguf")
    assert gguf is not None
    seen: list[int] = []
    store.verify(gguf, progress=seen.append)
    assert sum(seen) == gguf.size  # hashed in full, then stamped
    stamp = tmp_path / ".verified" / f"{gguf.sha256}.json"
    assert json.loads(stamp.read_text())["size"] == gguf.size
    assert store.list()[0].id == "m"  # the stamps' folder is not a model

    seen.clear()
    store.verify(gguf, progress=seen.append)
    assert seen == []  # unchanged since: not read again

    time.sleep(0.05)  # past the file system's timestamp tick (a few ms on ext4)
    data = gguf.path.read_bytes()
    gguf.path.write_bytes(b"FUGG" + data[4:])  # same size, same inode, other bytes
    with pytest.raises(ChecksumError, match=r"m\.gguf: sha256 .* does not match"):
        store.verify(gguf, progress=seen.append)
    assert sum(seen) == gguf.size

    time.sleep(0.05)
    gguf.path.write_bytes(data)
    store.verify(gguf)  # whole again: hashed, and stamped anew
    seen.clear()
    store.verify(gguf, progress=seen.append)
    assert seen == []


def test_a_fresh_or_replaced_file_is_hashed_every_time(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    gguf = record(store, "m", "gguf", {"m.gguf": b"GGUF" + b"y" * 5000}).artifact("gguf")
    assert gguf is not None
    for _ in range(2):  # written just now: it may still change within the clock's tick
        seen: list[int] = []
        store.verify(gguf, progress=seen.append)
        assert sum(seen) == gguf.size
    assert not (tmp_path / ".verified").exists()

    stamp = tmp_path / ".verified" / f"{gguf.sha256}.json"
    stamp.parent.mkdir()
    stamp.write_text("{not json")  # an unreadable stamp only means a full hash
    seen = []
    store.verify(gguf, progress=seen.append)
    assert sum(seen) == gguf.size
