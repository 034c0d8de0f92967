"""Relay benchmark: the same prompts straight to an rbee worker, through the queen, and to
llama-cpp-python's own OpenAI server, in one run; the result table goes to docs/benchmarks.md.

What is measured
    Three paths serve the same GGUF with the same thread count (os.cpu_count()):
      direct  POST to the rbee worker's own port
      queen   POST to the rbee queen, which relays to that same worker
      llama   `python -m llama_cpp.server` on the same GGUF
    Every request is a streamed `POST /v1/chat/completions` (temperature 0, no seed, fixed
    max_tokens) over a fixed list of short chat prompts, at concurrency 1 (one request at a time)
    and 4 (four requests in flight at once, via asyncio.gather, repeated over the prompt list).

How
    Both servers are started once and stay loaded, but only one path generates at a time (the
    machine may have two cores only): batches are interleaved in rounds (direct, queen, llama,
    direct, ...) so drift on a shared machine hits every path alike. Each path is warmed up with
    two unmeasured requests first. Per request:
      TTFT         from sending the request to the first SSE chunk with non-empty delta content
      decode rate  (completion tokens - 1) / (last content chunk time - first content chunk time):
                   the first token arrives at TTFT, the others during that interval
    Completion tokens come from `stream_options.include_usage` when the server sends usage
    (rbee does); otherwise (llama_cpp.server) they are the number of content chunks. Aggregate
    throughput is the total completion tokens of a path / the total wall time of its batches.

The number of rounds is bounded by a time budget (whole rounds only, so every path gets the same
number of batches). A batch sends every prompt once, in order, so consecutive requests on a path
differ and every engine can reuse only the chat template's shared prefix (no seed is sent: a
seeded request makes rbee start from a clean KV cache, for reproducible text).

Run `.venv/bin/python bench/relay.py` (about 6 minutes) or add `--quick` (about 1 minute,
indicative figures only). `make bench` installs what llama_cpp.server needs (the `bench` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from benchdoc import run_main, write_section

import rbee
from rbee.api.hop import hop_headers, read_token_file, token_path
from rbee.models.catalog import DEFAULT_MODEL_ID
from rbee.models.sources import ensure_model
from rbee.models.store import ModelStore
from rbee.proc import pid_alive

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START_MARK = "<!-- relay:start -->"
END_MARK = "<!-- relay:end -->"
MODEL = DEFAULT_MODEL_ID
N_CTX = 4096
THREADS = max(1, os.cpu_count() or 1)
PATHS = ("direct", "queen", "llama")
LABELS = {
    "direct": "rbee worker, direct",
    "queen": "rbee queen → worker",
    "llama": "llama_cpp.server",
}
SERVER_MODULES = ("fastapi", "sse_starlette", "pydantic_settings", "starlette_context")
START_TIMEOUT = 240.0
REQUEST_TIMEOUT = 120.0
HTTP_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=5.0, pool=60.0)

PROMPTS = (
    "Write a short story about a robot who learns to paint.",
    "Explain how a refrigerator keeps food cold.",
    "Give me five tips for staying focused while studying.",
    "Describe the water cycle to a ten-year-old.",
    "What are the main differences between cats and dogs as pets?",
    "Write a friendly email inviting a colleague to lunch.",
    "Explain why the sky is blue.",
    "List some healthy breakfast ideas and say why each is good.",
)


@dataclass(frozen=True)
class Settings:
    """How much to run."""

    quick: bool
    max_tokens: int
    rounds: int
    """At most this many rounds per concurrency."""
    budget: float
    """Seconds of measurement (after warm-up), shared evenly by the concurrencies; no new round
    starts when it would likely end past its share."""
    concurrencies: tuple[int, ...] = (1, 4)


@dataclass(frozen=True)
class Target:
    """One path to measure: where to POST and what it is called."""

    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    """What it asks of a caller: a worker asks for its hive's secret (rbee.api.hop)."""


@dataclass(frozen=True)
class Sample:
    """One measured request."""

    ttft: float
    decode_rate: float | None
    tokens: int
    chunks: int
    usage_tokens: int | None
    text: str


@dataclass
class Tally:
    """Everything measured for one path at one concurrency."""

    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    wall: float = 0.0
    rounds: int = 0


@dataclass(frozen=True)
class Row:
    """The summary of one Tally, as the table shows it."""

    requests: int
    failed: int
    decode_median: float
    aggregate: float
    ttft_p50_ms: float
    ttft_p95_ms: float


Results = dict[tuple[str, int], Tally]


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[relay {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes


def check_server_extra() -> None:
    """Exit with one clear line if llama_cpp.server's extra packages are missing."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(
            f"relay: llama_cpp.server needs {', '.join(missing)}: run `make bench` "
            "(or `.venv/bin/pip install -e '.[dev,bench]'`)"
        )


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent_hook() -> Callable[[], None] | None:
    # Linux: children get SIGTERM if this script dies, even by SIGKILL (PR_SET_PDEATHSIG = 1).
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def hook() -> None:
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)

    return hook


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, output to `log`, dying with this process."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - only calls prctl(2)
        )


def stop(proc: subprocess.Popen[bytes], name: str, grace: float = 30.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL its process group (its own session)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        progress(f"{name} ignored SIGTERM for {grace:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_gone(pid: int, name: str, timeout: float = 15.0) -> None:
    """Wait for a process we did not start directly (the worker) to exit; kill it if it lingers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    progress(f"{name} (pid {pid}) outlived its queen by {timeout:.0f}s; killing it")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def tail(log: Path, size: int = 1500) -> str:
    """The end of a log file, for error messages."""
    try:
        return log.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return ""


def poll_json(url: str) -> Any:
    """GET `url` and return its JSON, or None if it does not answer 200 yet."""
    try:
        response = httpx.get(url, timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_for(check: Callable[[], Any], proc: subprocess.Popen[bytes], log: Path, what: str) -> Any:
    """Poll `check` until it returns something; fail if `proc` exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: exited with status {proc.returncode}; {log}:\n{tail(log)}")
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready after {START_TIMEOUT:.0f}s; {log}:\n{tail(log)}")


def model_gguf() -> Path:
    """The cached default model, fetched into .cache/models first if missing."""
    root = Path(os.environ.get("RBEE_TEST_MODEL_CACHE", ROOT / ".cache" / "models"))
    gguf = ensure_model(ModelStore(root), MODEL).artifact("gguf")
    assert gguf is not None  # ensure_model fetches the gguf artifact
    return gguf.path


def model_folder() -> Path:
    """The cached default model's folder in the store (its manifest and every format)."""
    model_gguf()
    return Path(os.environ.get("RBEE_TEST_MODEL_CACHE", ROOT / ".cache" / "models")) / MODEL


def rbee_env(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A data dir whose store links the cached model, and the env confining rbee to tmp."""
    data, config = tmp / "data", tmp / "config"
    (data / "models").mkdir(parents=True)
    config.mkdir()
    (data / "models" / MODEL).symlink_to(model_folder(), target_is_directory=True)
    env = dict(os.environ, RBEE_DATA_DIR=str(data), RBEE_CONFIG_DIR=str(config))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("RBEE_API_KEY", None)
    env.pop("RBEE_QUEEN_URL", None)
    return data, env


def queen_argv(data: Path, port: int) -> list[str]:
    """`rbee queen run` serving the default model with the default thread count."""
    return [sys.executable, "-m", "rbee", "--data-dir", str(data), "queen", "run",
            "--port", str(port), "--model", MODEL]  # fmt: skip


def llama_argv(gguf: Path, port: int) -> list[str]:
    """llama-cpp-python's server on the same GGUF and thread count as the rbee worker.

    `--interrupt_requests False`: by default llama_cpp.server cuts a stream short as soon as
    another request arrives, which would end most requests early at concurrency 4.
    """
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
            "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
            "--n_ctx", str(N_CTX), "--host", "127.0.0.1", "--port", str(port),
            "--interrupt_requests", "False"]  # fmt: skip


def ready_worker(queen_url: str) -> dict[str, Any] | None:
    """The queen's first ready worker with a URL, or None."""
    listing = poll_json(f"{queen_url}/v1/workers")
    for worker in (listing or {}).get("data", []):
        if worker.get("state") == "ready" and worker.get("url"):
            return dict(worker)
    return None


@dataclass
class Servers:
    """The running servers and what the report needs to know about them."""

    targets: dict[str, Target]
    llama_command: str
    worker: dict[str, Any]


@dataclass(frozen=True)
class Pair:
    """rbee (a queen with one worker of the default model) and llama_cpp.server, both up."""

    queen_url: str
    llama_url: str
    queen_pid: int
    worker: dict[str, Any]
    llama_command: str
    """llama_cpp.server's command line, as the result tables show it."""
    worker_headers: dict[str, str]
    """What the worker asks of a caller besides the queen: its hive's secret (rbee.api.hop),
    which the queen's hive keeps in a file for its own user."""


@contextlib.contextmanager
def rbee_and_llama(queen_argv: Callable[[Path, int], list[str]], prefix: str) -> Iterator[Pair]:
    """Start rbee (`queen_argv(data_dir, port)`, which must start one worker) and
    llama_cpp.server on the same GGUF; stop both after, keeping the logs if anything failed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    data, env = rbee_env(tmp)
    gguf = model_gguf()
    queen_port, llama_port = free_port(), free_port()
    queen_url, llama_url = f"http://127.0.0.1:{queen_port}", f"http://127.0.0.1:{llama_port}"
    queen_log, llama_log = tmp / "queen.log", tmp / "llama-server.log"
    llama_cmd = llama_argv(gguf, llama_port)
    progress(f"starting rbee on {queen_url} and llama_cpp.server on {llama_url}; logs in {tmp}")
    queen = spawn(queen_argv(data, queen_port), env, queen_log)
    llama: subprocess.Popen[bytes] | None = None
    worker: dict[str, Any] = {}
    finished = False
    try:
        llama = spawn(llama_cmd, dict(os.environ), llama_log)
        wait_for(lambda: poll_json(f"{queen_url}/health"), queen, queen_log, "rbee queen")
        worker = wait_for(lambda: ready_worker(queen_url), queen, queen_log, "rbee worker")
        wait_for(lambda: poll_json(f"{llama_url}/v1/models"), llama, llama_log, "llama_cpp.server")
        progress(f"ready: worker {worker['id']} at {worker['url']}, {THREADS} threads each")
        yield Pair(
            queen_url=queen_url,
            llama_url=llama_url,
            queen_pid=queen.pid,
            worker=worker,
            llama_command=shlex.join(["python", *llama_cmd[1:]]).replace(str(ROOT) + "/", ""),
            worker_headers=hop_headers(read_token_file(token_path(data / "run", "localhost"))),
        )
        finished = True
    finally:
        progress("stopping the servers")
        if llama is not None:
            stop(llama, "llama_cpp.server")
        stop(queen, "rbee queen")
        if worker.get("pid"):
            wait_gone(int(worker["pid"]), "rbee worker")
        logs = {"rbee queen": queen_log, "llama_cpp.server": llama_log}
        if report_server_errors(logs, data) or not finished:
            progress(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    """The rbee queen (with one worker) and llama_cpp.server, as this benchmark's targets."""
    with rbee_and_llama(queen_argv, "rbee-bench-") as pair:
        yield Servers(
            targets={
                "direct": Target("direct", str(pair.worker["url"]), pair.worker_headers),
                "queen": Target("queen", pair.queen_url),
                "llama": Target("llama", pair.llama_url),
            },
            llama_command=pair.llama_command,
            worker=pair.worker,
        )


def report_server_errors(logs: dict[str, Path], data: Path) -> int:
    """Echo error and traceback lines from the servers' logs to stderr; return how many."""
    worker_logs = sorted((data / "logs").glob("worker-*.log"))
    found = 0
    for name, log in [*logs.items(), *((p.name, p) for p in worker_logs)]:
        lines = tail(log, 200_000).splitlines()
        bad = [ln for ln in lines if any(w in ln for w in ("Traceback", "ERROR", "Error:"))]
        for line in bad[:10]:
            progress(f"{name} log: {line.strip()[:200]}")
        found += len(bad)
    return found


# ---------------------------------------------------------------------------------------------
# Requests


def request_body(prompt: str, max_tokens: int) -> dict[str, Any]:
    """The chat request every path gets, byte for byte.

    `repeat_penalty` is llama-cpp-python's extension (its server defaults to 1.1, rbee applies
    1.0 and ignores the field), so both engines sample the same way.
    """
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "repeat_penalty": 1.0,
    }


def parse_event(line: str) -> dict[str, Any] | None:
    """The JSON of one `data:` SSE line; None for other lines and for `[DONE]`."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    event: dict[str, Any] = json.loads(data)
    if "error" in event:
        raise RuntimeError(f"error event: {json.dumps(event['error'])[:300]}")
    return event


def delta_text(event: dict[str, Any]) -> str:
    """The content a chat chunk carries ('' for role, finish and usage chunks)."""
    choices = event.get("choices") or []
    if not choices:
        return ""
    content = (choices[0].get("delta") or {}).get("content")
    return content if isinstance(content, str) else ""


async def measure_one(client: httpx.AsyncClient, target: Target, body: dict[str, Any]) -> Sample:
    """Send one streamed request; time its first and last content chunks."""
    times: list[float] = []
    parts: list[str] = []
    usage_tokens: int | None = None
    async with asyncio.timeout(REQUEST_TIMEOUT):
        sent = time.perf_counter()
        url = f"{target.url}/v1/chat/completions"
        async with client.stream("POST", url, json=body, headers=target.headers) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"HTTP {resp.status_code}: {detail}")
            async for line in resp.aiter_lines():
                event = parse_event(line)
                if event is None:
                    continue
                if text := delta_text(event):
                    times.append(time.perf_counter())
                    parts.append(text)
                if event.get("usage"):
                    usage_tokens = int(event["usage"]["completion_tokens"])
    if not times:
        raise RuntimeError("the stream carried no content")
    tokens = usage_tokens if usage_tokens is not None else len(times)
    span = times[-1] - times[0]
    rate = (tokens - 1) / span if tokens > 1 and span > 0 else None
    return Sample(times[0] - sent, rate, tokens, len(times), usage_tokens, "".join(parts))


async def run_batch(
    client: httpx.AsyncClient, target: Target, concurrency: int, max_tokens: int, tally: Tally
) -> None:
    """Every prompt once, `concurrency` requests in flight at a time; add the results to tally."""
    bodies = [request_body(p, max_tokens) for p in PROMPTS]
    before = len(tally.samples), len(tally.failures)
    started = time.perf_counter()
    for i in range(0, len(bodies), concurrency):
        group = bodies[i : i + concurrency]
        outcomes = await asyncio.gather(
            *(measure_one(client, target, b) for b in group), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, Sample):
                tally.samples.append(outcome)
            elif isinstance(outcome, Exception):
                tally.failures.append(f"{type(outcome).__name__}: {outcome}")
            else:
                raise outcome
    wall = time.perf_counter() - started
    tally.wall += wall
    tokens = sum(s.tokens for s in tally.samples[before[0] :])
    failed = len(tally.failures) - before[1]
    progress(
        f"  {LABELS[target.name]:<22} c={concurrency}: {tokens / wall:6.1f} tok/s aggregate, "
        f"{wall:5.1f}s" + (f", {failed} failed" if failed else "")
    )


async def warm_up(client: httpx.AsyncClient, target: Target, max_tokens: int) -> None:
    """Two unmeasured requests."""
    for prompt in PROMPTS[:2]:
        await measure_one(client, target, request_body(prompt, max_tokens))


async def run_rounds(
    client: httpx.AsyncClient,
    targets: dict[str, Target],
    settings: Settings,
    concurrency: int,
    results: Results,
) -> None:
    """Rounds of one batch per path, until max rounds or until the next would overrun the budget.

    Whole rounds only: every path gets the same number of batches.
    """
    deadline = time.monotonic() + settings.budget / len(settings.concurrencies)
    for round_no in range(1, settings.rounds + 1):
        progress(f"concurrency {concurrency}, round {round_no} of at most {settings.rounds}")
        started = time.monotonic()
        for name in PATHS:
            tally = results[(name, concurrency)]
            await run_batch(client, targets[name], concurrency, settings.max_tokens, tally)
            tally.rounds += 1
        if time.monotonic() + (time.monotonic() - started) > deadline:
            if round_no < settings.rounds:
                progress(
                    f"time budget reached after {round_no} round(s) at concurrency {concurrency}"
                )
            return


async def run_all(targets: dict[str, Target], settings: Settings) -> Results:
    """Warm up every path, then interleave the batches in rounds; return every tally."""
    results: Results = {(p, c): Tally() for c in settings.concurrencies for p in PATHS}
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=limits, trust_env=False) as client:
        for name in PATHS:
            progress(f"warming up {LABELS[name]}")
            await warm_up(client, targets[name], settings.max_tokens)
        for concurrency in settings.concurrencies:
            await run_rounds(client, targets, settings, concurrency, results)
    return results


# ---------------------------------------------------------------------------------------------
# Report


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(tally: Tally) -> Row:
    """The table row of one path at one concurrency."""
    rates = [s.decode_rate for s in tally.samples if s.decode_rate is not None]
    ttfts = [s.ttft * 1000 for s in tally.samples]
    tokens = sum(s.tokens for s in tally.samples)
    return Row(
        requests=len(tally.samples),
        failed=len(tally.failures),
        decode_median=statistics.median(rates) if rates else math.nan,
        aggregate=tokens / tally.wall if tally.wall > 0 else math.nan,
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p95_ms=percentile(ttfts, 95),
    )


def verdict(ok: bool) -> str:
    """How a goal check reads in the table."""
    return "met" if ok else "**missed**"


def results_table(rows: dict[tuple[str, int], Row], concurrencies: Sequence[int]) -> list[str]:
    """The per-path, per-concurrency table."""
    lines = [
        "| path | concurrency | requests | failed | decode tok/s (median) "
        "| aggregate tok/s | TTFT p50 (ms) | TTFT p95 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in concurrencies:
        for name in PATHS:
            r = rows[(name, c)]
            lines.append(
                f"| {LABELS[name]} | {c} | {r.requests} | {r.failed} | {r.decode_median:.1f} "
                f"| {r.aggregate:.1f} | {r.ttft_p50_ms:.1f} | {r.ttft_p95_ms:.1f} |"
            )
    return lines


def ratios_table(rows: dict[tuple[str, int], Row], concurrencies: Sequence[int]) -> list[str]:
    """The queen-vs-direct and rbee-vs-llama_cpp.server ratios, next to their goals."""
    head = " | ".join(f"concurrency {c}" for c in concurrencies)
    lines = [f"| check | {head} | goal |", "|---|" + "---:|" * len(concurrencies) + "---|"]
    checks: list[tuple[str, Callable[[int], tuple[str, bool]], str]] = [
        (
            "queen / direct, aggregate tok/s",
            lambda c: _ratio(rows[("queen", c)].aggregate, rows[("direct", c)].aggregate, 0.98),
            "≥ 0.98x",
        ),
        (
            "queen - direct, TTFT p50 (relay latency)",
            lambda c: _added_ms(rows[("queen", c)].ttft_p50_ms, rows[("direct", c)].ttft_p50_ms),
            "≤ 2 ms",
        ),
        (
            "rbee queen / llama_cpp.server, aggregate tok/s",
            lambda c: _ratio(rows[("queen", c)].aggregate, rows[("llama", c)].aggregate, 1.0),
            "≥ 1.0x",
        ),
        (
            "rbee queen / llama_cpp.server, decode tok/s (median)",
            lambda c: _ratio(
                rows[("queen", c)].decode_median, rows[("llama", c)].decode_median, 1.0
            ),
            "≥ 1.0x",
        ),
    ]
    for label, check, goal in checks:
        cells = []
        for c in concurrencies:
            text, ok = check(c)
            cells.append(f"{text} ({verdict(ok)})")
        lines.append(f"| {label} | {' | '.join(cells)} | {goal} |")
    return lines


def _ratio(value: float, base: float, goal: float) -> tuple[str, bool]:
    ratio = value / base if base > 0 else math.nan
    return f"{ratio:.3f}x", ratio >= goal


def _added_ms(value: float, base: float) -> tuple[str, bool]:
    added = value - base
    return f"{added:+.2f} ms", added <= 2.0


def counting_notes(results: Results) -> list[str]:
    """How tokens were counted on each path, and how content chunks compare with usage."""
    notes = []
    for name in PATHS:
        samples = [s for c in {c for _, c in results} for s in results[(name, c)].samples]
        with_usage = [s for s in samples if s.usage_tokens is not None]
        chunks = sum(s.chunks for s in samples)
        if samples and len(with_usage) == len(samples):
            usage = sum(s.usage_tokens or 0 for s in with_usage)
            notes.append(
                f"{LABELS[name]}: completion tokens from `usage` (stream_options.include_usage); "
                f"{usage} tokens arrived in {chunks} content chunks "
                f"({chunks / usage:.3f} chunks per token)."
            )
        elif with_usage:
            notes.append(
                f"{LABELS[name]}: usage sent on {len(with_usage)} of {len(samples)} requests; "
                "tokens counted from usage where present, else from content chunks."
            )
        else:
            notes.append(
                f"{LABELS[name]}: no usage in the stream (stream_options is not supported); "
                f"completion tokens counted as content chunks ({chunks} in total)."
            )
    return notes


def agreement_note(results: Results) -> str:
    """Whether the paths produced the same text for the same prompt (greedy decoding)."""
    texts: dict[str, set[str]] = {}
    for (name, _), tally in results.items():
        texts.setdefault(name, set()).update(s.text for s in tally.samples)
    direct, queen, llama = (texts.get(n, set()) for n in PATHS)
    return (
        f"Distinct answer texts over all requests: direct {len(direct)}, queen {len(queen)}, "
        f"llama_cpp.server {len(llama)} (for {len(PROMPTS)} prompts); "
        f"queen answers identical to direct ones: {'yes' if queen == direct else 'no'}; "
        f"llama_cpp.server answers identical to rbee's: {'yes' if llama == direct else 'no'}."
    )


def rounds_text(results: Results, settings: Settings) -> str:
    """How many rounds ran at each concurrency, and what bounded them."""
    done = ", ".join(
        f"{results[(PATHS[0], c)].rounds} at concurrency {c}" for c in settings.concurrencies
    )
    return f"rounds: {done} (at most {settings.rounds}, within a {settings.budget:.0f}s budget)"


def environment_lines(
    results: Results, settings: Settings, servers: Servers, load: tuple[str, str]
) -> list[str]:
    """The header table: when, where, with what, and the exact command."""
    command = shlex.join([_display_path(sys.executable), *sys.argv])
    return [
        "| | |",
        "|---|---|",
        f"| date | {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} |",
        f"| CPU | {THREADS} x {cpu_model()} ({platform.machine()}) |",
        f"| python | {platform.python_version()} |",
        f"| rbee | {rbee.__version__} |",
        f"| llama-cpp-python | {importlib.metadata.version('llama-cpp-python')} |",
        f"| model | {MODEL} ({model_gguf().name}), n_ctx {N_CTX}, "
        f"{THREADS} threads on every path |",
        f"| workload | {len(PROMPTS)} chat prompts, max_tokens {settings.max_tokens}, "
        f"temperature 0, no seed; one round = every prompt once on each path in turn; "
        f"{rounds_text(results, settings)} |",
        f"| load average (1 min) | {load[0]} at start, {load[1]} at end |",
        f"| command | `{command}` |",
        f"| llama_cpp.server | `{servers.llama_command}` |",
    ]


def _display_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo when there is one."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1-minute load average."""
    with contextlib.suppress(OSError):
        return f"{os.getloadavg()[0]:.2f}"
    return "n/a"


def render(results: Results, settings: Settings, servers: Servers, load: tuple[str, str]) -> str:
    """The markdown section between the markers."""
    rows = {key: summarize(tally) for key, tally in results.items()}
    quick = " Quick run (`--quick`): the figures are indicative only." if settings.quick else ""
    failures = [f for t in results.values() for f in t.failures]
    lines = [
        START_MARK,
        "## Relay overhead: rbee worker, rbee queen, llama-cpp-python server",
        "",
        "Written by `bench/relay.py` (`make bench`); do not edit by hand." + quick,
        "",
        *environment_lines(results, settings, servers, load),
        "",
        *results_table(rows, settings.concurrencies),
        "",
        *ratios_table(rows, settings.concurrencies),
        "",
        "Notes:",
        "",
        "- TTFT: from sending the request to the first chunk with non-empty content. Decode "
        "tok/s: (completion tokens - 1) / (last content chunk - first content chunk), per "
        "request. Aggregate tok/s: completion tokens / wall time of the path's batches. At "
        "concurrency 4, four requests are in flight at once; both engines run one generation at "
        "a time, so the others wait in line (their TTFT includes that wait).",
        *(f"- {note}" for note in counting_notes(results)),
        f"- {agreement_note(results)}",
        "- No seed is sent: both engines reuse the longest matching prompt prefix (here the chat "
        "template's system prompt). rbee resets the cache for seeded requests only.",
        *([f"- Failed requests: {'; '.join(sorted(set(failures)))[:500]}"] if failures else []),
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """--quick: shorter answers and fewer rounds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    args = parser.parse_args(argv)
    if args.quick:
        return Settings(quick=True, max_tokens=32, rounds=3, budget=60)
    return Settings(quick=False, max_tokens=64, rounds=10, budget=330)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the servers, measure, write docs/benchmarks.md, print the section."""
    settings = parse_args(argv)
    check_server_extra()
    started = time.monotonic()
    load_start = load_average()
    with servers() as running:
        results = asyncio.run(run_all(running.targets, settings))
        section = render(results, settings, running, (load_start, load_average()))
    write_section(section, START_MARK, END_MARK, DOC)
    progress(f"wrote {DOC.relative_to(ROOT)} in {time.monotonic() - started:.0f}s")
    print(section, end="")
    return 0


if __name__ == "__main__":
    run_main(main, progress)
