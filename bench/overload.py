"""Overload benchmark: one worker's capacity, then 1x, 2x and 4x of it offered for 60 s each, to
rbee and to llama-cpp-python's own OpenAI server in the same run; plus the time a request for an
unloaded model takes to its first token, against the model's own load time.

What is measured
    Both servers serve the same GGUF (the default model) with the same engine threads (2) and
    context (4096); rbee as `rbee up --max-queued 8` (one worker: at most 8 requests wait behind
    the one it generates, more get 503 at once), the peer as `python -m llama_cpp.server`
    (unbounded queue). Every request is the same streamed chat completion: a fixed prompt,
    max_tokens 32, temperature 0, no stop, so every request does the same work.

    Capacity   closed loop, one request at a time (2 unmeasured, then 20): mean service time S
               (send to end of stream), capacity C = 1/S req/s; for rbee through the queen, and
               for the peer.
    Offered    open loop: Poisson arrivals (seeded) at k x C_rbee req/s (the same rate for both
               servers), k = 1, 2, 4, for 60 s each; each request is its own asyncio task, so a
               slow server never slows the arrivals (at most 1000 in flight, client timeout
               600 s). A phase ends 120 s after its last arrival at the latest: requests still
               open then are cancelled and counted as timed out. Between phases the script waits
               until the server is idle (rbee: its worker's /health shows nothing active or
               queued; the peer: a 1-token probe is answered about as fast as when idle). The
               order of the two servers alternates from one k to the next.
    Per request: HTTP status, time to the response headers, TTFT (to the first `data:` chunk
    with content; a stream that breaks counts as failed), for a 503 the time to its whole answer,
    its `Retry-After` header and error code (`server_overloaded`: a rejection; any other 5xx is
    reported apart). At the end of each rbee phase, the queen's peak RSS (VmHWM of the
    `rbee up` process; the worker is a child process and not counted).
    Autoload   rbee started with no worker (`rbee queen run`, the model stored): one streamed
               request for it, time to its first token; against the model's own load time
               (`llama_cpp.Llama(...)` plus a 1-token answer, in a fresh subprocess, imports
               excluded; median of 3), measured in the same run.

    Engine S   for each rbee phase, the mean time a request spent on the worker's engine (its
               /health counters `served` and `service_s`, before the phase and once idle after
               it): the pace at which its queue drained under that load, where the queen, the
               client and the engine share the 2 cores.

Goals (issue "Overload")
    At 4x, rbee's admitted p99 TTFT <= (max_queued + 1) x S x 1.1, S the engine's mean service
    time during the 4x phase (the closed-loop S is shown beside it); rejections answered in
    <= 10 ms p99, every one with `Retry-After`; no other 5xx at any load; the unloaded model's
    first token <= its load time + 0.5 s. The peer's figures stand beside rbee's.

Run `.venv/bin/python bench/overload.py`: about 12 minutes on a quiet machine, at most about 20
(each phase ends at most 120 s after its arrivals); it rewrites the `## Overload` section of
docs/benchmarks.md. `--quick` runs 10 s phases at 1x and 4x only (about 4 minutes) and writes
nothing unless `--write` is given. `make bench` installs what llama_cpp.server needs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import relay
from benchdoc import run_main, write_section
from relay import (
    cpu_model,
    delta_text,
    free_port,
    load_average,
    model_gguf,
    parse_event,
    percentile,
    poll_json,
    rbee_env,
    ready_worker,
    report_server_errors,
    spawn,
    stop,
    wait_for,
    wait_gone,
)

import rbee

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START_MARK = "<!-- overload:start -->"
END_MARK = "<!-- overload:end -->"
MODEL = relay.MODEL
THREADS = 2
N_CTX = 4096
MAX_QUEUED = 8
MAX_TOKENS = 32
PROMPT = "Write a long story about a robot who learns to paint, with many details."
SEED = 20240601
INFLIGHT_CAP = 1000
CLIENT_TIMEOUT = httpx.Timeout(600.0, connect=30.0)
IDLE_TIMEOUT = 600.0
REJECT_GOAL_MS = 10.0
AUTOLOAD_SLACK = 0.5
AUTOLOAD_SETTLE = 5.0
"""Seconds the queen runs with the worker stopped before the request the goal judges."""
LOAD_REPEATS = 3
SERVERS = ("rbee", "llama")
LABELS = {"rbee": f"rbee (queen, max_queued {MAX_QUEUED})", "llama": "llama_cpp.server"}

Outcome = Literal["ok", "rejected", "other_5xx", "other_http", "failed", "timeout", "skipped"]


@dataclass(frozen=True)
class Settings:
    """How much to run."""

    quick: bool
    write: bool
    duration: float
    """Seconds of arrivals per phase."""
    loads: tuple[int, ...]
    """Offered load, as multiples of rbee's capacity."""
    capacity_requests: int
    drain: float
    """Seconds after a phase's last arrival before open requests count as timed out."""


@dataclass
class Record:
    """One request of a phase, as the client saw it."""

    status: int | None = None
    outcome: Outcome | None = None
    headers_s: float | None = None
    ttft_s: float | None = None
    answered_s: float | None = None
    """For a refusal: from sending to the end of its answer."""
    retry_after: str | None = None
    code: str | None = None
    queued_ms: float | None = None
    error: str | None = None


@dataclass
class Phase:
    """One server at one offered load."""

    rate: float
    records: list[Record] = field(default_factory=list)
    queen_hwm_kb: int | None = None
    idle_wait: float = 0.0
    service: float | None = None
    """rbee: the mean seconds a request spent on the worker's engine during the phase (its
    /health counters before and after), queueing excluded."""


@dataclass(frozen=True)
class Capacity:
    """Closed-loop figures of one server."""

    service: float
    """Mean seconds from sending a request to the end of its stream."""
    ttft: float
    tokens: float
    """Mean content chunks per answer."""

    @property
    def rate(self) -> float:
        """Requests per second one worker completes back to back."""
        return 1.0 / self.service


@dataclass(frozen=True)
class Autoload:
    """A request for an unloaded model, against the model's own load time."""

    load_times: tuple[float, ...]
    ttft: float | None
    loading_comments: int = 0
    skipped: str | None = None
    ttfts: tuple[float, ...] = ()
    """Each round's first token on the running queen (`ttft` is their median)."""
    ttft_at_start: float | None = None
    """The same request sent the moment the queen first answered /health (its hive still reading
    the machine's facts and starting its standby worker): the first-token figure of a cold
    start, reported beside the goal's."""
    worker_start: float | None = None
    """rbee's worker cold start, from the hive starting its process to the worker ready (the
    queen's log): interpreter, imports, checksum, load, warm-up decode."""

    @property
    def load_time(self) -> float:
        """Median load + 1-token answer, in a fresh process."""
        return statistics.median(self.load_times) if self.load_times else math.nan


@dataclass
class Run:
    """Everything one run measured."""

    settings: Settings
    capacity: dict[str, Capacity] = field(default_factory=dict)
    phases: dict[tuple[str, int], Phase] = field(default_factory=dict)
    autoload: Autoload | None = None
    llama_command: str = ""
    load: list[str] = field(default_factory=list)


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[overload {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes


def rbee_up_argv(data: Path, port: int) -> list[str]:
    """`rbee up`: the queen, its local hive and one worker of the default model."""
    return [sys.executable, "-m", "rbee", "--data-dir", str(data), "up", "--port", str(port),
            "--model", MODEL, "--threads", str(THREADS), "--ctx-size", str(N_CTX),
            "--max-queued", str(MAX_QUEUED)]  # fmt: skip


def llama_argv(gguf: Path, port: int) -> list[str]:
    """llama-cpp-python's server on the same GGUF, threads and context (see relay.llama_argv)."""
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
            "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
            "--n_ctx", str(N_CTX), "--host", "127.0.0.1", "--port", str(port),
            "--interrupt_requests", "False"]  # fmt: skip


@dataclass
class Servers:
    """The running servers."""

    urls: dict[str, str]
    queen_pid: int
    worker_url: str
    llama_command: str
    worker_headers: dict[str, str]


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    """Start `rbee up` and llama_cpp.server; stop both after."""
    with relay.rbee_and_llama(rbee_up_argv, "rbee-overload-") as pair:
        yield Servers(
            urls={"rbee": pair.queen_url, "llama": pair.llama_url},
            queen_pid=pair.queen_pid,
            worker_url=str(pair.worker["url"]),
            llama_command=pair.llama_command,
            worker_headers=pair.worker_headers,
        )


def peak_rss_kb(pid: int) -> int | None:
    """A process's peak resident set (VmHWM) in kB, or None if it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


# ---------------------------------------------------------------------------------------------
# Requests


def request_body(max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """The one request every phase sends (repeat_penalty: see relay.request_body)."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "repeat_penalty": 1.0,
    }


def error_code(raw: bytes) -> str | None:
    """The `error.code` of an OpenAI error body, if it is one."""
    with contextlib.suppress(ValueError, AttributeError):
        code = json.loads(raw).get("error", {}).get("code")
        return str(code) if code is not None else None
    return None


def classify(status: int, code: str | None) -> Outcome:
    """What a non-200 answer counts as."""
    if status == 503 and code == "server_overloaded":
        return "rejected"
    return "other_5xx" if status >= 500 else "other_http"


async def send(client: httpx.AsyncClient, url: str, record: Record) -> None:
    """Send the request, stream its answer, fill in `record` (cancellation leaves it open)."""
    sent = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=request_body()) as r:
            record.status = r.status_code
            record.headers_s = time.perf_counter() - sent
            with contextlib.suppress(ValueError):
                record.queued_ms = float(r.headers.get("x-rbee-queued-ms", "x"))
            if r.status_code != 200:
                raw = await r.aread()
                record.answered_s = time.perf_counter() - sent
                record.retry_after = r.headers.get("retry-after")
                record.code = error_code(raw)
                record.outcome = classify(r.status_code, record.code)
                record.error = f"HTTP {r.status_code}: {raw[:200].decode(errors='replace')}"
                return
            async for line in r.aiter_lines():
                event = parse_event(line)
                if event is not None and record.ttft_s is None and delta_text(event):
                    record.ttft_s = time.perf_counter() - sent
    except (httpx.HTTPError, RuntimeError, ValueError) as exc:
        record.outcome = "failed"
        record.error = f"{type(exc).__name__}: {exc}"[:300]
        return
    if record.ttft_s is None:
        record.outcome = "failed"
        record.error = "the stream carried no content"
    else:
        record.outcome = "ok"


async def timed_request(
    client: httpx.AsyncClient, url: str, max_tokens: int
) -> tuple[float, float, int]:
    """One request alone: (TTFT, whole time, content chunks); raises if it fails."""
    body = request_body(max_tokens)
    chunks = 0
    ttft = math.nan
    sent = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            event = parse_event(line)
            if event is not None and delta_text(event):
                if not chunks:
                    ttft = time.perf_counter() - sent
                chunks += 1
    if not chunks:
        raise RuntimeError("the stream carried no content")
    return ttft, time.perf_counter() - sent, chunks


async def measure_capacity(url: str, n: int) -> Capacity:
    """Closed loop: 2 warm-up requests, then `n` one after the other."""
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, trust_env=False) as client:
        for _ in range(2):
            await timed_request(client, url, MAX_TOKENS)
        samples = [await timed_request(client, url, MAX_TOKENS) for _ in range(n)]
    return Capacity(
        service=statistics.mean(s[1] for s in samples),
        ttft=statistics.mean(s[0] for s in samples),
        tokens=statistics.mean(s[2] for s in samples),
    )


async def offer(url: str, rate: float, settings: Settings, seed: int) -> list[Record]:
    """Open loop: Poisson arrivals at `rate` for the phase, each request its own task; requests
    still open `drain` seconds after the last arrival are cancelled and count as timed out."""
    rng = random.Random(seed)
    records: list[Record] = []
    limits = httpx.Limits(max_connections=INFLIGHT_CAP + 16, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=limits, trust_env=False) as client,
        asyncio.TaskGroup() as group,
    ):
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        start = loop.time()
        at = rng.expovariate(rate)
        while at < settings.duration:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            record = Record()
            records.append(record)
            tasks = {t for t in tasks if not t.done()}
            if len(tasks) >= INFLIGHT_CAP:
                record.outcome = "skipped"
            else:
                tasks.add(group.create_task(send(client, url, record)))
            at += rng.expovariate(rate)
        open_tasks = {t for t in tasks if not t.done()}
        if open_tasks:
            progress(f"  arrivals over; waiting for {len(open_tasks)} open request(s)")
            _, late = await asyncio.wait(open_tasks, timeout=settings.drain)
            for task in late:
                task.cancel()
    for record in records:
        if record.outcome is None:
            record.outcome = "timeout"
    return records


async def engine_time(worker_url: str, headers: dict[str, str]) -> tuple[int, float]:
    """The worker's (requests served, seconds they spent on the engine) so far."""
    async with httpx.AsyncClient(timeout=5.0, trust_env=False, headers=headers) as client:
        stats = (await client.get(f"{worker_url}/health")).json()["stats"]
    return int(stats["served"]), float(stats["service_s"])


async def wait_idle_rbee(worker_url: str, headers: dict[str, str]) -> float:
    """Wait until the worker has nothing active or queued; return the seconds waited."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=5.0, trust_env=False, headers=headers) as client:
        while time.monotonic() - started < IDLE_TIMEOUT:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                stats = (await client.get(f"{worker_url}/health")).json().get("stats", {})
                if not stats.get("active") and not stats.get("queued"):
                    return time.monotonic() - started
            await asyncio.sleep(0.5)
    raise RuntimeError(f"rbee's worker still busy after {IDLE_TIMEOUT:.0f}s")


async def wait_idle_peer(url: str, idle_ttft: float) -> float:
    """Wait until a 1-token probe is answered about as fast as on an idle server (the peer
    generates on for requests whose clients left); return the seconds waited."""
    started = time.monotonic()
    threshold = max(0.5, 3 * idle_ttft)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, trust_env=False) as client:
        while time.monotonic() - started < IDLE_TIMEOUT:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                _, took, _ = await timed_request(client, url, 1)
                if took < threshold:
                    return time.monotonic() - started
            await asyncio.sleep(1.0)
    raise RuntimeError(f"llama_cpp.server still busy after {IDLE_TIMEOUT:.0f}s")


async def run_load(running: Servers, run: Run) -> None:
    """Capacity of both servers, then every offered load on both, alternating which goes first."""
    settings = run.settings
    for name in SERVERS:
        progress(f"capacity of {LABELS[name]}: {settings.capacity_requests} requests in a row")
        cap = await measure_capacity(running.urls[name], settings.capacity_requests)
        run.capacity[name] = cap
        progress(f"  S = {cap.service * 1000:.0f} ms, C = {cap.rate:.2f} req/s")
    rate_one = run.capacity["rbee"].rate
    for i, k in enumerate(settings.loads):
        order = SERVERS if i % 2 == 0 else SERVERS[::-1]
        for name in order:
            rate = k * rate_one
            progress(f"{LABELS[name]}: {k}x = {rate:.2f} req/s for {settings.duration:.0f}s")
            phase = Phase(rate=rate)
            if name == "rbee":
                served, busy = await engine_time(running.worker_url, running.worker_headers)
            phase.records = await offer(running.urls[name], rate, settings, SEED + k)
            if name == "rbee":
                phase.queen_hwm_kb = peak_rss_kb(running.queen_pid)
                phase.idle_wait = await wait_idle_rbee(running.worker_url, running.worker_headers)
                served_now, busy_now = await engine_time(running.worker_url, running.worker_headers)
                if served_now > served:
                    phase.service = (busy_now - busy) / (served_now - served)
            else:
                phase.idle_wait = await wait_idle_peer(running.urls[name], run.capacity[name].ttft)
            run.phases[(name, k)] = phase
            row = summarize(phase)
            progress(
                f"  {row.completed} completed, TTFT p99 {row.ttft_p99}, {row.rejected} rejected, "
                f"{row.other_5xx} other 5xx, {row.failed} failed, {row.timed_out} timed out; "
                f"idle again after {phase.idle_wait:.1f}s"
            )


# ---------------------------------------------------------------------------------------------
# Unloaded model


LOAD_SCRIPT = """
import json, sys, time
from llama_cpp import Llama
started = time.perf_counter()
llm = Llama(model_path=sys.argv[1], n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]),
            n_ctx=int(sys.argv[3]), verbose=False)
llm.create_chat_completion(messages=[{"role": "user", "content": sys.argv[4]}], max_tokens=1,
                           temperature=0)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def model_load_time() -> float:
    """Seconds to load the GGUF and answer 1 token, in a fresh process (imports excluded)."""
    argv = [sys.executable, "-c", LOAD_SCRIPT, str(model_gguf()), str(THREADS), str(N_CTX), PROMPT]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


async def first_token_unloaded(url: str) -> tuple[float | None, int, str | None]:
    """One streamed request for the model with no worker: (TTFT, `: loading` comments, reason it
    could not be measured)."""
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, trust_env=False) as client:
        # The clock starts once the client exists: making one loads the CA bundle (~70 ms here),
        # the client's cost, not the server's; model_load_time() leaves its imports out alike.
        sent = time.perf_counter()
        return await _first_token(client, url, sent)


async def _first_token(
    client: httpx.AsyncClient, url: str, sent: float
) -> tuple[float | None, int, str | None]:
    loading = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=request_body()) as r:
        if r.status_code != 200:
            raw = (await r.aread())[:300].decode(errors="replace")
            return None, 0, f"HTTP {r.status_code} for a stored model with no worker: {raw}"
        async for line in r.aiter_lines():
            if line.startswith(": loading"):
                loading += 1
            event = parse_event(line)
            if event is not None and delta_text(event):
                return time.perf_counter() - sent, loading, None
    return None, loading, "the stream ended without content"


_LOGGED = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO rbee\.hive\.supervisor: "


def worker_start_time(log: str) -> float | None:
    """Seconds from the hive starting the last worker's process to that worker ready, from the
    queen's log lines; None if they are not there."""
    starts = list(re.finditer(_LOGGED + r"starting worker (\S+):", log))
    if not starts:
        return None
    began = starts[-1]
    ready = re.compile(_LOGGED + rf"worker {re.escape(began.group(2))} ready on port").search(
        log, began.end()
    )
    if ready is None:
        return None
    stamp = "%Y-%m-%d %H:%M:%S,%f"
    at = [dt.datetime.strptime(m.group(1), stamp) for m in (began, ready)]
    return (at[1] - at[0]).total_seconds()


def measure_autoload() -> Autoload:
    """A request for the model on a queen without a worker: once right after the queen's start,
    then in rounds on the queen running for a while with that worker stopped (the case the goal
    is about: a model parked or not yet used), each beside the model's own load time."""
    tmp = Path(tempfile.mkdtemp(prefix="rbee-autoload-"))
    data, env = rbee_env(tmp)
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp / "queen.log"
    argv = [sys.executable, "-m", "rbee", "--data-dir", str(data), "queen", "run",
            "--port", str(port)]  # fmt: skip
    progress(f"rbee queen with no worker on {url}; log {log}")
    queen = spawn(argv, env, log)
    worker: dict[str, Any] | None = None
    try:
        wait_for(lambda: poll_json(f"{url}/health"), queen, log, "rbee queen")
        listing = poll_json(f"{url}/v1/workers") or {}
        if listing.get("data"):
            return Autoload((), None, skipped="the queen started a worker by itself")
        at_start, _, reason = asyncio.run(first_token_unloaded(url))
        worker = ready_worker(url)
        if reason or worker is None:
            reason = reason or "no ready worker after the first request"
            progress(f"  autoload skipped: {reason}")
            return Autoload((), None, skipped=reason)
        progress(f"  right after the queen's start: first token after {at_start or math.nan:.2f}s")
        # Each round: the worker stopped, the queen left running a while, then the model's own
        # load time and the request for it back to back, so both see the machine alike.
        loads, ttfts, starts, comments = [], [], [], 0
        for _ in range(LOAD_REPEATS):
            stopped = httpx.delete(f"{url}/v1/workers/{worker['id']}", timeout=60,
                                   trust_env=False)  # fmt: skip
            stopped.raise_for_status()
            wait_gone(int(worker["pid"]), "rbee worker (autoload, stopped)")
            time.sleep(AUTOLOAD_SETTLE)
            loads.append(model_load_time())
            ttft, comments, reason = asyncio.run(first_token_unloaded(url))
            worker = ready_worker(url)
            if reason or ttft is None or worker is None:
                reason = reason or "no ready worker after the request"
                progress(f"  autoload skipped: {reason}")
                return Autoload(tuple(loads), None, skipped=reason)
            ttfts.append(ttft)
            started = worker_start_time(log.read_text(errors="replace"))
            if started is not None:
                starts.append(started)
            progress(f"  model load {loads[-1]:.2f}s; on the running queen: first token after "
                     f"{ttft:.2f}s ({comments} `: loading` comments)")  # fmt: skip
        return Autoload(tuple(loads), statistics.median(ttfts), loading_comments=comments,
                        worker_start=statistics.median(starts) if starts else None,
                        ttft_at_start=at_start, ttfts=tuple(ttfts))  # fmt: skip
    finally:
        stop(queen, "rbee queen (autoload)")
        if worker and worker.get("pid"):
            wait_gone(int(worker["pid"]), "rbee worker (autoload)")
        if report_server_errors({"rbee queen (autoload)": log}, data):
            progress(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Row:
    """The summary of one phase, as the table shows it."""

    sent: int
    completed: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    """Infinite when the percentile falls on a request that timed out before its first token."""
    rejected: int
    reject_p99_ms: float
    retry_after_all: bool
    other_5xx: int
    failed: int
    timed_out: int
    skipped: int

    @property
    def ttft_p99(self) -> str:
        """p99 TTFT for the progress line."""
        return _ms(self.ttft_p99_ms)


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The q-th percentile by nearest rank (inf values sort last: requests that never got
    there)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]


def summarize(phase: Phase) -> Row:
    """One phase's table row."""
    recs = phase.records
    admitted = [r for r in recs if r.outcome in ("ok", "timeout") or (r.ttft_s is not None)]
    ttfts = [r.ttft_s * 1000 if r.ttft_s is not None else math.inf for r in admitted]
    rejected = [r for r in recs if r.outcome == "rejected"]
    return Row(
        sent=sum(1 for r in recs if r.outcome != "skipped"),
        completed=sum(1 for r in recs if r.outcome == "ok"),
        ttft_p50_ms=nearest_rank(ttfts, 50),
        ttft_p99_ms=nearest_rank(ttfts, 99),
        rejected=len(rejected),
        reject_p99_ms=percentile([(r.answered_s or 0.0) * 1000 for r in rejected], 99),
        retry_after_all=all(_whole_seconds(r.retry_after) for r in rejected),
        other_5xx=sum(1 for r in recs if r.outcome == "other_5xx"),
        failed=sum(1 for r in recs if r.outcome in ("failed", "other_http")),
        timed_out=sum(1 for r in recs if r.outcome == "timeout"),
        skipped=sum(1 for r in recs if r.outcome == "skipped"),
    )


def _whole_seconds(value: str | None) -> bool:
    return value is not None and value.strip().isdigit()


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "timed out"
    return f"{value:.0f}"


@dataclass(frozen=True)
class Goal:
    """One goal line: rbee's figure, the peer's beside it, the bound, met or not."""

    label: str
    rbee: str
    peer: str
    goal: str
    ok: bool | None
    """None: not measured."""


def goals(run: Run) -> list[Goal]:
    """The issue's goals, checked against the figures (rbee at the highest load)."""
    k = max(run.settings.loads)
    mine, peer = summarize(run.phases[("rbee", k)]), summarize(run.phases[("llama", k)])
    # S: the mean time a request took on the worker's engine during this phase, the pace its
    # queue drained at (the closed-loop figure, measured alone, stands beside it).
    service = run.phases[("rbee", k)].service or run.capacity["rbee"].service
    bound = (MAX_QUEUED + 1) * service * 1.1 * 1000
    others = sum(summarize(p).other_5xx for (name, _), p in run.phases.items() if name == "rbee")
    peer_others = sum(summarize(p).other_5xx for (n, _), p in run.phases.items() if n == "llama")
    lines = [
        Goal(
            f"admitted TTFT p99 at {k}x (ms)",
            _ms(mine.ttft_p99_ms),
            _ms(peer.ttft_p99_ms),
            f"≤ ({MAX_QUEUED}+1) x S x 1.1 = {bound:.0f} (S {service * 1000:.0f} ms on the "
            f"engine at {k}x; {run.capacity['rbee'].service * 1000:.0f} ms closed loop)",
            mine.ttft_p99_ms <= bound,
        ),
        Goal(
            f"rejections at {k}x: answer p99 (ms), all with Retry-After",
            f"{mine.rejected}: {_ms(mine.reject_p99_ms)}, "
            f"{'yes' if mine.retry_after_all else 'no'}",
            f"{peer.rejected} rejected",
            f"> 0, ≤ {REJECT_GOAL_MS:.0f} ms p99, Retry-After on every one",
            mine.rejected > 0 and mine.reject_p99_ms <= REJECT_GOAL_MS and mine.retry_after_all,
        ),
        Goal("other 5xx, every load", str(others), str(peer_others), "0", others == 0),
    ]
    auto = run.autoload
    if auto is not None and auto.ttft is not None:
        lines.append(
            Goal(
                "unloaded model, running queen: first token - model load time (s)",
                f"{auto.ttft:.2f} - {auto.load_time:.2f} = {auto.ttft - auto.load_time:+.2f}",
                "-",
                f"≤ +{AUTOLOAD_SLACK}",
                auto.ttft <= auto.load_time + AUTOLOAD_SLACK,
            )
        )
    else:
        reason = auto.skipped if auto else "not run"
        lines.append(
            Goal(
                "unloaded model: first token - model load time",
                f"skipped: {reason}",
                "-",
                f"≤ +{AUTOLOAD_SLACK} s",
                None,
            )
        )
    return lines


def verdict(ok: bool | None) -> str:
    """How a goal check reads in the table."""
    if ok is None:
        return "not measured"
    return "met" if ok else "**missed**"


def results_table(run: Run) -> list[str]:
    """One row per server and offered load."""
    lines = [
        "| server | load | offered req/s | sent | completed | admitted TTFT p50 / p99 (ms) "
        "| rejected | rejection answer p99 (ms) | Retry-After on all | other 5xx | failed "
        "| timed out | engine S (ms) | queen peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for k in run.settings.loads:
        for name in SERVERS:
            phase = run.phases[(name, k)]
            r = summarize(phase)
            rss = f"{phase.queen_hwm_kb / 1024:.1f}" if phase.queen_hwm_kb else "-"
            engine = f"{phase.service * 1000:.0f}" if phase.service else "-"
            retry = ("yes" if r.retry_after_all else "**no**") if r.rejected else "-"
            sent = f"{r.sent}" + (f" ({r.skipped} not sent: cap)" if r.skipped else "")
            lines.append(
                f"| {LABELS[name]} | {k}x | {phase.rate:.2f} | {sent} | {r.completed} "
                f"| {_ms(r.ttft_p50_ms)} / {_ms(r.ttft_p99_ms)} | {r.rejected} "
                f"| {_ms(r.reject_p99_ms)} | {retry} | {r.other_5xx} | {r.failed} "
                f"| {r.timed_out} | {engine} | {rss} |"
            )
    return lines


def capacity_table(run: Run) -> list[str]:
    """Closed-loop service time and capacity of both servers."""
    lines = [
        "| server | mean service time S (ms) | capacity C (req/s) | mean TTFT alone (ms) "
        "| content chunks per answer |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in SERVERS:
        c = run.capacity[name]
        lines.append(
            f"| {LABELS[name]} | {c.service * 1000:.0f} | {c.rate:.2f} | {c.ttft * 1000:.0f} "
            f"| {c.tokens:.1f} |"
        )
    return lines


def goals_table(run: Run) -> list[str]:
    """The goal lines with rbee's figure, the peer's beside it and the verdict."""
    lines = [
        "| check | rbee | llama_cpp.server | goal (rbee) | |",
        "|---|---:|---:|---|---|",
    ]
    lines += [
        f"| {g.label} | {g.rbee} | {g.peer} | {g.goal} | {verdict(g.ok)} |" for g in goals(run)
    ]
    return lines


def notes(run: Run) -> list[str]:
    """How to read the tables, and what went wrong, if anything."""
    auto = run.autoload
    errors = sorted(
        {r.error or "" for p in run.phases.values() for r in p.records if r.outcome != "ok"} - {""}
    )
    queued = [
        r.queued_ms
        for (name, _), p in run.phases.items()
        if name == "rbee"
        for r in p.records
        if r.queued_ms is not None
    ]
    lines = [
        "- Admitted TTFT: from sending to the first chunk with content, over every request the "
        "server did not refuse; one still without a first token when the phase ended (drain cap) "
        'counts as infinite, so a percentile falling there reads "timed out". Rejected: 503 '
        "with code `server_overloaded`; its answer time is from sending to the end of the 503.",
        f"- Offered load k x C uses rbee's capacity for both servers; arrivals are Poisson "
        f"(seed {SEED} + k), so 1x already queues at times.",
        "- Queen peak RSS is VmHWM of the `rbee up` process (not its worker), read at the end "
        "of each rbee phase: the peak since it started.",
    ]
    waits = [
        int(r.retry_after)
        for (name, _), p in run.phases.items()
        if name == "rbee"
        for r in p.records
        if r.outcome == "rejected" and r.retry_after is not None and r.retry_after.isdigit()
    ]
    if waits:
        lines.append(
            f"- `Retry-After` on rbee's rejections: {min(waits)} to {max(waits)} s "
            f"(median {statistics.median(waits):.0f} s)."
        )
    if queued:
        lines.append(
            f"- rbee's `X-Rbee-Queued-Ms`, admitted requests: p50 {percentile(queued, 50):.0f}, "
            f"p99 {percentile(queued, 99):.0f} ms."
        )
    if auto is not None and auto.ttft is not None:
        lines.append(
            f"- Unloaded model: `rbee queen run` with the model stored and no worker; one streamed "
            f"request the moment the queen answers /health (first token after "
            f"{auto.ttft_at_start or math.nan:.2f} s: its hive is still reading the machine's "
            f"facts and starting its standby worker), then its worker stopped, "
            f"{AUTOLOAD_SETTLE:.0f} s of a running queen, and the same request again, "
            f"{LOAD_REPEATS} rounds: first token after "
            f"{', '.join(f'{t:.2f}' for t in auto.ttfts)} s, median {auto.ttft:.2f} s "
            f"({auto.loading_comments} `: loading` comments before it), the figure the goal "
            f"judges. Model load + 1-token answer in a fresh process (imports excluded), just "
            f"before each round's request: {', '.join(f'{t:.2f}' for t in auto.load_times)} s, "
            f"median {auto.load_time:.2f} s."
        )
        if auto.worker_start is not None:
            lines.append(
                "- Of the running queen's first token (median), rbee's worker start (the hive "
                "starting the process, or handing its standby the order, to the worker ready: "
                "imports if not done, the GGUF's checksum unless stamped already, load, one "
                f"warm-up decode) took {auto.worker_start:.2f} s; the rest "
                f"({auto.ttft - auto.worker_start:.2f} s) is placement, waiting for the ready "
                "worker and the first answer's own time to first token."
            )
    if errors:
        lines.append(f"- Errors seen: {'; '.join(errors)[:600]}")
    return lines


def environment_lines(run: Run) -> list[str]:
    """When, where, with what, and the exact commands."""
    s = run.settings
    command = shlex.join([".venv/bin/python", *sys.argv])
    rbee_cmd = f"`rbee up --threads {THREADS} --ctx-size {N_CTX} --max-queued {MAX_QUEUED}`"
    return [
        "| | |",
        "|---|---|",
        f"| date | {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} |",
        f"| machine | {os.cpu_count()} cores, {cpu_model()} ({platform.machine()}) |",
        f"| python, rbee, llama-cpp-python | {platform.python_version()}, {rbee.__version__}, "
        f"{importlib.metadata.version('llama-cpp-python')} |",
        f"| model | {MODEL} ({model_gguf().name}), n_ctx {N_CTX}, {THREADS} engine threads on "
        f"both servers |",
        f"| rbee | {rbee_cmd} |",
        f"| workload | one prompt, streamed, max_tokens {MAX_TOKENS}, temperature 0, no stop; "
        f"capacity from {s.capacity_requests} requests in a row |",
        f"| phases | {s.duration:.0f} s of arrivals at "
        f"{', '.join(f'{k}x' for k in s.loads)}, then at most {s.drain:.0f} s to finish; "
        f"≤ {INFLIGHT_CAP} in flight, client timeout {CLIENT_TIMEOUT.read:.0f} s |",
        f"| load average (1 min) | {' at start, '.join(run.load)} at end |",
        f"| command | `{command}` |",
        f"| llama_cpp.server | `{run.llama_command}` |",
    ]


def render(run: Run) -> str:
    """The markdown section between the markers."""
    quick = " Quick run (`--quick`): indicative only." if run.settings.quick else ""
    lines = [
        START_MARK,
        "## Overload",
        "",
        "Written by `bench/overload.py` (`make bench`); do not edit by hand." + quick,
        "",
        *environment_lines(run),
        "",
        *capacity_table(run),
        "",
        *results_table(run),
        "",
        *goals_table(run),
        "",
        "Notes:",
        "",
        *notes(run),
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """--quick: 10 s phases at 1x and 4x; --write: write the doc even then."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10 s phases, 1x and 4x only")
    parser.add_argument(
        "--write", action="store_true", help="write docs/benchmarks.md after a --quick run too"
    )
    args = parser.parse_args(argv)
    if args.quick:
        return Settings(True, args.write, 10.0, (1, 4), capacity_requests=8, drain=30.0)
    return Settings(False, True, 60.0, (1, 2, 4), capacity_requests=20, drain=120.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the servers, measure, print the section; write it to docs/benchmarks.md."""
    settings = parse_args(argv)
    relay.check_server_extra()
    started = time.monotonic()
    run = Run(settings, load=[load_average()])
    with contextlib.suppress(OSError):
        if os.getloadavg()[0] > 0.5:
            progress(f"the machine is busy (load average {load_average()}): figures will suffer")
    with servers() as running:
        run.llama_command = running.llama_command
        asyncio.run(run_load(running, run))
    run.autoload = measure_autoload()
    run.load.append(load_average())
    section = render(run)
    if settings.write:
        write_section(section, START_MARK, END_MARK, DOC)
        progress(f"wrote {DOC.relative_to(ROOT)}")
    else:
        progress("not writing docs/benchmarks.md (a --quick run; add --write to)")
    progress(f"done in {time.monotonic() - started:.0f}s")
    print(section, end="")
    return 0


if __name__ == "__main__":
    run_main(main, progress)
