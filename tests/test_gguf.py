"""The GGUF header reader, on the real default model and on damaged files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from rbee.errors import ModelError
from rbee.models.gguf import file_type_name, kv_cache_bytes, mlx_reads, read_metadata


def test_default_model_header(model_cache: Path) -> None:
    path = next(model_cache.rglob("*.gguf"))
    meta = read_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 30
    assert "tokenizer.ggml.tokens" not in meta  # arrays are skipped unless asked for by key
    tokens = read_metadata(path, ["tokenizer.ggml.tokens"])["tokenizer.ggml.tokens"]
    assert len(tokens) == meta["llama.vocab_size"] == 49152
    assert file_type_name(path) == "Q4_1"
    assert mlx_reads(path)
    # 30 layers x 3 KV heads x 64 dims x 2 (K and V) x 2 bytes per token
    assert kv_cache_bytes(path, 4096) == 30 * 3 * 64 * 2 * 2 * 4096


def _gguf(tmp_path: Path, body: bytes, version: int = 3) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", version, 0, 1) + body)
    return path


def _kv(key: str, kind: int, payload: bytes) -> bytes:
    raw = key.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<I", kind) + payload


def test_other_file_types_and_missing_type(tmp_path: Path) -> None:
    path = _gguf(tmp_path, _kv("general.file_type", 4, struct.pack("<I", 15)))
    assert file_type_name(path) == "Q4_K_M"
    assert not mlx_reads(path)
    path = _gguf(tmp_path, _kv("general.name", 8, struct.pack("<Q", 1) + b"x"))
    assert file_type_name(path) is None
    assert kv_cache_bytes(path, 4096) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"NOPE", "not a GGUF file"),
        (b"GG", "truncated GGUF header"),
        (b"GGUF" + struct.pack("<I", 1), "too old"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40), "damaged"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _kv("k", 99, b""), "unknown GGUF value type"),
    ],
)
def test_damaged_files_are_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as err:
        read_metadata(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        read_metadata(tmp_path / "absent.gguf")
