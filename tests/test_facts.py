"""Hardware facts: the parser on recorded outputs, and the real script on this machine."""

from __future__ import annotations

import json
import os

import pytest

from rbee.errors import RbeeError
from rbee.hive.facts import Gpu, local_facts, parse_facts, parse_nvidia_smi

TWO_GPUS = """0, NVIDIA GeForce RTX 4090, 24564, 23012, 550.54.14
1, NVIDIA RTX A4000, 16376, 16102, 550.54.14
"""


def test_nvidia_smi_csv() -> None:
    assert parse_nvidia_smi(TWO_GPUS) == (
        Gpu(0, "NVIDIA GeForce RTX 4090", 24564 << 20, 23012 << 20, "550.54.14"),
        Gpu(1, "NVIDIA RTX A4000", 16376 << 20, 16102 << 20, "550.54.14"),
    )
    assert parse_nvidia_smi(None) == ()
    assert parse_nvidia_smi("\n") == ()


@pytest.mark.parametrize("bad", ["0, name, 10", "x, name, 1, 1, d", "0, n, lots, 1, d"])
def test_nvidia_smi_garbage_is_an_error(bad: str) -> None:
    with pytest.raises(RbeeError, match="nvidia-smi"):
        parse_nvidia_smi(bad)


LINUX_CUDA = {
    "os": "linux", "arch": "x86_64", "hostname": "gpu-box", "python": "3.11.9",
    "python_path": "/usr/bin/python3", "cpu_count": 16, "mem_total": 64 << 30,
    "mem_available": 60 << 30, "disk_free": 500 << 30, "nvidia_smi": TWO_GPUS,
    "engines": {"llama_cpp": True, "exllamav2": False, "mlx": False},
}  # fmt: skip
MAC = {
    "os": "darwin", "arch": "arm64", "hostname": "mac", "python": "3.12.1",
    "python_path": "/opt/homebrew/bin/python3", "cpu_count": 10, "mem_total": 32 << 30,
    "mem_available": None, "disk_free": 100 << 30, "nvidia_smi": None, "chip": "Apple M2 Pro",
    "engines": {"llama_cpp": False, "exllamav2": False, "mlx": True},
}  # fmt: skip


def test_linux_with_gpus() -> None:
    facts = parse_facts(json.dumps(LINUX_CUDA))
    assert [g.name for g in facts.gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA RTX A4000"]
    assert facts.engines == ("llama_cpp",)
    assert not facts.apple_silicon


def test_apple_silicon() -> None:
    facts = parse_facts(json.dumps(MAC))
    assert facts.apple_silicon
    assert facts.apple_chip == "Apple M2 Pro"
    assert facts.gpus == ()
    assert facts.mem_available is None


@pytest.mark.parametrize("bad", ["", "[]", "{}", '{"os": "linux"}', "not json"])
def test_unexpected_output_is_an_error(bad: str) -> None:
    with pytest.raises(RbeeError, match="facts script"):
        parse_facts(bad)


def test_local_facts_are_this_machine() -> None:
    facts = local_facts()
    assert facts.cpu_count == os.cpu_count()
    assert facts.os == "linux"
    assert facts.mem_total is not None
    assert facts.mem_available is not None
    assert facts.mem_total >= facts.mem_available > 0
    assert "llama_cpp" in facts.engines
