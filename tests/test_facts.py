"""Hardware facts: the parsers on recorded outputs, the real scripts on this machine."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rbee.errors import RbeeError
from rbee.facts import (
    FACTS_SCRIPT,
    Gpu,
    local_facts,
    parse_facts,
    parse_gpu_apps,
    parse_nvidia_smi,
)
from rbee.ssh.connection import expand_home
from rbee.ssh.facts import STATUS_SCRIPT, parse_status

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


def test_gpu_processes_csv() -> None:
    # One process on two GPUs is summed; a row nvidia-smi cannot fill is skipped.
    text = "4121, 15360\n4121, 1024\n4200, 512\n[N/A], [N/A]\n\n9, [N/A]\n"
    assert parse_gpu_apps(text) == {4121: 16384 << 20, 4200: 512 << 20}
    assert parse_gpu_apps("") == {}
    assert parse_gpu_apps(None) == {}


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


def test_an_engine_that_does_not_import_is_a_problem_not_an_engine() -> None:
    facts = parse_facts(json.dumps({**LINUX_CUDA, "engines": {
        "llama_cpp": True, "mlx": "ImportError: libmlx.so: cannot open shared object file",
        "exllamav2": False}}))  # fmt: skip
    assert facts.engines == ("llama_cpp",)
    assert facts.engine_problems == (
        ("mlx", "ImportError: libmlx.so: cannot open shared object file"),
    )


def test_facts_script_imports_the_engines(tmp_path: Path) -> None:
    # Packages shadowing the real ones: an mlx whose native part fails to load (and prints, at
    # the Python and at the file-descriptor level), an exllamav2 that must not even be imported
    # on a machine without a GPU.
    (tmp_path / "mlx").mkdir()
    (tmp_path / "mlx" / "__init__.py").write_text("")
    (tmp_path / "mlx" / "core.py").write_text(
        "import os\nprint('noise')\nos.write(1, b'more noise\\n')\n"
        "raise ImportError('libmlx.so: cannot open shared object file')\n"
    )
    (tmp_path / "exllamav2").mkdir()
    (tmp_path / "exllamav2" / "__init__.py").write_text("raise SystemExit('imported exllamav2')\n")
    proc = subprocess.run(
        [sys.executable, "-c", FACTS_SCRIPT], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)}, check=True,
    )  # fmt: skip
    facts = parse_facts(proc.stdout)
    assert "noise" in proc.stderr
    assert "llama_cpp" in facts.engines
    assert dict(facts.engine_problems) == {
        "mlx": "ImportError: libmlx.so: cannot open shared object file",
        "exllamav2": "not imported: no NVIDIA GPU",
    }


def test_local_facts_are_this_machine() -> None:
    facts = local_facts()
    assert facts.cpu_count == os.cpu_count()
    assert facts.os == "linux"
    assert facts.mem_total is not None
    assert facts.mem_available is not None
    assert facts.mem_total >= facts.mem_available > 0
    assert "llama_cpp" in facts.engines
    assert "mlx" in facts.engines  # mlx[cpu] is installed here, and mlx.core imports
    assert facts.engine_problems == ()


# --- the scripts as they run on a hive: the facts script (install), the status script ----------

GPU_NAMES = ['NVIDIA "Quoted" \\ Backslash', "GeForce café", "Tesla 🚀"]


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH starts with an nvidia-smi that prints two awkward GPUs."""
    folder = tmp_path / "bin"
    folder.mkdir()
    csv = "".join(
        f"{i}, {name}, 24564, {23012 - i}, 550.54.14\n" for i, name in enumerate(GPU_NAMES)
    )
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{csv}EOF\n", encoding="utf-8")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "HOME": str(tmp_path)}


def run_script(argv: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_facts_script_reads_what_platform_and_shutil_would(
    fake_nvidia_smi: dict[str, str], tmp_path: Path
) -> None:
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    out = run_script([python, "-c", FACTS_SCRIPT], fake_nvidia_smi)
    facts = parse_facts(out)
    assert json.loads(out)["nvidia_smi"].splitlines()[0].startswith("0, NVIDIA")
    assert [g.name for g in facts.gpus] == GPU_NAMES
    assert [g.vram_free for g in facts.gpus] == [(23012 - i) << 20 for i in range(3)]
    # What the script read with os and sys only, checked against what the platform and shutil
    # modules say (the script once used them; they cost the script most of its start-up).
    version = run_script([python, "-c", "import platform; print(platform.python_version())"], {})
    assert facts.python == version.strip()
    assert facts.python_path == shutil.which(python) or facts.python_path == python
    assert (facts.os, facts.arch, facts.hostname) == (
        platform.system().lower(), platform.machine(), platform.node(),
    )  # fmt: skip
    assert abs(facts.disk_free - shutil.disk_usage(tmp_path).free) < 64 << 20


def test_the_facts_script_imports_only_os_and_sys(tmp_path: Path) -> None:
    # Where no engine is installed (-S: no site-packages), as on a machine rbee is installing on.
    probe = (
        FACTS_SCRIPT
        + "\nprint(sorted({'json', 'platform', 'shutil', 'subprocess'} & set(sys.modules)))"
    )
    out = run_script([sys.executable, "-S", "-c", probe], {**os.environ, "PATH": str(tmp_path)})
    assert out.splitlines()[-1] == "[]"


HIVE_PATH = "/usr/local/bin:/usr/bin:/bin"  # sshd's default PATH


def status(mode: str, install_dir: str, env: dict[str, str]) -> str:
    """STATUS_SCRIPT's output on this machine, as a hive's sshd would run it."""
    argv = ["sh", "-c", STATUS_SCRIPT, "rbee-status", mode, "python3", install_dir]
    return run_script(argv, env)


def test_the_status_script_reads_what_the_facts_script_reads(
    fake_nvidia_smi: dict[str, str], tmp_path: Path
) -> None:
    env = {**fake_nvidia_smi, "PATH": fake_nvidia_smi["PATH"].split(":")[0] + ":" + HIVE_PATH}
    site = tmp_path / "rbee-hive" / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "llama_cpp").mkdir(parents=True)
    (site / "mlx.py").write_text("")
    (site / "exllamav2.dist-info").mkdir()
    shown = parse_status(status("full", "~/rbee-hive", env))
    exact = parse_facts(run_script([shown.python_path, "-c", FACTS_SCRIPT], env))
    same = ("os", "arch", "hostname", "python", "python_path", "cpu_count", "mem_total", "gpus")
    assert {k: getattr(shown, k) for k in same} == {k: getattr(exact, k) for k in same}
    assert shown.python_path.startswith("/")
    assert [g.name for g in shown.gpus] == GPU_NAMES
    assert shown.engines == ("llama_cpp", "mlx")  # rbee's venv, not the system Python's
    assert shown.mem_available is not None
    assert shown.mem_total is not None
    assert 0 < shown.mem_available <= shown.mem_total
    assert abs(shown.disk_free - shutil.disk_usage(tmp_path).free) < 64 << 20
    assert parse_status(status("full", str(tmp_path / "absent"), env)).engines == ()
    missing = run_script(["sh", "-c", STATUS_SCRIPT, "rbee-status", "full", "no-python", ""], env)
    assert (parse_status(missing).python, parse_status(missing).python_path) == ("", "")


def test_the_status_script_takes_the_python_version_from_rbees_venv(
    fake_nvidia_smi: dict[str, str], tmp_path: Path
) -> None:
    env = {**fake_nvidia_smi, "PATH": fake_nvidia_smi["PATH"].split(":")[0] + ":" + HIVE_PATH}
    venv = tmp_path / "rbee-hive" / "venv"
    venv.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(
        "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.9.99\n"
    )
    # Installed: no Python is started to learn its version (pyvenv.cfg records it).
    assert parse_status(status("full", "~/rbee-hive", env)).python == "3.9.99"
    asked = parse_status(status("full", str(tmp_path / "absent"), env)).python
    assert asked.count(".") == 2
    assert asked != "3.9.99"
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")  # no version: ask the Python
    assert parse_status(status("full", "~/rbee-hive", env)).python == asked


def test_the_status_script_rereads_only_what_moves(
    fake_nvidia_smi: dict[str, str], tmp_path: Path
) -> None:
    known = parse_status(status("full", "~/absent", fake_nvidia_smi))
    out = status("fresh-gpus", "~/absent", fake_nvidia_smi)
    assert "uname" not in out
    fresh = parse_status(out, known)
    assert fresh.gpus == known.gpus
    assert fresh.mem_available is not None
    assert abs(fresh.disk_free - shutil.disk_usage(tmp_path).free) < 64 << 20
    same = ("os", "arch", "hostname", "python", "python_path", "cpu_count", "mem_total")
    assert {k: getattr(fresh, k) for k in same} == {k: getattr(known, k) for k in same}
    # Without GPUs the script does not run nvidia-smi at all.
    out = status("fresh", "~/absent", fake_nvidia_smi)
    assert "nvidia_smi" not in out
    assert parse_status(out, replace(known, gpus=())).gpus == ()


LINUX_STATUS = (
    """mem_total_kib 65536000
mem_available_kib 60000000
disk_free_kib 1000
uname Linux gpu-box x86_64
cpus 16
python_path /usr/bin/python3
python_version Python 3.11.9
engine exllamav2
engine llama_cpp
nvidia_smi
"""
    + TWO_GPUS
)
MAC_STATUS = """disk_free_kib 2000
uname Darwin mac.local arm64
cpus 10
memsize 34359738368
chip Apple M2 Pro
python_path /opt/homebrew/bin/python3
python_version Python 3.12.1
"""


def test_parse_status() -> None:
    linux = parse_status(LINUX_STATUS)
    assert linux == replace(
        parse_facts(json.dumps(LINUX_CUDA)),
        mem_total=65536000 * 1024,
        mem_available=60000000 * 1024,
        disk_free=1000 * 1024,
        engines=("exllamav2", "llama_cpp"),
    )
    mac = parse_status(MAC_STATUS)
    assert mac.apple_silicon
    assert (mac.apple_chip, mac.mem_total, mac.mem_available) == ("Apple M2 Pro", 32 << 30, None)
    assert (mac.python, mac.engines, mac.gpus) == ("3.12.1", (), ())


KNOWN = parse_facts(json.dumps(LINUX_CUDA))


@pytest.mark.parametrize(
    ("text", "mem_available", "disk_free", "vram_free"),
    [
        (
            "mem_available_kib 1\ndisk_free_kib 3\nnvidia_smi\n" + TWO_GPUS.replace("23012", "7"),
            1024, 3072, [7 << 20, 16102 << 20],
        ),
        # No MemAvailable (macOS), df failed, nvidia-smi printed nothing.
        ("disk_free_kib \nnvidia_smi\n", None, 0, []),
    ],
)  # fmt: skip
def test_parse_status_of_a_known_hive(
    text: str, mem_available: int | None, disk_free: int, vram_free: list[int]
) -> None:
    fresh = parse_status(text, KNOWN)
    assert (fresh.mem_available, fresh.disk_free) == (mem_available, disk_free)
    assert [g.vram_free for g in fresh.gpus] == vram_free
    assert replace(fresh, mem_available=None, disk_free=0, gpus=()) == replace(
        KNOWN, mem_available=None, disk_free=0, gpus=()
    )


@pytest.mark.parametrize(
    "bad", ["surprise 1\n", "Traceback (most recent call last):\n", "cpus 2\n", "uname Linux\n"]
)
def test_parse_status_refuses_anything_else(bad: str) -> None:
    with pytest.raises(RbeeError, match="status script"):
        parse_status(bad)


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("~", "/home/alice"),
        ("~/.local/share/rbee-hive", "/home/alice/.local/share/rbee-hive"),
        ("/opt/rbee", "/opt/rbee"),
        ("relative/dir", "relative/dir"),  # the hive's shell starts in the home folder anyway
    ],
)
def test_one_rule_for_tilde_on_a_hive(path: str, resolved: str) -> None:
    assert expand_home(path, "/home/alice") == resolved


def test_the_status_script_expands_tilde_by_the_same_rule(
    fake_nvidia_smi: dict[str, str], tmp_path: Path
) -> None:
    # HOME is tmp_path here: "~/rbee-hive" and its expansion by expand_home find the same venv.
    env = {**fake_nvidia_smi, "PATH": fake_nvidia_smi["PATH"].split(":")[0] + ":" + HIVE_PATH}
    (tmp_path / "rbee-hive" / "venv" / "lib" / "python3.11" / "site-packages" / "mlx").mkdir(
        parents=True
    )
    home = env.get("HOME", str(tmp_path))
    by_sh = parse_status(status("full", "~/rbee-hive", env)).engines
    by_python = parse_status(status("full", expand_home("~/rbee-hive", home), env)).engines
    assert by_sh == by_python == ("mlx",)
