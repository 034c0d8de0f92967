"""`rbee hive status` and `rbee hive trust` on real sshd hives: host keys are always checked;
status reads many hives at once, each through its own lines of hives.conf (ProxyJump included)."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from rbee.cli.hive_ssh import hive_status
from rbee.config.hives import load_hives
from rbee.config.settings import Paths
from rbee.facts import Facts
from rbee.ssh.connection import HiveConnection
from rbee.ssh.facts import remote_facts, status_facts
from tests.conftest import make_paths, rbee_env
from tests.hives import HiveSet, two_hives

__all__ = ["two_hives"]

pytestmark = pytest.mark.ssh


def rbee_hives(paths: Paths, conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rbee", "--hives", str(conf), *args],
        env=rbee_env(paths), capture_output=True, text=True, timeout=120, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def conf_with_known_hosts(hives: HiveSet, tmp: Path, known_hosts: Path) -> Path:
    """A copy of the hives' config verifying against another known_hosts file."""
    text = hives.config.read_text().replace(str(hives.known_hosts), str(known_hosts))
    conf = tmp / "hives.conf"
    conf.write_text(text)
    return conf


def one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rbee: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_status_shows_the_facts_of_each_hive(two_hives: HiveSet, tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    for hive in two_hives:
        result = rbee_hives(paths, two_hives.config, "hive", "status", hive.alias)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{hive.alias}: ")
        assert "linux x86_64" in result.stdout or "linux aarch64" in result.stdout
        assert "cores" in result.stdout
        assert "hive: not started (no queen is running)" in result.stdout


def test_unknown_key_is_refused_until_trusted(two_hives: HiveSet, tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    conf = conf_with_known_hosts(two_hives, tmp_path, known_hosts)
    one_error_line(rbee_hives(paths, conf, "hive", "status", "hive1"),
                   "hive1", "not trusted", "rbee hive trust hive1")  # fmt: skip
    # No terminal to confirm on, no --yes: shown, not recorded.
    refused = rbee_hives(paths, conf, "hive", "trust", "hive1")
    one_error_line(refused, "not trusted", "--yes")
    assert "SHA256:" in refused.stdout
    assert known_hosts.read_text() == ""
    trusted = rbee_hives(paths, conf, "hive", "trust", "hive1", "--yes")
    assert trusted.returncode == 0, trusted.stderr
    assert "recorded" in trusted.stdout
    assert two_hives["hive1"].address in known_hosts.read_text()
    assert rbee_hives(paths, conf, "hive", "status", "hive1").returncode == 0
    again = rbee_hives(paths, conf, "hive", "trust", "hive1", "--yes")
    assert "already" in again.stdout
    # Only that hive was trusted.
    one_error_line(rbee_hives(paths, conf, "hive", "status", "hive2"), "not trusted")


def test_changed_key_is_refused(two_hives: HiveSet, tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    hive1, hive2 = two_hives["hive1"], two_hives["hive2"]
    # hive1's address with hive2's key: what a man in the middle (or a reinstalled box) looks like.
    forged = tmp_path / "known_hosts"
    forged.write_text(f"{hive1.address} {hive2.host_public_key}\n")
    conf = conf_with_known_hosts(two_hives, tmp_path, forged)
    one_error_line(rbee_hives(paths, conf, "hive", "status", "hive1"), "hive1", "not trusted")


def test_disabled_verification_is_refused_before_connecting(
    two_hives: HiveSet, tmp_path: Path
) -> None:
    paths = make_paths(tmp_path, None)
    text = two_hives.config.read_text().replace(
        f"UserKnownHostsFile {two_hives.known_hosts}", "UserKnownHostsFile none"
    )
    conf = tmp_path / "hives.conf"
    conf.write_text(text)
    one_error_line(rbee_hives(paths, conf, "hive", "status", "hive1"),
                   "cannot be disabled")  # fmt: skip


def status_args(conf: Path, *aliases: str) -> argparse.Namespace:
    """`rbee --hives CONF hive status ALIAS...` as the parser hands it to the handler."""
    return argparse.Namespace(hives=str(conf), alias=list(aliases), queen=None, api_key=None)


def test_status_of_many_hives_at_once(
    two_hives: HiveSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = make_paths(tmp_path, None)
    assert hive_status(status_args(two_hives.config, "hive2", "hive1"), paths) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")] == [
        "hive2",
        "hive1",
    ]
    assert out.count("hive: not started (no queen is running)") == 2
    # No alias: every hive. One hive refusing its key does not hide the other.
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{two_hives['hive1'].address} {two_hives['hive1'].host_public_key}\n")
    conf = conf_with_known_hosts(two_hives, tmp_path, known_hosts)
    assert hive_status(status_args(conf), paths) == 1
    out, err = capsys.readouterr()
    assert out.startswith("hive1: ")
    assert "hive2" not in out
    errors = [line for line in err.splitlines() if line.startswith("rbee: error:")]
    assert len(errors) == 1, err
    assert "hive2" in errors[0]
    assert "not trusted" in errors[0]


def test_a_proxy_jump_gets_the_jump_hosts_lines(two_hives: HiveSet, tmp_path: Path) -> None:
    """`via1` jumps through hive1 to hive1's own address: the connection to the jump host needs
    hive1's lines (HostName, key, known_hosts) in via1's cut of hives.conf."""
    hive1 = two_hives["hive1"]
    conf = tmp_path / "hives.conf"
    conf.write_text(
        two_hives.config.read_text()
        + f"\nHost via1\n    HostName {hive1.address}\n    ProxyJump hive1\n    User root\n"
        f"    IdentityFile {two_hives.client_key}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {two_hives.known_hosts}\n"
    )
    text = load_hives(conf).asyncssh_text("via1") or ""
    assert "Match originalhost hive1" in text
    assert "hive2" not in text
    result = rbee_hives(make_paths(tmp_path, None), conf, "hive", "status", "via1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("via1: ")


def test_held_connection_rereads_only_what_moves(
    two_hives: HiveSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_hives(two_hives.config)
    hive = config.get("hive1")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the hive's lines go

    async def read() -> tuple[Facts, Facts, Facts]:
        async with HiveConnection.of(config, "hive1") as conn:
            assert list(scratch.iterdir()) == []  # read while connecting, then removed
            first = await status_facts(conn, hive.python, hive.install_dir)
            again = await status_facts(conn, hive.python, hive.install_dir, first)
            return first, again, await remote_facts(conn, hive.python)

    first, again, exact = asyncio.run(read())
    same = ("os", "arch", "hostname", "python", "python_path", "cpu_count", "mem_total", "gpus")
    assert {k: getattr(first, k) for k in same} == {k: getattr(exact, k) for k in same}
    assert replace(again, mem_available=None, disk_free=0) == replace(
        first, mem_available=None, disk_free=0
    )
    assert again.mem_available is not None
    assert again.mem_available > 0
    assert abs(again.disk_free - exact.disk_free) < 256 << 20


def test_aes_gcm_first_unless_hives_conf_names_ciphers(two_hives: HiveSet, tmp_path: Path) -> None:
    conf = tmp_path / "hives.conf"
    conf.write_text(
        two_hives.config.read_text().replace(
            "Host hive2\n", "Host hive2\n    Ciphers chacha20-poly1305@openssh.com\n"
        )
    )
    config = load_hives(conf)

    async def ciphers() -> list[str]:
        found = []
        for alias in ("hive1", "hive2"):
            async with HiveConnection.of(config, alias) as conn:
                found.append(str(conn.conn.get_extra_info("send_cipher")))
        return found

    assert asyncio.run(ciphers()) == ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
