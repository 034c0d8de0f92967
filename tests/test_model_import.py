"""`rbee model import` and `rbee model list`: formats told from files, copies checked, per format.

The CLI runs as a real subprocess on a fresh data dir; the GGUF imported is the real default model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from rbee.cli.models import _hive_rows
from rbee.config.settings import Paths
from rbee.errors import ModelError
from rbee.models.catalog import CATALOG, DEFAULT_MODEL_ID
from rbee.models.detect import check_kind, detect_folder_format, detect_format
from rbee.models.local import import_path
from rbee.models.store import ModelStore
from tests.conftest import make_paths, rbee, running_queen
from tests.http import get


def safetensors(metadata: dict[str, str] | None = None) -> bytes:
    """A small valid safetensors file: one F32 tensor of 4 values."""
    header: dict[str, object] = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(16)


def make_folder(root: Path, files: dict[str, bytes | str | dict[str, object]]) -> Path:
    root.mkdir(parents=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            path.write_text(json.dumps(content))
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    return root


LLAMA = {"model_type": "llama", "hidden_size": 64}
FOLDERS: dict[str, tuple[dict[str, bytes | str | dict[str, object]], str | None]] = {
    "mlx-quantized": (
        {"config.json": {**LLAMA, "quantization": {"group_size": 64, "bits": 4}},
         "model.safetensors": safetensors({"format": "mlx"}), "tokenizer.json": "{}"},
        "mlx",
    ),
    "mlx-by-metadata": (
        {"config.json": LLAMA, "model.safetensors": safetensors({"format": "mlx"})}, "mlx"
    ),
    "mlx-by-card": (
        {"config.json": LLAMA, "model.safetensors": safetensors({"format": "pt"}),
         "README.md": "---\nlibrary_name: mlx\ntags:\n- mlx\n---\n# a model\n"},
        "mlx",
    ),
    "mlx-npz": ({"config.json": LLAMA, "weights.npz": b"PK\x03\x04"}, "mlx"),
    "exl2-by-config": (
        {"config.json": {**LLAMA, "quantization_config": {"quant_method": "exl2", "bits": 4.0}},
         "output.safetensors": safetensors()},
        "exl2",
    ),
    "exl2-by-measurement": (
        {"config.json": LLAMA, "output-00001-of-00002.safetensors": safetensors(),
         "measurement.json": "{}"},
        "exl2",
    ),
    "gptq-by-config": (
        {"config.json": {**LLAMA, "quantization_config": {"quant_method": "gptq", "bits": 4}},
         "model.safetensors": safetensors()},
        "gptq",
    ),
    "gptq-by-quantize-config": (
        {"config.json": LLAMA, "quantize_config.json": {"bits": 4},
         "model.safetensors": safetensors()},
        "gptq",
    ),
    "plain-transformers": (
        {"config.json": LLAMA, "model.safetensors": safetensors({"format": "pt"})}, None
    ),
    "mlx-config-without-weights": (
        {"config.json": {**LLAMA, "quantization": {"bits": 4}}}, None
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_folder_formats_are_told_from_their_files(tmp_path: Path, name: str) -> None:
    files, expected = FOLDERS[name]
    assert detect_folder_format(make_folder(tmp_path / name, files)) == expected


def test_an_unknown_folder_says_what_to_do(tmp_path: Path) -> None:
    files, _ = FOLDERS["plain-transformers"]
    with pytest.raises(ModelError, match=r"cannot tell the model format.*--format"):
        detect_format(make_folder(tmp_path / "plain", files))
    ggufs = make_folder(tmp_path / "ggufs", {"a.Q4.gguf": b"GGUF", "b.Q8.gguf": b"GGUF"})
    with pytest.raises(ModelError, match=r"GGUF files \(a\.Q4\.gguf, b\.Q8\.gguf\): import one"):
        detect_format(ggufs)


def test_a_file_must_be_a_gguf(tmp_path: Path) -> None:
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelError, match="not a GGUF file"):
        detect_format(tmp_path / "fake.gguf")
    with pytest.raises(ModelError, match="no such file or folder"):
        detect_format(tmp_path / "missing")
    with pytest.raises(ModelError, match="is a folder, and this is not a folder"):
        check_kind(tmp_path / "fake.gguf", "mlx")


def test_an_interrupted_import_leaves_nothing(tmp_path: Path) -> None:
    files, _ = FOLDERS["mlx-quantized"]
    folder = make_folder(tmp_path / "src", files)
    store = ModelStore(tmp_path / "models")

    def interrupt(stage: str, done: int, total: int | None) -> None:
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_path(store, folder, "m", progress=interrupt)
    assert store.get("m") is None
    assert [p for p in (tmp_path / "models").rglob("*") if p.is_file()] == []


def cli(paths: Paths, *args: str) -> str:
    result = rbee(paths, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(paths: Paths, *args: str) -> str:
    result = rbee(paths, *args)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    return result.stderr


def cached_gguf(model_cache: Path) -> Path:
    """The real default GGUF in the test cache (either store layout)."""
    stored = ModelStore(model_cache).get(DEFAULT_MODEL_ID)
    artifact = stored.artifact("gguf") if stored else None
    assert artifact is not None
    return artifact.path


@pytest.fixture
def gguf(model_cache: Path) -> Path:
    return cached_gguf(model_cache)


def test_import_a_gguf_and_a_folder_then_list_them_per_format(tmp_path: Path, gguf: Path) -> None:
    paths = make_paths(tmp_path, None)
    expected = CATALOG[DEFAULT_MODEL_ID].artifacts[0]
    out = cli(paths, "model", "import", str(gguf), "--id", "smol")
    assert f"imported smol (gguf, 98 MB, sha256 {expected.sha256[:12]})" in out
    files, _ = FOLDERS["mlx-quantized"]
    folder = make_folder(tmp_path / "SmolLM2-mlx", {**files, ".cache/huggingface/x.lock": b""})
    out = cli(paths, "model", "import", str(folder), "--id", "smol")
    assert "imported smol (mlx," in out
    assert "3 files" in out

    store = ModelStore(paths.models_dir)
    stored = store.get("smol")
    assert stored is not None
    assert stored.formats == ("gguf", "mlx")
    stored_gguf, mlx = stored.artifact("gguf"), stored.artifact("mlx")
    assert stored_gguf is not None
    assert mlx is not None
    assert stored_gguf.sha256 == expected.sha256
    assert stored_gguf.source == f"local:{gguf.resolve()}"
    assert sorted(p for p, _, _ in mlx.files) == ["config.json", "model.safetensors",
                                                  "tokenizer.json"]  # fmt: skip
    store.verify(stored_gguf)
    store.verify(mlx)

    rows = [line.split() for line in cli(paths, "model", "list").splitlines()]
    assert rows[0] == ["ID", "FORMAT", "SIZE", "STATE", "SOURCE"]
    by_key = {(r[0], r[1]): r for r in rows[1:]}
    assert by_key[("smol", "gguf")][2:5] == ["98", "MB", "stored"]
    assert by_key[("smol", "gguf")][5] == f"local:{gguf.resolve()}"
    assert by_key[("smol", "mlx")][4] == "stored"
    assert by_key[(DEFAULT_MODEL_ID, "gguf")][4:6] == ["not", "fetched"]

    # The detected id comes from the folder's name.
    out = cli(paths, "model", "import", str(folder))
    assert "imported smollm2-mlx (mlx," in out


def test_import_refuses_an_existing_artifact_unless_forced(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    files, _ = FOLDERS["exl2-by-config"]
    first = make_folder(tmp_path / "first", files)
    second = make_folder(tmp_path / "second", {**files, "extra.json": "{}"})
    cli(paths, "model", "import", str(first), "--id", "m")
    err = fails(paths, "model", "import", str(second), "--id", "m")
    assert "already has a exl2 artifact" in err
    assert "--force" in err
    out = cli(paths, "model", "import", str(second), "--id", "m", "--force")
    assert "imported m (exl2," in out
    exl2 = ModelStore(paths.models_dir).get("m")
    assert exl2 is not None
    artifact = exl2.artifact("exl2")
    assert artifact is not None
    assert (artifact.path / "extra.json").is_file()
    assert artifact.source == f"local:{second.resolve()}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "../evil"], "invalid model id '../evil'"),
        (["--id", "A/B"], "invalid model id"),
        (["--format", "exl2"], "a exl2 model is a folder, and this is not a folder"),
    ],
)
def test_import_errors_are_one_clear_line(
    tmp_path: Path, gguf: Path, args: list[str], message: str
) -> None:
    paths = make_paths(tmp_path, None)
    err = fails(paths, "model", "import", str(gguf), *args)
    assert message in err
    assert ModelStore(paths.models_dir).list() == []
    assert not (tmp_path / "evil").exists()


def test_import_of_a_missing_path_or_an_unknown_format(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    assert "no such file or folder" in fails(paths, "model", "import", str(tmp_path / "nope"))
    files, _ = FOLDERS["plain-transformers"]
    plain = make_folder(tmp_path / "plain", files)
    assert "cannot tell the model format" in fails(paths, "model", "import", str(plain))
    result = rbee(paths, "model", "import", str(plain), "--format", "zip")
    assert result.returncode == 2
    assert "invalid choice: 'zip'" in result.stderr
    # Told the format, the same folder imports.
    assert "imported plain (gptq," in cli(paths, "model", "import", str(plain), "--format", "gptq")


def test_hive_listing_rows_per_format_old_and_new() -> None:
    new = {
        "id": "m",
        "formats": ["gguf", "mlx"],
        "size": 3,
        "artifacts": [
            {"format": "gguf", "size": 1, "sha256": "a" * 64, "source": "queen:x"},
            {"format": "mlx", "size": 2_000_000, "sha256": "b" * 64, "source": "queen:y"},
        ],
    }
    old = {"id": "o", "format": "gguf", "filename": "o.gguf", "size": 98_000_000,
           "sha256": "c" * 64, "source": "queen:z", "path": "/x/o.gguf"}  # fmt: skip
    assert _hive_rows([new, old]) == [
        ["m", "gguf", "1 B", "a" * 12, "queen:x"],
        ["m", "mlx", "2 MB", "b" * 12, "queen:y"],
        ["o", "gguf", "98 MB", "c" * 12, "queen:z"],
    ]


def test_model_list_of_a_hive_shows_each_format(tmp_path: Path, gguf: Path) -> None:
    paths = make_paths(tmp_path, None)
    cli(paths, "model", "import", str(gguf), "--id", "multi")
    files, _ = FOLDERS["mlx-by-metadata"]
    cli(paths, "model", "import", str(make_folder(tmp_path / "f", files)), "--id", "multi")
    with running_queen(paths, models=()) as queen:
        listed = get(f"{queen.url}/v1/hives/localhost/models").json()["data"]
        assert [(m["id"], m["formats"]) for m in listed] == [("multi", ["gguf", "mlx"])]
        out = cli(paths, "--queen", queen.url, "model", "list", "--hive", "localhost")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["ID", "FORMAT", "SIZE", "SHA256", "SOURCE"]
    assert [r[:2] for r in rows[1:]] == [["multi", "gguf"], ["multi", "mlx"]]
    assert rows[1][4] == CATALOG[DEFAULT_MODEL_ID].artifacts[0].sha256[:12]
