"""Will a model fit? The memory a load needs, and the refusal when a device has less free.

A worker checks before it loads anything: a model that does not fit is refused with how much it
needs and how much the device has free, instead of swapping the machine to a halt or dying in the
middle of a CUDA allocation. Both functions are pure; the engines read the free memory themselves
(MemAvailable for the CPU and unified memory, the CUDA driver for a GPU).
"""

from __future__ import annotations

import os
from pathlib import Path

from rbee.errors import InsufficientMemoryError

__all__ = [
    "FAKE_MEM_ENV",
    "artifact_bytes",
    "cgroup_room",
    "check_fits",
    "estimate_need",
    "fake_mem_available",
    "format_bytes",
    "mem_available",
]

# Weights are mapped or copied whole; the compute buffers, the runtime and the allocator's slack
# come on top. 20% plus 64 MiB covers llama.cpp, MLX and ExLlamaV2 on the models measured so far.
_OVERHEAD_RATIO = 0.20
_OVERHEAD_FIXED = 64 << 20


FAKE_MEM_ENV = "RBEE_FAKE_MEM_AVAILABLE"
"""Tests set it to simulate a machine short of memory: bytes free while its hive runs no
worker (the hive subtracts what its workers need; a worker reads it as it is)."""


def fake_mem_available() -> int | None:
    """The simulated free memory (FAKE_MEM_ENV), or None when it is not set."""
    raw = os.environ.get(FAKE_MEM_ENV, "").strip()
    return int(raw) if raw.isdigit() else None


def format_bytes(n: int) -> str:
    """`n` bytes for people: 1.5 GiB, 98 MiB, 512 KiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(n) >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"


def artifact_bytes(path: Path) -> int:
    """The size of a model file, or of every file under a model folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def estimate_need(weights: int, *, kv_cache: int = 0) -> int:
    """Bytes a load of `weights` bytes of model (plus `kv_cache` bytes of context) needs."""
    return int(weights * (1 + _OVERHEAD_RATIO)) + _OVERHEAD_FIXED + kv_cache


def check_fits(model: str, need: int, free: int | None, device: str) -> None:
    """Raise InsufficientMemoryError unless `need` bytes fit in `free` bytes on `device`.

    `free` is None when the device cannot tell; then the load goes ahead.
    """
    if free is not None and need > free:
        raise InsufficientMemoryError(
            f"model {model!r} needs about {format_bytes(need)} on {device}, but only "
            f"{format_bytes(free)} is free; stop other workers, pick a smaller model or "
            "another device"
        )


def mem_available() -> int | None:
    """Bytes of memory a new process here may still use (Linux, macOS), or None if unknown.

    On Linux that is MemAvailable, lowered to what the process's memory cgroup (v1 or v2) still
    allows: a hive in a container sees the host's MemAvailable, but only its limit is its own.
    """
    fake = fake_mem_available()
    if fake is not None:
        return fake
    free = _meminfo_available()
    room = _cgroup_room()
    if room is not None and (free is None or room < free):
        return room
    if free is not None:
        return free
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_room(proc_cgroup: str, root: Path) -> int | None:
    """Bytes the memory cgroup described by `proc_cgroup` (/proc/self/cgroup) still allows.

    Reclaimable page cache (inactive file pages) counts as free, as it does in MemAvailable.
    None when there is no memory cgroup or it has no limit.
    """
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        rel = path.lstrip("/")
        if "memory" in controllers.split(","):
            folder = root / "memory" / rel
            limit = _read_int(folder / "memory.limit_in_bytes")
            usage = _read_int(folder / "memory.usage_in_bytes")
            cache = _stat(folder / "memory.stat", "total_inactive_file")
        elif controllers == "" and path:
            folder = next(
                (d / rel for d in (root, root / "unified") if (d / rel / "memory.max").exists()),
                root / rel,
            )
            limit = _read_int(folder / "memory.max")  # "max" (no limit) reads as None
            usage = _read_int(folder / "memory.current")
            cache = _stat(folder / "memory.stat", "inactive_file")
        else:
            continue
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(0, limit - max(0, usage - cache))
    return None


def _cgroup_room() -> int | None:
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    return cgroup_room(text, Path("/sys/fs/cgroup"))
