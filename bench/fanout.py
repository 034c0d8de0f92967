"""Fan-out benchmark: `rbee hive status` over N hives at once, cold and over held connections,
beside `ansible -m ping` on the same hives in the same run; the tables go to docs/benchmarks.md.

What is measured
    50 test hives are created once with tests/hives.py (`test_hives(50, base)`: one network
    namespace per hive, each with its own real OpenSSH sshd, reached over a veth pair); for
    N = 10 and 50 the first N are used. Every figure is the wall time of one fan-out over all N
    hives, from start until the last hive is done:
      rbee status (facts)  what `rbee hive status` does per hive: hives.conf read once, a
                           `HiveConnection.of(config, alias)` (asyncssh gets only that hive's
                           lines of hives.conf) and `status_facts` (a POSIX sh script: uname,
                           getconf, df, `python3 --version`, the engines in rbee's venv there)
      rbee exec true       the same with `conn.check(["true"])`: the SSH cost alone
      ansible ping         `ansible all -i INVENTORY -m ping -f N` (ansible-core from PyPI, run
                           from this venv), with ansible-core's default settings otherwise
      ansible ping, pipelining   the same with ANSIBLE_PIPELINING=True (one SSH exec per host
                           instead of mkdir / put the module / exec / rm)
    cold  rbee: one asyncio task per hive opens a HiveConnection, runs the command and closes
          it; all N at once in one event loop (HiveConnection's defaults: connect_timeout 10 s,
          at most 8 channels per connection, of which one is used). Ansible: a fresh
          ControlPath directory, so every host gets a new SSH connection (ansible-core's
          default ssh_args `-C -o ControlMaster=auto -o ControlPersist=60s` are kept).
    warm  rbee: N HiveConnections are opened and the facts are read once on each, unmeasured
          (as a queen holds its hives); then the command runs on all N held connections at
          once: for status, the script re-reads only what moves (free RAM, disk and VRAM) and
          the rest comes from the first read on that connection. Ansible: the next run,
          reusing the ControlPersist masters the cold run left in that directory (the fairest
          equivalent of held connections); the masters are stopped after it.
    Ansible gets forks = N (its default of 5 would throttle it), host key checking on
    (ANSIBLE_HOST_KEY_CHECKING=True, `-o UserKnownHostsFile=... -o StrictHostKeyChecking=yes`),
    and ansible_python_interpreter=/usr/bin/python3 (no interpreter discovery; rbee also names
    its interpreter). A run counts only if every hive answered (rbee: no exception on any hive;
    Ansible: exit status 0 and "SUCCESS" with "pong" for every host); a failed run is reported,
    not timed.

How
    Rounds are interleaved (rbee cold facts, cold true, warm facts, warm true, then Ansible cold
    and warm) so drift on a shared machine hits every column alike. Before each run the script
    waits (up to 3 s) until the machine's cores are nearly idle, so the previous run's processes
    (sessions, Ansible's workers) have exited; how busy the machine still was when runs started
    is in the report. Each column reports the median and
    the minimum over its runs. Beside the wall time, each run records the CPU time of this
    process and its waited children (Ansible and its workers and ssh clients), the CPU time of
    the processes in the hives' namespaces (sshd, its sessions and their commands, from /proc:
    the hive side's own cost, whatever else the machine runs) and the busy CPU time of the
    whole machine (/proc/stat, every core, every process). A breakdown at the largest N times
    the steps of a cold connection on their own: building asyncssh's options (from the whole
    hives.conf, for comparison, and from each hive's own lines, as rbee does), TCP connect and
    banner, key exchange (`asyncssh.get_server_host_key`), key exchange and user authentication
    (opening and closing a HiveConnection), and the status script run as N local processes
    without SSH. The start-up of the `rbee` and `ansible` commands is timed apart: the rbee
    figures are in-process and do not include it, Ansible's include its own.

The hive fixtures come from tests/hives.py, so the repository root is put on sys.path. Needs
root, ip netns, OpenSSH sshd and ansible-core (the `bench` extra). Run
`.venv/bin/python bench/fanout.py` (6 to 8 minutes on 2 cores) or add `--quick` (about 2
minutes: fewer runs, no pipelining column; indicative figures only). For a quick check of a
change, `--quick --sizes 10 --rbee-only` (under a minute; docs/benchmarks.md is left alone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import importlib.metadata
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/hives.py is not part of the installed package

from benchdoc import run_main, write_section  # noqa: E402

import rbee  # noqa: E402
from rbee.config.hives import Hive, load_hives  # noqa: E402
from rbee.facts import Facts  # noqa: E402
from rbee.ssh.connection import HiveConnection  # noqa: E402
from rbee.ssh.facts import STATUS_SCRIPT, remote_facts, status_facts  # noqa: E402
from tests.hives import SSHD, HiveSet, cleanup_stale, test_hives  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
START_MARK = "<!-- fanout:start -->"
END_MARK = "<!-- fanout:end -->"
SIZES = (10, 50)  # the issue's; `--sizes` measures others without writing docs/benchmarks.md
REMOTE_PYTHON = "python3"  # what rbee runs the facts script with
HIVE_PYTHON = "/usr/bin/python3"  # the hives' python3: Ansible's interpreter
HIVE_PATH = "/usr/local/bin:/usr/bin:/bin"  # sshd's default PATH, which the hives' commands get
BIN = Path(sys.executable).parent
ANSIBLE = BIN / "ansible"
ANSIBLE_SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=60s"  # ansible-core's default
SETTLE_WINDOW = 0.25  # seconds per idle check before a run
SETTLE_IDLE = 0.3  # busy cores below which the machine counts as idle
SETTLE_TIMEOUT = 3.0  # seconds to wait for it at most
RUN_TIMEOUT = 120.0  # seconds one rbee fan-out may take
ANSIBLE_TIMEOUT = 300.0
GOAL_COLD = 1.5  # seconds for 50 hives
GOAL_WARM = 0.3
GOAL_RATIO = 10.0

COLUMNS = ("facts", "true", "ansible", "ansible_pipelining")
LABELS = {
    "facts": "rbee status (facts)",
    "true": "rbee exec true",
    "ansible": "ansible ping",
    "ansible_pipelining": "ansible ping, pipelining",
}
MODES = ("cold", "warm")
DIAGNOSTICS = ("options_whole", "options", "tcp", "kex", "connect", "local")
DIAG_LABELS = {
    "options_whole": "asyncssh options for each hive from the whole hives.conf (asyncssh "
    "parses all of it per connection; not what rbee does, shown for comparison)",
    "options": "asyncssh options for each hive as rbee has connect() build them: hives.conf "
    "read once, each hive's own lines of it (`HiveConnection.of`), key and known_hosts loaded",
    "tcp": "TCP connect + SSH banner",
    "kex": "connect + key exchange (`asyncssh.get_server_host_key`, options included)",
    "connect": "+ user authentication (open and close a HiveConnection)",
    "local": "the status script as N local `sh -c` processes at once (no SSH)",
}


# ---------------------------------------------------------------------------------------------
# Measurement records


@dataclass(frozen=True)
class Settings:
    """How many runs of each kind."""

    quick: bool
    rbee_runs: int
    ansible_runs: int
    diagnostic_runs: int
    pipelining: bool
    """Also measure Ansible with ANSIBLE_PIPELINING=True."""
    sizes: tuple[int, ...] = SIZES
    """Fan-out widths, ascending; the breakdown runs at the last."""


@dataclass(frozen=True)
class Sample:
    """One timed run: wall time, CPU of this process and its children, busy CPU of the machine."""

    wall: float
    client_cpu: float
    machine_cpu: float
    busy_before: float
    """Busy cores of the machine just before the run (see settle())."""
    hive_cpu: float = 0.0
    """CPU of every process in the hives' namespaces (sshd and the commands it ran), whatever
    else the machine runs: the hive side's own cost, unlike machine_cpu."""


@dataclass
class Tally:
    """Every run of one kind."""

    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


Key = tuple[int, str, str]  # (hives, mode or "diag", column or diagnostic step)


@dataclass
class Results:
    """All tallies, and what the report needs besides them."""

    tallies: dict[Key, Tally] = field(default_factory=dict)
    startup: dict[str, list[float]] = field(default_factory=dict)
    remote_python: str = "?"
    sizes: tuple[int, ...] = SIZES

    def tally(self, key: Key) -> Tally:
        """The tally for `key`, created empty on first use."""
        return self.tallies.setdefault(key, Tally())


class RunFailed(Exception):
    """A run in which at least one hive did not answer."""


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[fanout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_busy() -> float:
    """Busy CPU seconds of every core since boot (all of /proc/stat's "cpu" line but idle)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def hive_cpu(hive_set: HiveSet) -> float:
    """CPU seconds used so far by the processes in the hives' network namespaces, with the
    children they reaped (an sshd's sessions and their commands): /proc, no forks."""
    spaces = set()
    for hive in hive_set.hives:
        with contextlib.suppress(OSError):
            spaces.add(os.stat(f"/run/netns/{hive.netns}").st_ino)
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino in spaces:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall clock, CPU of this process and its waited children, machine busy CPU)."""
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    return time.perf_counter(), own, machine_busy()


async def settle() -> float:
    """Wait until the machine is nearly idle, at most SETTLE_TIMEOUT; return its busy cores."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        busy0, started = machine_busy(), time.perf_counter()
        await asyncio.sleep(SETTLE_WINDOW)
        busy = (machine_busy() - busy0) / (time.perf_counter() - started)
        if busy < SETTLE_IDLE or time.monotonic() > deadline:
            return busy


async def measure(
    hive_set: HiveSet, tally: Tally, what: str, run: Callable[[], Awaitable[object]]
) -> None:
    """Time `run()` into `tally` once the machine is idle; a RunFailed is counted, not timed."""
    busy_before = await settle()
    hives0 = hive_cpu(hive_set)
    wall0, own0, busy0 = cpu_snapshot()
    try:
        await run()
    except RunFailed as err:
        tally.failures.append(str(err))
        progress(f"  {what}: FAILED: {err}")
    else:
        wall1, own1, busy1 = cpu_snapshot()
        await asyncio.sleep(0.05)  # let the hives' sshd reap the sessions that just closed
        hives = hive_cpu(hive_set) - hives0
        sample = Sample(wall1 - wall0, own1 - own0, busy1 - busy0, busy_before, hives)
        tally.samples.append(sample)
        progress(
            f"  {what:<44} {sample.wall:7.3f} s  (client CPU {sample.client_cpu:5.2f} s, "
            f"hives' CPU {hives:5.2f} s, machine CPU {sample.machine_cpu:5.2f} s; "
            f"{busy_before:.2f} cores busy before)"
        )


async def all_ok(what: str, coros: Sequence[Awaitable[object]]) -> list[object]:
    """Await every coroutine at once; RunFailed naming the first error if any of them failed."""
    async with asyncio.timeout(RUN_TIMEOUT):
        outcomes = await asyncio.gather(*coros, return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    for error in errors:
        if not isinstance(error, Exception):
            raise error
    if errors:
        first = errors[0]
        raise RunFailed(
            f"{what}: {len(errors)} of {len(outcomes)} hives failed; first: "
            f"{type(first).__name__}: {first}"
        )
    return list(outcomes)


# ---------------------------------------------------------------------------------------------
# rbee


Op = Callable[[HiveConnection, Hive, Facts | None], Awaitable[object]]
"""A command on one hive's connection, given the facts read earlier on it (if any)."""


async def facts_op(conn: HiveConnection, hive: Hive, known: Facts | None) -> object:
    """What `rbee hive status` does on an open connection: the status script (sh, no Python),
    which on a connection that read the facts before re-reads only free RAM, disk and VRAM."""
    return await status_facts(conn, hive.python, hive.install_dir, known)


async def true_op(conn: HiveConnection, hive: Hive, known: Facts | None) -> object:
    """The cheapest remote command: one SSH exec, no Python."""
    return await conn.check(["true"])


OPS: dict[str, Op] = {"facts": facts_op, "true": true_op}


async def cold_run(config_path: Path, aliases: Sequence[str], op: Op) -> None:
    """What one `rbee hive status` process does for many hives: read hives.conf, open a
    connection to every hive at once (each with its own lines of hives.conf), run `op`, close."""
    config = load_hives(config_path)

    async def one(alias: str) -> object:
        async with HiveConnection.of(config, alias) as conn:
            return await op(conn, config.get(alias), None)

    await all_ok("cold", [one(a) for a in aliases])


@dataclass(frozen=True)
class Held:
    """Open connections, their hives, and the facts first read on each."""

    conns: list[HiveConnection]
    hives: dict[str, Hive]
    facts: dict[str, Facts]


async def warm_run(held: Held, op: Op) -> None:
    """Run `op` on every held connection at once."""
    await all_ok("warm", [op(c, held.hives[c.alias], held.facts[c.alias]) for c in held.conns])


@contextlib.asynccontextmanager
async def holding(config_path: Path, aliases: Sequence[str]) -> AsyncIterator[Held]:
    """Open a HiveConnection to every hive at once and read its facts (as a queen holds its
    hives); close them all on exit."""
    config = load_hives(config_path)
    hives = {alias: config.get(alias) for alias in aliases}
    async with contextlib.AsyncExitStack() as stack:
        opened = await asyncio.gather(
            *(stack.enter_async_context(HiveConnection.of(config, a)) for a in aliases),
            return_exceptions=True,
        )
        conns = [c for c in opened if isinstance(c, HiveConnection)]
        if len(conns) != len(aliases):
            errors = [e for e in opened if not isinstance(e, HiveConnection)]
            raise RunFailed(f"opening held connections: {len(errors)} failed: {errors[0]}")
        first = [facts_op(c, hives[c.alias], None) for c in conns]
        facts = [f for f in await all_ok("first facts", first) if isinstance(f, Facts)]
        yield Held(conns, hives, {c.alias: f for c, f in zip(conns, facts, strict=True)})


async def rbee_round(hive_set: HiveSet, n: int, results: Results) -> None:
    """One cold and one warm run of each rbee column over the first n hives."""
    aliases = [h.alias for h in hive_set.hives[:n]]
    for column, op in OPS.items():
        await measure(
            hive_set,
            results.tally((n, "cold", column)),
            f"N={n} cold {LABELS[column]}",
            functools.partial(cold_run, hive_set.config, aliases, op),
        )
    try:
        async with holding(hive_set.config, aliases) as held:
            for column, op in OPS.items():
                await measure(
                    hive_set,
                    results.tally((n, "warm", column)),
                    f"N={n} warm {LABELS[column]}",
                    functools.partial(warm_run, held, op),
                )
    except RunFailed as err:
        for column in OPS:
            results.tally((n, "warm", column)).failures.append(str(err))
        progress(f"  N={n} warm: FAILED: {err}")


# ---------------------------------------------------------------------------------------------
# Ansible


@dataclass(frozen=True)
class AnsibleSetup:
    """Files and directories shared by every Ansible run."""

    home: Path
    config: Path
    inventories: dict[int, Path]
    control_dirs: list[Path] = field(default_factory=list)
    """Every ControlPath directory used so far (their masters are stopped on exit)."""


def inventory_text(hive_set: HiveSet, n: int) -> str:
    """An INI inventory of the first n hives, with the same key and known_hosts as rbee's."""
    ssh_args = f"-o UserKnownHostsFile={hive_set.known_hosts} -o StrictHostKeyChecking=yes"
    lines = ["[hives]"]
    lines += [
        f"{h.alias} ansible_host={h.address} ansible_port={h.port}" for h in hive_set.hives[:n]
    ]
    lines += [
        "",
        "[hives:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={hive_set.client_key}",
        f"ansible_ssh_common_args='{ssh_args}'",
        f"ansible_python_interpreter={HIVE_PYTHON}",
    ]
    return "\n".join(lines) + "\n"


def ansible_setup(hive_set: HiveSet, sizes: Sequence[int]) -> AnsibleSetup:
    """Write an inventory per size and an empty ansible.cfg (so no other config is read)."""
    home = hive_set.base / "ansible"
    home.mkdir(exist_ok=True)
    config = home / "ansible.cfg"
    config.write_text("# empty: every setting comes from the environment\n")
    inventories = {}
    for n in sizes:
        inventories[n] = home / f"hosts-{n}.ini"
        inventories[n].write_text(inventory_text(hive_set, n))
    return AnsibleSetup(home=home, config=config, inventories=inventories)


def ansible_argv(inventory: Path, n: int) -> list[str]:
    """`ansible all -i INVENTORY -m ping -f N`."""
    return [str(ANSIBLE), "all", "-i", str(inventory), "-m", "ping", "-f", str(n)]


def ansible_env(setup: AnsibleSetup, control_dir: Path, pipelining: bool) -> dict[str, str]:
    """ansible-core's defaults, but confined to the hive set's directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(setup.config),
        ANSIBLE_HOME=str(setup.home / "home"),
        ANSIBLE_LOCAL_TEMP=str(setup.home / "tmp"),
        ANSIBLE_HOST_KEY_CHECKING="True",
        ANSIBLE_SSH_ARGS=ANSIBLE_SSH_ARGS,
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(control_dir),
        ANSIBLE_PIPELINING=str(pipelining),
        ANSIBLE_NOCOLOR="1",
    )
    env.setdefault("LANG", "C.UTF-8")  # ansible-core refuses to run without a UTF-8 locale
    return env


_RESULT_LINE = re.compile(r"^(\S+) \| (SUCCESS|CHANGED|FAILED!|UNREACHABLE!)", re.MULTILINE)


def check_ansible(returncode: int, out: str, err: str, expected: set[str]) -> None:
    """RunFailed unless every expected host answered SUCCESS with "pong"."""
    outcome = dict(_RESULT_LINE.findall(out))
    ok = {host for host, status in outcome.items() if status == "SUCCESS"}
    pongs = out.count('"ping": "pong"')
    if returncode == 0 and ok == expected and pongs == len(expected):
        return
    bad = sorted(expected - ok)
    detail = next(
        (line for line in out.splitlines() if "FAILED" in line or "UNREACHABLE" in line),
        err.strip().splitlines()[-1] if err.strip() else "",
    )
    raise RunFailed(
        f"ansible exit {returncode}, {len(ok)} of {len(expected)} hosts ok "
        f"(not ok: {', '.join(bad[:5])}); {detail[:300]}"
    )


async def run_ansible(argv: list[str], env: dict[str, str], cwd: Path, expected: set[str]) -> None:
    """Run Ansible in its own process group; kill the group if it overruns or we are stopped."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(ANSIBLE_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError as exc:
        raise RunFailed(f"ansible did not finish in {ANSIBLE_TIMEOUT:.0f}s") from exc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    check_ansible(
        proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"), expected
    )


def stop_masters(control_dir: Path) -> None:
    """Ask every ControlPersist master in `control_dir` to exit (`ssh -O exit`)."""
    sockets = [p for p in control_dir.iterdir() if p.is_socket()] if control_dir.is_dir() else []
    procs = [
        subprocess.Popen(
            ["ssh", "-o", f"ControlPath={s}", "-O", "exit", "hive"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for s in sockets
    ]
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def ansible_round(
    hive_set: HiveSet, n: int, setup: AnsibleSetup, settings: Settings, results: Results
) -> None:
    """Per Ansible column: a cold run with a fresh ControlPath dir, then a warm run reusing it."""
    argv = ansible_argv(setup.inventories[n], n)
    expected = {h.alias for h in hive_set.hives[:n]}
    columns = ["ansible", "ansible_pipelining"] if settings.pipelining else ["ansible"]
    for column in columns:
        control_dir = setup.home / "cp" / str(len(setup.control_dirs))
        control_dir.mkdir(parents=True)
        setup.control_dirs.append(control_dir)
        env = ansible_env(setup, control_dir, pipelining=column == "ansible_pipelining")
        try:
            for mode in MODES:
                await measure(
                    hive_set,
                    results.tally((n, mode, column)),
                    f"N={n} {mode} {LABELS[column]}",
                    functools.partial(run_ansible, argv, env, setup.home, expected),
                )
        finally:
            stop_masters(control_dir)


# ---------------------------------------------------------------------------------------------
# Breakdown of a cold connection


async def options_step(config_path: Path, aliases: Sequence[str], *, whole: bool) -> None:
    """Build each hive's asyncssh options as connect() does (in its executor): from the hive's
    own lines (hives.conf read once, as HiveConnection.of does), or from the whole hives.conf."""
    config = load_hives(config_path)
    with tempfile.TemporaryDirectory(prefix="rbee-fanout-") as folder:
        paths = {}
        for alias in aliases:
            paths[alias] = config_path if whole else Path(folder) / f"{alias}.conf"
            if not whole:
                paths[alias].write_text(config.asyncssh_text(alias) or "")
        await all_ok(
            "options",
            [
                asyncssh.SSHClientConnectionOptions.construct(host=a, config=[str(paths[a])])
                for a in aliases
            ],
        )


async def kex_step(config_path: Path, aliases: Sequence[str]) -> None:
    """Connect and exchange keys with every hive (no user authentication), each from its own
    lines of hives.conf."""
    config = load_hives(config_path)
    with tempfile.TemporaryDirectory(prefix="rbee-fanout-") as folder:
        paths = {alias: Path(folder) / f"{alias}.conf" for alias in aliases}
        for alias, path in paths.items():
            path.write_text(config.asyncssh_text(alias) or "")
        await all_ok(
            "kex", [asyncssh.get_server_host_key(a, config=[str(paths[a])]) for a in aliases]
        )


async def no_op(conn: HiveConnection, hive: Hive, known: Facts | None) -> None:
    """Nothing: the connection alone."""


async def banner(address: str, port: int) -> bytes:
    """TCP connect and read the server's SSH version line."""
    reader, writer = await asyncio.open_connection(address, port)
    try:
        line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    if not line.startswith(b"SSH-"):
        raise RunFailed(f"{address}: no SSH banner: {line[:40]!r}")
    return line


async def local_facts_step(n: int) -> None:
    """The status script as n local processes at once, as each hive runs it, without SSH."""
    argv = ["sh", "-c", STATUS_SCRIPT, "rbee-status", "full", "python3", "~/rbee-absent"]

    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, env={**os.environ, "PATH": HIVE_PATH}
        )
        if await proc.wait() != 0:
            raise RunFailed(f"the status script exited with {proc.returncode}")

    await all_ok("local facts", [one() for _ in range(n)])


def diagnostic_steps(hive_set: HiveSet, n: int) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each step of a cold connection, for the first n hives at once."""
    hives = hive_set.hives[:n]
    aliases = [h.alias for h in hives]
    config = hive_set.config
    return {
        "options_whole": lambda: options_step(config, aliases, whole=True),
        "options": lambda: options_step(config, aliases, whole=False),
        "tcp": lambda: all_ok("tcp", [banner(h.address, h.port) for h in hives]),
        "kex": lambda: kex_step(config, aliases),
        "connect": lambda: cold_run(config, aliases, no_op),
        "local": lambda: local_facts_step(n),
    }


async def diagnostics(hive_set: HiveSet, n: int, runs: int, results: Results) -> None:
    """Time every breakdown step `runs` times, interleaved."""
    steps = diagnostic_steps(hive_set, n)
    for _ in range(runs):
        for step, run in steps.items():
            await measure(hive_set, results.tally((n, "diag", step)), f"N={n} diag {step}", run)


# ---------------------------------------------------------------------------------------------
# Driver


async def run_size(
    hive_set: HiveSet, n: int, setup: AnsibleSetup, settings: Settings, results: Results
) -> None:
    """Interleaved rounds of rbee and Ansible runs over the first n hives."""
    progress(f"{n} hives: {settings.rbee_runs} rbee rounds, {settings.ansible_runs} Ansible")
    aliases = [h.alias for h in hive_set.hives[:n]]
    await cold_run(hive_set.config, aliases, facts_op)  # unmeasured warm-up (caches, checks)
    for i in range(max(settings.rbee_runs, settings.ansible_runs)):
        if i < settings.rbee_runs:
            await rbee_round(hive_set, n, results)
        if i < settings.ansible_runs:
            await ansible_round(hive_set, n, setup, settings, results)


async def remote_python_version(hive_set: HiveSet) -> str:
    """The hives' python3 version, as the facts script reports it."""
    async with HiveConnection(hive_set.hives[0].alias, hive_set.config) as conn:  # whole file
        facts = await remote_facts(conn, REMOTE_PYTHON)
    return f"{facts.python} ({facts.python_path})"


async def run_all(hive_set: HiveSet, settings: Settings) -> Results:
    """Every measurement, Ansible's ControlPersist masters stopped even on failure."""
    results = Results(sizes=settings.sizes)
    results.remote_python = await remote_python_version(hive_set)
    setup = ansible_setup(hive_set, settings.sizes)
    try:
        for n in settings.sizes:
            await run_size(hive_set, n, setup, settings, results)
        progress(f"breakdown of a cold connection at {settings.sizes[-1]} hives")
        await diagnostics(hive_set, settings.sizes[-1], settings.diagnostic_runs, results)
    finally:
        for control_dir in setup.control_dirs:
            stop_masters(control_dir)
    return results


def startup_times(runs: int) -> dict[str, list[float]]:
    """Wall time of `rbee --help` and `ansible --version`: the CLIs' own start-up."""
    commands = {"rbee": [str(BIN / "rbee"), "--help"], "ansible": [str(ANSIBLE), "--version"]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="rbee-fanout-") as tmp:
        env = dict(os.environ, ANSIBLE_HOME=tmp, ANSIBLE_LOCAL_TEMP=tmp)  # not ~/.ansible
        for _ in range(runs):
            for name, argv in commands.items():
                started = time.perf_counter()
                subprocess.run(argv, capture_output=True, check=True, env=env)
                times[name].append(time.perf_counter() - started)
    return times


# ---------------------------------------------------------------------------------------------
# Report


def median(tally: Tally | None) -> float | None:
    """Median wall time, or None without a successful run."""
    return statistics.median(s.wall for s in tally.samples) if tally and tally.samples else None


def cell(tally: Tally | None) -> str:
    """'median s (min m, k runs)' for the results table."""
    if tally is None:
        return "not measured"
    if not tally.samples:
        return f"failed ({len(tally.failures)} runs)" if tally.failures else "not measured"
    walls = [s.wall for s in tally.samples]
    runs = f"{len(walls)} run" + ("s" if len(walls) > 1 else "")
    text = f"{statistics.median(walls):.3f} s (min {min(walls):.3f}, {runs})"
    return text + (f", {len(tally.failures)} failed" if tally.failures else "")


def ratio(numerator: float | None, denominator: float | None) -> str:
    """'12.3x', or 'n/a' when either side has no figure."""
    if numerator is None or denominator is None or denominator <= 0:
        return "n/a"
    return f"{numerator / denominator:.1f}x"


def results_table(results: Results) -> list[str]:
    """Rows per N and mode; rbee columns, Ansible columns and Ansible / rbee status."""
    lines = [
        "| hives | mode | rbee status (facts) | rbee exec true | ansible ping (forks = N) | "
        "ansible ping, pipelining (forks = N) | ansible / rbee status | "
        "ansible pipelining / rbee status |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in results.sizes:
        for mode in MODES:
            t = {c: results.tallies.get((n, mode, c)) for c in COLUMNS}
            rbee = median(t["facts"])
            lines.append(
                f"| {n} | {mode} | " + " | ".join(cell(t[c]) for c in COLUMNS) + " | "
                f"{ratio(median(t['ansible']), rbee)} | "
                f"{ratio(median(t['ansible_pipelining']), rbee)} |"
            )
    return lines


def verdict(met: bool | None) -> str:
    """'met', 'not met' or 'n/a'."""
    return "n/a" if met is None else ("met" if met else "not met")


def goal_rows(results: Results) -> list[str]:
    """The issue's goals at the largest N, with what was measured."""
    n = results.sizes[-1]
    rows = []
    for mode, goal in (("cold", GOAL_COLD), ("warm", GOAL_WARM)):
        value = median(results.tallies.get((n, mode, "facts")))
        shown = "failed" if value is None else f"{value:.3f} s"
        met = None if value is None or n != SIZES[-1] else value < goal  # a goal for 50 hives
        rows.append(
            f"| rbee status, {n} hives {mode} (median) | {shown} | < {goal} s at {SIZES[-1]} "
            f"hives | {verdict(met)} |"
        )
    startup = statistics.median(results.startup["rbee"]) if results.startup.get("rbee") else None
    for column in ("ansible", "ansible_pipelining"):
        for mode in MODES:
            rbee = median(results.tallies.get((n, mode, "facts")))
            other = median(results.tallies.get((n, mode, column)))
            rows.append(
                _ratio_row(f"{LABELS[column]} / rbee status, {n} hives {mode}", other, rbee)
            )
        cold = median(results.tallies.get((n, "cold", "facts")))
        with_start = None if cold is None or startup is None else cold + startup
        rows.append(
            _ratio_row(
                f"{LABELS[column]} / (rbee status + `rbee` start-up), {n} hives cold",
                median(results.tallies.get((n, "cold", column))),
                with_start,
            )
        )
    return ["| check | measured | goal | |", "|---|---:|---|---|", *rows]


def _ratio_row(label: str, numerator: float | None, denominator: float | None) -> str:
    shown = ratio(numerator, denominator)
    met = None if shown == "n/a" else (numerator or 0) / (denominator or 1) >= GOAL_RATIO
    return f"| {label} | {shown} | ≥ {GOAL_RATIO:g}x | {verdict(met)} |"


def cpu_cell(tally: Tally | None) -> list[str]:
    """Median wall, client CPU, hives' CPU and machine CPU of a tally, as four cells."""
    if tally is None or not tally.samples:
        return ["failed" if tally and tally.failures else "not measured", "", "", ""]
    return [
        f"{statistics.median(s.wall for s in tally.samples):.3f} s",
        f"{statistics.median(s.client_cpu for s in tally.samples):.2f} s",
        f"{statistics.median(s.hive_cpu for s in tally.samples):.2f} s",
        f"{statistics.median(s.machine_cpu for s in tally.samples):.2f} s",
    ]


def breakdown_table(results: Results) -> list[str]:
    """The steps of a cold fan-out at the largest N, each timed on its own."""
    n = results.sizes[-1]
    rows: list[tuple[str, Tally | None]] = [
        (DIAG_LABELS[step], results.tallies.get((n, "diag", step)))
        for step in DIAGNOSTICS
        if step != "local"
    ]
    rows += [
        (
            "+ exec `true` and close (= rbee exec true, cold)",
            results.tallies.get((n, "cold", "true")),
        ),
        (
            "+ the status script instead (= rbee status, cold)",
            results.tallies.get((n, "cold", "facts")),
        ),
        (
            "exec `true` on held connections (= rbee exec true, warm)",
            results.tallies.get((n, "warm", "true")),
        ),
        (
            "the status script re-reading free RAM, disk, VRAM on held connections "
            "(= rbee status, warm)",
            results.tallies.get((n, "warm", "facts")),
        ),
        (DIAG_LABELS["local"], results.tallies.get((n, "diag", "local"))),
    ]
    lines = [
        f"| step, {n} hives at once | wall (median) | client CPU (median) | "
        "hives' CPU (median) | machine CPU, all cores (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {label} | " + " | ".join(cpu_cell(tally)) + " |" for label, tally in rows]
    return lines


def command_output(argv: list[str]) -> str:
    """First line of a command's stdout or stderr (version banners go either way)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        text = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
        return text[0] if text else "?"
    return "?"


def sshd_version() -> str:
    """sshd's version line and the Debian package version when there is one."""
    line = command_output([str(SSHD), "-V"])
    package = command_output(["dpkg-query", "-W", "-f", "${Version}", "openssh-server"])
    return line + (f" (openssh-server {package})" if package not in ("?", "") else "")


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


def display_path(path: str) -> str:
    """`path` relative to the repository root when it is inside it."""
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(ROOT))
    return path


def environment_lines(results: Results, load: tuple[str, str]) -> list[str]:
    """The header table: when, where, with what, and the exact commands."""
    command = shlex.join([display_path(sys.executable), *sys.argv])
    ansible_cmd = shlex.join(["ansible", "all", "-i", "hosts-N.ini", "-m", "ping", "-f", "N"])
    return [
        "| | |",
        "|---|---|",
        f"| date | {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} |",
        f"| machine | {os.cpu_count()} x {cpu_model()} ({platform.machine()}), Linux "
        f"{platform.release()} |",
        f"| hives | {results.sizes[-1]} network namespaces on this machine, one sshd each, "
        "reached over veth pairs; every hive-side process shares this machine's cores with the "
        "client |",
        f"| sshd | {sshd_version()} |",
        f"| ssh client (Ansible) | {command_output(['ssh', '-V'])} |",
        f"| hives' python3 | {results.remote_python} |",
        f"| python (client) | {platform.python_version()} |",
        f"| rbee | {rbee.__version__} |",
        f"| asyncssh | {asyncssh.__version__} |",
        f"| ansible-core | {importlib.metadata.version('ansible-core')} |",
        f"| load average (1 min) | {load[0]} at start, {load[1]} at end (Ansible's forks "
        "raise it) |",
        f"| machine before each run | {busy_before_text(results)} |",
        f"| command | `{command}` |",
        f"| Ansible command | `{ansible_cmd}` with ANSIBLE_HOST_KEY_CHECKING=True, "
        f"ANSIBLE_SSH_ARGS=`{ANSIBLE_SSH_ARGS}` (the default), a fresh "
        "ANSIBLE_SSH_CONTROL_PATH_DIR per cold run, ANSIBLE_PIPELINING=False (the default) or "
        "True; inventory vars ansible_user=root, ansible_ssh_private_key_file, "
        "ansible_ssh_common_args=`-o UserKnownHostsFile=... -o StrictHostKeyChecking=yes`, "
        f"ansible_python_interpreter={HIVE_PYTHON} |",
    ]


def busy_before_text(results: Results) -> str:
    """How busy the machine was when the timed runs started."""
    busy = [s.busy_before for t in results.tallies.values() for s in t.samples]
    if not busy:
        return "no runs"
    waited = sum(b >= SETTLE_IDLE for b in busy)
    return (
        f"{statistics.median(busy):.2f} cores busy (median), {max(busy):.2f} at most; "
        f"{waited} of {len(busy)} runs started after the {SETTLE_TIMEOUT:g} s wait without the "
        f"machine falling below {SETTLE_IDLE} busy cores"
    )


def startup_note(results: Results) -> str:
    """How long the two CLIs take to start, which only Ansible's figures include."""
    parts = [
        f"`{name} {'--help' if name == 'rbee' else '--version'}` {statistics.median(times):.2f} s"
        for name, times in results.startup.items()
        if times
    ]
    return (
        "Process start-up (median): " + ", ".join(parts) + ". The rbee figures are measured in "
        "one Python process and leave out the `rbee` command's start-up; Ansible's figures "
        "include its own."
    )


def failure_notes(results: Results) -> list[str]:
    """One line per kind of run that failed at least once."""
    notes = []
    for (n, mode, column), tally in sorted(results.tallies.items()):
        if tally.failures:
            label = LABELS.get(column, column)
            notes.append(
                f"- Failed: {n} hives {mode} {label}, {len(tally.failures)} runs: "
                f"{tally.failures[0][:300]}"
            )
    return notes


def render(results: Results, settings: Settings, load: tuple[str, str]) -> str:
    """The markdown section between the markers."""
    quick = " Quick run (`--quick`): the figures are indicative only." if settings.quick else ""
    lines = [
        START_MARK,
        "## Fan-out: `rbee hive status` over many hives, beside `ansible -m ping`",
        "",
        "Written by `bench/fanout.py`; do not edit by hand." + quick,
        "",
        *environment_lines(results, load),
        "",
        "Wall time of one fan-out over all N hives at once (median, min over the runs):",
        "",
        *results_table(results),
        "",
        "Goals from the issue:",
        "",
        *goal_rows(results),
        "",
        "Where a cold fan-out's time goes (each step timed on its own; client CPU = this "
        "process and its children, hives' CPU = the processes in the hives' namespaces (sshd, "
        "its sessions and their commands), machine CPU = busy time of every core, whatever runs "
        "there):",
        "",
        *breakdown_table(results),
        "",
        "Notes:",
        "",
        "- cold: rbee opens a new asyncssh connection per hive, runs the command and closes it; "
        "Ansible starts with an empty ControlPath directory. warm: rbee runs the command on "
        "connections it holds open; Ansible's next run reuses the ControlPersist masters of the "
        "cold run. Ansible runs with forks = N: its default of 5 would make it work through "
        "the hives five at a time.",
        "- rbee status (facts) runs a POSIX sh script on each hive (`status_facts`: uname, "
        "getconf, df, `python3 --version`, the engines in rbee's venv there, nvidia-smi where "
        "there is one; no Python start-up). Warm, the facts were read once when the connection "
        "opened (a queen holds them for each hive) and the script re-reads only what moves: "
        "free RAM, free disk and free VRAM. rbee exec true runs `true`, so the difference "
        "between the two columns is the facts command. Ansible ping "
        "without pipelining makes a temporary directory, copies the "
        "module, runs it with python3 and removes the directory (several SSH round trips per "
        "host); with pipelining it feeds the module to one python3 over one SSH exec.",
        f"- {startup_note(results)}",
        f"- Every N uses the same {results.sizes[-1]}-host hives.conf (its first N hives). "
        "asyncssh parses its whole config file for every connection, so rbee reads hives.conf "
        "once per process and hands asyncssh each hive's own lines (the two options rows of the "
        "breakdown); a cold run includes reading hives.conf and writing those files.",
        "- Machine CPU counts every process on the machine, whatever else runs there too (see "
        "the load average and the busy cores before each run above).",
        "- All hives are namespaces on this one machine: the work each hive would do on its own "
        "CPU (sshd, python3) here queues for the same cores as the client, so the figures are "
        "upper bounds for hives that are separate machines on a fast network.",
        *failure_notes(results),
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """--quick: fewer runs and no pipelining column; --sizes and --rbee-only for checks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (about 2 minutes)")
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help="fan-out widths, comma-separated (default %(default)s); other than the default, "
        "the section is printed but docs/benchmarks.md is left alone",
    )
    parser.add_argument(
        "--rbee-only", action="store_true", help="no Ansible runs (docs/benchmarks.md left alone)"
    )
    args = parser.parse_args(argv)
    try:
        sizes = tuple(sorted({int(n) for n in args.sizes.split(",")}))
    except ValueError:
        parser.error(f"--sizes takes numbers separated by commas, got {args.sizes!r}")
    if not sizes or sizes[0] < 1:
        parser.error("--sizes must be 1 or more")
    runs = (2, 1, 1) if args.quick else (5, 3, 3)
    return Settings(
        quick=args.quick,
        rbee_runs=runs[0],
        ansible_runs=0 if args.rbee_only else runs[1],
        diagnostic_runs=runs[2],
        pipelining=not args.quick and not args.rbee_only,
        sizes=sizes,
    )


def check_requirements() -> None:
    """Exit with one clear line if Ansible is missing."""
    if not ANSIBLE.exists():
        sys.exit(
            f"fanout: {ANSIBLE} not found: install the bench extra "
            "(`.venv/bin/pip install -e '.[bench]'`)"
        )


@contextlib.contextmanager
def hives(n: int) -> Iterator[HiveSet]:
    """n test hives under a temporary directory, removed on exit."""
    cleanup_stale()
    with tempfile.TemporaryDirectory(prefix="rbee-fanout-") as tmp:
        started = time.monotonic()
        with test_hives(n, Path(tmp)) as hive_set:
            progress(f"{n} hives up in {time.monotonic() - started:.1f}s ({hive_set.subnet})")
            yield hive_set
        progress("hives removed")


def main(argv: Sequence[str] | None = None) -> int:
    """Create the hives, measure, write docs/benchmarks.md, print the section."""
    settings = parse_args(argv)
    check_requirements()
    started = time.monotonic()
    load_start = load_average()
    with hives(settings.sizes[-1]) as hive_set:
        results = asyncio.run(run_all(hive_set, settings))
    results.startup = startup_times(3)
    section = render(results, settings, (load_start, load_average()))
    if settings.sizes == SIZES and settings.ansible_runs:
        write_section(section, START_MARK, END_MARK, DOC)
        progress(f"wrote {DOC.relative_to(ROOT)} in {time.monotonic() - started:.0f}s")
    else:
        progress(f"done in {time.monotonic() - started:.0f}s (not written: --sizes or --rbee-only)")
    print(section, end="")
    return 0


if __name__ == "__main__":
    run_main(main, progress)
