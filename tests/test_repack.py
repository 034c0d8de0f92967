"""llama.cpp's weight repacking by the CPU's facts: the pure choice, and where it is carried."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rbee.api.workers import WorkerSpec, parse_worker_spec
from rbee.config.hives import load_hives
from rbee.engines.repack import UPSTREAM_AMX_ISSUE, choose_cpu_repack
from rbee.errors import ApiError, ConfigError
from rbee.facts import Facts, parse_facts
from rbee.hive.argv import worker_argv
from rbee.models.store import ModelStore
from rbee.placement import model_formats, place
from tests.conftest import MODEL

SAPPHIRE_RAPIDS = ("amx_bf16", "amx_int8", "amx_tile", "avx2", "avx512f", "fma")
EPYC = ("avx2", "f16c", "fma")


def _facts(flags: tuple[str, ...], **changes: object) -> Facts:
    base = Facts(
        os="linux", arch="x86_64", hostname="box", python="3.11.7", python_path="/usr/bin/python3",
        cpu_count=8, mem_total=32 << 30, mem_available=16 << 30, disk_free=1 << 40, gpus=(),
        apple_chip=None, engines=("llama_cpp",), cpu_flags=flags,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("setting", "flags", "on", "because"),
    [
        ("auto", SAPPHIRE_RAPIDS, False, "the CPU has AMX (amx_bf16 amx_int8 amx_tile)"),
        ("auto", ("amx_tile",), False, "the CPU has AMX (amx_tile)"),
        ("auto", EPYC, True, "no AMX"),
        ("auto", (), True, "no AMX"),  # a Mac, or flags unknown
        ("on", SAPPHIRE_RAPIDS, True, "--cpu-repack on was asked for"),
        ("off", EPYC, False, "--cpu-repack off was asked for"),
    ],
)
def test_the_repack_choice(setting: str, flags: tuple[str, ...], on: bool, because: str) -> None:
    choice = choose_cpu_repack(setting, _facts(flags))
    assert (choice.on, choice.setting) == (on, "on" if on else "off")
    assert because in choice.why


def test_the_amx_reason_cites_the_upstream_issue() -> None:
    assert UPSTREAM_AMX_ISSUE in choose_cpu_repack("auto", _facts(SAPPHIRE_RAPIDS)).why
    assert choose_cpu_repack("auto", None).on
    with pytest.raises(ValueError, match="one of auto, on, off"):
        choose_cpu_repack("maybe", None)


def test_the_facts_script_reports_amx_flags() -> None:
    raw = (
        '{"os": "linux", "arch": "x86_64", "python": "3.11.7", "cpu_count": 2, '
        '"cpu_model": "Intel(R) Xeon(R) Platinum 8488C", '
        '"cpu_flags": ["avx2", "amx_tile", "amx_int8", "amx_bf16", "bogus"]}'
    )
    facts = parse_facts(raw)
    assert facts.cpu_flags == ("amx_bf16", "amx_int8", "amx_tile", "avx2")
    assert facts.amx
    assert facts.cpu_model == "Intel(R) Xeon(R) Platinum 8488C"
    assert not parse_facts('{"os": "darwin", "arch": "arm64", "python": "3.12.1", '
                           '"cpu_count": 8}').amx  # fmt: skip


def test_placement_decides_repack_for_llamacpp_workers(model_cache: Path) -> None:
    formats = model_formats(ModelStore(model_cache), MODEL)
    amx, _ = place(WorkerSpec(MODEL), _facts(SAPPHIRE_RAPIDS), formats, hive="xeon")
    assert (amx.engine, amx.cpu_repack) == ("llamacpp", "off")
    epyc, _ = place(WorkerSpec(MODEL), _facts(EPYC), formats, hive="epyc")
    assert epyc.cpu_repack == "on"
    forced, _ = place(WorkerSpec(MODEL, cpu_repack="on"), _facts(SAPPHIRE_RAPIDS), formats,
                      hive="xeon")  # fmt: skip
    assert forced.cpu_repack == "on"
    mlx, _ = place(WorkerSpec(MODEL, engine="mlx"), _facts(SAPPHIRE_RAPIDS, engines=("mlx",)),
                   formats, hive="xeon")  # fmt: skip
    assert mlx.cpu_repack == "auto"  # not llama.cpp: nothing to decide


def test_the_worker_command_line_carries_the_choice() -> None:
    argv = worker_argv(WorkerSpec(MODEL, cpu_repack="off"), data_dir="/d", ready_fd=3,
                       lifeline_fd=4, parent_pid=1)  # fmt: skip
    assert argv[argv.index("--cpu-repack") + 1] == "off"
    auto = worker_argv(WorkerSpec(MODEL), data_dir="/d", ready_fd=3, lifeline_fd=4, parent_pid=1)
    assert "--cpu-repack" not in auto


def test_the_spawn_body_checks_the_setting() -> None:
    assert parse_worker_spec({"model": MODEL, "cpu_repack": "off"}).cpu_repack == "off"
    with pytest.raises(ApiError, match="cpu_repack must be one of auto, on, off"):
        parse_worker_spec({"model": MODEL, "cpu_repack": "yes"})


def test_hives_conf_key(tmp_path: Path) -> None:
    conf = tmp_path / "hives.conf"
    conf.write_text("Host xeon\n  RbeeCpuRepack OFF\nHost other\n")
    config = load_hives(conf)
    assert config.get("xeon").cpu_repack == "off"
    assert config.get("other").cpu_repack == "auto"
    conf.write_text("Host xeon\n  RbeeCpuRepack sometimes\n")
    with pytest.raises(ConfigError, match=r"hives.conf:2: RbeeCpuRepack must be one of auto, on"):
        load_hives(conf)
