"""The SSH-hive test machinery itself: real sshds in network namespaces, reached like real hives."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest

from rbee.config.hives import load_hives
from rbee.proc import pid_alive
from tests import hives
from tests.hives import HiveSet, two_hives

pytestmark = pytest.mark.ssh

__all__ = ["two_hives"]  # the fixture, imported so that pytest finds it here


def connect(hive_set: HiveSet, alias: str, **kwargs: object) -> asyncssh.SSHClientConnection:
    """An asyncssh connection configured by the set's hives.conf alone."""
    return asyncssh.connect(alias, config=[str(hive_set.config)], **kwargs)


def tcp_answers(address: str, timeout: float = 2) -> bool:
    """True if a new TCP connection to address:22 is accepted within `timeout`."""
    try:
        with socket.create_connection((address, 22), timeout=timeout):
            return True
    except OSError:
        return False


async def test_each_hive_is_a_separate_host_with_a_verified_key(
    two_hives: HiveSet, tmp_path: Path
) -> None:
    first, second = two_hives
    for hive, other in ((first, second), (second, first)):
        async with asyncio.timeout(15), connect(two_hives, hive.alias) as conn:
            addrs = await conn.run("ip -o -4 addr show", check=True)
            home = await conn.run("echo $HOME", check=True)
        found = {line.split()[3] for line in str(addrs.stdout).splitlines()}
        assert found == {"127.0.0.1/8", f"{hive.address}/30"}
        assert str(home.stdout).strip() == str(hive.root)

        # The other hive's key under this hive's address: verification is on, so this must fail.
        wrong = tmp_path / f"known_hosts_{hive.alias}"
        wrong.write_text(f"{hive.address} {other.host_public_key}\n")
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            async with asyncio.timeout(15):
                await connect(two_hives, hive.alias, known_hosts=str(wrong))


async def test_sftp_puts_and_reads_back_a_file_in_the_hive_root(
    two_hives: HiveSet, tmp_path: Path
) -> None:
    hive = two_hives["hive2"]
    data = b"hello hive\n" * 100
    local = tmp_path / "hello.txt"
    local.write_bytes(data)
    remote = hive.root / "hello.txt"
    try:
        async with (
            asyncio.timeout(15),
            connect(two_hives, hive.alias) as conn,
            conn.start_sftp_client() as sftp,
        ):
            await sftp.put(str(local), str(remote))
            async with sftp.open(str(remote), "rb") as f:
                assert await f.read() == data
        assert remote.read_bytes() == data
    finally:
        remote.unlink(missing_ok=True)


def test_hives_conf_is_one_rbee_reads(two_hives: HiveSet) -> None:
    config = load_hives(two_hives.config)
    assert config.aliases == ("hive1", "hive2")
    for hive in two_hives:
        resolved = config.get(hive.alias)
        assert (resolved.hostname, resolved.user, resolved.port) == (hive.address, "root", 22)
        assert resolved.install_dir == str(hive.install_dir)
        assert resolved.hive_port == hives.HIVE_PORT


def test_openssh_client_uses_the_same_hives_conf(two_hives: HiveSet) -> None:
    for hive in two_hives:
        done = subprocess.run(
            ["ssh", "-F", str(two_hives.config), hive.alias, "true"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        assert done.returncode == 0, done.stderr


async def test_a_cut_link_is_silent_and_restoring_it_resumes_the_connection(
    two_hives: HiveSet,
) -> None:
    hive, other = two_hives
    async with connect(two_hives, hive.alias) as conn:
        hives.cut_link(hive)
        try:
            started = time.monotonic()
            assert not tcp_answers(hive.address, timeout=2)
            assert time.monotonic() - started < 3
            assert tcp_answers(other.address), "a cut is per hive"
            # An established connection is not told anything: its command just waits.
            pending = asyncio.create_task(conn.run("echo back", check=True))
            done, _ = await asyncio.wait({pending}, timeout=1)
            assert not done
        finally:
            hives.restore_link(hive)
        async with asyncio.timeout(15):
            result = await pending
        assert str(result.stdout) == "back\n"
    assert tcp_answers(hive.address)


def test_teardown_kills_everything_in_the_namespaces_even_after_a_failure(tmp_path: Path) -> None:
    hives.require_hives()
    seen: dict[str, object] = {}

    def failing_test() -> None:
        with hives.test_hives(1, tmp_path) as hs:
            hive = hs[0]
            # A process that left its SSH session behind (new session, no terminal, no parent).
            escape = "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!"
            escaped = subprocess.run(
                ["ssh", "-F", str(hs.config), hive.alias, escape],
                capture_output=True,
                text=True,
                timeout=15,
                check=True,
            )
            seen.update(hs=hs, hive=hive, sleeper=int(escaped.stdout))
            assert {hive.sshd_pid, int(escaped.stdout)} <= set(hives.pids_in(hive))
            raise RuntimeError("test failed")

    with pytest.raises(RuntimeError, match="test failed"):
        failing_test()
    hs, hive, sleeper = seen["hs"], seen["hive"], seen["sleeper"]
    assert isinstance(hs, HiveSet)
    assert isinstance(hive, hives.TestHive)
    assert isinstance(sleeper, int)
    assert hive.netns not in hives.netns_names()
    assert hive.veth not in hives.link_names()
    assert not pid_alive(hive.sshd_pid)
    assert not pid_alive(sleeper)
    assert (
        hs.subnet
        not in subprocess.run(
            ["ip", "route", "show"], capture_output=True, text=True, check=True
        ).stdout
    )
    sshds = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and str(hive.sshd_config).encode() in _cmdline(p)
    ]
    assert sshds == []


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def test_cleanup_stale_removes_what_a_dead_run_left(tmp_path: Path) -> None:
    hives.require_hives()
    gone = subprocess.Popen(["true"])
    gone.wait()
    name = hives.hive_name(0, pid=gone.pid)
    subprocess.run(["ip", "netns", "add", name], check=True)
    leftover = None
    try:
        subprocess.run(
            ["ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name],
            check=True,
        )
        leftover = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"])
        deadline = time.monotonic() + 5
        while leftover.pid not in hives.pids_in(name):
            assert time.monotonic() < deadline, "the leftover process never entered the namespace"
            time.sleep(0.02)
        mine = hives.hive_name(999)
        subprocess.run(["ip", "netns", "add", mine], check=True)
        try:
            removed = hives.cleanup_stale()
            assert mine in hives.netns_names(), "a live run's namespace must be left alone"
        finally:
            subprocess.run(["ip", "netns", "del", mine], check=True)
        assert name in removed
        assert name not in hives.netns_names()
        assert name not in hives.link_names()
        assert leftover.wait(5) == -9
    finally:
        if leftover is not None and leftover.poll() is None:
            leftover.kill()
            leftover.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
