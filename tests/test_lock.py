"""requirements.lock: it covers pyproject.toml, this environment was installed from it, the
wheelhouse reads it for other platforms, and users never see the warnings of locked libraries."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rbee.ssh.wheelhouse import LOCK_FILE, Target, lock_constraints, marker_environment

ROOT = Path(__file__).resolve().parent.parent
LOCKED_EXTRAS = ("dev", "mlx", "bench", "tools")


def _lock_lines() -> list[tuple[str, str, str]]:
    """(normalized name, version, marker) of each pinned line of the lock."""
    found = []
    for line in (ROOT / LOCK_FILE).read_text().splitlines():
        if not line or line[0] in "# ":
            continue
        requirement, _, marker = line.partition(";")
        name, _, version = requirement.strip().partition("==")
        assert version, f"{LOCK_FILE}: not an exact pin: {line!r}"
        found.append((canonicalize_name(name), version.strip(), marker.strip()))
    return found


def test_the_lock_pins_every_requirement_of_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        wanted += project["optional-dependencies"][extra]
    versions: dict[str, list[str]] = {}
    for name, version, _ in _lock_lines():
        versions.setdefault(name, []).append(version)
    stale = []
    for raw in wanted:
        requirement = Requirement(raw)
        name = canonicalize_name(requirement.name)
        locked = versions.get(name, [])
        if not any(requirement.specifier.contains(v, prereleases=True) for v in locked):
            stale.append(f"{raw} (locked: {versions.get(name) or 'nothing'})")
    assert not stale, f"{LOCK_FILE} is out of date, run `make lock`: {stale}"


def test_this_environment_was_installed_from_the_lock() -> None:
    # What `make setup` installed: every locked package present here has the locked version.
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    checked, wrong = 0, []
    for name, version, marker in _lock_lines():
        if marker and not Marker(marker).evaluate():
            continue
        if name in installed:
            checked += 1
            if installed[name] != version:
                wrong.append(f"{name} {installed[name]} (locked {version})")
    assert not wrong, f"installed versions differ from {LOCK_FILE}: {wrong}"
    assert checked > 40, f"only {checked} locked packages are installed: was the lock used?"


LINUX = Target("linux", "x86_64", "3.11", "cp", "glibc", "2.36")
MAC = Target("darwin", "arm64", "3.12", "cp", "", "14.4")
LOCK = """\
# a comment
mlx==0.32.4 ; sys_platform == 'darwin' or sys_platform == 'linux'
    # via mlx-lm
mlx-cpu==0.32.4 ; sys_platform == 'linux'
mlx-metal==0.32.4 ; sys_platform == 'darwin'
numpy==2.4.6 ; python_full_version < '3.12'
numpy==2.5.5 ; python_full_version >= '3.12'
Jinja2==3.1.6
"""


@pytest.mark.parametrize(
    ("target", "pinned", "expected"),
    [
        (LINUX, set(), ["mlx==0.32.4", "mlx-cpu==0.32.4", "numpy==2.4.6", "jinja2==3.1.6"]),
        (MAC, set(), ["mlx==0.32.4", "mlx-metal==0.32.4", "numpy==2.5.5", "jinja2==3.1.6"]),
        (MAC, {"jinja2", "numpy"}, ["mlx==0.32.4", "mlx-metal==0.32.4"]),
    ],
)
def test_lock_constraints_follow_the_target_platform(
    target: Target, pinned: set[str], expected: list[str]
) -> None:
    assert lock_constraints(LOCK, target, pinned) == expected


def test_marker_environment_of_a_mac() -> None:
    env = marker_environment(MAC)
    assert (env["sys_platform"], env["platform_system"], env["platform_machine"]) == (
        "darwin",
        "Darwin",
        "arm64",
    )
    assert env["python_version"] == "3.12"


def test_importing_the_ssh_stack_prints_no_third_party_warning() -> None:
    # With Python's default warning filters, as a user's shell runs rbee. cryptography (locked at
    # 47 or later) warns about DSA when asyncssh imports; rbee silences exactly that.
    major = int(importlib.metadata.version("cryptography").split(".")[0])
    assert major >= 47, "the lock no longer has a cryptography that warns: drop the filter"
    proc = subprocess.run(
        [sys.executable, "-c", "import rbee.ssh.connection, rbee.queen.remote"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    # And the warning is real: without rbee's filter the same import prints it.
    bare = subprocess.run(
        [sys.executable, "-c", "import asyncssh"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": ""},
    )
    assert "DSA is deprecated" in bare.stderr
