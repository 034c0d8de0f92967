"""Will a model fit: the estimate, the refusal, and free memory as a memory cgroup sees it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.engines.fit import (
    artifact_bytes,
    cgroup_room,
    check_fits,
    estimate_need,
    format_bytes,
    mem_available,
)
from rbee.errors import InsufficientMemoryError


def test_refusal_says_what_is_needed_and_free() -> None:
    need = estimate_need(98_362_432)
    assert 98_362_432 < need < 256 << 20
    with pytest.raises(InsufficientMemoryError) as err:
        check_fits("smollm2-135m", need, 100 << 20, "cpu")
    message = str(err.value)
    assert "'smollm2-135m' needs about 177 MiB on cpu" in message
    assert "only 100 MiB is free" in message
    check_fits("smollm2-135m", need, need, "cpu")  # exactly enough is enough
    check_fits("smollm2-135m", need, None, "cuda:0")  # unknown free memory: go ahead


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (98 << 20, "98 MiB"), (3 << 29, "1.5 GiB")],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_artifact_bytes_of_a_file_and_a_folder(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"x" * 10)
    folder = tmp_path / "mlx"
    (folder / "sub").mkdir(parents=True)
    (folder / "w.safetensors").write_bytes(b"x" * 7)
    (folder / "sub" / "t.json").write_bytes(b"x" * 5)
    assert artifact_bytes(tmp_path / "a.gguf") == 10
    assert artifact_bytes(folder) == 12


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_limit_counts_inactive_cache_as_free(tmp_path: Path) -> None:
    folder = tmp_path / "memory" / "box"
    _write(folder / "memory.limit_in_bytes", f"{1 << 30}\n")
    _write(folder / "memory.usage_in_bytes", f"{600 << 20}\n")
    _write(folder / "memory.stat", f"cache 1\ntotal_inactive_file {100 << 20}\n")
    proc = "4:memory:/box\n1:cpu:/\n0::/\n"
    assert cgroup_room(proc, tmp_path) == (1 << 30) - (500 << 20)


def test_cgroup_v2_limit_and_no_limit(tmp_path: Path) -> None:
    folder = tmp_path / "unified" / "svc"
    _write(folder / "memory.max", f"{512 << 20}\n")
    _write(folder / "memory.current", f"{600 << 20}\n")
    _write(folder / "memory.stat", "anon 1\ninactive_file 0\n")
    assert cgroup_room("0::/svc\n", tmp_path) == 0  # over the limit: nothing is free
    _write(folder / "memory.max", "max\n")
    assert cgroup_room("0::/svc\n", tmp_path) is None
    v1_unlimited = tmp_path / "memory" / "u"
    _write(v1_unlimited / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(v1_unlimited / "memory.usage_in_bytes", "1\n")
    assert cgroup_room("4:memory:/u\n", tmp_path) is None


def test_this_machine_reports_free_memory() -> None:
    free = mem_available()
    assert free is not None
    assert free > 0
