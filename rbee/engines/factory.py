"""Build the engine a worker was asked for, after checking that its model fits the device.

The hive (or `rbee worker run`) has already chosen the engine, device and artifact through
rbee.engines.select; this module maps that choice onto an adapter's constructor. Each adapter is
imported only here and only when chosen, so a hive without mlx or exllamav2 never imports them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from rbee.engines.base import Engine
from rbee.engines.fit import artifact_bytes, check_fits, estimate_need, mem_available
from rbee.engines.repack import LLAMA_DEFAULT_REPACK, RepackChoice
from rbee.errors import SelectionError
from rbee.facts import read_gpus
from rbee.models.gguf import kv_cache_bytes

__all__ = [
    "check_memory",
    "create_engine",
    "device_free_memory",
    "memory_need",
    "preload_engine",
]


_LIBRARIES = {
    "llamacpp": ("rbee.engines.llamacpp", "llama_cpp", "llama_cpp.llama_chat_format"),
    "mlx": ("rbee.engines.mlx", "mlx_lm"),
    "exllamav2": ("rbee.engines.exllamav2", "torch", "exllamav2"),
}


def preload_engine(engine: str) -> None:
    """Import `engine`'s adapter and library now (a standby worker does, ahead of need).

    A library that is missing or broken is left for the engine's own load to report, with the
    engine's message; unknown engines are ignored the same way.
    """
    for module in _LIBRARIES.get(engine, ()):
        try:
            importlib.import_module(module)
        except Exception:  # reported by the engine's load, where it matters
            return


def device_free_memory(device: str) -> int | None:
    """Free bytes on `device`: VRAM for cuda:N (nvidia-smi), else memory for new processes."""
    if not device.startswith("cuda:"):
        return mem_available()  # the CPU, and Apple Silicon's unified memory
    index = int(device.split(":", 1)[1])
    gpus = read_gpus()
    return next((g.vram_free for g in gpus or () if g.index == index), None)


def memory_need(path: Path, n_ctx: int) -> int:
    """Bytes a worker of the artifact at `path` with `n_ctx` tokens of context needs."""
    kv_cache = kv_cache_bytes(path, n_ctx) if path.is_file() else 0
    return estimate_need(artifact_bytes(path), kv_cache=kv_cache)


def check_memory(model: str, path: Path, device: str, n_ctx: int, *, taken: int = 0) -> None:
    """InsufficientMemoryError unless the artifact at `path` with `n_ctx` tokens fits `device`
    (`taken`: bytes to count as used on top of what the device reports)."""
    free = device_free_memory(device)
    check_fits(model, memory_need(path, n_ctx), None if free is None else free - taken, device)


def create_engine(
    engine: str,
    path: Path,
    *,
    model: str,
    device: str = "cpu",
    n_ctx: int = 4096,
    threads: int = 1,
    embeddings: bool = False,
    cpu_repack: RepackChoice | None = None,
) -> Engine:
    """The adapter for `engine` on `path`; InsufficientMemoryError if it cannot fit `device`."""
    check_memory(model, path, device, n_ctx)
    if engine == "llamacpp":
        from rbee.engines.llamacpp import LlamaCppEngine  # noqa: PLC0415 - lazy by design

        return LlamaCppEngine(
            path,
            n_ctx=n_ctx,
            n_threads=threads,
            n_gpu_layers=0 if device == "cpu" else -1,  # CUDA or Metal: every layer on the GPU
            main_gpu=int(device.split(":")[1]) if device.startswith("cuda:") else None,
            embedding=embeddings,
            cpu_repack=cpu_repack or LLAMA_DEFAULT_REPACK,
        )
    if embeddings:
        raise SelectionError(f"engine {engine} does not serve embeddings; use llamacpp")
    if engine == "mlx":
        from rbee.engines.mlx import MlxEngine  # noqa: PLC0415

        return MlxEngine(path, n_ctx=n_ctx, device=device)
    if engine == "exllamav2":
        from rbee.engines.exllamav2 import ExLlamaV2Engine  # noqa: PLC0415

        return ExLlamaV2Engine(path, n_ctx=n_ctx, device=device)
    raise SelectionError(f"unknown engine {engine!r}")
