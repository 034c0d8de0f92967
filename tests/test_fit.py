"""Will a model fit: the estimate, the refusal, and free memory as a memory cgroup sees it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rbee.config.settings import Paths
from rbee.engines.fit import (
    artifact_bytes,
    cgroup_room,
    check_fits,
    estimate_need,
    format_bytes,
    mem_available,
)
from rbee.errors import InsufficientMemoryError
from tests.conftest import MODEL, rbee_env


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


def _memory_cgroup() -> Path | None:
    """A new memory cgroup under this process's own (v1 or v2), or None if none can be made."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):
            parent = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
            limit_file = "memory.limit_in_bytes"
            break
    else:
        parent = Path("/sys/fs/cgroup") / Path("/proc/self/cgroup").read_text().split("::", 1)[
            -1
        ].strip().lstrip("/")
        limit_file = "memory.max"
    child = parent / f"rbee-test-{os.getpid()}"
    try:
        child.mkdir()
        (child / limit_file).write_text(str(150 << 20))
    except OSError:
        with contextlib.suppress(OSError):
            child.rmdir()
        return None
    return child


@pytest.mark.slow
def test_a_worker_in_a_small_memory_cgroup_refuses_to_load(paths: Paths) -> None:
    cgroup = _memory_cgroup()
    if cgroup is None:
        pytest.skip("needs a writable memory cgroup (root, cgroup v1 or delegated v2)")
    try:
        argv = [sys.executable, "-m", "rbee", "worker", "run", "--model", MODEL, "--port", "0",
                "--engine", "llamacpp", "--device", "cpu"]  # fmt: skip
        result = subprocess.run(
            ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *argv],
            env=rbee_env(paths),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rbee: error:")]
    assert len(errors) == 1, result.stderr
    # 98 MB of weights and a 90 MiB KV cache for 4096 tokens, plus overhead; 150 MiB is the cap.
    need = estimate_need(98_362_432, kv_cache=30 * 3 * 64 * 2 * 2 * 4096)
    assert format_bytes(need) == "267 MiB"
    assert f"model '{MODEL}' needs about 267 MiB on cpu" in errors[0]
    free = int(errors[0].split("only ")[1].split(" MiB")[0])
    assert 0 < free < 150
