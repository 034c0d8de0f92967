"""Cascading-shutdown benchmark: how fast every hive and worker stops when the queen goes away.

What is measured
    Two hives on "other machines" (Linux network namespaces, each with its own real OpenSSH
    sshd: tests/hives.py), each running one worker of the default model, started by a real queen
    over SSH. Two kinds of trial, alternated (sigkill, cut, sigkill, cut, ...):
      sigkill  SIGKILL the queen; time until no rbee process (hive or worker) is left in either
               namespace. Nothing on the hives is told: sshd sees the TCP connection close and
               hangs up the hive's PTY (SIGHUP), the hive stops its workers and exits.
      cut      take hive1's link down (`cut_link`: no RST, no FIN, the connection goes silent);
               time until no rbee process is left in hive1's namespace. Only the heartbeat lease
               notices this: the hive stops itself when no heartbeat line arrived within it.
    Orphans are rbee processes still alive when a trial gives up on them: at the deadline (30 s
    after the SIGKILL, 60 s after the cut), or 20 s after a normal stop of the queen (SIGTERM)
    at the end of a cut trial or of a trial whose setup failed. Every orphan is killed before
    the next trial starts, so each trial begins with two empty namespaces.

How
    The hives are created once (`tests.hives.test_hives`) and the model is fetched once into
    .cache/models (as the tests' model_cache fixture does). Every trial starts a fresh queen
    (`python -m rbee --data-dir D --hives hives.conf queen run --port P`, its store linked to the
    cached model, RBEE_HIVE_COMMAND so the hives run this checkout), then through the queen's
    API starts both hives (POST /v1/hives/{alias}/start) and one worker on each
    (POST /v1/workers {"model", "hive"}) and waits until both workers are ready. The first trial
    uploads the model to each hive over SFTP; later trials find it there. A setup that fails
    counts as a failed trial, not as a timing.

    "rbee process in a namespace" is a live process whose network namespace is the hive's and
    whose /proc/PID/cmdline contains "rbee" but not "sshd" (as in tests/test_remote_hives.py).
    The timing poll scans /proc once every 20 ms (comparing each process's /proc/PID/ns/net with
    /run/netns/NAME, which is what `ip netns pids` does, without starting two `ip` processes per
    poll); the clean-namespace check between trials uses `tests.hives.pids_in`. Times run from
    just before the SIGKILL (or the `ip link set eth0 down` of the cut) to the start of the first
    scan that finds nothing. The same polls note when the last worker and the last hive
    process went (by command line: `worker run` / `hive run`), to tell the two apart.

Everything started is stopped on exit, Ctrl+C included: each queen is SIGTERMed (then SIGKILLed)
when its trial ends, and dies with this script anyway (PR_SET_PDEATHSIG); `test_hives` kills
whatever is left in the namespaces and removes them. Files (queen logs, the hives' roots) go to
a cascade-bench-* temporary directory, kept only when a trial failed, left orphans or was odd.

This script imports tests.hives (test_hives, cut_link, restore_link, pids_in) and tests.conftest
(make_paths, rbee_env, free_port, MODEL) from this repository, so it needs the dev extra (pytest)
and, like the SSH tests, root, `ip netns` and OpenSSH sshd (`make sysdeps`).

Run `.venv/bin/python bench/cascade.py` (20 trials of each kind, about 10 minutes on a quiet
2-core machine), or `--quick` (3 of each, about 1.5 minutes) or `--trials N`. The result table
replaces the section between the cascade markers in docs/benchmarks.md; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import inspect
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for `tests.*` when run as `python bench/cascade.py`

from benchdoc import run_main, write_section  # noqa: E402

import rbee  # noqa: E402
from rbee.config.settings import Paths, Timeouts  # noqa: E402
from rbee.hive.daemon import HURRIED_GRACE, STOP_BUDGET  # noqa: E402
from rbee.models.sources import ensure_model  # noqa: E402
from rbee.models.store import ModelStore  # noqa: E402
from rbee.queen.remote import RemoteHive  # noqa: E402
from rbee.queen.service import QueenOptions  # noqa: E402
from tests.conftest import MODEL, free_port, make_paths, rbee_env  # noqa: E402
from tests.hives import (  # noqa: E402
    HiveSet,
    TestHive,
    cleanup_stale,
    cut_link,
    pids_in,
    restore_link,
    test_hives,
    unavailable_reason,
)

DOC = ROOT / "docs" / "benchmarks.md"
START_MARK = "<!-- cascade:start -->"
END_MARK = "<!-- cascade:end -->"

Kind = Literal["sigkill", "cut"]
KINDS: tuple[Kind, ...] = ("sigkill", "cut")
LABELS: dict[Kind, str] = {
    "sigkill": "queen SIGKILL → no rbee process on either hive",
    "cut": "hive1 link cut → no rbee process on hive1",
}

LEASE = QueenOptions().lease  # what the queen gives `rbee hive run --lease`
HEARTBEAT: float = inspect.signature(RemoteHive).parameters["heartbeat"].default
STOP_GRACE = Timeouts().stop_grace  # a hive's TERM → KILL grace for its workers
POLL = 0.02  # seconds between scans while timing
SIGKILL_DEADLINE = 30.0
CUT_DEADLINE = 60.0
STOP_DEADLINE = 20.0  # after a normal queen stop, how long the hives get to empty
QUEEN_EXIT = 30.0  # how long a SIGTERMed queen gets to exit before it is SIGKILLed
KILL_WAIT = 5.0
SETUP_TIMEOUT = 300.0  # per API call (the first worker spawn uploads the model)
READY_TIMEOUT = 120.0
GOALS: dict[Kind, float] = {"sigkill": 5.0, "cut": LEASE}
GOAL_TEXT: dict[Kind, str] = {
    "sigkill": "≤ 5 s, 0 orphans",
    "cut": f"≤ {LEASE:g} s (the lease), 0 orphans",
}


@dataclass(frozen=True)
class Settings:
    """How much to run."""

    trials: int
    quick: bool


@dataclass
class Trial:
    """One trial's outcome."""

    kind: Kind
    index: int
    seconds: float | None = None
    """Time to zero rbee processes; None if the trial failed or hit its deadline."""
    orphans: set[int] = field(default_factory=set)
    error: str | None = None
    wall: float = 0.0
    """The whole trial, setup and clean-up included."""
    notes: list[str] = field(default_factory=list)
    load: float = math.nan
    """The 1-minute load average when the measurement started."""
    roles: dict[str, float] = field(default_factory=dict)
    """Seconds to the last worker gone ("worker") and to the last hive gone ("hive")."""

    @property
    def failed(self) -> bool:
        """Setup failed (no timing was taken)."""
        return self.error is not None


@dataclass(frozen=True)
class Queen:
    """A queen process started for one trial."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path


class SetupError(RuntimeError):
    """A trial could not get its queen, hives and workers up."""


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[cascade {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tail(path: Path, size: int = 1500) -> str:
    """The end of a log file, for error messages."""
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Finding rbee processes in the hives' namespaces


def netns_id(netns: str) -> tuple[int, int]:
    """The (device, inode) of a named network namespace."""
    st = os.stat(f"/run/netns/{netns}")
    return st.st_dev, st.st_ino


def _is_rbee(pid: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"rbee" in cmdline and b"sshd" not in cmdline


def scan(hives: Sequence[TestHive]) -> dict[str, list[int]]:
    """The rbee processes in each hive's namespace, by alias, from one pass over /proc."""
    wanted = {netns_id(h.netns): h.alias for h in hives}
    found: dict[str, list[int]] = {h.alias: [] for h in hives}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:  # gone, or a zombie
            continue
        alias = wanted.get((st.st_dev, st.st_ino))
        if alias is not None and _is_rbee(pid):
            found[alias].append(int(pid))
    return found


def rbee_pids(hives: Sequence[TestHive]) -> set[int]:
    """Every rbee process in these hives' namespaces."""
    return {pid for pids in scan(hives).values() for pid in pids}


def checked_rbee_pids(hives: Iterable[TestHive]) -> set[int]:
    """The same, found with `tests.hives.pids_in` (`ip netns pids`), for the between-trial check."""
    return {pid for hive in hives for pid in pids_in(hive) if _is_rbee(str(pid))}


def role(pid: int) -> str:
    """ "worker" or "hive" (from the command line), else "other"."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    return "worker" if b"worker" in argv else "hive" if b"hive" in argv else "other"


@dataclass
class Emptied:
    """What one wait_empty saw."""

    seconds: float | None
    """From `since` to the first scan that found nothing; None at the deadline."""
    left: set[int]
    """What was still there at the deadline."""
    roles: dict[str, float]
    """Seconds from `since` to the first scan without any process of each role ("worker")."""


def wait_empty(hives: Sequence[TestHive], since: float, deadline: float) -> Emptied:
    """Poll every POLL s until the hives hold no rbee process, or `deadline` s after `since`."""
    roles: dict[int, str] = {}
    cleared: dict[str, float] = {}
    next_poll = time.monotonic()
    while True:
        now = time.monotonic()
        left = rbee_pids(hives)
        for pid in left - roles.keys():
            roles[pid] = role(pid)
        present = {roles[pid] for pid in left}
        for name in set(roles.values()) - present - cleared.keys():
            cleared[name] = now - since
        if not left:
            return Emptied(now - since, set(), cleared)
        if now - since >= deadline:
            return Emptied(None, left, cleared)
        next_poll += POLL
        time.sleep(max(0.0, next_poll - time.monotonic()))


def kill_all(hives: Sequence[TestHive]) -> set[int]:
    """SIGKILL every rbee process in the hives until none is left; return any that survived."""
    end = time.monotonic() + KILL_WAIT
    while (left := rbee_pids(hives) | checked_rbee_pids(hives)) and time.monotonic() < end:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL)
    return left


def describe(pids: Iterable[int]) -> str:
    """Pids with their command lines, for progress lines."""
    parts = []
    for pid in sorted(pids):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            text = " ".join(a.decode(errors="replace") for a in argv if a)
        except OSError:
            text = "(gone)"
        parts.append(f"{pid} {text[:120]}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Queens


def _die_with_parent_hook() -> Callable[[], None] | None:
    # Linux: a queen gets SIGKILL if this script dies, even by SIGKILL (PR_SET_PDEATHSIG = 1).
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def hook() -> None:
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)

    return hook


def queen_argv(paths: Paths, hives_conf: Path, port: int) -> list[str]:
    """`rbee queen run` with the test hives' hives.conf and no local worker."""
    return [sys.executable, "-m", "rbee", "--data-dir", str(paths.data_dir),
            "--hives", str(hives_conf), "queen", "run", "--port", str(port)]  # fmt: skip


def healthy(url: str) -> bool:
    """True once the queen answers /health."""
    try:
        return httpx.get(f"{url}/health", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def stop_queen(queen: Queen) -> float:
    """SIGTERM the queen and wait for it (SIGKILL after QUEEN_EXIT s); return the seconds taken."""
    started = time.monotonic()
    if queen.proc.poll() is None:
        queen.proc.send_signal(signal.SIGTERM)
        try:
            queen.proc.wait(QUEEN_EXIT)
        except subprocess.TimeoutExpired:
            progress(f"queen {queen.proc.pid} ignored SIGTERM for {QUEEN_EXIT:.0f}s; killing it")
            queen.proc.kill()
            queen.proc.wait()
    return time.monotonic() - started


@contextlib.contextmanager
def running_queen(base: Path, hive_set: HiveSet, model_cache: Path) -> Iterator[Queen]:
    """A fresh queen with its own data dir under `base`; whatever happens, it is gone after."""
    paths = make_paths(base, model_cache)
    port = free_port()
    log = base / "queen.log"
    env = {**rbee_env(paths), "RBEE_HIVE_COMMAND": f"{sys.executable} -m rbee"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            queen_argv(paths, hive_set.config, port),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl+C reaches this script only; it stops the queen
            preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - only calls prctl(2)
        )
    queen = Queen(proc=proc, url=f"http://127.0.0.1:{port}", log=log)
    try:
        yield queen
    finally:
        stop_queen(queen)


# ---------------------------------------------------------------------------------------------
# Setting a trial up


def api(queen: Queen, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the queen's API; SetupError with its message unless it answers 2xx."""
    try:
        response = httpx.request(
            method, f"{queen.url}{path}", json=body, timeout=SETUP_TIMEOUT, trust_env=False
        )
    except httpx.HTTPError as err:
        raise SetupError(f"{method} {path}: {err!r}") from err
    if not response.is_success:
        raise SetupError(f"{method} {path}: {response.status_code} {response.text[:300]}")
    return response.json()


def wait_for(check: Callable[[], bool], queen: Queen, timeout: float, what: str) -> None:
    """Poll `check` until true; SetupError if the queen exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not check():
        if queen.proc.poll() is not None:
            raise SetupError(
                f"{what}: the queen exited ({queen.proc.returncode}): {tail(queen.log)}"
            )
        if time.monotonic() > deadline:
            raise SetupError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.1)


def ready_hives(queen: Queen) -> set[str]:
    """The hives that have a ready worker, as the queen lists them."""
    try:
        listing = httpx.get(f"{queen.url}/v1/workers", timeout=5.0, trust_env=False).json()
    except (httpx.HTTPError, ValueError):
        return set()
    return {str(w.get("hive")) for w in listing.get("data", []) if w.get("state") == "ready"}


def bring_up(queen: Queen, hive_set: HiveSet) -> None:
    """Wait for the queen; start both hives and a worker on each; wait until both are ready."""
    wait_for(lambda: healthy(queen.url), queen, READY_TIMEOUT, "queen /health")
    aliases = [h.alias for h in hive_set]
    for alias in aliases:
        api(queen, "POST", f"/v1/hives/{alias}/start")
        api(queen, "POST", "/v1/workers", {"model": MODEL, "hive": alias})
    wait_for(lambda: set(aliases) <= ready_hives(queen), queen, READY_TIMEOUT, "both workers")
    counts = scan(list(hive_set))
    if not all(counts.values()):
        raise SetupError(f"the queen reports ready workers but a namespace is empty: {counts}")


# ---------------------------------------------------------------------------------------------
# Trials


def measure_sigkill(queen: Queen, hive_set: HiveSet, trial: Trial) -> None:
    """SIGKILL the queen; time until both namespaces hold no rbee process."""
    hives = list(hive_set)
    since = time.monotonic()
    queen.proc.send_signal(signal.SIGKILL)
    emptied = wait_empty(hives, since, SIGKILL_DEADLINE)
    queen.proc.wait()
    trial.seconds, trial.roles, left = emptied.seconds, emptied.roles, emptied.left
    if left:
        trial.orphans |= left
        progress(f"  orphans {SIGKILL_DEADLINE:.0f}s after the SIGKILL: {describe(left)}")


def measure_cut(queen: Queen, hive_set: HiveSet, trial: Trial) -> None:
    """Cut hive1's link; time until hive1 holds no rbee process; restore it; stop the queen."""
    hive1, others = hive_set[0], list(hive_set)[1:]
    since = time.monotonic()
    cut_link(hive1)
    try:
        emptied = wait_empty([hive1], since, CUT_DEADLINE)
        trial.seconds, trial.roles, left = emptied.seconds, emptied.roles, emptied.left
        if not rbee_pids(others):
            trial.notes.append("the other hive emptied too during the cut")
    finally:
        restore_link(hive1)
    if left:
        trial.orphans |= left
        progress(f"  orphans on {hive1.alias} {CUT_DEADLINE:.0f}s after the cut: {describe(left)}")
    trial.orphans |= stop_and_drain(queen, hive_set, trial)


def stop_and_drain(queen: Queen, hive_set: HiveSet, trial: Trial) -> set[int]:
    """Stop the queen normally; return what is still in the hives STOP_DEADLINE s later."""
    took = stop_queen(queen)
    if took > 10:
        trial.notes.append(f"the queen took {took:.1f}s to exit on SIGTERM")
    hives = list(hive_set)
    emptied = wait_empty(hives, time.monotonic(), STOP_DEADLINE)
    if emptied.left:
        progress(f"  orphans {STOP_DEADLINE:.0f}s after a normal stop: {describe(emptied.left)}")
    elif emptied.seconds is not None and emptied.seconds > 10:
        trial.notes.append(f"the hives took {emptied.seconds:.1f}s to empty after the queen's stop")
    return emptied.left


def ensure_clean(hive_set: HiveSet, trial: Trial) -> None:
    """Kill what a trial left (already counted as orphans, or counted now); check it is all gone."""
    left = rbee_pids(list(hive_set)) | checked_rbee_pids(hive_set)
    new = left - trial.orphans
    if new:
        progress(f"  left after the trial: {describe(new)}")
        trial.orphans |= new
    survivors = kill_all(list(hive_set))
    if survivors:
        raise RuntimeError(f"rbee processes survived SIGKILL: {describe(survivors)}")


def run_trial(kind: Kind, index: int, hive_set: HiveSet, model_cache: Path, base: Path) -> Trial:
    """One trial of `kind`: a fresh queen, both hives and workers up, then the measurement."""
    trial = Trial(kind=kind, index=index)
    started = time.monotonic()
    trial_dir = base / f"{index:02d}-{kind}"
    with running_queen(trial_dir, hive_set, model_cache) as queen:
        try:
            bring_up(queen, hive_set)
        except SetupError as err:
            trial.error = str(err)
            progress(f"  setup failed: {err}; queen log: {queen.log}")
            trial.orphans |= stop_and_drain(queen, hive_set, trial)
        else:
            trial.load = os.getloadavg()[0]
            progress(f"  up in {time.monotonic() - started:.1f}s; load {trial.load:.2f}; measuring")
            (measure_sigkill if kind == "sigkill" else measure_cut)(queen, hive_set, trial)
    ensure_clean(hive_set, trial)
    trial.wall = time.monotonic() - started
    return trial


def report_trial(trial: Trial, total: int) -> None:
    """The progress line of a finished trial."""
    if trial.failed:
        outcome = "FAILED"
    elif trial.seconds is None:
        outcome = "deadline reached"
    else:
        outcome = f"{trial.seconds:.3f}s to zero"
    outcome += "".join(f", last {name} gone at {sec:.3f}s" for name, sec in
                       sorted(trial.roles.items()))  # fmt: skip
    extra = "".join(f"; {n}" for n in trial.notes)
    progress(
        f"{trial.kind} {trial.index}/{total}: {outcome}, {len(trial.orphans)} orphan(s), "
        f"trial took {trial.wall:.1f}s{extra}"
    )


def run_all(settings: Settings, hive_set: HiveSet, model_cache: Path, base: Path) -> list[Trial]:
    """Alternate sigkill and cut trials, `settings.trials` of each."""
    trials = []
    ensure_clean(hive_set, Trial(kind="sigkill", index=0))
    for index in range(1, settings.trials + 1):
        for kind in KINDS:
            progress(f"{kind} {index}/{settings.trials}: starting a queen, hives and workers")
            trial = run_trial(kind, index, hive_set, model_cache, base)
            report_trial(trial, settings.trials)
            trials.append(trial)
    return trials


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


@dataclass(frozen=True)
class Row:
    """The summary of one kind of trial."""

    trials: int
    failed: int
    timed_out: int
    p50: float
    p95: float
    max: float
    orphans: int
    wall: float
    """Mean seconds per trial, setup and clean-up included."""

    def goal_met(self, goal: float) -> bool:
        """Every trial measured, none over the goal, no orphans."""
        return self.failed == 0 and self.timed_out == 0 and self.orphans == 0 and self.max <= goal


def summarize(trials: Sequence[Trial]) -> Row:
    """The table row of one kind."""
    times = [t.seconds for t in trials if t.seconds is not None]
    measured = [t for t in trials if not t.failed]
    return Row(
        trials=len(trials),
        failed=sum(t.failed for t in trials),
        timed_out=sum(t.seconds is None for t in measured),
        p50=percentile(times, 50),
        p95=percentile(times, 95),
        max=max(times, default=math.nan),
        orphans=sum(len(t.orphans) for t in trials),
        wall=sum(t.wall for t in trials) / len(trials) if trials else math.nan,
    )


def results_table(rows: dict[Kind, Row]) -> list[str]:
    """One row per kind of trial, with its goal."""
    lines = [
        "| trial | trials | failed | deadline reached | p50 (s) | p95 (s) | max (s) "
        "| orphans | goal | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for kind in KINDS:
        r = rows[kind]
        verdict = "met" if r.goal_met(GOALS[kind]) else "**missed**"
        lines.append(
            f"| {LABELS[kind]} | {r.trials} | {r.failed} | {r.timed_out} | {r.p50:.2f} "
            f"| {r.p95:.2f} | {r.max:.2f} | {r.orphans} | {GOAL_TEXT[kind]} | {verdict} |"
        )
    return lines


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo when there is one."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def max_load(trials: Sequence[Trial]) -> str:
    """The highest 1-minute load average at the start of a measurement."""
    loads = [t.load for t in trials if not math.isnan(t.load)]
    return f"{max(loads):.2f}" if loads else "n/a"


def load_average() -> str:
    """The 1-minute load average."""
    with contextlib.suppress(OSError):
        return f"{os.getloadavg()[0]:.2f}"
    return "n/a"


def _display_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


@dataclass(frozen=True)
class RunInfo:
    """What the header table says about the run itself."""

    settings: Settings
    load: tuple[str, str, str]
    """At the start, at the end, and the highest when a measurement started."""
    runtime: float


def environment_lines(info: RunInfo) -> list[str]:
    """The header table: when, where, with what, and the exact command."""
    command = shlex.join([_display_path(sys.executable), *sys.argv])
    return [
        "| | |",
        "|---|---|",
        f"| date | {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} |",
        f"| machine | {os.cpu_count()} x {cpu_model()} ({platform.machine()}), "
        f"Linux {platform.release()} |",
        f"| python | {platform.python_version()} |",
        f"| rbee | {rbee.__version__} |",
        f"| hives | 2 network namespaces with OpenSSH sshd on this machine, one {MODEL} "
        "worker each |",
        f"| lease, heartbeat | {LEASE:g} s, every {HEARTBEAT:g} s; workers' stop grace "
        f"{STOP_GRACE:g} s ({HURRIED_GRACE:g} s once the queen is gone) |",
        f"| trials | {info.settings.trials} of each kind, alternated, a fresh queen each; "
        f"poll every {POLL * 1000:.0f} ms |",
        f"| runtime | {info.runtime / 60:.1f} min |",
        f"| load average (1 min) | {info.load[0]} at start, {info.load[1]} at end, "
        f"{info.load[2]} at most when a measurement started |",
        f"| command | `{command}` |",
    ]


def role_note(kind: Kind, trials: Sequence[Trial]) -> str:
    """When the last worker and the last hive process went, p50 and max over the trials."""
    parts = []
    for name in ("worker", "hive"):
        times = [t.roles[name] for t in trials if name in t.roles and t.seconds is not None]
        if times:
            parts.append(
                f"last {name} process gone p50 {percentile(times, 50):.2f} s, "
                f"max {max(times):.2f} s"
            )
    return f"{kind} breakdown: {'; '.join(parts) or 'no timing'}."


def trial_notes(trials: Sequence[Trial]) -> list[str]:
    """Per-trial times, failures and anything odd."""
    notes = []
    for kind in KINDS:
        mine = [t for t in trials if t.kind == kind]
        times = ", ".join("failed" if t.failed else "—" if t.seconds is None
                          else f"{t.seconds:.2f}" for t in mine)  # fmt: skip
        notes.append(f"{kind} times (s), in order: {times}.")
        notes.append(role_note(kind, mine))
    for t in trials:
        if t.error:
            notes.append(f"{t.kind} {t.index} failed to set up: {t.error[:300]}")
        notes.extend(f"{t.kind} {t.index}: {n}." for n in t.notes)
    return notes


def render(trials: Sequence[Trial], info: RunInfo) -> str:
    """The markdown section between the markers."""
    rows = {kind: summarize([t for t in trials if t.kind == kind]) for kind in KINDS}
    quick = " Quick run: the figures are indicative only." if info.settings.quick else ""
    per_trial = ", ".join(f"{kind} {rows[kind].wall:.0f} s" for kind in KINDS)
    lines = [
        START_MARK,
        "## Cascading shutdown: queen SIGKILL and link cut → no process left on the hives",
        "",
        "Written by `bench/cascade.py`; do not edit by hand." + quick,
        "",
        *environment_lines(info),
        "",
        *results_table(rows),
        "",
        "Notes:",
        "",
        "- Time: from just before the SIGKILL (or the link cut) to the first 20 ms scan of "
        "/proc that finds no rbee process (hive or worker) in the namespace(s). A trial whose "
        "queen, hives or workers could not be set up is failed, not timed.",
        f"- Orphans: rbee processes alive at the deadline ({SIGKILL_DEADLINE:g} s after the "
        f"SIGKILL, {CUT_DEADLINE:g} s after the cut) or {STOP_DEADLINE:g} s after the queen's "
        "normal stop (SIGTERM) that ends every cut trial; they are killed before the next trial.",
        f"- A cut hive starts stopping {LEASE - STOP_BUDGET:g} s after the last heartbeat it "
        f"received ({STOP_BUDGET:g} s before its {LEASE:g} s lease ends, with a "
        f"{HURRIED_GRACE:g} s TERM-to-KILL grace), and heartbeats come every {HEARTBEAT:g} s: "
        f"expect {LEASE - STOP_BUDGET - HEARTBEAT:g} to {LEASE - STOP_BUDGET:g} s after the cut, "
        "plus the time the hive takes to stop its worker and exit.",
        f"- Mean wall time per trial, setup and clean-up included: {per_trial}.",
        *(f"- {note}" for note in trial_notes(trials)),
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """--trials N (default 20), --quick (3)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=None, help="trials of each kind (20)")
    parser.add_argument("--quick", action="store_true", help="3 trials of each kind")
    args = parser.parse_args(argv)
    trials = args.trials if args.trials is not None else 3 if args.quick else 20
    if trials < 1:
        parser.error("--trials must be at least 1")
    return Settings(trials=trials, quick=args.quick or trials < 20)


def model_cache() -> Path:
    """The store holding the default model, fetched into .cache/models first if missing."""
    root = Path(os.environ.get("RBEE_TEST_MODEL_CACHE", ROOT / ".cache" / "models"))
    ensure_model(ModelStore(root), MODEL)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Create the hives, run the trials, write docs/benchmarks.md, print the section."""
    settings = parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        sys.exit(f"cascade: {reason}")
    started, load_start = time.monotonic(), load_average()
    cache = model_cache()
    base = Path(tempfile.mkdtemp(prefix="cascade-bench-"))
    progress(f"{settings.trials} trial(s) of each kind; files in {base}")
    keep = True
    try:
        cleanup_stale()
        with test_hives(2, base / "hives") as hive_set:
            progress(f"hives up: {', '.join(f'{h.alias} {h.address}' for h in hive_set)}")
            trials = run_all(settings, hive_set, cache, base)
        keep = any(t.failed or t.orphans or t.notes for t in trials)
    finally:
        if keep:
            progress(f"files and logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    loads = (load_start, load_average(), max_load(trials))
    info = RunInfo(settings, loads, time.monotonic() - started)
    section = render(trials, info)
    write_section(section, START_MARK, END_MARK, DOC)
    progress(f"wrote {DOC.relative_to(ROOT)} in {info.runtime:.0f}s")
    print(section, end="")
    return 0


if __name__ == "__main__":
    run_main(main, progress)
