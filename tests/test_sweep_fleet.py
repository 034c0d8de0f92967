"""`rbee sweep` against a real fleet: two namespace hives with real sshd and rbee installed on
them by `rbee hive install`, a real queen running them (from their install dirs), a worker of the
real default model on each. One module-wide fleet; each test walks through several faults, checks
the status and exit code the sweep gives, and what `--heal` fixes (never a host key).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rbee import __version__
from rbee.cli.main import main
from rbee.config.settings import Paths
from rbee.hive.supervisor import RestartPolicy
from tests.conftest import MODEL, RunningQueen, make_paths, rbee, running_queen, wait_until
from tests.hives import HiveSet, TestHive, pids_in, two_hives
from tests.test_sweep_schema import validate

__all__ = ["two_hives"]

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = Path(os.environ.get("RBEE_TEST_WHEELHOUSE", ROOT / ".cache" / "wheelhouse"))
PERFDATA = re.compile(r"^'[^'=]+'=-?[0-9.]+(s|%|B)?(;[0-9.:]*){0,4}$")


@dataclass
class Fleet:
    """The running fleet, and where its sweeps keep their state."""

    hives: HiveSet
    queen: RunningQueen
    paths: Paths
    state: Path

    def sweep(self, *args: str) -> tuple[int, str]:
        """`rbee sweep` as cron runs it: a fresh process."""
        done = rbee(self.paths, "--hives", str(self.hives.config), "sweep",
                    "--state-dir", str(self.state), *args, timeout=300)  # fmt: skip
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, done.stdout

    def sweep_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        code, out = self.sweep("--json", *args)
        document = json.loads(out)
        validate(document)
        assert document["exit_code"] == code
        return code, document

    def workers(self, alias: str) -> list[dict[str, Any]]:
        return [w for w in self.queen.workers() if w["hive"] == alias]


def checks(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{c['target']}/{c['check']}": c for c in document["checks"]}


def not_ok(document: dict[str, Any]) -> dict[str, str]:
    return {k: c["status"] for k, c in checks(document).items() if c["status"] != "OK"}


def cli(fleet_paths: Paths, url: str, *args: str) -> str:
    done = rbee(fleet_paths, "--queen", url, *args, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def hive_process(hive: TestHive) -> int:
    for pid in pids_in(hive):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"hive" in argv and b"run" in argv:
                return pid
    raise AssertionError(f"no hive process on {hive.alias}")


@pytest.fixture(scope="module")
def fleet(
    two_hives: HiveSet, tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("sweep")
    paths = make_paths(base, model_cache)
    # The wheelhouse every run on this machine shares: only the first build pays for pip.
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    (paths.data_dir / "wheelhouse").symlink_to(WHEELHOUSE, target_is_directory=True)
    conf = str(two_hives.config)
    installs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rbee",
                "--data-dir",
                str(paths.data_dir),
                "--config-dir",
                str(paths.config_dir),
                "--hives",
                conf,
                "hive",
                "install",
                alias,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for alias in ("hive1", "hive2")
    ]
    for proc in installs:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out.decode()
    # No RBEE_HIVE_COMMAND: the queen runs each hive from its install dir, as in use.
    with running_queen(paths, models=(), global_args=("--hives", conf)) as queen:
        for alias in ("hive1", "hive2"):
            assert f"hive {alias} running" in cli(paths, queen.url, "hive", "start", alias)
            spawned = cli(paths, queen.url, "worker", "spawn", "--model", MODEL, "--hive", alias)
            assert "ready" in spawned
        yield Fleet(two_hives, queen, paths, base / "sweep-state")


def test_a_healthy_fleet_then_a_crashed_worker_an_orphan_and_a_killed_hive(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1. Healthy: OK, exit 0, in each form.
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    # On a busy 2-core machine a first token may take seconds: the probe's time is checked,
    # not its speed.
    probe = ("--probe", "--probe-warn", "100", "--probe-crit", "200")
    code, document = fleet.sweep_json("--textfile", str(textfile), *probe)
    assert (code, not_ok(document)) == (0, {}), document
    assert document["previous_at"] is None
    found = checks(document)
    for alias in ("hive1", "hive2"):
        assert found[f"{alias}/installed"]["detail"].startswith(f"rbee {__version__} in ")
        assert found[f"{alias}/hive"]["detail"].startswith("running (pid ")
        assert found[f"{alias}/worker:{MODEL}-1"]["detail"].startswith("ready")
        assert found[f"{alias}/probe:{MODEL}-1"]["value"] > 0
        assert found[f"{alias}/disk_models"]["value"] > 0
    hives = {h["alias"]: h for h in document["hives"]}
    assert hives["hive1"]["hive_pid"] == hive_process(fleet.hives["hive1"])
    assert document["queen"]["workers_ready"] == 2
    prom = (textfile / "rbee_sweep.prom").read_text()
    families = {f.name: f for f in text_string_to_metric_families(prom)}
    assert families["rbee_sweep_status"].samples[0].value == 0
    up = {s.labels["hive"]: s.value for s in families["rbee_sweep_hive_up"].samples}
    assert up == {"hive1": 1.0, "hive2": 1.0}
    assert oct((textfile / "rbee_sweep.prom").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in textfile.iterdir()] == ["rbee_sweep.prom"]  # no temporary file left
    code, out = fleet.sweep()
    status_line, *table = out.splitlines()
    assert code == 0
    text, _, perf = status_line.partition(" | ")
    assert text.startswith("RBEE SWEEP OK - 2 of 2 hives OK")
    assert all(PERFDATA.match(item) for item in perf.split()), perf
    assert "'hive1_disk_models'=" in perf
    assert "'queen_queue_depth'=0;16;64;0" in perf
    assert table[0].split() == ["TARGET", "CHECK", "STATUS", "DETAIL"]
    assert "no change since the last sweep" in out

    # 2. A worker crashes and comes back: WARNING (restarted since the last sweep), once.
    (victim,) = fleet.workers("hive1")
    os.kill(int(victim["pid"]), signal.SIGKILL)

    def back() -> bool:
        (worker,) = fleet.workers("hive1")
        return bool(worker["restarts"] == 1 and worker["state"] == "ready")

    wait_until(back, 90, "the worker back")
    code, document = fleet.sweep_json()
    assert (code, not_ok(document)) == (1, {"queen/restarts": "WARNING"})
    assert {"target": "queen", "check": "restarts", "before": "OK", "after": "WARNING"} in document[
        "changes"
    ]
    assert fleet.sweep_json()[0] == 0

    # 3. An orphan: a hive process on hive2 that no queen holds. WARNING; --heal stops it.
    hive2 = fleet.hives["hive2"]
    rogue = subprocess.Popen(
        ["ip", "netns", "exec", hive2.netns, sys.executable, "-m", "rbee", "hive", "run",
         "--port", "9111", "--name", "hive2"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=hive2.root, env={**os.environ, "HOME": str(hive2.root)},
    )  # fmt: skip
    try:
        time.sleep(0.5)
        assert rogue.poll() is None
        code, document = fleet.sweep_json()
        assert (code, not_ok(document)) == (1, {"hive2/orphans": "WARNING"})
        (orphan,) = {h["alias"]: h for h in document["hives"]}["hive2"]["orphans"]
        assert (orphan["kind"], orphan["pid"]) == ("hive", rogue.pid)
        code, out = fleet.sweep("--heal")
        assert code == 1
        assert f"heal: hive2: stop-orphan: done: hive pid {rogue.pid}: gone" in out
        assert rogue.wait(10) is not None
        assert fleet.sweep_json()[0] == 0
    finally:
        if rogue.poll() is None:
            rogue.kill()
            rogue.wait()
        assert rogue.stdin is not None
        rogue.stdin.close()

    # 4. The hive process on hive1 is killed: CRITICAL until the queen (or --heal) brings it back.
    killed = hive_process(fleet.hives["hive1"])
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: killed not in pids_in(fleet.hives["hive1"]), 5, "the hive gone")
    # In this process, at once: the queen reconnects after a second.
    capsys.readouterr()
    code = main(["--data-dir", str(fleet.paths.data_dir), "--config-dir",
                 str(fleet.paths.config_dir), "--hives", str(fleet.hives.config), "sweep",
                 "--state-dir", str(fleet.state), "--json", "--hive", "hive1"])  # fmt: skip
    document = json.loads(capsys.readouterr().out)
    validate(document)
    assert code == 2
    assert checks(document)["hive1/hive"]["status"] == "CRITICAL"
    assert checks(document)[f"hive1/worker:{MODEL}-1"]["status"] == "CRITICAL"
    code, out = fleet.sweep("--heal")
    assert "heal: hive1: start-hive" in out or code == 0 or "queen/restarts" in out, out
    wait_until(lambda: [w["state"] for w in fleet.workers("hive1")] == ["ready"], 120,
               "hive1's worker back")  # fmt: skip
    fleet.sweep_json()  # the restart shows once
    code, document = fleet.sweep_json()
    assert (code, not_ok(document)) == (0, {})


def test_a_changed_host_key_is_critical_and_never_healed(fleet: Fleet) -> None:
    hive = fleet.hives["hive2"]
    known = fleet.hives.known_hosts.read_bytes()
    saved = {p: p.read_bytes() for p in (hive.host_key, Path(f"{hive.host_key}.pub"))}
    try:
        hive.host_key.unlink()
        Path(f"{hive.host_key}.pub").unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hive.host_key)],
                       check=True)  # fmt: skip
        os.kill(hive.sshd_pid, signal.SIGHUP)  # sshd re-executes and reads its new host key

        def changed() -> bool:
            return fleet.sweep_json("--hive", "hive2")[0] == 2

        wait_until(changed, 30, "sshd to offer its new key")
        code, document = fleet.sweep_json("--heal")
        assert code == 2
        assert not_ok(document) == {"hive2/host_key": "CRITICAL"}
        assert "host key is not trusted" in checks(document)["hive2/host_key"]["detail"]
        assert document["actions"] == []
        assert fleet.hives.known_hosts.read_bytes() == known
        assert checks(document)["hive1/hive"]["status"] == "OK"  # the other hive is swept as ever
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
        hive.host_key.chmod(0o600)
        os.kill(hive.sshd_pid, signal.SIGHUP)
    wait_until(lambda: fleet.sweep_json()[0] == 0, 30, "hive2 trusted again")


def test_a_worker_in_crash_loop_is_critical_and_heal_restarts_it(fleet: Fleet) -> None:
    # RestartPolicy.burst crashes within its window put a worker in crash-loop: the hive stops
    # restarting it. The sweep says CRITICAL; --heal asks the queen to start it again.
    def state() -> tuple[str, int | None]:
        found = fleet.workers("hive2")
        return (str(found[0]["state"]), found[0]["pid"]) if found else ("absent", None)

    for _ in range(RestartPolicy().burst):
        wait_until(lambda: state()[0] == "ready", 120, "hive2's worker ready")
        pid = state()[1]
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda pid=pid: state() != ("ready", pid), 30, "the crash seen")
    wait_until(lambda: state()[0] == "crash-loop", 30, "crash-loop")
    wid = str(fleet.workers("hive2")[0]["id"]).partition("@")[0]
    code, document = fleet.sweep_json()
    assert code == 2
    assert checks(document)[f"hive2/worker:{wid}"]["status"] == "CRITICAL"
    code, out = fleet.sweep("--heal")
    assert "heal: hive2: restart-worker: done" in out, out
    wait_until(lambda: state()[0] == "ready", 120, "hive2's worker restarted")
    fleet.sweep_json()  # the restarts show once
    code, document = fleet.sweep_json()
    assert (code, not_ok(document)) == (0, {})


def test_usage_and_config_errors_are_unknown(fleet: Fleet, tmp_path: Path) -> None:
    for args, said in [
        (("--hive", "nope"), "nope"),
        (("--textfile", str(tmp_path / "missing")), "--textfile"),
        (("--timeout", "0"), "--timeout"),
        (("--bogus",), "unrecognized arguments: --bogus"),
    ]:
        done = rbee(fleet.paths, "--hives", str(fleet.hives.config), "sweep", *args)
        assert done.returncode == 3, (args, done.stderr)
        assert said in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    broken = tmp_path / "hives.conf"
    broken.write_text("Host a\n    Port abc\n")
    done = rbee(fleet.paths, "--hives", str(broken), "sweep")
    assert done.returncode == 3
    assert f"{broken}:2" in done.stderr, done.stderr
    assert shutil.which("crontab")  # the cron tests (tests/test_sweep_cron.py) need it
