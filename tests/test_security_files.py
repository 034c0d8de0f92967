"""Files read defensively: a FIFO, a device or an endless /proc file named in hives.conf or given
as a model never hangs rbee; a truncated GGUF is refused at import (every tensor must lie inside
the file), not when a worker maps it; local commands in hives.conf are pointed out. The real CLI
as a subprocess, the real default model.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rbee.errors import ModelError
from rbee.models.catalog import DEFAULT_MODEL_ID
from rbee.models.detect import is_gguf
from rbee.models.gguf import check_gguf, read_metadata
from rbee.models.store import ModelStore
from tests.conftest import make_paths, rbee_env


def cached_gguf(model_cache: Path) -> Path:
    """The real default GGUF in the test cache."""
    stored = ModelStore(model_cache).get(DEFAULT_MODEL_ID)
    artifact = stored.artifact("gguf") if stored else None
    assert artifact is not None
    return artifact.path


BOUND = 60  # seconds: far more than any of these takes, far less than a hang


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    paths = make_paths(tmp_path / "home", None)
    return subprocess.run(
        [sys.executable, "-m", "rbee", *args], env=rbee_env(paths), capture_output=True,
        text=True, timeout=BOUND, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def conf(tmp_path: Path, include: str) -> Path:
    path = tmp_path / "hives.conf"
    path.write_text(f"IgnoreUnknown Rbee*\nHost a\n    HostName 10.0.0.1\nInclude {include}\n")
    return path


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("fifo", "is not a file"),
        ("/dev/zero", "is not a file"),
        ("/proc/self/pagemap", "is larger than 1 MiB"),  # says size 0, goes on for gigabytes
    ],
)
def test_config_check_never_hangs_on_a_special_include(
    tmp_path: Path, target: str, message: str
) -> None:
    if target == "fifo":
        target = str(tmp_path / "fifo")
        os.mkfifo(target)
    result = run(tmp_path, "--hives", str(conf(tmp_path, target)), "config", "check")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"hives.conf:4: {target} {message}" in result.stderr


def test_config_check_points_out_local_commands(tmp_path: Path) -> None:
    path = tmp_path / "hives.conf"
    path.write_text(
        "IgnoreUnknown Rbee*\nHost a\n    HostName 10.0.0.1\n    ProxyCommand nc %h %p\n"
        "Host b\n    HostName 10.0.0.2\n    ProxyCommand none\n    LocalCommand touch /tmp/x\n"
    )
    result = run(tmp_path, "--hives", str(path), "config", "check")
    assert result.returncode == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if "runs a command" in line]
    assert [n.split(": ")[1] for n in notices] == [f"{path}:4", f"{path}:8"]
    assert "ProxyCommand" in notices[0]
    assert "LocalCommand" in notices[1]


def test_a_truncated_gguf_is_refused_at_import(tmp_path: Path, model_cache: Path) -> None:
    whole = cached_gguf(model_cache)
    check_gguf(whole)  # the real file passes
    cut = tmp_path / "cut.gguf"
    with whole.open("rb") as src, cut.open("wb") as out:
        out.write(src.read(whole.stat().st_size - 4096))
    read_metadata(cut)  # the key/values are all there: only the tensors say it is cut
    with pytest.raises(ModelError, match=r"past the end of the file .* truncated"):
        check_gguf(cut)
    result = run(tmp_path, "model", "import", str(cut), "--id", "cut")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "truncated" in result.stderr
    assert ModelStore(tmp_path / "home" / "data" / "models").list() == []


def test_a_gguf_cut_inside_its_header_or_claiming_absurd_counts(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 1 << 40))
    with pytest.raises(ModelError, match="damaged"):
        check_gguf(path)
    name = b"t" * 500
    tensor = struct.pack("<Q", len(name)) + name + struct.pack("<I", 1) + struct.pack("<Q", 8)
    tensor += struct.pack("<IQ", 0, 0)  # F32, offset 0: 32 bytes of data that are not there
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + tensor)
    with pytest.raises(ModelError) as caught:
        check_gguf(path)
    assert "truncated" in str(caught.value)
    assert len(str(caught.value)) < len(str(path)) + 200  # a short prefix of the name only
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + tensor[:20])
    with pytest.raises(ModelError, match="truncated GGUF header"):
        check_gguf(path)


def test_a_fifo_given_as_a_model_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "m.gguf"
    os.mkfifo(fifo)
    assert not is_gguf(fifo)
    with pytest.raises(ModelError, match="not a regular file"):
        read_metadata(fifo)
    result = run(tmp_path, "model", "import", str(fifo), "--id", "m", "--format", "gguf")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


def test_a_gguf_whole_through_a_symlink_imports(tmp_path: Path, model_cache: Path) -> None:
    """The checks follow a symlink to a regular file, as imports always did."""
    link = tmp_path / "link.gguf"
    link.symlink_to(cached_gguf(model_cache))
    check_gguf(link)
