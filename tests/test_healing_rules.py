"""The pure rules of a fleet that heals itself: restart backoff, the reconcile plan, the desired
state file, exits as people read them, Retry-After; and the reconciler's loop over hive handles
that stand in for hives (what it decides is what is tested; real hives are in test_healing.py)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from rbee.api.workers import WorkerInfo, WorkerSpec, exit_description, parse_worker_info
from rbee.config.hives import load_hives
from rbee.config.settings import Paths
from rbee.engines.select import Choice
from rbee.errors import ApiError, EngineError, WorkerNotFoundError
from rbee.hive.service import HiveService
from rbee.hive.supervisor import RestartPolicy, restart_delay
from rbee.queen.desired import DesiredState, DesiredWorker
from rbee.queen.reconcile import Plan, Reconciler, plan
from rbee.queen.remote import RemoteHive

POLICY = RestartPolicy()


@pytest.mark.parametrize(
    ("crashes", "now", "delay"),
    [
        ([100.0], 100.0, 1.0),
        ([100.0, 101.0], 101.0, 2.0),
        ([100.0, 101.0, 103.0], 103.0, 4.0),
        ([100.0, 101.0, 103.0, 107.0], 107.0, 8.0),
        ([100.0, 101.0, 103.0, 107.0, 115.0], 115.0, None),  # the 5th within 10 min: crash-loop
        ([0.0, 1.0, 3.0, 7.0, 700.0], 700.0, 1.0),  # the old ones left the window
        ([float(t) for t in range(0, 400, 100)], 400.0, 8.0),
    ],
)
def test_restart_backoff_and_crash_loop(
    crashes: list[float], now: float, delay: float | None
) -> None:
    assert restart_delay(crashes, now, POLICY) == delay


def test_the_backoff_stops_growing_at_a_minute() -> None:
    policy = RestartPolicy(burst=100)
    assert restart_delay([float(t) for t in range(9)], 9.0, policy) == 60.0


@pytest.mark.parametrize(
    ("code", "text"),
    [(-signal.SIGSEGV, "SIGSEGV"), (-signal.SIGKILL, "SIGKILL"), (1, "exit 1"), (0, "exit 0"),
     (-99, "signal 99")],
)  # fmt: skip
def test_exits_as_people_read_them(code: int, text: str) -> None:
    assert exit_description(code) == text


@pytest.mark.parametrize(("after", "header"), [(0.2, "1"), (1.0, "1"), (2.5, "3"), (60, "60")])
def test_retry_after_is_whole_seconds(after: float, header: str) -> None:
    err = ApiError(503, "busy", retry_after=after)
    assert err.headers() == {"Retry-After": header}
    assert ApiError(503, "busy").headers() == {}


def _info(worker_id: str, state: str = "ready") -> WorkerInfo:
    return parse_worker_info(
        {"id": worker_id, "model": "m", "engine": "llamacpp", "device": "cpu", "state": state}
    )


def _want(worker_id: str, hive: str = "h") -> DesiredWorker:
    return DesiredWorker(hive, worker_id, WorkerSpec("m", "llamacpp", "cpu"))


@pytest.mark.parametrize(
    ("desired", "actual", "busy", "start", "stop"),
    [
        (["a", "b"], [], [], ["a", "b"], []),
        (["a", "b"], [("a", "ready")], [], ["b"], []),
        (["a"], [("a", "crash-loop")], [], [], []),  # present: the hive's own business
        (["a"], [("a", "restarting")], [], [], []),
        (["a"], [("a", "exited")], [], ["a"], []),
        ([], [("x", "ready"), ("y", "starting")], [], [], ["x", "y"]),
        ([], [("x", "stopping")], [], [], []),  # already going
        (["a"], [("x", "ready")], ["a", "x"], [], []),  # someone is starting/stopping those
    ],
)
def test_the_reconcile_plan(
    desired: list[str],
    actual: list[tuple[str, str]],
    busy: list[str],
    start: list[str],
    stop: list[str],
) -> None:
    made = plan([_want(d) for d in desired], [_info(i, s) for i, s in actual], busy)
    assert made == Plan(start=tuple(_want(d) for d in start), stop=tuple(stop))


def test_desired_state_round_trip_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "desired.json"
    state = DesiredState.load(path, "localhost")
    assert state.hives() == ["localhost"]
    assert state.new_id("localhost", "m") == "m-1"
    state.add(DesiredWorker("localhost", "m-1", WorkerSpec("m", "llamacpp", "cpu", 2048)))
    state.add_hive("gpu")
    state.add(DesiredWorker("gpu", "m-1", WorkerSpec("m", "exllamav2", "cuda:0", embeddings=False)))
    assert state.new_id("localhost", "m", taken=["m-2"]) == "m-3"
    again = DesiredState.load(path, "localhost")
    assert again.hives() == ["localhost", "gpu"]
    assert again.remote_hives() == ["gpu"]
    assert again.workers("gpu") == [
        DesiredWorker("gpu", "m-1", WorkerSpec("m", "exllamav2", "cuda:0"))
    ]
    assert again.models(embeddings=False) == {"m": 2048}
    assert again.remove("localhost", "m-1") is not None
    assert again.remove("localhost", "m-1") is None
    again.remove_hive("gpu")
    assert DesiredState.load(path, "localhost").workers() == []
    assert not list(tmp_path.glob("*.tmp*")), "an atomic write leaves no temporary file"


def test_a_version_1_state_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "desired.json"
    path.write_text(
        json.dumps({"hives": {"gpu": [{"model": "m"}, {"model": "m", "ctx_size": 64}]}})
    )
    state = DesiredState.load(path, "localhost")
    assert [(w.hive, w.id, w.spec.ctx_size) for w in state.workers()] == [
        ("gpu", "m-1", 4096),
        ("gpu", "m-2", 64),
    ]


def test_an_unreadable_state_file_is_kept_aside_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "desired.json"
    bad = {"hives": {"gpu": {"workers": [{"id": "../../etc", "spec": {"model": "m"}}]}}}
    path.write_text(json.dumps(bad))
    state = DesiredState.load(path, "localhost")
    assert state.workers() == []
    assert json.loads((tmp_path / "desired.unreadable").read_text()) == bad


class StandIn:
    """A hive handle for the reconciler's decisions: it records what it is asked."""

    def __init__(self, name: str, workers: list[WorkerInfo], fail: set[str] = frozenset()) -> None:
        self.name = name
        self.available = True
        self._workers = {w.id: w for w in workers}
        self.fail = set(fail)
        self.started: list[str] = []
        self.stopped: list[str] = []

    def workers(self) -> list[WorkerInfo]:
        return list(self._workers.values())

    async def place(self, spec: WorkerSpec) -> tuple[WorkerSpec, Choice]:
        raise AssertionError("the reconciler starts placed specs as they are")

    async def start(self, spec: WorkerSpec, worker_id: str) -> WorkerInfo:
        self.started.append(worker_id)
        if worker_id in self.fail:
            raise EngineError(f"{worker_id} does not load")
        self._workers[worker_id] = _info(worker_id)
        return self._workers[worker_id]

    async def stop(self, worker_id: str) -> WorkerInfo:
        self.stopped.append(worker_id)
        if worker_id not in self._workers:
            raise WorkerNotFoundError(worker_id)
        return self._workers.pop(worker_id)

    async def restart(self, worker_id: str) -> WorkerInfo:
        return self._workers[worker_id]


async def test_the_reconciler_starts_stops_and_backs_off(tmp_path: Path) -> None:
    desired = DesiredState(None, "localhost")
    for worker_id in ("good", "bad"):
        desired.add(_want(worker_id, "localhost"))
    hive = StandIn("localhost", [_info("stray")], fail={"bad"})
    reconciler = Reconciler(desired, lambda: {"localhost": hive}, interval=0.05, first_delay=0.3)
    task = asyncio.create_task(reconciler.run())
    try:
        await asyncio.sleep(0.2)
        assert "good" in hive.started
        assert hive.stopped == ["stray"]
        assert {w.id for w in hive.workers()} == {"good"}
        failure = reconciler.failures[("localhost", "bad")]
        assert "bad does not load" in failure.error
        assert hive.started.count("bad") == 1  # backing off: not tried again within 0.3 s
        await asyncio.sleep(0.5)
        assert hive.started.count("bad") >= 2
        assert reconciler.failures[("localhost", "bad")].attempts >= 2
        with reconciler.claim("localhost", "late"):
            desired.add(_want("late", "localhost"))
            await asyncio.sleep(0.2)
            assert "late" not in hive.started  # claimed: whoever claimed it starts it
        await asyncio.sleep(0.2)
        assert "late" in hive.started
        desired.remove("localhost", "bad")
        reconciler.wake()
        await asyncio.sleep(0.1)
        assert ("localhost", "bad") not in reconciler.failures
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_placement_reads_free_memory_now_not_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readings = iter([8 << 30, 2 << 30])
    monkeypatch.setattr("rbee.hive.service.mem_available", lambda: next(readings))
    paths = Paths(config_dir=tmp_path / "config", data_dir=tmp_path / "data")
    async with HiveService(paths, name="localhost") as hive:
        first, second = await hive.facts(), await hive.facts()
    assert (first.mem_available, second.mem_available) == (8 << 30, 2 << 30)
    assert first.cpu_count == second.cpu_count  # what the machine is: read once


class _Lines:
    """What RemoteHive reads a hive's session through: lines, then EOF."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = list(lines)

    async def readline(self) -> str:
        return self._lines.pop(0) if self._lines else ""


class _Session:
    def __init__(self, lines: list[str]) -> None:
        self.stdout = _Lines(lines)


async def test_a_hive_line_the_queen_cannot_read_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "hives.conf"
    conf.write_text("Host gpu\n  HostName 10.0.0.9\n")
    seen: list[WorkerInfo] = []
    hive = RemoteHive(
        load_hives(conf).get("gpu"), conf, on_change=lambda h, i, u, t: seen.append(i)
    )
    good = {"id": "m-1", "model": "m", "engine": "llamacpp", "device": "cpu", "state": "starting"}
    lines = [
        "2026-12-06 10:00:00,000 INFO rbee.hive: a log line\r\n",
        '{"event": broken\r\n',  # not JSON
        json.dumps({"event": "worker", "worker": {**good, "state": "melting"}}) + "\r\n",
        json.dumps({"event": "worker", "worker": {**good, "pid": "12"}}) + "\r\n",
        json.dumps({"event": "worker", "worker": "nope"}) + "\r\n",
        json.dumps({"event": "worker", "worker": good}) + "\r\n",
    ]
    await hive._read_lines(_Session(lines))  # type: ignore[arg-type]
    assert [(i.id, i.state) for i in seen] == [("m-1", "starting")]  # only the readable one
    assert "broken event line" in caplog.text
    assert caplog.text.count("cannot read") == 3
    assert hive._output == ["2026-12-06 10:00:00,000 INFO rbee.hive: a log line"]
