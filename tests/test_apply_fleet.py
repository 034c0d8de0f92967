"""`rbee apply` on a real fleet: two network-namespace hives with real sshd, nothing installed on
them at first, a real queen and the real default model."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import openai
import pytest

from rbee.config.settings import Paths
from tests import http
from tests.conftest import MODEL, make_paths, rbee, running_queen, wait_until
from tests.hives import HiveSet, TestHive, pids_in, two_hives

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

__all__ = ["two_hives"]  # the fixture, imported so that pytest finds it here

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("RBEE_TEST_WHEELHOUSE", ROOT / ".cache" / "wheelhouse"))
"""The wheelhouse the install tests share: only the first build on a machine pays."""

INVENTORY = """
groups:
  pair:
    hives: [hive1, hive2]
    device: cpu
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_apply_installs_starts_spawns_then_changes_nothing_then_follows_a_change(
    two_hives: HiveSet, tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    # The queen's install jobs share the wheelhouse of the install tests: only the first build on
    # a machine pays for pip (on a fresh clone this test may be that first one).
    CACHE.mkdir(parents=True, exist_ok=True)
    (paths.data_dir / "wheelhouse").symlink_to(CACHE, target_is_directory=True)
    conf = two_hives.config
    inventory = write(tmp_path / "inventory.yaml", INVENTORY)
    play = write(tmp_path / "play.yaml", f"models:\n  - model: {MODEL}\n    hives: pair\n")
    with running_queen(paths, models=(), global_args=("--hives", str(conf))) as queen:
        _check_the_example(two_hives, tmp_path, paths, queen.url)

        def apply(*args: str) -> tuple[int, str]:
            done = rbee(paths, "--queen", queen.url, "--hives", str(conf), "--inventory",
                        str(inventory), "apply", str(play), *args, timeout=900)  # fmt: skip
            assert "Traceback" not in done.stderr
            assert done.returncode in (0, 2), done.stdout + done.stderr
            return done.returncode, done.stdout

        status, out = apply("--check")
        assert status == 2
        plan = out.splitlines()[1:-1]
        assert [line.split(":")[0] for line in plan] == [
            "  + install rbee on hive1",
            "  + install rbee on hive2",
            "  + start hive hive1",
            "  + start hive hive2",
            f"  + upload model {MODEL} to hive1",
            f"  + spawn {MODEL} on hive1 (auto, cpu)",
            f"  + upload model {MODEL} to hive2",
            f"  + spawn {MODEL} on hive2 (auto, cpu)",
        ]
        assert out.splitlines()[-1] == "plan: 8 to add, 0 to change, 0 to remove"
        assert http.get(f"{queen.url}/v1/workers").json()["data"] == []

        status, out = apply()
        assert status == 0
        assert "[1/8] + install rbee on hive1" in out
        assert f"[5/8] + upload model {MODEL} to hive1: if its store lacks it" in out
        assert f"  {MODEL} is in hive1's store now" in out
        assert out.splitlines()[-1] == "applied: 8 to add, 0 to change, 0 to remove"
        workers = http.get(f"{queen.url}/v1/workers").json()["data"]
        assert sorted((w["hive"], w["state"], w["device"]) for w in workers) == [
            ("hive1", "ready", "cpu"),
            ("hive2", "ready", "cpu"),
        ]
        with openai.OpenAI(base_url=queen.base_url, api_key="x", max_retries=0) as client:
            answer = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
        assert answer.usage is not None
        assert answer.usage.completion_tokens > 0

        assert apply() == (0, f"no changes: 2 hive(s) and 2 worker(s) match {play}\n")

        write(
            play,
            f"""
            models:
              - model: {MODEL}
                hives: hive1
                replicas: 2
              - model: {MODEL}
                hives: hive2
                replicas: 0
            """,
        )
        status, out = apply("--check", "--diff")
        assert status == 2
        assert f"  {MODEL}: want 2 (auto, cpu), have 1" in out
        gone = next(w["id"] for w in workers if w["hive"] == "hive2")
        assert f"  + spawn {MODEL} on hive1 (auto, cpu): 2 of 2" in out
        assert f"  - stop {gone} ({MODEL} on hive2): 0 replica(s) wanted" in out
        assert "upload" not in out  # hive1 has the model now
        status, out = apply()
        assert status == 0
        workers = http.get(f"{queen.url}/v1/workers").json()["data"]
        assert [(w["hive"], w["state"]) for w in workers] == [("hive1", "ready")] * 2
        assert apply("--check") == (0, f"no changes: 2 hive(s) and 2 worker(s) match {play}\n")
    for hive in two_hives:
        wait_until(lambda h=hive: not _rbee_running(h), 20, f"{hive.alias} to stop")


def _rbee_running(hive: TestHive) -> bool:
    for pid in pids_in(hive):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"rbee" in argv and b"sshd" not in argv:
            return True
    return False


def _check_the_example(hives: HiveSet, tmp_path: Path, paths: Paths, url: str) -> None:
    """`--check` of playbooks/default-model.yaml with inventory/example.yaml, on a hives.conf
    whose aliases are the example's: gpu-desktop and old-server reach hive1, mac-mini hive2."""
    text = hives.config.read_text()
    text = text.replace("Host hive1\n", "Host gpu-desktop old-server\n")
    example = write(tmp_path / "example.conf", text.replace("Host hive2\n", "Host mac-mini\n"))
    book = ROOT / "playbooks" / "default-model.yaml"
    done = rbee(paths, "--queen", url, "--hives", str(example), "--inventory",
                str(ROOT / "inventory" / "example.yaml"), "apply", str(book), "--check",
                timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"rbee apply {book} will:"
    assert [line.split(":")[0] for line in lines[1:4]] == [
        "  + install rbee on gpu-desktop",
        "  + install rbee on old-server",
        "  + install rbee on mac-mini",
    ]
    assert lines[1].endswith(f"rbee is not installed in {hives['hive1'].install_dir}")
    assert lines[4:] == [
        "  + start hive gpu-desktop",
        "  + start hive old-server",
        "  + start hive mac-mini",
        f"  ~ set {MODEL}'s policy on the queen to idle_ttl 0s, autoload on: now idle_ttl is 900s",
        f"  + spawn {MODEL} on localhost (auto, auto)",
        f"  + upload model {MODEL} to gpu-desktop: if its store lacks it",
        f"  + spawn {MODEL} on gpu-desktop (llamacpp, cuda:0): 1 of 2",
        f"  + spawn {MODEL} on gpu-desktop (llamacpp, cuda:0): 2 of 2",
        f"  + upload model {MODEL} to old-server: if its store lacks it",
        f"  + spawn {MODEL} on old-server (auto, auto)",
        f"  + upload model {MODEL} to mac-mini: if its store lacks it",
        f"  + spawn {MODEL} on mac-mini (mlx, auto)",
        "plan: 14 to add, 1 to change, 0 to remove",
    ]
