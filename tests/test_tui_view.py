"""What the dashboard shows, decided from snapshots (rbee.tui.view): plain tables of cases."""

from __future__ import annotations

from typing import Any

import pytest

from rbee.tui import view
from rbee.tui.app import _new_lines
from rbee.tui.view import Rates, Row


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "-"), (0, "0B"), (999, "999B"), (1023, "1.0K"), (98_362_432, "94M"),
     (1000 << 20, "1.0G"), (25_276_194_816, "24G"), (8 << 30, "8.0G"), (3 << 40, "3.0T")],
)  # fmt: skip
def test_size(value: int | None, shown: str) -> None:
    assert view.size(value) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (-3, "0s"), (42.4, "42s"), (185, "3m"), (7300, "2h"), (5 * 86400, "5d")],
)
def test_age(seconds: float | None, shown: str) -> None:
    assert view.age(seconds) == shown


@pytest.mark.parametrize(
    ("used", "total", "shown"),
    [(0, 100, "    "), (50, 100, "██  "), (100, 100, "████"), (200, 100, "████"),
     (1, 0, "    "), (55, 100, "██▎ ")],
)  # fmt: skip
def test_bar(used: float, total: float, shown: str) -> None:
    assert view.bar(used, total, 4) == shown


@pytest.mark.parametrize(
    ("worker", "shown"),
    [
        ({"state": "starting"}, ("loading", "warning")),
        ({"state": "ready", "outstanding": 0, "idle_s": 3.0}, ("ready", "ok")),
        ({"state": "ready", "outstanding": 2, "idle_s": 0.0}, ("busy (2)", "ok")),
        ({"state": "ready", "outstanding": 0, "idle_s": 190.0}, ("idle 3m", "ok")),
        ({"state": "restarting"}, ("restarting", "warning")),
        ({"state": "crash-loop"}, ("crash-loop", "error")),
        ({"state": "parked"}, ("parked", "")),
    ],
)
def test_worker_state(worker: dict[str, Any], shown: tuple[str, str]) -> None:
    assert view.worker_state(worker) == shown


def test_hives_show_errors_and_configured_hives_that_do_not_run() -> None:
    snapshot = {"hives": [
        {"name": "localhost", "state": "running", "workers": 1, "lease_age": None,
         "facts": {"os": "linux", "arch": "x86_64", "cpu_count": 8, "mem_total": 16 << 30,
                   "mem_available": 12 << 30, "engines": ["llama_cpp"],
                   "gpus": [{"vram_total": 24 << 30, "vram_free": 12 << 30}]}},
        {"name": "gpu1", "state": "lost", "last_error": "connection refused", "lease_age": 12.0,
         "workers": 0, "facts": None},
    ]}  # fmt: skip
    rows = view.hive_rows(snapshot, ["gpu1", "mac"])
    assert [r.key for r in rows] == ["localhost", "gpu1", "mac"]
    local, gpu1, mac = (r.cells for r in rows)
    assert local[1:5] == ("connected", "-", "1", "8")
    assert local[5] == "█▎    4.0G/16G"
    assert local[6] == "██▌   12G/24G"
    assert local[8] == "linux/x86_64"
    assert (gpu1[1], gpu1[2], rows[1].style) == ("connecting: connection refused", "12s", "error")
    assert mac[1] == "stopped"


def snap(at: float, tokens: int, requests: int, ttft: tuple[float, int]) -> dict[str, Any]:
    return {
        "at": at,
        "workers": [{"id": "w1", "model": "m", "state": "ready",
                     "stats": {"generated_tokens": tokens}}],
        "requests": [{"model": "m", "worker": "w1", "hive": "localhost", "requests": requests,
                      "errors": 0, "ttft_sum": ttft[0], "ttft_count": ttft[1]}],
    }  # fmt: skip


def test_rates_come_from_the_difference_between_snapshots() -> None:
    rates = Rates(window=10)
    assert rates.worker_tokens("w1") is None
    rates.add(snap(100.0, 1000, 10, (1.0, 10)))
    rates.add(snap(101.0, 1060, 11, (1.2, 11)))
    rates.add(snap(103.0, 1160, 13, (1.6, 13)))
    assert rates.worker_tokens("w1") == 50.0
    requests, tokens = rates.series()
    assert (requests, tokens) == ([1.0, 1.0], [60.0, 50.0])
    summary = rates.summary()
    assert summary == {"req_per_min": 60.0, "tok_per_s": 160 / 3, "tok_per_s_now": 50.0}
    (row,) = rates.rows()
    assert row.cells == ("m", "w1", "60.0", "0", "200ms", "53.3", "13")
    # Samples older than the window go; a worker restarted (counter back to 0) counts nothing.
    rates.add(snap(120.0, 5, 14, (1.8, 14)))
    assert rates.worker_tokens("w1") == 0.0
    assert len(rates.series()[0]) == 1


@pytest.mark.parametrize(
    ("text", "keys"),
    [("", ["a", "b", "c"]), ("HIVE1", ["a", "c"]), ("ready", ["b"]), ("nothing", [])],
)
def test_filter(text: str, keys: list[str]) -> None:
    rows = [Row("a", ("a", "hive1", "busy")), Row("b", ("b", "hive2", "ready")),
            Row("c", ("c", "hive1", "loading"))]  # fmt: skip
    assert [r.key for r in view.filtered(rows, text)] == keys


def test_sort_reads_numbers_and_sizes_as_numbers() -> None:
    rows = [Row("a", ("a", "98M")), Row("b", ("b", "1.5G")), Row("c", ("c", "-")),
            Row("d", ("d", "512K"))]  # fmt: skip
    assert [r.key for r in view.sorted_rows(rows, 1)] == ["d", "a", "b", "c"]
    assert [r.key for r in view.sorted_rows(rows, 1, reverse=True)] == ["c", "b", "a", "d"]
    assert [r.key for r in view.sorted_rows(rows, None)] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("before", "after", "new"),
    [([], [], []), ([], ["a"], None), (["a", "b"], ["a", "b"], []),
     (["a", "b"], ["a", "b", "c"], ["c"]), (["a", "b", "c"], ["b", "c", "d", "e"], ["d", "e"]),
     (["a", "b"], ["x", "y"], None)],
)  # fmt: skip
def test_a_followed_log_adds_only_its_new_lines(
    before: list[str], after: list[str], new: list[str] | None
) -> None:
    assert _new_lines(before, after) == new


def test_jobs_running_first_then_newest() -> None:
    snapshot = {"jobs": [
        {"job_id": "j1", "kind": "hive.start", "state": "succeeded", "created_at": 10.0,
         "operation": {"alias": "hive1"}, "last_message": "hive hive1 running"},
        {"job_id": "j2", "kind": "worker.spawn", "state": "running", "created_at": 5.0,
         "operation": {"model": "m", "hive": "hive1"}, "last_message": "[2/3] fetching"},
        {"job_id": "j3", "kind": "hive.stop", "state": "failed", "created_at": 20.0,
         "operation": {"alias": "hive2"}, "error": "hive 'hive2' is not started"},
    ]}  # fmt: skip
    rows = view.job_rows(snapshot, now=80.0)
    assert [r.key for r in rows] == ["j2", "j3", "j1"]
    assert rows[0].cells == ("j2", "worker.spawn", "m@hive1", "running", "1m", "[2/3] fetching")
    assert (rows[1].cells[5], rows[1].style) == ("hive 'hive2' is not started", "error")


def test_a_reused_reading_counts_once_and_rates_use_its_own_time() -> None:
    """The queen reuses a busy worker's /health reading for up to 2 s and says when it read it."""
    rates = Rates()
    for at, read, tokens in [(10.0, 9.5, 100), (11.0, 9.5, 100), (12.0, 11.5, 300)]:
        rates.add({"at": at, "workers": [{"id": "w", "model": "m", "stats": {
            "generated_tokens": tokens, "at": read}}]})  # fmt: skip
    assert rates.worker_tokens("w") == 100.0  # 200 tokens over the 2 s between readings
    assert rates.summary()["tok_per_s_now"] == 100.0
    rates.add({"at": 13.0, "workers": []})  # stopped: no rate any more
    assert rates.worker_tokens("w") is None


def test_recent_requests_newest_first_with_unique_keys() -> None:
    same = {"at": 100.0, "model": "m", "worker": "w1", "status": 200, "duration_ms": 40,
            "ttft_ms": None, "tokens": 8}  # fmt: skip
    snapshot = {"at": 130.0, "recent": [
        {"at": 125.0, "model": "m", "worker": "w2@gpu", "status": 200, "duration_ms": 12_345,
         "ttft_ms": 95, "tokens": 31},
        {"at": 120.0, "model": "m", "worker": "", "status": 503, "duration_ms": 2,
         "ttft_ms": None, "tokens": None},
        same, same,  # two alike in one millisecond
    ]}  # fmt: skip
    rows = view.recent_rows(snapshot)
    assert [r.cells for r in rows] == [
        ("5s", "m", "w2@gpu", "200", "95ms", "12.3s", "31"),
        ("10s", "m", "-", "503", "-", "2ms", "-"),
        ("30s", "m", "w1", "200", "-", "40ms", "8"),
        ("30s", "m", "w1", "200", "-", "40ms", "8"),
    ]
    assert len({r.key for r in rows}) == 4
    assert [r.style for r in rows] == ["ok", "warning", "ok", "ok"]
    assert view.recent_rows({"at": 1.0}) == []


def test_the_last_sweep_in_one_line() -> None:
    text, style = view.sweep_line({})
    assert "none has run" in text
    assert style == ""
    at = "2026-12-07T05:00:00+00:00"
    now = 1796619600.0 + 180  # three minutes after `at`
    ok = view.sweep_line({"sweep": {"at": at, "status": "OK", "problems": []}}, now=now)
    assert ok == ("sweep 3m ago: OK", "ok")
    problems = [{"target": f"hive{i}", "check": "reachable", "status": "CRITICAL"}
                for i in range(6)]  # fmt: skip
    text, style = view.sweep_line({"sweep": {"at": at, "status": "CRITICAL",
                                             "problems": problems}}, now=now)  # fmt: skip
    assert text.startswith("sweep 3m ago: CRITICAL (hive0/reachable CRITICAL, ")
    assert text.endswith(", +2 more)")
    assert style == "error"
