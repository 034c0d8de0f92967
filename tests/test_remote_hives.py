"""Hives on other machines: two network namespaces with real sshd, driven by a real queen.

The hives run this checkout's rbee (RBEE_HIVE_COMMAND) since installing is tested on its own;
the model reaches each hive by upload from the queen's store, as it would on a fresh machine.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from rbee.config.settings import Paths
from rbee.worker.standby import STANDBY_NAME
from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, rbee, running_queen, wait_until
from tests.hives import HiveSet, TestHive, cut_link, pids_in, restore_link, two_hives

__all__ = ["two_hives"]

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def rbee_pids_in(hive: TestHive) -> list[int]:
    """rbee processes (hives, workers) in a hive's namespace."""
    found = []
    for pid in pids_in(hive):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"rbee" in cmdline and b"sshd" not in cmdline:
            found.append(pid)
    return found


def queen_for(two_hives: HiveSet, paths: Paths) -> contextlib.AbstractContextManager[RunningQueen]:
    """A queen that knows the two hives (they run this checkout's rbee)."""
    env = {"RBEE_HIVE_COMMAND": f"{sys.executable} -m rbee"}
    return running_queen(paths, models=(), global_args=("--hives", str(two_hives.config)),
                         env=env)  # fmt: skip


@pytest.fixture
def fleet(two_hives: HiveSet, tmp_path: Path, model_cache: Path) -> Iterator[RunningQueen]:
    """A queen that knows the two hives, with nothing started yet."""
    with queen_for(two_hives, make_paths(tmp_path, model_cache)) as queen:
        yield queen
    for hive in two_hives:
        wait_until(lambda hive=hive: rbee_pids_in(hive) == [], 20, f"{hive.alias} to be empty")


def cli(queen: RunningQueen, *args: str) -> str:
    result = rbee(queen.paths, "--queen", queen.url, *args, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


CLOCK: Any = {"type": "function", "function": {"name": "clock", "description": "The time now"}}


def remote_tool_call(client: openai.OpenAI, stream: bool) -> dict[str, str]:
    """One required call through the queen: the hive that answered, the call's name and
    arguments (assembled from the stream's deltas when `stream`)."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "What time is it?"}],
        tools=[CLOCK], tool_choice="required", parallel_tool_calls=False, max_tokens=40,
        stream=stream,
    )  # fmt: skip
    answer = raw.parse()
    found = {"hive": raw.headers["x-rbee-hive"], "name": "", "arguments": ""}
    if isinstance(answer, openai.Stream):
        finish = None
        for chunk in answer:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or []:
                    found["name"] += (delta.function and delta.function.name) or ""
                    found["arguments"] += (delta.function and delta.function.arguments) or ""
        assert finish == "tool_calls"
        return found
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = (choice.message.tool_calls or [])[0]
    return {**found, "name": call.function.name, "arguments": call.function.arguments}


def start_both(queen: RunningQueen) -> None:
    for alias in ("hive1", "hive2"):
        assert f"hive {alias} running" in cli(queen, "hive", "start", alias)
        assert "ready" in cli(queen, "worker", "spawn", "--model", MODEL, "--hive", alias)


def test_chat_lands_on_both_hives_and_sigkill_of_the_queen_leaves_nothing(
    fleet: RunningQueen, two_hives: HiveSet
) -> None:
    start_both(fleet)
    for alias in ("hive1", "hive2"):
        listed = cli(fleet, "model", "list", "--hive", alias)
        assert MODEL in listed
        assert "queen:" in listed  # uploaded from the queen's store
        status = cli(fleet, "--hives", str(two_hives.config), "hive", "status", alias)
        assert "hive: running" in status
        assert f"{MODEL} ready" in status
        assert f"model store: {MODEL}" in status
    workers = fleet.workers()
    assert sorted(str(w["hive"]) for w in workers) == ["hive1", "hive2"]
    assert all(str(w["id"]).endswith(f"@{w['hive']}") for w in workers)
    with openai.OpenAI(base_url=fleet.base_url, api_key="x", max_retries=0) as client:
        traced = []
        for i in range(4):
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Say {i}."}],
                max_tokens=8,
                stream=i % 2 == 1,
            )
            headers = raw.headers
            traced.append((headers["x-rbee-hive"], headers["x-rbee-worker"]))
            assert int(headers["x-rbee-queued-ms"]) >= 0
            answer = raw.parse()
            if isinstance(answer, openai.Stream):
                assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
            else:
                assert answer.choices[0].message.content
        # The trace headers name the remote worker that answered, streams and whole answers.
        assert sorted(h for h, _ in traced) == ["hive1", "hive1", "hive2", "hive2"], traced
        assert all(w.endswith(f"@{h}") for h, w in traced), traced
    served = {str(w["hive"]): int(str(w["dispatched"])) for w in fleet.workers()}
    assert served == {"hive1": 2, "hive2": 2}, served
    # Tool calls come back from remote workers whole and streamed, in OpenAI's shape.
    with openai.OpenAI(base_url=fleet.base_url, api_key="x", max_retries=0) as client:
        for stream in (False, True):
            call = remote_tool_call(client, stream)
            assert call["hive"] in ("hive1", "hive2")
            assert call["name"] == "clock"
            assert json.loads(call["arguments"]) == {}
    assert all(rbee_pids_in(h) for h in two_hives)
    fleet.proc.send_signal(signal.SIGKILL)
    fleet.proc.wait(10)
    killed = time.monotonic()
    for hive in two_hives:
        wait_until(lambda hive=hive: rbee_pids_in(hive) == [], 5, f"{hive.alias} to empty")
    assert time.monotonic() - killed < 5


def test_cut_link_ends_the_hive_within_the_lease_then_it_comes_back(
    fleet: RunningQueen, two_hives: HiveSet
) -> None:
    start_both(fleet)
    hive1 = two_hives["hive1"]
    (old_pid,) = [w["pid"] for w in fleet.workers() if w["hive"] == "hive1"]
    cut = time.monotonic()
    cut_link(hive1)
    try:
        wait_until(lambda: rbee_pids_in(hive1) == [], 25, "hive1 to stop itself (lease)")
        assert time.monotonic() - cut <= 15  # the lease: everything is gone within it
        # The other hive is untouched and still serves.
        assert rbee_pids_in(two_hives["hive2"])
    finally:
        restore_link(hive1)

    def restored() -> bool:
        return any(
            w["hive"] == "hive1" and w["state"] == "ready" and w["pid"] != old_pid
            for w in fleet.workers()
        )

    wait_until(restored, 90, "the queen to reconnect to hive1 and restore its worker")
    for _ in range(2):  # one lands on each hive
        r = http.post(f"{fleet.base_url}/completions",
                      json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})  # fmt: skip
        assert r.status_code == 200, r.text


def test_stop_a_hive_and_bad_requests(fleet: RunningQueen, two_hives: HiveSet) -> None:
    cli(fleet, "hive", "start", "hive1")
    assert "hive hive1 stopped" in cli(fleet, "hive", "stop", "hive1")
    wait_until(lambda: rbee_pids_in(two_hives["hive1"]) == [], 15, "hive1 to stop")
    bad = rbee(fleet.paths, "--queen", fleet.url, "hive", "start", "nope")
    assert bad.returncode == 1
    assert "unknown hive 'nope'" in bad.stderr
    bad = rbee(fleet.paths, "--queen", fleet.url, "worker", "spawn", "--model", MODEL,
               "--hive", "hive2")  # fmt: skip
    assert bad.returncode == 1
    assert "not started" in bad.stderr


def test_a_restarted_queen_brings_its_hives_and_workers_back(
    two_hives: HiveSet, tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    with queen_for(two_hives, paths) as queen:
        start_both(queen)
        before = sorted(str(w["hive"]) for w in queen.workers())
    for hive in two_hives:
        wait_until(lambda hive=hive: rbee_pids_in(hive) == [], 20, f"{hive.alias} to stop")
    with queen_for(two_hives, paths) as queen:

        def back() -> bool:
            ready = [w for w in queen.workers() if w["state"] == "ready"]
            return sorted(str(w["hive"]) for w in ready) == before

        wait_until(back, 120, "the restarted queen to restore both hives' workers")
        r = http.post(f"{queen.base_url}/completions",
                      json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})  # fmt: skip
        assert r.status_code == 200, r.text
        # The models were already on the hives: nothing was uploaded again (this is the second
        # queen's log).
        assert "uploading model" not in (paths.data_dir / "test-queen.log").read_text()
    for hive in two_hives:
        wait_until(lambda hive=hive: rbee_pids_in(hive) == [], 20, f"{hive.alias} to stop")


def waiting_standbys_in(hive: TestHive) -> list[int]:
    """Standby worker processes waiting for their order in a hive's namespace."""
    found = []
    for pid in pids_in(hive):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == STANDBY_NAME:
                found.append(pid)
    return found


def remote_autoload_paths(tmp_path: Path, model_cache: Path) -> Paths:
    """Fresh dirs whose rbee.toml lets MODEL load on demand on remote hives too."""
    paths = make_paths(tmp_path, model_cache)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    (paths.config_dir / "rbee.toml").write_text(f'[models."{MODEL}"]\nautoload = true\n')
    return paths


def test_a_hive_that_may_load_on_demand_keeps_a_standby_worker(
    two_hives: HiveSet, tmp_path: Path, model_cache: Path
) -> None:
    # A model whose own table allows loads on remote hives: those hives keep a standby worker,
    # started with the hive over SSH, and the next worker there is that process.
    paths = remote_autoload_paths(tmp_path, model_cache)
    hive = two_hives["hive1"]
    with queen_for(two_hives, paths) as queen:
        assert "hive hive1 running" in cli(queen, "hive", "start", "hive1")
        wait_until(lambda: len(waiting_standbys_in(hive)) == 1, 60, "hive1's standby")
        (standby,) = waiting_standbys_in(hive)
        assert "ready" in cli(queen, "worker", "spawn", "--model", MODEL, "--hive", "hive1")
        (worker,) = queen.workers()
        assert (worker["hive"], worker["pid"]) == ("hive1", standby)
        with openai.OpenAI(base_url=queen.base_url, api_key="x", max_retries=0) as client:
            answer = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
        assert answer.choices[0].message.content
        wait_until(lambda: len(waiting_standbys_in(hive)) == 1, 60, "hive1's next standby")
        assert waiting_standbys_in(hive) != [standby]
        assert waiting_standbys_in(two_hives["hive2"]) == []  # not started: nothing there
        queen.proc.send_signal(signal.SIGKILL)
        queen.proc.wait(10)
        wait_until(lambda: rbee_pids_in(hive) == [], 5, "hive1 to empty, standby included")


def test_a_request_loads_a_model_only_a_remote_hive_stores_there_once(
    two_hives: HiveSet, tmp_path: Path, model_cache: Path
) -> None:
    # The model's own table allows remote loads. Once hive1 stores it (uploaded by a first
    # spawn, stopped since) and this machine no longer does, two requests at once start one
    # worker, on hive1, and both are answered by it.
    paths = remote_autoload_paths(tmp_path, model_cache)
    with queen_for(two_hives, paths) as queen:
        assert "hive hive1 running" in cli(queen, "hive", "start", "hive1")
        assert "ready" in cli(queen, "worker", "spawn", "--model", MODEL, "--hive", "hive1")
        (first,) = queen.workers()
        cli(queen, "worker", "stop", first["id"])
        assert queen.workers() == []
        (paths.models_dir / MODEL).unlink()  # the link to the shared store: this machine's copy
        hives: list[str] = []
        errors: list[BaseException] = []

        def ask() -> None:
            try:
                with openai.OpenAI(base_url=queen.base_url, api_key="x", max_retries=0,
                                   timeout=300) as client:  # fmt: skip
                    raw = client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
                    )
                assert raw.parse().choices[0].message.content
                hives.append(raw.headers["x-rbee-hive"])
                assert "x-rbee-load-ms" in raw.headers
            except BaseException as err:
                errors.append(err)

        askers = [threading.Thread(target=ask) for _ in range(2)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(300)
        assert errors == []
        assert hives == ["hive1", "hive1"]
        (worker,) = queen.workers()
        assert worker["hive"] == "hive1"
        assert worker["pid"] != first["pid"]  # a new worker (its id may be the first one's again)
        log = (paths.data_dir / "test-queen.log").read_text()
        assert log.count(f"loaded {MODEL} on hive hive1") == 1
