"""SVG snapshots of the dashboard's main screens (pytest-textual-snapshot), from fixed data.

The fleet here is deterministic (a fixed snapshot served by `FixedQueen`, the only stand-in for
the queen these tests use: a live fleet never looks the same twice); tests/test_tui.py drives
the same app against a real one. Update the SVGs after a deliberate change of the screens with
`pytest tests/test_tui_snapshots.py --snapshot-update`, and look at them.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from textual.pilot import Pilot

from rbee.api.jobs import JobEvent
from rbee.tui.app import RbeeApp
from rbee.tui.text import render

AT = 1_800_000_000.0
GIB = 1 << 30


def _worker(wid: str, hive: str, state: str, **more: Any) -> dict[str, Any]:
    base = {"id": wid, "hive": hive, "model": "smollm2-135m", "engine": "llamacpp",
            "device": "cpu", "state": state, "restarts": 0, "last_exit": None, "outstanding": 0,
            "dispatched": 0, "idle_s": 2.0, "rss": 262 << 20,
            "stats": {"queued": 0, "generated_tokens": 0}}  # fmt: skip
    return {**base, **more}


FLEET: dict[str, Any] = {
    "object": "dashboard",
    "at": AT,
    "queen": {"version": "0.1.0", "pid": 4242, "uptime_s": 3600.0, "problems": [
        {"hive": "mac", "worker": None, "model": None, "state": "hive error",
         "error": "connection refused"}]},
    "hives": [
        {"name": "localhost", "state": "running", "workers": 2, "lease_age": None,
         "last_error": None,
         "facts": {"os": "linux", "arch": "x86_64", "cpu_count": 16, "mem_total": 64 * GIB,
                   "mem_available": 40 * GIB, "engines": ["llama_cpp"], "gpus": []}},
        {"name": "gpu-box", "state": "running", "workers": 2, "lease_age": 0.4,
         "last_error": None,
         "facts": {"os": "linux", "arch": "x86_64", "cpu_count": 32, "mem_total": 128 * GIB,
                   "mem_available": 100 * GIB, "engines": ["exllamav2", "llama_cpp"],
                   "gpus": [{"index": 0, "name": "RTX 4090", "vram_total": 24 * GIB,
                             "vram_free": 6 * GIB}]}},
        {"name": "mac", "state": "error", "workers": 0, "lease_age": None,
         "last_error": "connection refused", "facts": None},
    ],
    "workers": [
        _worker("smollm2-135m-1", "localhost", "ready", dispatched=412, outstanding=1,
                stats={"queued": 0, "generated_tokens": 52_000}),
        _worker("smollm2-135m-2", "localhost", "ready", dispatched=97, idle_s=600.0,
                stats={"queued": 0, "generated_tokens": 9_000}),
        _worker("qwen2.5-7b-1@gpu-box", "gpu-box", "ready", model="qwen2.5-7b",
                engine="exllamav2", device="cuda:0", dispatched=1800, outstanding=3,
                rss=None, vram=15 * GIB, stats={"queued": 2, "generated_tokens": 900_000}),
        _worker("qwen2.5-7b-2@gpu-box", "gpu-box", "restarting", model="qwen2.5-7b",
                engine="exllamav2", device="cuda:0", restarts=2, last_exit="SIGSEGV",
                rss=None, stats=None),
        _worker("llama-3-8b-1@gpu-box", "gpu-box", "starting", model="llama-3-8b",
                engine="llamacpp", device="cuda:0", rss=None, stats=None),
    ],
    "models": [
        {"id": "smollm2-135m", "hive": "localhost", "formats": ["gguf"], "size": 98_362_432},
        {"id": "qwen2.5-7b", "hive": "gpu-box", "formats": ["exl2", "gguf"],
         "size": 9 * GIB},
        {"id": "llama-3-8b", "hive": "gpu-box", "formats": ["gguf"], "size": 5 * GIB},
    ],
    "jobs": [
        {"job_id": "job-5e1f", "kind": "worker.spawn", "state": "running",
         "created_at": AT - 20, "operation": {"model": "llama-3-8b", "hive": "gpu-box"},
         "last_message": "[3/3] starting worker…", "error": None},
        {"job_id": "job-77a0", "kind": "hive.start", "state": "succeeded",
         "created_at": AT - 300, "operation": {"alias": "gpu-box"},
         "last_message": "hive gpu-box running on 10.0.0.7 (pid 812)", "error": None},
        {"job_id": "job-03c2", "kind": "hive.start", "state": "failed",
         "created_at": AT - 200, "operation": {"alias": "mac"}, "last_message": None,
         "error": "mac: cannot connect: connection refused"},
    ],
    "requests": [
        {"model": "smollm2-135m", "worker": "smollm2-135m-1", "hive": "localhost",
         "requests": 412, "errors": 0, "ttft_sum": 41.2, "ttft_count": 412},
        {"model": "qwen2.5-7b", "worker": "qwen2.5-7b-1@gpu-box", "hive": "gpu-box",
         "requests": 1800, "errors": 3, "ttft_sum": 540.0, "ttft_count": 1797},
    ],
    "recent": [
        {"at": AT - 2, "model": "smollm2-135m", "worker": "smollm2-135m-1", "hive": "localhost",
         "status": 200, "stream": True, "duration_ms": 840, "ttft_ms": 95, "tokens": 48},
        {"at": AT - 5, "model": "qwen2.5-7b", "worker": "qwen2.5-7b-1@gpu-box",
         "hive": "gpu-box", "status": 200, "stream": False, "duration_ms": 2300,
         "ttft_ms": None, "tokens": 120},
        {"at": AT - 9, "model": "qwen2.5-7b", "worker": "", "hive": "", "status": 503,
         "stream": False, "duration_ms": 1, "ttft_ms": None, "tokens": None},
        {"at": AT - 14, "model": "smollm2-135m", "worker": "smollm2-135m-2",
         "hive": "localhost", "status": 499, "stream": True, "duration_ms": 12_000,
         "ttft_ms": 102, "tokens": 380},
    ],
    "sweep": {"at": "2027-01-15T07:57:00+00:00", "status": "CRITICAL", "problems": [
        {"target": "gpu-box", "check": "disk:models", "status": "WARNING",
         "detail": "9.1G free (warning below 10G)"},
        {"target": "mac", "check": "reachable", "status": "CRITICAL",
         "detail": "connection refused"}]},
}  # fmt: skip


def fleet_at(step: int) -> dict[str, Any]:
    """The fleet `step` seconds into a busy minute (for the rates and sparklines)."""
    snap = copy.deepcopy(FLEET)
    snap["at"] = AT - 60 + step
    for w in snap["workers"]:
        if w["stats"]:
            w["stats"]["generated_tokens"] -= (60 - step) * (40 + (step * 7) % 30)
    for r in snap["requests"]:
        r["requests"] -= (60 - step) // 3
        r["ttft_count"] -= (60 - step) // 3
        r["ttft_sum"] -= (60 - step) // 3 * 0.1
    return snap


class FixedQueen:
    """Serves the same fleet at every poll; logs and jobs from fixed text."""

    url = "http://127.0.0.1:8500"

    async def snapshot(self) -> dict[str, Any]:
        return FLEET

    async def log(self, *, worker: str | None = None, hive: str | None = None) -> dict[str, Any]:
        lines = [f"2026-12-07 02:16:{i:02d},000 INFO rbee.worker: line {i}" for i in range(30)]
        return {"object": "log", "path": f"/data/logs/worker-{worker}.log", "lines": lines}

    async def submit_job(self, operation: dict[str, Any]) -> str:
        return "job-0001"

    async def stop_worker(self, worker_id: str) -> dict[str, Any]:
        return {}

    async def restart_worker(self, worker_id: str) -> dict[str, Any]:
        return {}

    async def stream_job(self, job_id: str) -> AsyncIterator[JobEvent]:
        yield JobEvent(1, job_id, "step", "choosing the engine for llama-3-8b", 1, 3, at=AT)
        yield JobEvent(2, job_id, "log", "llamacpp on cuda:0 (gguf)", at=AT)
        yield JobEvent(3, job_id, "step", "fetching model llama-3-8b (if needed)", 2, 3, at=AT)
        yield JobEvent(4, job_id, "progress", "uploading to gpu-box", done=3 * GIB,
                       total=5 * GIB, at=AT)  # fmt: skip
        yield JobEvent(5, job_id, "step", "starting worker…", 3, 3, at=AT)


def app() -> RbeeApp:
    dashboard = RbeeApp(FixedQueen(), configured_hives=["gpu-box", "mac", "spare"], poll=False)
    for step in range(0, 60, 2):
        dashboard.rates.add(fleet_at(step))
    return dashboard


async def settled(pilot: Pilot[None]) -> None:
    dashboard = pilot.app
    assert isinstance(dashboard, RbeeApp)
    while dashboard.refreshes < 1:
        await pilot.pause(0.01)
    await pilot.pause()


@pytest.mark.parametrize(
    ("size", "press"),
    [
        ((80, 24), []),
        ((140, 40), []),
        ((100, 30), ["2"]),
        ((100, 30), ["3"]),
        ((100, 30), ["4"]),
        ((80, 24), ["question_mark"]),
        ((80, 24), ["n"]),
    ],
    ids=["fleet-80x24", "fleet-140x40", "models", "requests", "jobs", "help", "spawn-form"],
)
def test_screens(snap_compare: Any, size: tuple[int, int], press: list[str]) -> None:
    assert snap_compare(app(), terminal_size=size, press=press, run_before=settled)


def test_the_text_snapshot_shows_the_same_rows() -> None:
    text = render(FLEET, url="http://127.0.0.1:8500", configured=["spare"], width=160)
    lines = text.splitlines()
    assert lines[0] == "rbee queen http://127.0.0.1:8500: 5 worker(s), 3 ready, 1 problem(s)"
    assert any(line.split()[:3] == ["mac", "error:", "connection"] for line in lines)
    assert any(line.split()[:2] == ["spare", "stopped"] for line in lines)
    restarting = next(line for line in lines if line.startswith(" qwen2.5-7b-2@gpu-box"))
    assert restarting.split()[1:3] == ["restarting", "gpu-box"]
    assert "SIGSEGV" in restarting
    assert "problem: mac: hive error connection refused" in lines
