"""Read a GGUF file's metadata header without an inference library.

Selection and fit checks need a few facts of a GGUF (its quantization, layer count, context) on
machines where llama.cpp may not even be installed, and reading them must not load the weights:
this reads the key/value header only, skipping the large arrays (the vocabulary) unless asked.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

from rbee.errors import ModelError
from rbee.fsutil import open_regular

__all__ = [
    "MLX_FILE_TYPES",
    "check_gguf",
    "file_type_name",
    "kv_cache_bytes",
    "mlx_reads",
    "read_metadata",
]

_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
_MAX_STRING = 64 << 20

# general.file_type (llama_ftype) values and their names, for the ones worth naming.
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
               10: "Q2_K", 12: "Q3_K_M", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
               18: "Q6_K", 32: "BF16"}  # fmt: skip

MLX_FILE_TYPES = frozenset({"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"})
"""GGUF quantizations `mlx.core.load` turns into MLX arrays (others it cannot read)."""


def _read(f: IO[bytes], n: int, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ModelError(f"{path}: truncated GGUF header")
    return data


def _string(f: IO[bytes], path: Path) -> str:
    (length,) = struct.unpack("<Q", _read(f, 8, path))
    if length > _MAX_STRING:
        raise ModelError(f"{path}: GGUF string of {length} bytes; the file is damaged")
    return _read(f, length, path).decode("utf-8", errors="replace")


def _value(f: IO[bytes], kind: int, path: Path, keep: bool) -> Any:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt), path))[0]
    if kind == _STRING:
        return _string(f, path)
    if kind == _ARRAY:
        item, count = struct.unpack("<IQ", _read(f, 12, path))
        if not keep and item in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item]) * count, 1)
            return None
        values = [_value(f, item, path, keep) for _ in range(count)]
        return values if keep else None
    raise ModelError(f"{path}: unknown GGUF value type {kind}; the file is damaged or too new")


def read_metadata(path: Path, keys: Collection[str] | None = None) -> dict[str, Any]:
    """The GGUF header's key/values (only `keys`, if given; arrays only when asked for by key)."""
    try:
        with open_regular(path) as f:
            if _read(f, 4, path) != _MAGIC:
                raise ModelError(f"{path}: not a GGUF file (no GGUF magic at the start)")
            (version,) = struct.unpack("<I", _read(f, 4, path))
            if version < 2:
                raise ModelError(f"{path}: GGUF version {version} is too old; convert it again")
            _tensors, count = struct.unpack("<QQ", _read(f, 16, path))
            found: dict[str, Any] = {}
            for _ in range(count):
                key = _string(f, path)
                (kind,) = struct.unpack("<I", _read(f, 4, path))
                wanted = keys is None or key in keys
                value = _value(f, kind, path, keep=wanted and keys is not None)
                if wanted and (value is not None or kind != _ARRAY):
                    found[key] = value
                if keys is not None and len(found) == len(keys):
                    break
            return found
    except OSError as err:
        raise ModelError(f"{path}: cannot read ({err.strerror or err})") from err


def file_type_name(path: Path) -> str | None:
    """The GGUF's quantization (Q4_1, Q8_0, F16, ...), or None when the header does not say."""
    value = read_metadata(path, ["general.file_type"]).get("general.file_type")
    return _FILE_TYPES.get(value, f"type {value}") if isinstance(value, int) else None


def mlx_reads(path: Path) -> bool:
    """True when `mlx.core.load` can read this GGUF's quantization."""
    return file_type_name(path) in MLX_FILE_TYPES


def _positive(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def kv_cache_bytes(path: Path, n_ctx: int) -> int:
    """Bytes an f16 KV cache of `n_ctx` tokens takes for this GGUF's model (0 if it cannot tell)."""
    meta = read_metadata(path, ["general.architecture"])
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return 0
    keys = [f"{arch}.{k}" for k in ("block_count", "embedding_length", "attention.head_count",
                                    "attention.head_count_kv")]  # fmt: skip
    values = read_metadata(path, keys)
    layers, width, heads, kv_heads = (_positive(values.get(k)) for k in keys)
    if not (layers and width and heads):
        return 0
    kv = kv_heads or heads
    return 2 * layers * kv * (width // heads) * n_ctx * 2


# ggml_type: (elements per block, bytes per block), from ggml.c's type traits. A tensor of a type
# not listed is checked for where it starts only.
_GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
                8: (32, 34), 9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144),
                13: (256, 176), 14: (256, 210), 15: (256, 292), 24: (1, 1), 25: (1, 2),
                26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2)}  # fmt: skip
_MAX_TENSORS = 1 << 20
_MAX_KEYS = 1 << 20
_MAX_DIMS = 8
_ALIGNMENT = 32
"""GGUF's default data alignment (`general.alignment` overrides it)."""


def _tensor_bytes(kind: int, dims: tuple[int, ...]) -> int | None:
    block = _GGML_BLOCKS.get(kind)
    if block is None:
        return None
    count = 1
    for d in dims:
        count *= d
    per_block, size = block
    return -(-count // per_block) * size


def check_gguf(path: Path) -> None:
    """ModelError (naming the file and what is wrong, never the bytes) unless the whole GGUF
    header reads and every tensor it lists lies inside the file.

    A truncated download or copy otherwise passes import (the magic is there) and fails only
    when a worker maps it, with llama.cpp's own message from a hive's log."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if _read(f, 4, path) != _MAGIC:
                raise ModelError(f"{path}: not a GGUF file (no GGUF magic at the start)")
            (version,) = struct.unpack("<I", _read(f, 4, path))
            if version < 2:
                raise ModelError(f"{path}: GGUF version {version} is too old; convert it again")
            tensors, count = struct.unpack("<QQ", _read(f, 16, path))
            if tensors > _MAX_TENSORS or count > _MAX_KEYS:
                raise ModelError(
                    f"{path}: the header claims {tensors} tensors and {count} keys; the file "
                    "is damaged"
                )
            alignment = _ALIGNMENT
            for _ in range(count):
                key = _string(f, path)
                (kind,) = struct.unpack("<I", _read(f, 4, path))
                value = _value(f, kind, path, keep=key == "general.alignment")
                if f.tell() > size:
                    raise ModelError(f"{path}: truncated GGUF header (in the value of {key!r})")
                if key == "general.alignment" and isinstance(value, int) and value > 0:
                    alignment = value
            layout = []
            for _ in range(tensors):
                name = _string(f, path)
                (n_dims,) = struct.unpack("<I", _read(f, 4, path))
                if n_dims > _MAX_DIMS:
                    raise ModelError(f"{path}: tensor {name[:60]!r} has {n_dims} dimensions")
                dims = struct.unpack(f"<{n_dims}Q", _read(f, 8 * n_dims, path))
                kind, offset = struct.unpack("<IQ", _read(f, 12, path))
                layout.append((name, kind, dims, offset))
            start = -(-f.tell() // alignment) * alignment
    except OSError as err:
        raise ModelError(f"{path}: cannot read ({err.strerror or err})") from err
    for name, kind, dims, offset in layout:
        length = _tensor_bytes(kind, dims) or 0
        if start + offset + length > size:
            raise ModelError(
                f"{path}: tensor {name[:60]!r} ends at byte {start + offset + length}, past the "
                f"end of the file ({size} bytes): the file is truncated"
            )
