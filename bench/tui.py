"""TUI benchmark: what dashboards cost the queen, on a fleet of 50 workers, with 0, 1 and 5 open.

What is measured
    A queen (this checkout's, in a child process: rbee.queen.service.Queen and its app under
    uvicorn, as `rbee queen run` serves them) holds 50 stub workers: ready workers in its registry
    and worker list, whose address is one small server in another process that counts every
    request it gets. A snapshot takes each worker's queue and token figures from the queen's own
    counters (rbee.queen.ledger: the queen is its workers' only client), so the stub server
    should get none: the table says how many it got. Autoload is off (no standby).
    Two fleets: **idle** (no request outstanding) and **busy** (one request outstanding on each,
    as the registry counts them, and 40 tokens a second relayed from each, as the relay counts
    them: the worst case for a snapshot).
    Dashboards are the real `RbeeApp` (rbee.tui.app), each in its own process, headless
    (Textual's `run_async(headless=True)`: everything but writing to a terminal), polling
    `GET /v1/dashboard` once a second as `rbee tui` does.
    For each fleet, for 0, 1 and 5 dashboards in turn: the dashboards start, get 5 s to settle,
    then for WINDOW seconds the queen's CPU time (utime + stime of its process, from /proc) is
    read; the share of one core is that CPU time over the wall time. Each dashboard reports its
    own CPU over the same window and, per refresh, the time to fetch the snapshot and the time to
    show it. Also: the time of one snapshot build (20 requests 0.6 s apart, so each one builds;
    the snapshot is shared for 0.5 s).

Goal (issue "Textual TUI dashboard")
    Each dashboard adds <= 1% of a core to the queen at 1 refresh/s.

Run `.venv/bin/python bench/tui.py` (about 4 minutes); it rewrites the `## TUI dashboard` section
of docs/benchmarks.md. `--window S` changes the measuring window (20 s); `--no-write` prints only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from benchdoc import DOC, run_main, write_section
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rbee.api.workers import WorkerInfo
from rbee.config.limits import DEFAULT_LIMITS
from rbee.config.settings import Paths
from rbee.net import bind_tcp
from rbee.queen.app import create_app
from rbee.queen.registry import LOCAL_HIVE
from rbee.queen.service import Queen, QueenOptions
from rbee.serve import run_event_loop, uvicorn_server
from rbee.tui.app import RbeeApp
from rbee.tui.client import AsyncQueenClient

ROOT = Path(__file__).resolve().parent.parent
START_MARK = "<!-- tui:start -->"
END_MARK = "<!-- tui:end -->"
WORKERS = 50
COUNTS = (0, 1, 5)
SETTLE = 5.0
FLEET_NOTE = (
    f"{WORKERS} stub workers, ready, their address one stub server in another process that "
    "counts the requests it gets. **idle**: no request outstanding; **busy**: one request "
    "outstanding on each and 40 tokens a second counted from each, as the relay counts them"
)
LOAD_NOTE = "(the machine is shared: figures include waiting for a core)"
HEADER = "\n".join(
    (
        "| fleet | dashboards | queen CPU (share of a core) | added per dashboard "
        "| each dashboard's own CPU | refreshes measured | fetch p50 / p99 (ms) | show p50 (ms) "
        "| refresh p50 / p99 (ms) | worker requests in the window |",
        "|---|---|---|---|---|---|---|---|---|---|",
    )
)


def progress(message: str) -> None:
    print(f"[tui bench] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- child roles ---------------------------------------------------------------------------------


def serve_stubs(port: int) -> None:
    """The 50 workers' /health: one small server answering for all of them."""
    started = time.monotonic()
    asked = [0]

    async def count(request: Request) -> JSONResponse:
        return JSONResponse({"asked": asked[0]})

    async def health(request: Request) -> JSONResponse:
        asked[0] += 1
        tokens = int((time.monotonic() - started) * 40)
        stats = {"queued": 0, "active": 0, "served": tokens // 40, "generated_tokens": tokens,
                 "prompt_tokens": tokens, "rejected": 0}  # fmt: skip
        return JSONResponse({"status": "ok", "role": "worker", "stats": stats})

    app = Starlette(routes=[Route("/health", health), Route("/count", count)])
    sock = bind_tcp("127.0.0.1", port)
    run_event_loop(uvicorn_server(app, graceful=1).serve(sockets=[sock]))


def serve_queen(port: int, data: Path, stub_port: int, busy: bool) -> None:
    """A queen whose worker list holds WORKERS stub workers beside its real (empty) local hive;
    `busy`: each with a request outstanding and 40 tokens a second counted from it, as the
    relay counts them."""
    paths = Paths(config_dir=data / "config", data_dir=data / "data")
    options = QueenOptions(port=port, limits=dataclasses.replace(DEFAULT_LIMITS, autoload=False))

    async def run() -> None:
        async with Queen(paths, options) as queen:
            stubs = [
                WorkerInfo(id=f"stub-{i}", model=f"stub-model-{i % 5}", engine="stub",
                           device="cpu", state="ready", pid=None, port=stub_port,
                           context_length=4096, started_at=time.time())
                for i in range(WORKERS)
            ]  # fmt: skip
            for info in stubs:
                queen.registry.update(LOCAL_HIVE, info)
                endpoint = queen.registry.endpoint(LOCAL_HIVE, info.id)
                if busy and endpoint is not None:
                    endpoint.outstanding = 1
            real = queen.workers
            queen.workers = lambda: [*real(), *((LOCAL_HIVE, s) for s in stubs)]  # type: ignore[method-assign]
            server = uvicorn_server(create_app(queen), graceful=1)
            relaying = [e for e in queen.registry.endpoints() if busy and e.outstanding]

            async def relay_tokens() -> None:  # what the relay adds as a stream passes
                while True:
                    await asyncio.sleep(0.25)
                    for e in relaying:
                        e.tokens_out += 10

            ticker = asyncio.ensure_future(relay_tokens())
            try:
                await server.serve(sockets=[bind_tcp("127.0.0.1", port)])
            finally:
                ticker.cancel()

    run_event_loop(run())


def run_dashboard(url: str, seconds: float, out: Path) -> None:
    """One headless dashboard for `seconds`; writes its CPU over the window and refresh times."""
    fetches: list[float] = []
    shows: list[float] = []
    window: dict[str, float] = {}

    class Timed(AsyncQueenClient):
        async def snapshot(self) -> dict[str, Any]:
            t = time.perf_counter()
            try:
                return await super().snapshot()
            finally:
                if "start" in window:
                    fetches.append(time.perf_counter() - t)

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    class TimedApp(RbeeApp):
        def on_mount(self) -> None:  # Textual runs RbeeApp's own on_mount as well
            self.set_timer(SETTLE, self.begin)
            self.set_timer(seconds, self.end)

        def begin(self) -> None:
            window.update(start=time.monotonic(), cpu=cpu())

        def end(self) -> None:
            window.update(end=time.monotonic(), cpu_end=cpu())
            self.exit()

        def show_snapshot(self) -> None:
            t = time.perf_counter()
            super().show_snapshot()
            if "start" in window:
                shows.append(time.perf_counter() - t)

    async def main() -> None:
        async with Timed(url) as client:
            await TimedApp(client).run_async(headless=True, size=(120, 40))

    asyncio.run(main())
    span = window["end"] - window["start"]
    out.write_text(json.dumps({"cpu_share": (window["cpu_end"] - window["cpu"]) / span,
                               "fetches": fetches, "shows": shows}))  # fmt: skip


# -- the benchmark -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip


def wait_healthy(url: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def asked(stub_url: str) -> int:
    """Requests the stub workers' server has had so far."""
    found: int = httpx.get(f"{stub_url}/count", timeout=10).json()["asked"]
    return found


def measure(
    url: str, queen_pid: int, count: int, window: float, tmp: Path, stub_url: str
) -> dict[str, Any]:
    """Queen CPU share over `window` s with `count` dashboards open; their own figures; the
    requests the workers got meanwhile."""
    outs = [tmp / f"dash-{count}-{i}.json" for i in range(count)]
    dashboards = [
        child("--dashboard", url, str(SETTLE + window), str(out), log=tmp / "dashboards.log")
        for out in outs
    ]
    time.sleep(SETTLE)
    a0, c0, t0 = asked(stub_url), cpu_seconds(queen_pid), time.monotonic()
    time.sleep(window)
    c1, t1, a1 = cpu_seconds(queen_pid), time.monotonic(), asked(stub_url)
    for d in dashboards:
        d.wait(60)
    reports = [json.loads(o.read_text()) for o in outs]
    fetches = [f for r in reports for f in r["fetches"]]
    shows = [s for r in reports for s in r["shows"]]
    refreshes = [f + s for r in reports for f, s in zip(r["fetches"], r["shows"], strict=False)]
    return {
        "count": count,
        "queen_share": (c1 - c0) / (t1 - t0),
        "dash_share": statistics.mean(r["cpu_share"] for r in reports) if reports else None,
        "refreshes": len(refreshes),
        "fetch_p50": pct(fetches, 0.5),
        "fetch_p99": pct(fetches, 0.99),
        "show_p50": pct(shows, 0.5),
        "refresh_p50": pct(refreshes, 0.5),
        "refresh_p99": pct(refreshes, 0.99),
        "worker_requests": a1 - a0,
    }


def build_times(url: str, queen_pid: int) -> tuple[list[float], float]:
    """Times of 20 snapshot requests 0.6 s apart (each one builds the snapshot), and the
    queen's CPU seconds per request over them."""
    times = []
    cpu_before = cpu_seconds(queen_pid)
    with httpx.Client(timeout=10) as client:
        for _ in range(20):
            t = time.perf_counter()
            answer = client.get(f"{url}/v1/dashboard")
            times.append(time.perf_counter() - t)
            assert len(answer.json()["workers"]) == WORKERS
            time.sleep(0.6)
    return times, (cpu_seconds(queen_pid) - cpu_before) / len(times)


def _rows(results: list[dict[str, Any]], fleet: str) -> tuple[list[str], float, float]:
    """Table rows of one fleet; the share one dashboard adds, and each of five adds."""
    base = results[0]["queen_share"]

    def ms(value: float) -> str:
        return f"{value * 1000:.1f}"

    rows = []
    for r in results:
        if not r["count"]:
            rows.append(f"| {fleet} | 0 | {base * 100:.2f}% | — | — | — | — | — | — "
                        f"| {r['worker_requests']} |")  # fmt: skip
            continue
        added = (r["queen_share"] - base) / r["count"]
        rows.append(
            f"| {fleet} | {r['count']} | {r['queen_share'] * 100:.2f}% | {added * 100:+.2f}% | "
            f"{r['dash_share'] * 100:.1f}% | {r['refreshes']} | "
            f"{ms(r['fetch_p50'])} / {ms(r['fetch_p99'])} | {ms(r['show_p50'])} | "
            f"{ms(r['refresh_p50'])} / {ms(r['refresh_p99'])} | {r['worker_requests']} |"
        )
    one = results[1]["queen_share"] - base
    five = (results[2]["queen_share"] - base) / 5
    return rows, one, five


def section(
    fleets: dict[str, tuple[list[dict[str, Any]], tuple[list[float], float]]],
    window: float,
    load: tuple[float, float],
) -> str:
    """The `## TUI dashboard` section of docs/benchmarks.md."""
    rows: list[str] = []
    added: dict[str, tuple[float, float]] = {}
    builds: list[str] = []
    for fleet, (results, (times, cpu_each)) in fleets.items():
        fleet_rows, one, five = _rows(results, fleet)
        rows += fleet_rows
        added[fleet] = (one, five)
        builds.append(f"{fleet} fleet p50 {pct(times, 0.5) * 1000:.1f} ms, "
                      f"p99 {pct(times, 0.99) * 1000:.1f} ms, {cpu_each * 1000:.1f} ms of the "
                      "queen's CPU each")  # fmt: skip
    idle_one, idle_five = (x * 100 for x in added["idle"])
    busy_one, busy_five = (x * 100 for x in added["busy"])

    def verdict(one: float, five: float) -> str:
        return "met" if max(one, five) <= 1.0 else "NOT met"

    cpu = platform.processor() or platform.machine()
    return f"""{START_MARK}
## TUI dashboard: the queen's cost with 0, 1 and 5 dashboards open

Written by `bench/tui.py`; do not edit by hand.

| | |
|---|---|
| date | {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC |
| machine | {os.cpu_count()} cores, {cpu} |
| fleet | {FLEET_NOTE} |
| dashboards | the real `RbeeApp`, headless, one process each, 1 refresh/s (`GET /v1/dashboard`) |
| window | {window:.0f} s per row, after {SETTLE:.0f} s to settle |
| load average (1 min) | {load[0]:.2f} at start, {load[1]:.2f} at end {LOAD_NOTE} |
| command | `.venv/bin/python bench/tui.py` |

{HEADER}
{chr(10).join(rows)}

One snapshot build on the queen with {WORKERS} workers (20 requests 0.6 s apart, so each one
builds): {"; ".join(builds)}.

Goal: each dashboard adds <= 1% of a core to the queen at 1 refresh/s. Idle fleet:
**{verdict(idle_one, idle_five)}** (one dashboard adds {idle_one:.2f}%, five add {idle_five:.2f}%
each). Busy fleet: **{verdict(busy_one, busy_five)}** (one adds {busy_one:.2f}%, five add
{busy_five:.2f}% each). The snapshot is built at most once per 0.5 s and shared by every
dashboard polling in that window, so five dashboards cost about what one does. A worker's queue
and token figures are the queen's own counts (it relays every request: every hop asks for the
hive's secret), so a snapshot asks no worker anything, busy or idle (the last column).
{END_MARK}
"""


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(15)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def run_fleet(
    fleet: str, tmp: Path, stub_port: int, window: float
) -> tuple[list[dict[str, Any]], tuple[list[float], float]]:
    """A queen with the stub fleet `fleet` (idle or busy): its snapshot build times, then its
    CPU with 0, 1 and 5 dashboards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp / fleet
    log = tmp / f"queen-{fleet}.log"
    queen = child("--queen", str(port), str(data), str(stub_port), fleet, log=log)
    try:
        wait_healthy(url)
        progress(f"{fleet} fleet: queen at {url} with {WORKERS} stub workers")
        builds = build_times(url, queen.pid)
        results = []
        for count in COUNTS:
            progress(f"{fleet} fleet: {count} dashboard(s), {window:.0f} s")
            results.append(
                measure(url, queen.pid, count, window, tmp, f"http://127.0.0.1:{stub_port}")
            )
            progress(f"  queen {results[-1]['queen_share'] * 100:.2f}% of a core")
    finally:
        stop(queen)
        if log.exists() and "Traceback" in log.read_text():
            progress(log.read_text()[-3000:])
    return results, builds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--stubs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--queen", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--dashboard", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stubs:
        serve_stubs(args.stubs)
        return 0
    if args.queen:
        serve_queen(int(args.queen[0]), Path(args.queen[1]), int(args.queen[2]),
                    args.queen[3] == "busy")  # fmt: skip
        return 0
    if args.dashboard:
        run_dashboard(args.dashboard[0], float(args.dashboard[1]), Path(args.dashboard[2]))
        return 0

    load_start = os.getloadavg()[0]
    fleets: dict[str, tuple[list[dict[str, Any]], tuple[list[float], float]]] = {}
    with tempfile.TemporaryDirectory(prefix="rbee-bench-tui-") as raw:
        tmp = Path(raw)
        stub_port = free_port()
        stubs = child("--stubs", str(stub_port), log=tmp / "stubs.log")
        try:
            wait_healthy(f"http://127.0.0.1:{stub_port}")
            for fleet in ("idle", "busy"):
                fleets[fleet] = run_fleet(fleet, tmp, stub_port, args.window)
        finally:
            stop(stubs)
    text = section(fleets, args.window, (load_start, os.getloadavg()[0]))
    print(text)
    if not args.no_write:
        write_section(text, START_MARK, END_MARK, DOC)
        progress(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    run_main(main, progress)
