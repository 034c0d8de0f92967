"""`rbee hive install` onto real SSH hives (network namespaces with sshd) that reach no index."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from rbee import __version__
from rbee.config.hives import Hive, load_hives
from rbee.errors import InstallError
from rbee.ssh.connection import HiveConnection, RemoteResult
from rbee.ssh.install import InstallResult, StepEvent, install_hive, uninstall_hive
from rbee.ssh.wheelhouse import (
    Target,
    WheelFile,
    Wheelhouse,
    build_wheelhouse,
    local_target,
    same_platform,
)
from tests.conftest import MODEL, make_paths, rbee, running_queen, wait_until
from tests.hives import HiveSet, TestHive, pids_in, run_in, two_hives

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

__all__ = ["two_hives"]  # the fixture, imported so that pytest finds it here

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("RBEE_TEST_WHEELHOUSE", ROOT / ".cache" / "wheelhouse"))
"""Shared by every run on this machine: only the first build pays for pip."""


class RecordingConnection(HiveConnection):
    """A real HiveConnection that also keeps every argv it ran."""

    def __init__(self, alias: str, config: Path) -> None:
        super().__init__(alias, config)
        self.argvs: list[list[str]] = []

    async def run(
        self, argv: list[str], *, input: str | None = None, time_limit: float = 60.0
    ) -> RemoteResult:
        self.argvs.append(list(argv))
        return await super().run(argv, input=input, time_limit=time_limit)


@dataclasses.dataclass
class Installed:
    """What the concurrent first install left for the other tests."""

    hives: HiveSet
    results: dict[str, InstallResult]
    events: dict[str, list[StepEvent]]
    argvs: dict[str, list[list[str]]]
    houses: list[Wheelhouse]

    def hive(self, alias: str) -> Hive:
        return load_hives(self.hives.config).get(alias)

    def fixed(self, house: Wheelhouse | None = None) -> Any:
        """A wheelhouse_for that hands out one wheelhouse (rbee's sources change under edits)."""

        def wheelhouse_for(target: Target, extras: tuple[str, ...]) -> Wheelhouse:
            assert same_platform(local_target(), target)
            assert extras == ()
            return house or self.houses[-1]

        return wheelhouse_for


async def _install(
    hive_set: HiveSet, alias: str, wheelhouse_for: Any, events: list[StepEvent] | None = None
) -> tuple[InstallResult, list[list[str]]]:
    connection = RecordingConnection(alias, hive_set.config)
    hive = load_hives(hive_set.config).get(alias)
    async with asyncio.timeout(600), connection as conn:
        result = await install_hive(
            conn, hive, wheelhouse_for, (events if events is not None else []).append
        )
    return result, connection.argvs


@pytest.fixture(scope="module")
def installed(two_hives: HiveSet) -> Installed:
    """rbee installed on hive1 and hive2 at once, each over its own connection."""
    houses: list[Wheelhouse] = []

    def wheelhouse_for(target: Target, extras: tuple[str, ...]) -> Wheelhouse:
        houses.append(build_wheelhouse(target, CACHE, extras=extras))
        return houses[-1]

    events: dict[str, list[StepEvent]] = {"hive1": [], "hive2": []}

    async def both() -> list[tuple[InstallResult, list[list[str]]]]:
        return list(
            await asyncio.gather(
                *(_install(two_hives, a, wheelhouse_for, events[a]) for a in events)
            )
        )

    done = asyncio.run(both())
    return Installed(
        hives=two_hives,
        results={r.alias: r for r, _ in done},
        events=events,
        argvs={r.alias: argvs for r, argvs in done},
        houses=houses,
    )


def _remote(hive: TestHive, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    # A lookup the hive cannot answer gives up after 1s instead of glibc's 10s.
    env = {"RES_OPTIONS": "timeout:1 attempts:1"}
    return run_in(hive, list(argv), check=False, timeout=60, env=env)


def test_install_on_two_hives_at_once(installed: Installed) -> None:
    for alias in ("hive1", "hive2"):
        result, hive = installed.results[alias], installed.hives[alias]
        assert not result.up_to_date
        assert result.install_dir == str(hive.install_dir)
        assert result.uploaded_files == len(installed.houses[0].files)
        assert result.uploaded_bytes > 10_000_000
        assert result.steps[0][0] == "reading facts"
        assert len(result.steps) == 9
        ended = [e for e in installed.events[alias] if e.state == "done"]
        assert [e.index for e in ended] == list(range(1, 10))
        venv = hive.install_dir / "venv"
        version = _remote(hive, [str(venv / "bin" / "rbee"), "--version"])
        assert version.stdout.split() == ["rbee", __version__], version.stderr
        engine = _remote(hive, [str(venv / "bin" / "python"), "-c", "import llama_cpp"])
        assert engine.returncode == 0, engine.stderr
        record = json.loads((hive.install_dir / "installed.json").read_text())
        assert record["manifest_hash"] in {h.manifest.content_hash for h in installed.houses}
        assert record["rbee_version"] == __version__
        assert not (hive.install_dir / ".lock").exists()


def test_the_installed_hive_is_what_the_queen_starts(
    installed: Installed, tmp_path: Path, model_cache: Path
) -> None:
    # No RBEE_HIVE_COMMAND here: the queen runs <install>/venv/bin/rbee, as it would in use.
    paths = make_paths(tmp_path, model_cache)
    # The queen's wheelhouse is the one the install above built (as on a machine that installed
    # before): its job finds the hive up to date without building again. A wheelhouse of its own
    # would rebuild llama-cpp-python from source where pip has no cache (PIP_NO_CACHE_DIR=1).
    (paths.data_dir / "wheelhouse").symlink_to(CACHE, target_is_directory=True)
    conf = installed.hives.config
    with running_queen(paths, models=(), global_args=("--hives", str(conf))) as queen:
        # With a queen running, install runs as one of its jobs (here: already up to date).
        again = rbee(paths, "--queen", queen.url, "hive", "install", "hive2", timeout=300)
        assert again.returncode == 0, again.stderr
        assert "is up to date" in again.stdout
        started = rbee(paths, "--queen", queen.url, "hive", "start", "hive2", timeout=300)
        assert started.returncode == 0, started.stderr
        spawned = rbee(paths, "--queen", queen.url, "worker", "spawn", "--model", MODEL,
                       "--hive", "hive2", timeout=300)  # fmt: skip
        assert spawned.returncode == 0, spawned.stderr
        (worker,) = queen.workers()
        assert worker["hive"] == "hive2"
        with openai.OpenAI(base_url=queen.base_url, api_key="x", max_retries=0) as client:
            answer = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
        assert answer.usage is not None
        assert answer.usage.completion_tokens > 0
        hive_argv = [p for p in _rbee_processes(installed.hives["hive2"]) if b"hive" in p]
        assert hive_argv, "no hive process on hive2"
        assert hive_argv[0].startswith(str(installed.hives["hive2"].install_dir).encode())
    wait_until(lambda: _rbee_processes(installed.hives["hive2"]) == [], 20, "hive2 to stop")


def _rbee_processes(hive: TestHive) -> list[bytes]:
    found = []
    for pid in pids_in(hive):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"rbee" in argv and b"sshd" not in argv:
            found.append(argv)
    return found


def test_the_hive_installs_without_any_index(installed: Installed) -> None:
    for alias, argvs in installed.argvs.items():
        pips = [a for a in argvs if a[1:4] == ["-m", "pip", "install"]]
        assert len(pips) == 1, alias
        assert "--no-index" in pips[0]
        assert "--find-links" in pips[0]
    hive = installed.hives["hive1"]
    probe = "import socket, sys; socket.create_connection((sys.argv[1], 443), 3)"
    by_name = _remote(hive, ["python3", "-c", probe, "pypi.org"])
    assert by_name.returncode != 0, "pypi.org is reachable from the hive"
    try:
        address = socket.gethostbyname("pypi.org")
    except OSError:
        return  # the queen has no DNS either: the name check above is all there is
    by_address = _remote(hive, ["python3", "-c", probe, address])
    assert by_address.returncode != 0, f"PyPI ({address}) is reachable from the hive"


def test_a_second_install_is_up_to_date_and_fast(installed: Installed) -> None:
    # rbee's sources may have changed since hive1 was installed (others edit them): align first.
    asyncio.run(_install(installed.hives, "hive1", installed.fixed()))
    started = time.monotonic()
    events: list[StepEvent] = []
    result, argvs = asyncio.run(_install(installed.hives, "hive1", installed.fixed(), events))
    took = time.monotonic() - started
    assert result.up_to_date
    assert took < 10, f"an up-to-date install took {took:.1f}s"
    assert [e.result for e in events if e.state == "done"][-1] == "up to date"
    assert not [a for a in argvs if "pip" in a or "venv" in a]


def test_the_cached_wheelhouse_is_complete_in_well_under_a_second(installed: Installed) -> None:
    for _ in range(3):  # others may be editing rbee's sources while this runs
        build_wheelhouse(local_target(), CACHE)
        started = time.monotonic()
        house = build_wheelhouse(local_target(), CACHE)
        took = time.monotonic() - started
        if house.built == ():
            break
    assert house.built == ()
    assert took < 1.0, f"a cached wheelhouse took {took:.2f}s"


def _corrupted(house: Wheelhouse, where: Path) -> Wheelhouse:
    """A copy of `house` whose rbee wheel is garbage, with a manifest that says so."""
    shutil.copytree(house.directory, where)
    bad = where / house.manifest.rbee_wheel.name
    bad.write_bytes(b"not a zip file\n" * 100)
    wheel = WheelFile(bad.name, bad.stat().st_size, "0" * 64)
    manifest = dataclasses.replace(house.manifest, rbee_wheel=wheel)
    return dataclasses.replace(house, directory=where, manifest=manifest)


def test_a_failed_install_names_the_step_and_keeps_the_previous_venv(
    installed: Installed, tmp_path: Path
) -> None:
    hive = installed.hives["hive1"]
    record = (hive.install_dir / "installed.json").read_bytes()
    venv = os.readlink(hive.install_dir / "venv")
    bad = _corrupted(installed.houses[-1], tmp_path / "bad")
    with pytest.raises(InstallError) as caught:
        asyncio.run(_install(installed.hives, "hive1", installed.fixed(bad)))
    err = caught.value
    assert err.alias == "hive1"
    assert err.step.startswith("installing rbee")
    assert err.argv is not None
    assert "--no-index" in err.argv
    assert err.stderr.strip()
    assert str(err).startswith("hive1: installing rbee")
    assert "--no-index" in str(err)
    # The previous install is untouched and still works; the new venv is gone, the lock released.
    assert (hive.install_dir / "installed.json").read_bytes() == record
    assert os.readlink(hive.install_dir / "venv") == venv
    assert sorted(p.name for p in hive.install_dir.glob("venv-*")) == [venv]
    assert not (hive.install_dir / ".lock").exists()
    version = _remote(hive, [str(hive.install_dir / "venv" / "bin" / "rbee"), "--version"])
    assert version.stdout.split() == ["rbee", __version__]


def test_a_missing_interpreter_fails_at_the_facts_step(installed: Installed) -> None:
    hive = dataclasses.replace(installed.hive("hive2"), python="/nowhere/python3")

    async def attempt() -> None:
        async with HiveConnection(hive.alias, installed.hives.config) as conn:
            await install_hive(conn, hive, installed.fixed())

    with pytest.raises(InstallError) as caught:
        asyncio.run(attempt())
    assert caught.value.step == "reading facts"
    assert caught.value.argv is not None
    assert caught.value.argv[0] == "/nowhere/python3"
    assert caught.value.exit_status == 127
    assert "/nowhere/python3" in str(caught.value)


def test_a_python_older_than_3_11_is_refused(installed: Installed, tmp_path: Path) -> None:
    facts = {"os": "linux", "arch": "x86_64", "python": "3.9.2", "python_path": "/opt/py39",
             "cpu_count": 2, "disk_free": 1, "engines": {}}  # fmt: skip
    old = installed.hives["hive2"].root / "python3.9"  # answers like the facts script would
    old.write_text(f"#!/bin/sh\necho '{json.dumps(facts)}'\n")
    old.chmod(0o755)
    hive = dataclasses.replace(installed.hive("hive2"), python=str(old))

    async def attempt() -> None:
        async with HiveConnection(hive.alias, installed.hives.config) as conn:
            await install_hive(conn, hive, installed.fixed())

    try:
        with pytest.raises(InstallError, match=r"Python 3\.9\.2 at /opt/py39 is too old"):
            asyncio.run(attempt())
    finally:
        old.unlink()


def test_a_held_lock_refuses_and_a_stale_one_is_taken_over(
    installed: Installed, caplog: pytest.LogCaptureFixture
) -> None:
    lock = installed.hives["hive2"].install_dir / ".lock"
    lock.mkdir()
    try:
        with pytest.raises(InstallError, match=r"another install holds .*/\.lock"):
            asyncio.run(_install(installed.hives, "hive2", installed.fixed()))
        assert lock.is_dir(), "someone else's lock is left alone"
        two_hours_ago = time.time() - 7200
        os.utime(lock, (two_hours_ago, two_hours_ago))
        events: list[StepEvent] = []
        asyncio.run(_install(installed.hives, "hive2", installed.fixed(), events))
    finally:
        shutil.rmtree(lock, ignore_errors=True)
    taken = [e.result for e in events if e.state == "done" and e.index == 2]
    assert taken[0].startswith("took over a lock an unfinished install left 2.0 h ago")
    assert "took over" in caplog.text
    assert not lock.exists()


def test_uninstall_removes_what_install_made_and_nothing_else(installed: Installed) -> None:
    hive = installed.hive("hive2")
    test_hive = installed.hives["hive2"]
    asked: list[str] = []

    async def uninstall(h: Hive, answer: bool = True) -> Any:
        async with HiveConnection(h.alias, installed.hives.config) as conn:
            return await uninstall_hive(conn, h, lambda path: asked.append(path) or answer)

    with pytest.raises(InstallError, match="not removing"):
        asyncio.run(uninstall(hive, answer=False))
    assert (test_hive.install_dir / "venv").exists()
    refusals = [(str(test_hive.root), "home folder"), ("~", "home folder"), ("/", "/ or the home"),
                (str(test_hive.root.parent), "no installed.json")]  # fmt: skip
    for refused, why in refusals:
        with pytest.raises(InstallError, match=why):
            asyncio.run(uninstall(dataclasses.replace(hive, install_dir=refused)))
    removed = asyncio.run(uninstall(hive))
    assert removed.removed
    assert asked == [str(test_hive.install_dir)] * 2
    assert not test_hive.install_dir.exists()
    assert test_hive.root.is_dir()
    again = asyncio.run(uninstall(hive))
    assert not again.removed
    assert len(asked) == 2, "nothing to remove: nothing to ask"


def _cli(hive_set: HiveSet, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RBEE_DATA_DIR": str(data), "RBEE_CONFIG_DIR": str(data / "config")}
    return subprocess.run(
        [sys.executable, "-m", "rbee", "--hives", str(hive_set.config), *args],
        capture_output=True, text=True, timeout=600, check=False, env=env, cwd=ROOT,
    )  # fmt: skip


def test_the_cli_installs_step_by_step_and_uninstalls(installed: Installed, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wheelhouse").symlink_to(CACHE, target_is_directory=True)
    done = _cli(installed.hives, tmp_path / "data", "hive", "install", "hive1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("hive1: [1/9] reading facts… linux")
    assert lines[1].startswith("hive1: [2/9] locking ")
    assert lines[-1].startswith(f"hive1: rbee {__version__} ")
    assert "up to date" in lines[-1] or "installed in" in lines[-1]
    gone = _cli(installed.hives, tmp_path / "data", "hive", "uninstall", "hive1", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.strip() == f"hive1: removed {installed.hives['hive1'].install_dir}"
    again = _cli(installed.hives, tmp_path / "data", "hive", "uninstall", "hive1")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("hive1: nothing installed at ")


def test_an_alias_with_shell_characters_never_reaches_a_shell(tmp_path: Path) -> None:
    conf = tmp_path / "hives.conf"
    conf.write_text("Host ok;touch${IFS}pwned\n    HostName 127.0.0.1\n")
    done = _cli_plain(conf, tmp_path, "hive", "install", "ok;touch${IFS}pwned")
    assert done.returncode == 1
    assert "invalid hive alias" in done.stderr
    assert not (tmp_path / "pwned").exists()


def _cli_plain(conf: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RBEE_DATA_DIR": str(data), "RBEE_CONFIG_DIR": str(data)}
    return subprocess.run(
        [sys.executable, "-m", "rbee", "--hives", str(conf), *args],
        capture_output=True, text=True, timeout=60, check=False, env=env, cwd=data,
    )  # fmt: skip
