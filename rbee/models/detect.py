"""Telling a model's format from its files: a GGUF file, or an MLX, EXL2 or GPTQ folder.

    gguf  a file that starts with the GGUF magic
    exl2  config.json whose quantization_config.quant_method is exl2, or *.safetensors beside
          ExLlamaV2's measurement.json
    gptq  quantize_config.json, or config.json whose quantization_config.quant_method is gptq
    mlx   weights.npz, or *.safetensors with config.json's "quantization" (mlx-lm writes it) or
          with MLX's own marker: the safetensors metadata {"format": "mlx"}, or a model card
          saying `library_name: mlx`

Only small files are read (config.json, the first safetensors header, README.md).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from rbee.errors import ModelError
from rbee.fsutil import open_regular, read_bounded
from rbee.models.catalog import FOLDER_FORMATS, validate_format

__all__ = ["GGUF_MAGIC", "check_kind", "detect_folder_format", "detect_format", "is_gguf"]

GGUF_MAGIC = b"GGUF"
_MAX_HEADER = 16 << 20
_MAX_CARD = 1 << 20


def is_gguf(path: Path) -> bool:
    """True if `path` is a file that starts with the GGUF magic."""
    try:
        with open_regular(path) as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(read_bounded(path, _MAX_HEADER).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    # A safetensors file starts with the length of its JSON header (u64, little-endian).
    try:
        with open_regular(path) as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_HEADER:
                return {}
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _card_says_mlx(path: Path) -> bool:
    try:
        with open_regular(path) as f:
            text = f.read(_MAX_CARD).decode("utf-8", "replace")
    except OSError:
        return False
    return any(line.strip().lower() == "library_name: mlx" for line in text.splitlines())


def detect_folder_format(folder: Path) -> str | None:
    """The format of the model folder `folder` (mlx, exl2, gptq), or None if it cannot tell."""
    names = {p.name for p in folder.iterdir() if p.is_file()}
    config = _json(folder / "config.json") if "config.json" in names else {}
    quant = config.get("quantization_config")
    method = str(quant.get("quant_method", "")).lower() if isinstance(quant, dict) else ""
    safetensors = sorted(n for n in names if n.endswith(".safetensors"))
    if method == "exl2" or (safetensors and "measurement.json" in names):
        return "exl2"
    if method == "gptq" or "quantize_config.json" in names:
        return "gptq"
    if "weights.npz" in names:
        return "mlx"
    if safetensors and (
        isinstance(config.get("quantization"), dict)
        or _safetensors_metadata(folder / safetensors[0]).get("format") == "mlx"
        or ("README.md" in names and _card_says_mlx(folder / "README.md"))
    ):
        return "mlx"
    return None


def detect_format(path: Path) -> str:
    """The format of a model file or folder; ModelError saying what was found if unknown."""
    if path.is_file():
        if is_gguf(path):
            return "gguf"
        raise ModelError(
            f"{path}: not a GGUF file (it does not start with {GGUF_MAGIC!r}); import a .gguf "
            "file or a model folder (mlx, exl2, gptq)"
        )
    if not path.is_dir():
        raise ModelError(f"{path}: no such file or folder")
    fmt = detect_folder_format(path)
    if fmt is not None:
        return fmt
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    hint = (
        f"; it holds GGUF files ({', '.join(ggufs[:5])}): import one of them"
        if ggufs
        else f"; pass --format ({', '.join(sorted(FOLDER_FORMATS))}) if you know it"
    )
    raise ModelError(
        f"{path}: cannot tell the model format (no exl2 or gptq quantization_config, no "
        f"quantize_config.json, measurement.json, weights.npz or MLX marker){hint}"
    )


def check_kind(path: Path, fmt: str) -> None:
    """ModelError unless `path` is what `fmt` needs: a GGUF file, or a folder with config.json."""
    validate_format(fmt)
    if fmt not in FOLDER_FORMATS:
        if not path.is_file():
            raise ModelError(f"{path}: a {fmt} model is one file, and this is not a file")
        if not is_gguf(path):
            raise ModelError(f"{path}: not a GGUF file (it does not start with {GGUF_MAGIC!r})")
        return
    if not path.is_dir():
        raise ModelError(f"{path}: a {fmt} model is a folder, and this is not a folder")
    if not (path / "config.json").is_file() and not (path / "weights.npz").is_file():
        raise ModelError(f"{path}: no config.json, so this is not a {fmt} model folder")
