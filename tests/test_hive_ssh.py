"""`rbee hive status` and `rbee hive trust` on real sshd hives: host keys are always checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rbee.config.settings import Paths
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
