"""A hive's changed host key is not a new hive: `rbee hive trust` shows the old and new
fingerprints, replaces the key only with --replace-changed-key (never --yes alone), removes the
old entry, and edits known_hosts in place (its mode and its symlink kept).

The flows run the real CLI against real sshd hives (tests/hives.py): a known_hosts that records
another key for a hive's address is what a regenerated key (or a man in the middle) looks like
from the client. The known_hosts editing itself is table-tested on generated keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from rbee.config.settings import Paths
from rbee.errors import HostKeyError
from rbee.ssh.trust import host_key_status, known_hosts_line, record_host_key, replace_host_key
from tests.conftest import make_paths, rbee_env
from tests.hives import HiveSet, two_hives

__all__ = ["two_hives"]


def rbee_hives(paths: Paths, conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rbee", "--hives", str(conf), *args],
        env=rbee_env(paths), capture_output=True, text=True, timeout=120, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def fingerprint(public: str) -> str:
    return str(asyncssh.import_public_key(public).get_fingerprint("sha256"))


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rbee: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def setup(hives: HiveSet, tmp: Path, known_hosts_text: str) -> tuple[Path, Path, Path]:
    """hives.conf verifying against a known_hosts that is a symlink to a 0640 file."""
    real = tmp / "store" / "known_hosts.real"
    real.parent.mkdir()
    real.write_text(known_hosts_text)
    real.chmod(0o640)
    link = tmp / "known_hosts"
    link.symlink_to(real)
    conf = tmp / "hives.conf"
    conf.write_text(hives.config.read_text().replace(str(hives.known_hosts), str(link)))
    return conf, link, real


@pytest.mark.ssh
def test_a_changed_key_is_a_loud_flow_never_taken_by_yes(
    two_hives: HiveSet, tmp_path: Path
) -> None:
    paths = make_paths(tmp_path, None)
    hive1, hive2 = two_hives["hive1"], two_hives["hive2"]
    other = hive2.host_public_key
    old = f"# kept\n{hive1.address} {other}\n{hive2.address} {other}\n"
    conf, link, real = setup(two_hives, tmp_path, old)

    refused = rbee_hives(paths, conf, "hive", "trust", "hive1", "--yes")
    line = error_line(refused)
    assert "changed" in line
    assert "--replace-changed-key" in line
    assert "WARNING" in refused.stderr
    # Both fingerprints, the old one with where it is recorded.
    assert fingerprint(hive1.host_public_key) in refused.stdout
    assert fingerprint(hive2.host_public_key) in refused.stdout
    assert f"{link}:2" in refused.stdout
    assert real.read_text() == old

    # The flag without a confirmation (no terminal, no --yes) still replaces nothing.
    unconfirmed = rbee_hives(paths, conf, "hive", "trust", "hive1", "--replace-changed-key")
    assert "not trusted" in error_line(unconfirmed)
    assert real.read_text() == old

    replaced = rbee_hives(paths, conf, "hive", "trust", "hive1", "--replace-changed-key", "--yes")
    assert replaced.returncode == 0, replaced.stderr
    assert f"{link}:2" in replaced.stdout
    text = real.read_text()
    # The old key is gone for hive1 (not merely shadowed), hive2's own line and the comment kept.
    assert text == (
        f"# kept\n{hive2.address} {hive2.host_public_key}\n{hive1.address} "
        f"{hive1.host_public_key.split()[0]} {hive1.host_public_key.split()[1]}\n"
    )
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert rbee_hives(paths, conf, "hive", "status", "hive1").returncode == 0
    again = rbee_hives(paths, conf, "hive", "trust", "hive1")
    assert again.returncode == 0, again.stderr
    assert "already" in again.stdout


@pytest.mark.ssh
def test_a_new_key_is_recorded_through_the_symlink_keeping_its_mode(
    two_hives: HiveSet, tmp_path: Path
) -> None:
    paths = make_paths(tmp_path, None)
    conf, link, real = setup(two_hives, tmp_path, "")
    trusted = rbee_hives(paths, conf, "hive", "trust", "hive2", "--yes")
    assert trusted.returncode == 0, trusted.stderr
    assert "changed" not in trusted.stdout + trusted.stderr
    assert link.is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert two_hives["hive2"].address in real.read_text()
    assert [p.name for p in real.parent.iterdir()] == [real.name]  # no temporary file left


# --- known_hosts editing, on generated keys --------------------------------------------------


def key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519").convert_to_public()


def public(k: asyncssh.SSHKey) -> str:
    return k.export_public_key("openssh").decode().strip()


def hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def test_status_tells_known_new_and_changed_apart(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    a, b = key(), key()
    assert host_key_status(known, "h", 22, a).state == "new"  # no file at all
    known.write_text(f"other {public(b)}\n@revoked h {public(b)}\n")
    assert host_key_status(known, "h", 22, a).state == "new"
    known.write_text(f"[h]:2222 {public(a)}\n")
    assert host_key_status(known, "h", 2222, a).state == "known"
    assert host_key_status(known, "h", 22, a).state == "new"  # another port, another entry
    known.write_text(f"x,H {public(b)}\n")
    status = host_key_status(known, "h", 22, a)
    assert status.state == "changed"
    assert [(e.line, e.fingerprint) for e in status.others] == [(1, b.get_fingerprint("sha256"))]
    known.write_text(f"{hashed('h')} {public(b)}\n")
    assert host_key_status(known, "h", 22, a).state == "changed"
    known.write_text(f"*.lan,!h.lan {public(b)}\n")
    assert host_key_status(known, "h.lan", 22, a).state == "new"  # negated
    assert host_key_status(known, "g.lan", 22, a).state == "changed"


def test_replace_removes_every_old_entry_and_only_those(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    a, b, c = key(), key(), key()
    known.write_text(
        f"# comment\nh,other {public(b)}\n{hashed('h')} {public(c)}\nother {public(c)}"
    )
    assert replace_host_key(known, "h", 22, a) == [2, 3]
    assert known.read_text() == (
        f"# comment\nother {public(b)}\nother {public(c)}\n{known_hosts_line('h', 22, a)}"
    )
    assert host_key_status(known, "h", 22, b).state == "changed"
    assert host_key_status(known, "h", 22, a).state == "known"
    assert stat.S_IMODE(known.stat().st_mode) == 0o644  # the operator's mode, kept


def test_a_wildcard_entry_is_not_rewritten(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    text = f"*.lan {public(key())}\n"
    known.write_text(text)
    with pytest.raises(HostKeyError, match=r"known_hosts:1: a wildcard entry"):
        replace_host_key(known, "h.lan", 22, key())
    assert known.read_text() == text


def test_record_follows_a_symlink_and_keeps_the_mode(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("")
    real.chmod(0o644)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert record_host_key(link, "h", 22, key())
    assert link.is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o644
    fresh = tmp_path / "ssh" / "known_hosts"
    assert record_host_key(fresh, "h", 22, key())
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700
