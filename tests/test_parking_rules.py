"""Parking, as pure rules: the reconciler's plan for parked workers, desired.json round trips,
which idle worker goes first."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rbee.api.workers import WorkerInfo, WorkerSpec
from rbee.queen.autoload import lru_victim, to_park
from rbee.queen.desired import DesiredState, DesiredWorker
from rbee.queen.reconcile import plan
from rbee.queen.registry import Endpoint

SPEC = WorkerSpec(model="m")


def info(worker_id: str, state: str = "ready") -> WorkerInfo:
    return WorkerInfo(id=worker_id, model="m", engine="llamacpp", device="cpu", state=state)  # type: ignore[arg-type]


def test_a_parked_worker_is_not_started_and_is_stopped_if_it_runs() -> None:
    parked = DesiredWorker("localhost", "m-1", SPEC, parked=True)
    assert plan([parked], []).start == ()
    assert plan([parked], [info("m-1")]).stop == ("m-1",)
    assert plan([parked], [info("m-1")], busy={"m-1"}).stop == ()
    assert plan([DesiredWorker("localhost", "m-1", SPEC)], []).start[0].id == "m-1"


def test_parked_is_saved_and_old_files_read_as_not_parked(tmp_path: Path) -> None:
    path = tmp_path / "desired.json"
    state = DesiredState.load(path, "localhost")
    state.add(DesiredWorker("localhost", "m-1", SPEC))
    assert "parked" not in path.read_text()
    state.set_parked("localhost", "m-1", True)
    assert json.loads(path.read_text())["hives"]["localhost"]["workers"][0]["parked"] is True
    again = DesiredState.load(path, "localhost").get("localhost", "m-1")
    assert again is not None
    assert again.parked is True
    assert state.set_parked("localhost", "nope", True) is None


def test_the_least_recently_used_idle_worker_goes_first_never_a_busy_one() -> None:
    now = time.monotonic()
    old = Endpoint("localhost", info("a"), last_active=now - 100)
    new = Endpoint("localhost", info("b"), last_active=now - 10)
    busy = Endpoint("localhost", info("c"), last_active=now - 1000, outstanding=1)
    elsewhere = Endpoint("gpu", info("d"), last_active=now - 5000)
    starting = Endpoint("localhost", info("e", "starting"), last_active=now - 5000)
    assert lru_victim([new, busy, old, elsewhere, starting], "localhost", time.time()) is old
    assert lru_victim([busy], "localhost", time.time()) is None
    assert to_park([old, new, busy, starting], lambda _: 50.0, time.time()) == [old]
    assert to_park([old, new], lambda _: 0.0, time.time()) == []
