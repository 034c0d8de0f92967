"""Each worker's GPU memory in the dashboard, from nvidia-smi's list of compute processes.

This machine has no NVIDIA GPU: `nvidia-smi` here is a stand-in on PATH that reports one GPU and,
as the real one lists compute processes, every `rbee-worker` process using 1234 MiB. What is
real is everything rbee does with it: the facts script finding the GPU, the hive's /health
listing the processes, the queen's dashboard reading them every 10 s and matching them to its
workers by pid, and `rbee tui --once` showing them. Workers are placed on the CPU explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import http
from tests.conftest import MODEL, make_paths, rbee, rbee_env, running_queen, wait_until
from tests.test_hive_daemon import hive

pytestmark = pytest.mark.slow

MIB = 1234
FAKE_NVIDIA_SMI = f"""#!/bin/sh
case "$*" in
    *--query-gpu=*) echo "0, Stand-in GPU, 24576, 20480, 550.54" ;;
    *--query-compute-apps=*)
        for dir in /proc/[0-9]*; do
            if [ "$(cat "$dir/comm" 2>/dev/null)" = rbee-worker ]; then
                echo "${{dir#/proc/}}, {MIB}"
            fi
        done ;;
    *) exit 1 ;;
esac
"""


@pytest.fixture
def gpu_path(tmp_path: Path) -> str:
    """A PATH whose `nvidia-smi` is the stand-in."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-smi"
    tool.write_text(FAKE_NVIDIA_SMI)
    tool.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_the_dashboard_shows_each_workers_gpu_memory(
    gpu_path: str, tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    with running_queen(paths, models=(), env={"PATH": gpu_path}) as queen:
        spawned = rbee(paths, "--queen", queen.url, "worker", "spawn", "--model", MODEL,
                       "--engine", "llamacpp", "--device", "cpu")  # fmt: skip
        assert spawned.returncode == 0, spawned.stderr

        def vram() -> object:
            snap = http.get(f"{queen.url}/v1/dashboard").json()
            (worker,) = snap["workers"]
            return worker["vram"]

        wait_until(lambda: vram() == MIB << 20, 30, "the worker's GPU memory")
        snap = http.get(f"{queen.url}/v1/dashboard").json()
        (local,) = [h for h in snap["hives"] if h["name"] == "localhost"]
        assert [g["name"] for g in local["facts"]["gpus"]] == ["Stand-in GPU"]
        once = rbee(paths, "--queen", queen.url, "tui", "--once")
        assert once.returncode == 0, once.stderr
        rows = [line.split() for line in once.stdout.splitlines()]
        assert [row[-1] for row in rows if row[:1] == [f"{MODEL}-1"]] == ["1.2G"], once.stdout


def test_a_hive_lists_the_processes_using_its_gpus(gpu_path: str, tmp_path: Path,
                                                  model_cache: Path) -> None:  # fmt: skip
    paths = make_paths(tmp_path, model_cache)
    env = {**rbee_env(paths), "PATH": gpu_path}
    assert env["PATH"].startswith(str(tmp_path))
    with hive(paths, lease=0, env=env) as h:
        body = {"model": MODEL, "engine": "llamacpp", "device": "cpu"}
        spawned = http.post(f"{h.url}/v1/workers", json=body, headers=h.headers)
        assert spawned.status_code == 201, spawned.text
        pid = spawned.json()["pid"]
        health = http.get(f"{h.url}/health", headers=h.headers).json()
        assert health["gpu_processes"] == {str(pid): MIB << 20}
