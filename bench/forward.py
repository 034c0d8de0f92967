"""Port-forward benchmark: rbee's own forwards (a channel slot per connection, rbee/ssh/forward.py)
against asyncssh's `forward_local_port`, over the same SSH connection to a real sshd, in one run.

What is measured
    One hive (a network namespace running its own OpenSSH sshd, `tests.hives.test_hives`) runs a
    small uvicorn app on its loopback. One asyncssh connection (`HiveConnection`) holds both
    forwards to it, and the same httpx client code drives each:
      small       GET of a 200-byte JSON answer, one kept-alive connection, one request at a time
      new conn    the same GET on a new connection each time (so a new channel each time)
      stream      GET of 64 small SSE events, like a streamed answer, kept-alive connection
      4 at once   four new-connection GETs in flight at once (fewer than the 5 forwarded slots)
      8 MiB       GET of an 8 MiB body: throughput
      small, no PTY   `small` on a second connection with no PTY session open (see the notes)
    Figures are medians of per-request times (throughput for 8 MiB). The two forwards take turns
    in rounds (rbee, asyncssh, rbee, ...) so drift on a shared machine hits both alike; each is
    warmed up first. Ratios are rbee / asyncssh: under 1 means rbee's is faster (for MB/s, over 1).

Run `.venv/bin/python bench/forward.py` (about a minute) or `--quick`. Needs root, `ip netns` and
sshd, as the SSH tests do (`make sysdeps`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for `tests.*` when run as `python bench/forward.py`

from benchdoc import DOC, run_main, write_section  # noqa: E402

from rbee.config.hives import load_hives  # noqa: E402
from rbee.serve import run_event_loop  # noqa: E402
from rbee.ssh.connection import HiveConnection  # noqa: E402
from tests.hives import TestHive, cleanup_stale, test_hives, unavailable_reason  # noqa: E402

START_MARK = "<!-- forward:start -->"
END_MARK = "<!-- forward:end -->"
APP_PORT = 9200
BIG = 8 << 20

APP = r"""
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

BIG = b"x" * int(sys.argv[2])

async def small(request):
    return JSONResponse({"object": "list", "data": [{"id": "smollm2-135m", "pad": "." * 140}]})

async def stream(request):
    async def events():
        for i in range(64):
            yield b'data: {"choices":[{"delta":{"content":"tok%d"}}]}\n\n' % i
        yield b"data: [DONE]\n\n"
    return StreamingResponse(events(), media_type="text/event-stream")

async def big(request):
    return Response(BIG, media_type="application/octet-stream")

app = Starlette(routes=[Route("/small", small), Route("/stream", stream), Route("/big", big)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def progress(message: str) -> None:
    print(f"[forward] {message}", file=sys.stderr, flush=True)


async def _small(client: httpx.AsyncClient) -> None:
    (await client.get("/small")).raise_for_status()


async def _stream(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/stream") as response:
        async for _ in response.aiter_bytes():
            pass


async def _big(client: httpx.AsyncClient) -> None:
    response = await client.get("/big")
    assert len(response.content) == BIG


def _client(url: str, *, keep_alive: bool = True) -> httpx.AsyncClient:
    limits = httpx.Limits(max_keepalive_connections=8 if keep_alive else 0)
    return httpx.AsyncClient(base_url=url, limits=limits, trust_env=False, timeout=30)


async def _timed(call: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def _batch(kind: str, url: str, n: int) -> list[float]:
    """`n` timings of one kind of request through the forward at `url`."""
    if kind == "new conn":
        async with _client(url, keep_alive=False) as client:
            return [await _timed(lambda: _small(client)) for _ in range(n)]
    if kind == "4 at once":
        async with _client(url, keep_alive=False) as client:

            async def four() -> None:
                await asyncio.gather(*(_small(client) for _ in range(4)))

            return [await _timed(four) for _ in range(n)]
    call = {"small": _small, "stream": _stream, "8 MiB": _big}[kind]
    async with _client(url) as client:
        await call(client)  # the connection is open before timing
        return [await _timed(lambda: call(client)) for _ in range(n)]


KINDS = {"small": 40, "new conn": 40, "stream": 20, "4 at once": 20, "8 MiB": 3}
NO_PTY = "small, no PTY"
"""The same as `small` on a connection with no PTY session: sshd then leaves Nagle on."""


async def measure(config_path: Path, alias: str, rounds: int) -> dict[str, dict[str, list[float]]]:
    config = load_hives(config_path)
    times: dict[str, dict[str, list[float]]] = {
        k: {"rbee": [], "asyncssh": []} for k in [*KINDS, NO_PTY]
    }
    for pty in (True, False):
        async with HiveConnection.of(config, alias) as conn:
            # As the queen's: its hive runs in a PTY session on the connection, and sshd sets
            # TCP_NODELAY on a connection once it has one.
            session = None
            if pty:
                session = await conn.conn.create_process("sleep 3600", term_type="dumb")
            ours = await conn.forward(APP_PORT)
            theirs = await conn.conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", APP_PORT)
            urls = {"rbee": ours.url, "asyncssh": f"http://127.0.0.1:{theirs.get_port()}"}
            kinds = KINDS if pty else {"small": 10}
            try:
                for url in urls.values():  # warm-up, unmeasured
                    for kind in kinds:
                        await _batch(kind, url, 2)
                for r in range(rounds):
                    for kind, n in kinds.items():
                        order = list(urls.items()) if r % 2 == 0 else list(urls.items())[::-1]
                        for name, url in order:
                            times[kind if pty else NO_PTY][name] += await _batch(kind, url, n)
                    progress(f"round {r + 1}/{rounds}" + ("" if pty else " (no PTY)"))
            finally:
                ours.close()
                theirs.close()
                if session is not None:
                    session.close()
    return times


def start_app(hive: TestHive) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", hive.netns, sys.executable, "-c", APP, str(APP_PORT), str(BIG)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    probe = ["ip", "netns", "exec", hive.netns, sys.executable, "-c",
             f"import socket; socket.create_connection(('127.0.0.1', {APP_PORT}), 1)"]  # fmt: skip
    while subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            why = proc.stderr.read() if proc.stderr else ""
            raise SystemExit(f"forward: the app did not start: {why}")
        time.sleep(0.2)
    return proc


def render(times: dict[str, dict[str, list[float]]], rounds: int, runtime: float) -> str:
    def cell(kind: str, name: str) -> tuple[str, float]:
        values = times[kind][name]
        if kind == "8 MiB":
            rate = BIG / (1 << 20) / statistics.median(values)
            return f"{rate:.0f} MB/s", rate
        median = statistics.median(values) * 1000
        return f"{median:.2f} ms", median

    rows = []
    for kind in [*KINDS, NO_PTY]:
        (ours, a), (theirs, b) = cell(kind, "rbee"), cell(kind, "asyncssh")
        rows.append(f"| {kind} | {len(times[kind]['rbee'])} | {ours} | {theirs} | {a / b:.2f}x |")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        START_MARK,
        "## Port forwards: rbee's (a channel slot per connection) vs asyncssh's",
        "",
        f"`bench/forward.py`, {when}, {rounds} rounds, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end, "
        f"{runtime:.0f} s. One real sshd in a network namespace, one asyncssh connection holding "
        "both forwards and a PTY session (as the queen's connection holds its hive's), a uvicorn "
        "app on the hive's loopback; the client runs on uvloop, as the queen does.",
        "",
        "| request | n per forward | rbee (median) | asyncssh (median) | rbee / asyncssh |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "- Times are per request (per group of four for `4 at once`); for 8 MiB the figure is "
        "throughput, where a ratio over 1 means rbee's is faster. Everything (client, sshd, app) "
        "shares the same cores, so ratios mean more than the times.",
        f"- `{NO_PTY}`: the `small` request on a second connection that has no PTY session. "
        "sshd sets TCP_NODELAY on a connection only once a PTY is allocated on it; without one, "
        "a small answer can wait for the client's delayed ACK (about 40 ms on Linux). The queen "
        "holds its hive's PTY session for as long as it forwards to that hive.",
        END_MARK,
    ]) + "\n"  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 6)")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 6)
    reason = unavailable_reason()
    if reason is not None:
        sys.exit(f"forward: {reason}")
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="forward-bench-"))
    try:
        cleanup_stale()
        with test_hives(1, base / "hives") as hive_set:
            hive = next(iter(hive_set))
            app = start_app(hive)
            try:
                # on uvloop, as the queen runs
                times = run_event_loop(measure(hive_set.config, hive.alias, rounds))
            finally:
                app.kill()
                app.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    section = render(times, rounds, time.monotonic() - started)
    write_section(section, START_MARK, END_MARK, DOC)
    progress(f"wrote {DOC.relative_to(ROOT)}")
    print(section, end="")
    return 0


if __name__ == "__main__":
    run_main(main, progress)
