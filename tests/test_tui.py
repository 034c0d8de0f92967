"""`rbee tui` driven by Textual's Pilot against real fleets: a real queen serving the real default
model, two namespace hives with real sshd, real worker processes and real signals.

One long test walks the dashboard through what an operator does (start a hive, spawn a worker
through the form, watch a killed worker come back, stop one, filter, logs, help) and checks each
step on the screen's own tables; a short one checks that a missing queen is explained, retried
and never crashes the app.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Label, RichLog, Sparkline, Static

from rbee.tui.app import RbeeApp
from rbee.tui.client import AsyncQueenClient
from rbee.tui.screens import ConfirmScreen, HelpScreen, SpawnScreen
from rbee.tui.trust import HostKeys
from tests import http
from tests.conftest import MODEL, free_port, make_paths, rbee, running_queen
from tests.hives import HiveSet, two_hives

__all__ = ["two_hives"]

SIZE = (140, 40)


def table(app: RbeeApp, table_id: str) -> dict[str, list[str]]:
    """A table's rows as the screen shows them: key → cell texts."""
    widget = app.query_one(f"#{table_id}", DataTable)
    return {str(k.value): [str(c) for c in widget.get_row(k)] for k in widget.rows}


def state_of(app: RbeeApp, worker: str) -> str | None:
    row = table(app, "workers").get(worker)
    return row[1] if row else None


def status(app: RbeeApp) -> str:
    return str(app.query_one("#status", Static).render())


async def until(pilot: Pilot[None], predicate: Callable[[], bool], limit: float, what: str) -> None:
    """Let the app run until `predicate` holds; fail the test with `what` after `limit` s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.05)
    pytest.fail(f"timed out after {limit}s waiting for {what}")


async def watch_states(
    pilot: Pilot[None], app: RbeeApp, worker: str, final: str, limit: float
) -> list[str]:
    """Every state the workers table showed for `worker` until it shows `final`, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        state = state_of(app, worker)
        if state is not None and (not seen or seen[-1] != state):
            seen.append(state)
        if state == final:
            return seen
        await pilot.pause(0.02)
    pytest.fail(f"timed out after {limit}s waiting for {worker} to be {final}; saw {seen}")


def select(app: RbeeApp, table_id: str, key: str) -> None:
    widget = app.query_one(f"#{table_id}", DataTable)
    widget.focus()
    widget.move_cursor(row=widget.get_row_index(key), animate=False)


@pytest.mark.ssh
@pytest.mark.slow
async def test_the_dashboard_runs_a_real_fleet(
    two_hives: HiveSet, tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    env = {"RBEE_HIVE_COMMAND": f"{sys.executable} -m rbee"}
    with running_queen(paths, global_args=("--hives", str(two_hives.config)), env=env) as queen:
        local = f"{MODEL}-1"
        async with AsyncQueenClient(queen.url) as client:
            app = RbeeApp(client, configured_hives=["hive1", "hive2"],
                          trust=HostKeys(two_hives.config), refresh=0.25)  # fmt: skip
            async with app.run_test(size=SIZE) as pilot:
                # The tables fill: this machine's hive and worker, the two hives not started.
                await until(pilot, lambda: state_of(app, local) == "ready", 30, "the worker")
                hives = table(app, "hives")
                assert hives["localhost"][1] == "connected"
                assert int(hives["localhost"][4]) == os.cpu_count()
                assert (hives["hive1"][1], hives["hive2"][1]) == ("stopped", "stopped")
                assert table(app, "models-table")[f"{MODEL}@localhost"][4] == local
                assert "1/1 ready" in status(app)

                # The snapshot is built once for callers close together (dashboards share it).
                async with httpx.AsyncClient(timeout=http.TIMEOUT) as web:
                    await asyncio.sleep(0.6)
                    both = await asyncio.gather(*(web.get(f"{queen.url}/v1/dashboard")
                                                  for _ in range(2)))  # fmt: skip
                    assert both[0].json()["at"] == both[1].json()["at"]
                    bad = await web.get(f"{queen.url}/v1/dashboard/log", params={"lines": "x"})
                    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "lines")

                # ? lists every key; Escape closes it.
                await pilot.press("question_mark")
                assert isinstance(app.screen, HelpScreen)
                keys = str(app.screen.query_one("#keys", Static).render())
                for key, what in RbeeApp.KEYS_HELP:
                    assert what in keys, key
                await pilot.press("escape")
                assert not isinstance(app.screen, HelpScreen)

                # s on a hive starts it through a queen job, narrated in the jobs pane.
                select(app, "hives", "hive1")
                await pilot.press("s")
                await until(pilot, lambda: table(app, "hives")["hive1"][1] == "connected", 90,
                            "hive1 to connect")  # fmt: skip
                assert table(app, "hives")["hive1"][8] == "linux/x86_64"
                await until(pilot, lambda: any(r[1] == "hive.start" and r[3] == "succeeded"
                                               for r in table(app, "jobs-table").values()),
                            10, "the job to show as succeeded")  # fmt: skip
                narration = "\n".join(line for lines in app.narration.values() for line in lines)
                assert "starting hive hive1 over SSH" in narration

                # n opens the form on the selected hive; Enter spawns; loading, then ready.
                remote = f"{MODEL}-1@hive1"
                await pilot.press("n")
                assert isinstance(app.screen, SpawnScreen)
                assert app.screen.operation() == {"kind": "worker.spawn", "model": MODEL,
                                                  "hive": "hive1", "engine": "auto",
                                                  "device": "auto"}  # fmt: skip
                await pilot.press("enter")
                seen = await watch_states(pilot, app, remote, "ready", 180)
                assert seen[0] == "loading", seen
                assert table(app, "workers")[remote][2] == "hive1"

                # A killed worker shows restarting, then ready again (with the exit counted).
                pid = next(int(str(w["pid"])) for w in queen.workers() if w["id"] == local)
                os.kill(pid, signal.SIGKILL)
                await until(pilot, lambda: state_of(app, local) != "ready", 10, "the crash")
                seen = await watch_states(pilot, app, local, "ready", 60)
                assert seen[0] == "restarting", seen
                await until(pilot, lambda: table(app, "workers")[local][7:9] == ["1", "SIGKILL"],
                            5, "the restart to be counted")  # fmt: skip

                # t on a hive whose key is known says so (a new key asks; a changed one refuses).
                select(app, "hives", "hive2")
                await pilot.press("t")
                await until(pilot, lambda: any("hive2: its host key SHA256:" in m
                                               and "already trusted" in m for m in app.said),
                            15, "the trust check")  # fmt: skip

                # Requests served show in the requests pane: counts, TTFT, tokens/s.
                async with httpx.AsyncClient(timeout=http.TIMEOUT) as web:
                    for i in range(4):
                        answer = await web.post(f"{queen.base_url}/completions", json={
                            "model": MODEL, "prompt": f"Count to {i + 5}:", "max_tokens": 24,
                            "stream": i % 2 == 1})  # fmt: skip
                        assert answer.status_code == 200, answer.text
                served = lambda: sum(int(r[6]) for r in table(app, "requests-table").values())  # noqa: E731
                await until(pilot, lambda: served() == 4, 10, "the requests to be counted")
                rows = table(app, "requests-table").values()
                assert {r[0] for r in rows} == {MODEL}
                assert {r[1] for r in rows} <= {local, remote}
                assert any(r[4].endswith("ms") for r in rows)  # a mean time to first token
                await pilot.press("3")
                spark = app.query_one("#req-spark", Sparkline)
                await until(pilot, lambda: max(spark.data or [0]) > 0, 5, "the sparkline")
                if shot := os.environ.get("RBEE_TUI_SCREENSHOT"):  # the README's picture
                    await pilot.press("1")
                    await pilot.pause(0.5)
                    app.save_screenshot(shot)
                # Each one is listed, newest first, with its worker, status and tokens.
                await until(pilot, lambda: len(table(app, "recent-table")) == 4, 5, "the list")
                recent = list(table(app, "recent-table").values())
                assert {r[1] for r in recent} == {MODEL}
                assert {r[2] for r in recent} <= {local, remote}
                assert {r[3] for r in recent} == {"200"}
                assert all(r[6].isdigit() and int(r[6]) > 0 for r in recent), recent
                # A worker's figures are the queen's own counts (it asks no worker): the tokens
                # it shows are those of the requests it lists.
                async with httpx.AsyncClient(timeout=http.TIMEOUT) as web:
                    snap = (await web.get(f"{queen.url}/v1/dashboard")).json()
                listed: dict[str, int] = {}
                for r in snap["recent"]:
                    listed[r["worker"]] = listed.get(r["worker"], 0) + r["tokens"]
                shown = {w["id"]: w["stats"]["generated_tokens"] for w in snap["workers"]
                         if w["id"] in listed}  # fmt: skip
                assert shown == listed, (shown, listed)
                # The last sweep shows under the fleet (a real sweep of hive1, over SSH).
                sweep = rbee(paths, "--hives", str(two_hives.config), "sweep", "--hive", "hive1")
                said = ("OK", "WARNING", "CRITICAL", "UNKNOWN")[sweep.returncode]  # Nagios' codes
                line = lambda: str(app.query_one("#sweep-line", Static).render())  # noqa: E731
                await until(pilot, lambda: " ago: " in line(), 5, "the last sweep")
                assert line().split(": ")[1].split()[0] == said, (line(), sweep.stdout)

                # / filters every table; Escape clears it.
                await pilot.press("slash", *"hive1", "enter")
                await until(pilot, lambda: list(table(app, "workers")) == [remote], 5, "filter")
                await pilot.press("escape")
                await until(pilot, lambda: len(table(app, "workers")) == 2, 5, "unfiltered")

                # l follows the selected worker's log.
                select(app, "workers", local)
                await pilot.press("l")
                log_view = app.query_one("#log-view", RichLog)
                served = lambda: any("serving on" in line.text for line in log_view.lines)  # noqa: E731
                await until(pilot, served, 10, "the log")
                # A remote worker's log, read by its hive; a remote hive's, from its session.
                await pilot.press("1")
                select(app, "workers", remote)
                await pilot.press("l")
                await until(pilot, served, 10, "the remote worker's log")
                caption = lambda: str(app.query_one("#log-caption", Label).render())  # noqa: E731
                assert caption().startswith(f"worker {remote}: hive1:"), caption()
                await pilot.press("1")
                select(app, "hives", "hive1")
                await pilot.press("l")
                hived = lambda: any("hive serving on" in line.text for line in log_view.lines)  # noqa: E731
                await until(pilot, hived, 10, "the remote hive's log")

                # K asks, then stops the worker: its row goes.
                await pilot.press("1")
                select(app, "workers", remote)
                await pilot.press("K")
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("y")
                await until(pilot, lambda: remote not in table(app, "workers"), 30, "the stop")
                assert [w["id"] for w in queen.workers()] == [local]

                # An action the queen refuses shows its error and the app carries on.
                await pilot.press("n")
                app.screen.query_one("#model").value = "no-such-model"  # type: ignore[attr-defined]
                await pilot.press("enter")
                await until(pilot, lambda: any("no-such-model" in m for m in app.said), 10,
                            "the refusal")  # fmt: skip

                # The queen goes away: the screen says so and how to start one, and keeps going.
                queen.proc.send_signal(signal.SIGTERM)
                queen.proc.wait(30)
                await until(pilot, lambda: "rbee up" in status(app), 10, "the queen to be gone")
                assert app.is_running


async def test_without_a_queen_it_says_how_to_start_one_and_never_crashes(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncQueenClient(url) as client:
        app = RbeeApp(client, refresh=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.refreshes >= 2, 5, "two attempts")
            text = status(app)
            assert f"the queen is not running at {url}" in text
            assert "`rbee up`" in text
            assert "retrying" in text
            await pilot.press("K")  # nothing selected: said, not crashed
            await pilot.press("n", "enter")  # the spawn job cannot be submitted
            await until(pilot, lambda: any("not running" in m for m in app.said), 5,
                        "the refusal")  # fmt: skip
            assert app.is_running
    # `--once` says the same in one line, with no traceback.
    result = rbee(make_paths(tmp_path, None), "--queen", url, "tui", "--once")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"rbee: error: the queen is not running at {url} (start it with `rbee queen start` or "
        "`rbee up`)"
    )
