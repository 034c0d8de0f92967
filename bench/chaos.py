"""Chaos benchmark: steady load on a fleet while workers, hives and links fail at random.

What is measured
    A real queen with its local hive and two hives on "other machines" (Linux network namespaces,
    each with its own real OpenSSH sshd: tests/hives.py), each hive running 2 replicas of the
    default model (6 workers). Four client threads send streamed chat completions through the
    official openai client, back to back, for the whole run (5 minutes by default). Meanwhile a
    driver picks a fault at random every 8 to 15 s, applies it, and waits until the fleet is whole
    again before the next one:
      worker-sigkill   SIGKILL one worker (any hive);
      worker-sigsegv   SIGSEGV one worker (what an engine crash looks like);
      hive-sigkill     SIGKILL one remote hive's `rbee hive run` (its workers die with it);
      link-cut         take one remote hive's link down for 20 s (tests.hives.cut_link), then up.
    A worker fault never picks a worker that crashed 3 times in the last 10 minutes: the driver
    stays below the crash-loop threshold (5), which is what the tests check on its own.

    Reported: requests sent, succeeded, failed before the first byte (an HTTP error or a dropped
    connection before any chunk), broken mid-stream (an error event or a drop after a chunk);
    recovery time per fault, p50 and max, until the model is served again from that place (the
    worker, or every worker of that hive, ready with a new pid; for a cut, counted from when the
    link is back); orphans after the queen is stopped; how often the queen exited (never restarted
    here: any exit is a failure).

Goals (issue "A fleet that heals itself")
    >= 99% of requests succeed while another replica is up (there always is: 6 replicas, one
    place fails at a time); every fault recovered within the model's load time + backoff + 2 s;
    0 orphans; the queen never exits. Load time and backoff are taken from the run itself, since
    both grow with the machine's load: the backoff is the worker's own restart delay (its
    retry_at - last_exit_at while restarting), or for a hive the wait for the queen's next
    reconnect attempt (from the queen's log); the load is from the new worker process's start
    to its being ready (for a hive, from its first new worker's start), and a hive fault adds the
    hive's own start over SSH (the queen's reconnect attempt to its "hive running" log line).
    The 2 s are what rbee itself may add: noticing the fault, placing, reporting readiness.

    All three hives share this machine's 2 cores, so each worker runs 1 engine thread: with 2
    each, the llama.cpp threads of 6 workers spin against each other at every barrier and
    throughput collapses (measured: 5 streamed requests in 15 s instead of 67).

Run `.venv/bin/python bench/chaos.py` (5 minutes of load, about 7 minutes with setup), `--quick`
(60 s) or `--duration S`. Needs root, `ip netns` and OpenSSH sshd (`make sysdeps`), and the dev
extra (it imports tests.hives and tests.conftest, and bench/cascade.py's queen helpers). The
result table replaces the section between the chaos markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import random
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for `tests.*` when run as `python bench/chaos.py`

import cascade  # noqa: E402
from benchdoc import run_main, write_section  # noqa: E402

import rbee  # noqa: E402
from rbee.config.settings import Paths  # noqa: E402
from tests.conftest import MODEL, worker_pids  # noqa: E402
from tests.hives import (  # noqa: E402
    HiveSet,
    TestHive,
    cleanup_stale,
    cut_link,
    restore_link,
    test_hives,
    unavailable_reason,
)

DOC = ROOT / "docs" / "benchmarks.md"
START_MARK = "<!-- chaos:start -->"
END_MARK = "<!-- chaos:end -->"

REPLICAS = 2  # per hive
CONCURRENCY = 4
MAX_TOKENS = 24
CUT_SECONDS = 20.0
FAULT_GAP = (8.0, 15.0)
RECOVERY_LIMIT = 120.0
MAX_HITS = 3  # a worker is not hit again after this many crashes in 10 minutes
ORPHAN_WAIT = 20.0
KINDS = ("worker-sigkill", "worker-sigsegv", "hive-sigkill", "link-cut")


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Outcomes:
    """What the clients saw (shared by the client threads, under a lock)."""

    ok: int = 0
    before_first_byte: int = 0
    mid_stream: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sent(self) -> int:
        """Every request that ended."""
        return self.ok + self.before_first_byte + self.mid_stream

    def add(self, outcome: str, error: str = "") -> None:
        """Count one request."""
        with self.lock:
            if outcome == "ok":
                self.ok += 1
            elif outcome == "before":
                self.before_first_byte += 1
                self.errors[f"before first byte: {error[:120]}"] += 1
            else:
                self.mid_stream += 1
                self.errors[f"mid-stream: {error[:120]}"] += 1


@dataclass
class Fault:
    """One fault and how long the fleet took to heal it."""

    kind: str
    target: str
    at: float
    recovery: float | None = None
    bound: float = 0.0
    note: str = ""

    @property
    def within(self) -> bool:
        """Recovered within its bound."""
        return self.recovery is not None and self.recovery <= self.bound


def client_loop(base_url: str, stop: threading.Event, outcomes: Outcomes, seed: int) -> None:
    """Streamed chat completions back to back until `stop`; every outcome counted."""
    rng = random.Random(seed)
    with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=180) as client:
        while not stop.is_set():
            chunks = 0
            try:
                stream = client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"Say a word about {rng.random():.4f}."}],
                    max_tokens=MAX_TOKENS,
                    stream=True,
                )
                finished = False
                for chunk in stream:
                    chunks += 1
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finished = True
            except (openai.OpenAIError, httpx.HTTPError) as err:
                outcomes.add("mid" if chunks else "before", repr(err))
            else:
                if finished:
                    outcomes.add("ok")
                else:
                    outcomes.add("mid", "the stream ended without a finish_reason")


class Fleet:
    """The queen's view, and the processes behind it."""

    def __init__(self, queen: cascade.Queen, hives: HiveSet) -> None:
        self.queen = queen
        self.hives = hives

    def workers(self) -> list[dict[str, Any]]:
        """Every worker the queen lists ([] when it does not answer)."""
        try:
            answer = httpx.get(f"{self.queen.url}/v1/workers", timeout=10, trust_env=False)
            data: list[dict[str, Any]] = answer.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError):
            return []
        return data

    def on(self, hive: str) -> list[dict[str, Any]]:
        """The workers of one hive."""
        return [w for w in self.workers() if w["hive"] == hive]

    def hive_process(self, hive: TestHive) -> int | None:
        """The pid of `rbee hive run` in a hive's namespace."""
        for pid in cascade.scan([hive])[hive.alias]:
            if cascade.role(pid) == "hive":
                return pid
        return None


def wait_until(check: Callable[[], bool], limit: float) -> float | None:
    """Seconds until `check()` holds (polled every 50 ms), or None after `limit`."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def whole(fleet: Fleet) -> bool:
    """Every hive serves its replicas."""
    ready = Counter(w["hive"] for w in fleet.workers() if w["state"] == "ready")
    return all(ready[h] >= REPLICAS for h in ("localhost", *(h.alias for h in fleet.hives)))


def apply_fault(kind: str, fleet: Fleet, rng: random.Random, hits: dict[str, list[float]]) -> Fault:
    """Apply one fault of `kind` and wait until its place serves again."""
    if kind.startswith("worker"):
        return _worker_fault(kind, fleet, rng, hits)
    return _hive_fault(kind, fleet, rng)


def _worker_fault(
    kind: str, fleet: Fleet, rng: random.Random, hits: dict[str, list[float]]
) -> Fault:
    now = time.monotonic()
    ready = [
        w
        for w in fleet.workers()
        if w["state"] == "ready"
        and sum(1 for t in hits.get(w["id"], []) if now - t < 600) < MAX_HITS
    ]
    victim = rng.choice(ready)
    hits.setdefault(victim["id"], []).append(now)
    sig = signal.SIGKILL if kind == "worker-sigkill" else signal.SIGSEGV
    fault = Fault(kind, victim["id"], time.monotonic())
    backoffs: list[float] = []
    os.kill(int(victim["pid"]), sig)

    def back() -> bool:
        current = next((w for w in fleet.workers() if w["id"] == victim["id"]), None)
        if current is None:
            return False
        if current["state"] == "restarting" and current.get("retry_at"):
            backoffs.append(current["retry_at"] - current["last_exit_at"])
        return current["state"] == "ready" and current["pid"] != victim["pid"]

    fault.recovery = wait_until(back, RECOVERY_LIMIT)
    current = next((w for w in fleet.workers() if w["id"] == victim["id"]), {})
    load = time.time() - float(current.get("started_at") or time.time())
    backoff = max(backoffs, default=0.0)
    fault.bound = backoff + load + 2.0
    fault.note = f"backoff {backoff:.0f} s, load {load:.1f} s"
    return fault


def _hive_fault(kind: str, fleet: Fleet, rng: random.Random) -> Fault:
    hive = rng.choice(list(fleet.hives))
    before = {w["id"]: w["pid"] for w in fleet.on(hive.alias)}

    def hive_back() -> bool:
        now_ready = {w["id"]: w["pid"] for w in fleet.on(hive.alias) if w["state"] == "ready"}
        return len(now_ready) >= REPLICAS and all(now_ready.get(i) != p for i, p in before.items())

    fault = Fault(kind, hive.alias, time.monotonic())
    if kind == "hive-sigkill":
        pid = fleet.hive_process(hive)
        if pid is None:
            fault.note = "no hive process found"
            return fault
        since = time.time()
        os.kill(pid, signal.SIGKILL)
    else:
        cut_link(hive)
        try:
            time.sleep(CUT_SECONDS)
        finally:
            restore_link(hive)
        since = time.time()  # recovery counts from the link being back
    fault.recovery = wait_until(hive_back, RECOVERY_LIMIT)
    if fault.recovery is None:
        return fault
    # What the recovery is made of, from the queen's log and the workers' start times: the wait
    # for the queen's next attempt (its reconnect backoff), the hive's start over SSH, the
    # workers' load; the bound allows 2 s on top for noticing, placing and reporting.
    attempt, running = queen_log_times(fleet.queen.log, hive.alias, since)
    wait = max(0.0, attempt - since)
    hive_start = max(0.0, running - max(attempt, since))
    starts = [float(w["started_at"]) for w in fleet.on(hive.alias) if w.get("started_at")]
    load = time.time() - min(starts, default=time.time())
    fault.bound = wait + hive_start + load + 2.0
    fault.note = f"reconnect wait {wait:.1f} s, hive start {hive_start:.1f} s, load {load:.1f} s"
    return fault


def queen_log_times(log: Path, alias: str, since: float) -> tuple[float, float]:
    """(when the queen's last reconnect attempt before the hive ran again was due, when it logged
    the hive running), epoch seconds, for the first `hive running` after `since`."""
    due, running = since, since
    retry, up = f"{alias}: reconnecting in ", f"{alias}: hive running"
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if retry not in line and up not in line:
                continue
            try:
                stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            if up in line and stamp >= since:
                running = stamp
                break
            if retry in line:
                with contextlib.suppress(ValueError):
                    due = stamp + float(line.split(retry, 1)[1].rstrip("s").strip())
    return due, running


@dataclass
class Timing:
    """What setup measured."""

    load: float = 0.0
    """The longest spawn of a worker on a hive that has the model (load + warm-up)."""
    hive_start: float = 0.0
    """The longest `POST /v1/hives/{alias}/start`."""


def bring_up(fleet: Fleet) -> Timing:
    """Start both hives and REPLICAS workers on every hive; measure what the bounds need."""
    queen, timing = fleet.queen, Timing()
    cascade.wait_for(lambda: cascade.healthy(queen.url), queen, 120, "queen /health")
    for hive in fleet.hives:
        started = time.monotonic()
        cascade.api(queen, "POST", f"/v1/hives/{hive.alias}/start")
        timing.hive_start = max(timing.hive_start, time.monotonic() - started)
    for alias in ("localhost", *(h.alias for h in fleet.hives)):
        for replica in range(REPLICAS):
            started = time.monotonic()
            cascade.api(queen, "POST", "/v1/workers", {"model": MODEL, "hive": alias, "threads": 1})
            if replica:  # the first one may fetch or upload the model
                timing.load = max(timing.load, time.monotonic() - started)
    cascade.wait_for(lambda: whole(fleet), queen, 120, "every replica ready")
    return timing


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Result:
    """Everything the report needs."""

    duration: float
    outcomes: Outcomes
    faults: list[Fault]
    timing: Timing
    orphans: list[str]
    queen_exits: int
    runtime: float = 0.0
    load: tuple[str, str] = ("n/a", "n/a")


def render(result: Result, quick: bool) -> str:
    """The markdown section between the markers."""
    out = result.outcomes
    rate = 100.0 * out.ok / out.sent if out.sent else 0.0
    started = out.sent - out.mid_stream
    saved = 100.0 * out.ok / started if started else 0.0
    rows = []
    for kind in KINDS:
        mine = [f for f in result.faults if f.kind == kind]
        times = [f.recovery for f in mine if f.recovery is not None]
        within = sum(f.within for f in mine)
        bound = max((f.bound for f in mine), default=0.0)
        rows.append(
            f"| {kind} | {len(mine)} | {percentile(times, 50):.1f} | "
            f"{max(times, default=float('nan')):.1f} | ≤ {bound:.1f} | {within} of {len(mine)} |"
        )
    verdicts = [
        ("≥ 99% of requests succeed", rate >= 99.0),
        ("every fault recovered within load + backoff + 2 s",
         all(f.within for f in result.faults)),
        ("0 orphans", not result.orphans),
        ("the queen never exits", result.queen_exits == 0),
    ]  # fmt: skip
    command = shlex.join([cascade._display_path(sys.executable), *sys.argv])
    lines = [
        START_MARK,
        "## Chaos: steady load while workers, hives and links fail",
        "",
        "Written by `bench/chaos.py`; do not edit by hand."
        + (" Quick run: the figures are indicative only." if quick else ""),
        "",
        "| | |",
        "|---|---|",
        f"| date | {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} |",
        f"| machine | {os.cpu_count()} x {cascade.cpu_model()} ({platform.machine()}), "
        f"Linux {platform.release()} |",
        f"| rbee | {rbee.__version__} |",
        f"| fleet | the queen's local hive and 2 namespace hives (OpenSSH sshd), {REPLICAS} "
        f"replicas of {MODEL} on each (6 workers, 1 engine thread each: they share 2 cores) |",
        f"| load | {CONCURRENCY} openai-client threads, streamed chat, max_tokens {MAX_TOKENS}, "
        f"back to back for {result.duration:.0f} s |",
        f"| faults | one every {FAULT_GAP[0]:g}-{FAULT_GAP[1]:g} s after the last healed: "
        f"{', '.join(KINDS)} (cut {CUT_SECONDS:g} s) |",
        f"| measured at setup | worker load + warm-up {result.timing.load:.1f} s, hive start "
        f"{result.timing.hive_start:.1f} s |",
        f"| runtime | {result.runtime / 60:.1f} min; load average (1 min) {result.load[0]} at "
        f"start, {result.load[1]} at end |",
        f"| command | `{command}` |",
        "",
        "| requests | succeeded | failed before the first byte | broken mid-stream | success |",
        "|---|---|---|---|---|",
        f"| {out.sent} | {out.ok} | {out.before_first_byte} | {out.mid_stream} | {rate:.2f}% |",
        "",
        f"Of the requests whose answer was not under way on a worker when it was killed: "
        f"{out.ok} of {started} succeeded ({saved:.2f}%). A stream cut by its own worker's "
        "death ends with an error event by design (no replica can take over an answer already "
        f"under way): the success rate above counts those {out.mid_stream}, from "
        f"{len(result.faults)} faults in {result.duration:.0f} s (one every "
        f"{result.duration / max(1, len(result.faults)):.0f} s).",
        "",
        "| fault | count | recovery p50 (s) | max (s) | bound (s) | within bound |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Orphans after the queen stopped: {len(result.orphans)}. Queen exits during the run: "
        f"{result.queen_exits}.",
        "",
        "| goal | met |",
        "|---|---|",
        *(f"| {goal} | {'yes' if met else 'no'} |" for goal, met in verdicts),
        "",
        "Notes:",
        "",
        "- A request fails before the first byte when the queen answers an HTTP error or the "
        "connection drops before any chunk; it breaks mid-stream when an error event or a drop "
        "follows a chunk (a worker killed while it streams: the relay ends the stream with an "
        "error event, as designed; the client may retry).",
        "- Recovery: until the worker (or every worker of the hive) is ready with a new pid, as "
        "the queen lists it; for a link cut, from when the link is back (the hive has stopped "
        "itself within its lease by then). Bound: the fault's backoff + the load + 2 s, plus the "
        "hive's start for a hive fault, each taken from this run (the bench's docstring says "
        "how).",
        *(f"- {f.kind} {f.target}: "
          + ("not recovered within 120 s" if f.recovery is None else f"{f.recovery:.1f} s")
          + f" (bound {f.bound:.1f} s, {f.note})." for f in result.faults),
        *(f"- {n} times: {e}" for e, n in out.errors.most_common(8)),
        *(f"- orphan: {o}" for o in result.orphans),
        END_MARK,
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def run(duration: float, hives: HiveSet, cache: Path, base: Path, seed: int) -> Result:
    """Set the fleet up, load it and break it for `duration` seconds, stop it, count orphans."""
    rng = random.Random(seed)
    outcomes, faults = Outcomes(), []
    queen_exits = 0
    with cascade.running_queen(base, hives, cache) as queen:
        fleet = Fleet(queen, hives)
        timing = bring_up(fleet)
        progress(f"fleet up: load {timing.load:.1f} s, hive start {timing.hive_start:.1f} s")
        stop = threading.Event()
        base_url = f"{queen.url}/v1"
        clients = [
            threading.Thread(target=client_loop, args=(base_url, stop, outcomes, seed + i))
            for i in range(CONCURRENCY)
        ]
        for c in clients:
            c.start()
        hits: dict[str, list[float]] = {}
        end = time.monotonic() + duration
        try:
            while time.monotonic() + FAULT_GAP[0] < end:
                time.sleep(rng.uniform(*FAULT_GAP))
                if queen.proc.poll() is not None:
                    queen_exits += 1
                    progress(
                        f"the queen exited ({queen.proc.returncode}): {cascade.tail(queen.log)}"
                    )
                    break
                kind = rng.choice(KINDS)
                fault = apply_fault(kind, fleet, rng, hits)
                faults.append(fault)
                shown = "not recovered" if fault.recovery is None else f"{fault.recovery:.1f} s"
                bound, sent, ok = f"{fault.bound:.1f}", outcomes.sent, outcomes.ok
                progress(f"{kind} {fault.target}: recovered in {shown} (bound {bound} s); "
                         f"requests {sent}, ok {ok}")  # fmt: skip
                wait_until(lambda: whole(fleet), RECOVERY_LIMIT)
            time.sleep(max(0.0, end - time.monotonic()))
        finally:
            stop.set()
            for c in clients:
                c.join(200)
        if queen.proc.poll() is not None and queen_exits == 0:
            queen_exits += 1
        paths = Paths(config_dir=base / "config", data_dir=base / "data")
    deadline = time.monotonic() + ORPHAN_WAIT
    while (left := cascade.rbee_pids(list(hives))) or worker_pids(paths):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    orphans = [cascade.describe([p]) for p in sorted(cascade.rbee_pids(list(hives)))]
    orphans += [cascade.describe([p]) for p in worker_pids(paths)]
    for pid in [*left, *worker_pids(paths)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return Result(duration, outcomes, faults, timing, orphans, queen_exits)


def main(argv: Sequence[str] | None = None) -> int:
    """Create the hives, run the chaos, write docs/benchmarks.md, print the section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=None, help="seconds of load (300)")
    parser.add_argument("--quick", action="store_true", help="60 s of load")
    parser.add_argument("--seed", type=int, default=20261206, help="the driver's random seed")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else 60.0 if args.quick else 300.0
    reason = unavailable_reason()
    if reason is not None:
        sys.exit(f"chaos: {reason}")
    started, load_start = time.monotonic(), cascade.load_average()
    cache = cascade.model_cache()
    base = Path(tempfile.mkdtemp(prefix="chaos-bench-"))
    progress(f"{duration:.0f} s of load and faults; files in {base}")
    keep = True
    try:
        cleanup_stale()
        with test_hives(2, base / "hives") as hives:
            result = run(duration, hives, cache, base, args.seed)
        keep = bool(
            result.orphans or result.queen_exits or not all(f.within for f in result.faults)
        )
    finally:
        if keep:
            progress(f"files and logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    result.runtime, result.load = time.monotonic() - started, (load_start, cascade.load_average())
    section = render(result, quick=duration < 300)
    write_section(section, START_MARK, END_MARK, DOC)
    progress(f"wrote {DOC.relative_to(ROOT)} in {result.runtime:.0f}s")
    print(section, end="")
    return 0


if __name__ == "__main__":
    run_main(main, progress)
