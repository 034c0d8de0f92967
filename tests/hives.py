"""SSH hives for tests: each hive is a Linux network namespace running its own real OpenSSH sshd.

The test process plays the queen, in the root namespace. Each hive is reached over a veth pair: the
host side (`TestHive.veth`, in the root namespace) holds `TestHive.host_address`, the namespace side
(`eth0`) holds `TestHive.address`, one /30 per hive out of a 10.231.N.0/24 per `HiveSet` (a free
N is picked under a lock, so concurrent test runs do not collide). `cut_link` takes the hive's side
down: the host side loses its carrier, as with a pulled cable, so new connections time out (or get
"no route to host" once ARP gives up) and established ones go silent, with no RST or FIN either way.

A `HiveSet` writes what a real operator would have: a client key, a known_hosts file holding every
hive's host key, and a hives.conf (OpenSSH ssh_config syntax) that both asyncssh
(`asyncssh.connect(alias, config=[path])`) and `ssh -F hives.conf ALIAS` read. Each hive's `root`
directory is its HOME (set by sshd for every session) and the parent of its RbeeInstallDir.

Everything is torn down on exit, even when the test fails: every process still in a hive's
namespace is killed (also ones that escaped their SSH session with setsid), then the veth and the
namespace are removed. `cleanup_stale()` removes what crashed earlier runs left (names are
`rbee-t<pid in base 36>-<index>`, at most 15 characters as interface names must be, so the owner
of each one can be checked).

To use the fixtures from any test module, register them in tests/conftest.py:

    from tests.hives import two_hives  # noqa: F401

(or import the fixture by name in the test module itself, as tests/test_hive_fixtures.py does).
Tests that use them should be marked `@pytest.mark.ssh`; without root, `ip netns` or sshd they are
skipped with the reason (`make sysdeps` installs openssh-server, openssh-client and iproute2).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rbee.proc import pid_alive

__all__ = [
    "HIVE_PORT",
    "SSHD",
    "HiveSet",
    "HiveSetupError",
    "TestHive",
    "cleanup_stale",
    "cut_link",
    "hive_name",
    "link_names",
    "netns_names",
    "pids_in",
    "require_hives",
    "restore_link",
    "run_in",
    "test_hives",
    "two_hives",
    "unavailable_reason",
]

SSHD = Path("/usr/sbin/sshd")
SSH_PORT = 22
HIVE_PORT = 9000
PREFIX = "rbee-t"
_NAME = re.compile(r"^rbee-t([0-9a-z]+)-([0-9a-z]+)$")
_LOCK = Path("/run/rbee-test-hives.lock")
_IFNAMSIZ = 15  # Linux interface names are at most 15 characters
_MAX_HIVES = 64  # /30s in a /24
_SSHD_START = 10.0  # seconds an sshd gets to answer
_KILL_WAIT = 5.0  # seconds teardown keeps killing what is left in a namespace
_indices = itertools.count()


class HiveSetupError(RuntimeError):
    """The hives could not be created (the message says what failed, with sshd's log if any)."""


@dataclass(frozen=True)
class TestHive:
    """One hive: a network namespace with its own sshd, reachable at `address`:`port`."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    alias: str  # the Host name in hives.conf, e.g. "hive1"
    netns: str  # network namespace name, also the host-side veth name (<= 15 chars)
    veth: str  # host-side veth, in the root namespace (its peer is eth0 in the namespace)
    address: str  # the hive's address, inside its namespace
    host_address: str  # the root namespace's side of the /30
    port: int  # sshd's port (22)
    root: Path  # the hive's HOME and the parent of install_dir
    install_dir: Path  # RbeeInstallDir (not created: installing creates it)
    host_key: Path  # the sshd's private host key (the public one is host_key + ".pub")
    host_public_key: str  # "ssh-ed25519 AAAA..."
    sshd_config: Path
    sshd_log: Path  # sshd's stderr (-e, LogLevel VERBOSE)
    sshd_pid: int


@dataclass
class HiveSet:
    """Hives created together, with the client-side files that reach them."""

    hives: tuple[TestHive, ...]
    base: Path
    config: Path  # hives.conf
    known_hosts: Path
    client_key: Path  # private; the public key is client_key + ".pub"
    subnet: str  # 10.231.N.0/24

    def __iter__(self) -> Iterator[TestHive]:
        return iter(self.hives)

    def __len__(self) -> int:
        return len(self.hives)

    def __getitem__(self, key: int | str) -> TestHive:
        """A hive by position (0-based) or by alias."""
        if isinstance(key, int):
            return self.hives[key]
        for hive in self.hives:
            if hive.alias == key:
                return hive
        raise KeyError(key)


# --- small helpers --------------------------------------------------------------------------------


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a setup command; raise HiveSetupError with its output if it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise HiveSetupError(
            f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    return proc.stdout


def _ip_json(*args: str) -> list[dict[str, object]]:
    """`ip -j ARGS` parsed; [] when ip prints nothing."""
    out = _run(["ip", "-j", *args]).strip()
    data: list[dict[str, object]] = json.loads(out) if out else []
    return data


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def hive_name(index: int | str, pid: int | None = None) -> str:
    """The namespace (and host veth) name of hive `index` of process `pid` (default: this one)."""
    name = f"{PREFIX}{_base36(os.getpid() if pid is None else pid)}-{index}"
    if len(name) > _IFNAMSIZ:
        raise HiveSetupError(f"interface name {name!r} is longer than {_IFNAMSIZ} characters")
    return name


def _owner(name: str) -> int | None:
    """The pid that created `name`, if `name` is one of ours."""
    m = _NAME.match(name)
    return int(m.group(1), 36) if m else None


def netns_names() -> list[str]:
    """Every network namespace name `ip netns` knows."""
    return [str(ns["name"]) for ns in _ip_json("netns", "list")]


def link_names() -> list[str]:
    """Every interface name in the root namespace."""
    return [str(link["ifname"]) for link in _ip_json("link", "show")]


def pids_in(hive: TestHive | str) -> list[int]:
    """Pids of the live processes inside a hive's network namespace (zombies are not listed)."""
    netns = hive if isinstance(hive, str) else hive.netns
    proc = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30, check=False
    )
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def run_in(
    hive: TestHive,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside the hive's namespace (not over SSH), HOME and cwd set to its root."""
    return subprocess.run(
        ["ip", "netns", "exec", hive.netns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        cwd=hive.root,
        env={**os.environ, "HOME": str(hive.root), **(env or {})},
    )


def cut_link(hive: TestHive) -> None:
    """Pull the hive's cable: new connections time out, established ones go silent (no RST).

    The hive's side (eth0 in its namespace) goes down, so the host side loses its carrier but keeps
    its route: packets to the hive are dropped instead of leaving the machine by the default route.
    """
    _run(["ip", "-n", hive.netns, "link", "set", "eth0", "down"])


def restore_link(hive: TestHive) -> None:
    """Plug the hive's cable back in; established connections resume on their next retransmit."""
    _run(["ip", "-n", hive.netns, "link", "set", "eth0", "up"])
    # Taking a link down drops the routes through it; the kernel restores only the connected one.
    _run(["ip", "-n", hive.netns, "route", "replace", "default", "via", hive.host_address])


# --- availability ---------------------------------------------------------------------------------


@functools.cache
def _probe_netns() -> str | None:
    """Why network namespaces cannot be created here, or None if they can."""
    name = hive_name("probe")
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    if made.returncode != 0:
        return f"ip netns is unavailable: `ip netns add` failed: {made.stderr.strip()}"
    return None


def _root_locked() -> bool:
    """True if root's password field starts with "!": sshd without PAM then refuses root."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/shadow").read_text().splitlines():
            if line.startswith("root:"):
                return line.split(":")[1].startswith("!")
    return False


def unavailable_reason() -> str | None:
    """Why SSH hives cannot run on this machine, or None if they can."""
    if not sys.platform.startswith("linux"):
        return "SSH hives need Linux network namespaces"
    if os.geteuid() != 0:
        return "SSH hives need root (network namespaces, veth links, sshd on port 22)"
    for tool in ("ip", "ssh-keygen", "ssh"):
        if shutil.which(tool) is None:
            return (
                f"`{tool}` not found: run `make sysdeps` (openssh-server openssh-client iproute2)"
            )
    if not SSHD.is_file():
        return f"OpenSSH sshd not found at {SSHD}: run `make sysdeps` (openssh-server)"
    if _root_locked():
        return (
            "root's account is locked ('!' in /etc/shadow) and sshd without PAM refuses it: "
            "`usermod -p '*' root` allows key-only login"
        )
    return _probe_netns()


def require_hives() -> None:
    """Skip the calling test, with the reason, if SSH hives cannot run here."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


# --- setup and teardown ---------------------------------------------------------------------------


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialise network changes across test processes (subnet choice, stale cleanup)."""
    with _LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _free_subnet() -> int:
    """N such that nothing in the root namespace uses 10.231.N.0/24 (call with the lock held)."""
    used = set()
    for line in _run(["ip", "-4", "-o", "addr", "show"]).splitlines():
        used.update(int(n) for n in re.findall(r"\b10\.231\.(\d+)\.", line))
    for line in _run(["ip", "-4", "route", "show", "table", "all"]).splitlines():
        used.update(int(n) for n in re.findall(r"\b10\.231\.(\d+)\.", line))
    for n in range(256):
        if n not in used:
            return n
    raise HiveSetupError("every 10.231.N.0/24 is in use")


def _keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair at `path`; return the public key as "ssh-ed25519 AAAA..."."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    algorithm, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{algorithm} {blob}"


@functools.cache
def _sshd_version() -> tuple[int, int]:
    proc = subprocess.run([str(SSHD), "-V"], capture_output=True, text=True, check=False)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", proc.stdout + proc.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _sshd_config(address: str, key: Path, pid_file: Path, authorized: Path, home: Path) -> str:
    lines = [
        f"ListenAddress {address}",
        f"Port {SSH_PORT}",
        "AddressFamily inet",
        f"HostKey {key}",
        f"PidFile {pid_file}",
        f"AuthorizedKeysFile {authorized}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "MaxSessions 10",
        "ClientAliveInterval 0",
        "AllowTcpForwarding yes",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
        # Each hive is its own machine: its HOME is its root dir, not the shared /root.
        f"SetEnv HOME={home}",
    ]
    if _sshd_version() >= (9, 8):
        # Tests open and drop many connections from one address; never lock the queen out.
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"


def _wait_for_sshd(proc: subprocess.Popen[bytes], address: str, log: Path) -> None:
    """Wait until sshd answers with its banner on address:22; raise with its log if it does not."""
    deadline = time.monotonic() + _SSHD_START
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            last = f"sshd exited with {proc.returncode}"
            break
        try:
            with socket.create_connection((address, SSH_PORT), timeout=1) as s:
                s.settimeout(1)
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError as err:
            last = err
        time.sleep(0.02)
    raise HiveSetupError(
        f"sshd at {address}:{SSH_PORT} did not answer ({last}); its log:\n{log.read_text()}"
    )


@dataclass
class _Made:
    """What setup created so far: what teardown must remove."""

    netns: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _kill_all_in(netns: str) -> list[int]:
    """SIGKILL every process in `netns` until none is left; return any that would not die."""
    deadline = time.monotonic() + _KILL_WAIT
    while True:
        pids = pids_in(netns)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _remove_netns(netns: str) -> list[int]:
    """Kill everything in `netns`, then delete its host veth and the namespace."""
    left = _kill_all_in(netns)
    subprocess.run(["ip", "link", "del", netns], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    return left


def _teardown(made: _Made) -> list[str]:
    """Remove everything in `made`; return the problems (empty when all is gone)."""
    problems = []
    for netns in made.netns:
        left = _remove_netns(netns)
        if left:
            problems.append(f"{netns}: processes {left} survived SIGKILL")
    for proc in made.procs:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(_KILL_WAIT)
        except subprocess.TimeoutExpired:
            problems.append(f"sshd {proc.pid} did not exit")
    names = netns_names()
    links = link_names()
    problems += [f"namespace {ns} is still there" for ns in made.netns if ns in names]
    problems += [f"link {ns} is still there" for ns in made.netns if ns in links]
    return problems


def _add_hive_network(netns: str, host_address: str, address: str) -> None:
    """A namespace with lo up and eth0 (the peer of host veth `netns`) at `address`/30."""
    _run(["ip", "netns", "add", netns])
    _run(["ip", "link", "add", netns, "type", "veth", "peer", "name", "eth0", "netns", netns])
    _run(["ip", "addr", "add", f"{host_address}/30", "dev", netns])
    _run(["ip", "link", "set", netns, "up"])
    ip_in = ["ip", "-n", netns]
    _run([*ip_in, "link", "set", "lo", "up"])
    _run([*ip_in, "addr", "add", f"{address}/30", "dev", "eth0"])
    _run([*ip_in, "link", "set", "eth0", "up"])
    # The hive reaches the queen's machine (the root namespace's own addresses) through its peer.
    _run([*ip_in, "route", "add", "default", "via", host_address])


@contextlib.contextmanager
def test_hives(n: int, base: Path) -> Iterator[HiveSet]:
    """Create `n` hives with their files under `base`; remove them all on exit, even on failure.

    Raises HiveSetupError if this machine cannot run them (see `unavailable_reason`) or if a step
    fails (the message includes the failing command's output or sshd's log).
    """
    if not 1 <= n <= _MAX_HIVES:
        raise ValueError(f"a hive set holds 1 to {_MAX_HIVES} hives, not {n}")
    reason = unavailable_reason()
    if reason is not None:
        raise HiveSetupError(reason)
    base.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    client_key = base / "client_ed25519"
    client_public = _keygen(client_key, "rbee-test-client")
    authorized = base / "authorized_keys"
    authorized.write_text(client_public + "\n")
    made = _Made()
    try:
        with _lock():
            subnet = _free_subnet()
            nets = []
            for i in range(n):
                netns = hive_name(next(_indices))
                made.netns.append(netns)
                host_address, address = (
                    f"10.231.{subnet}.{4 * i + 1}",
                    f"10.231.{subnet}.{4 * i + 2}",
                )
                _add_hive_network(netns, host_address, address)
                nets.append((netns, host_address, address))
        hives = []
        for i, (netns, host_address, address) in enumerate(nets, start=1):
            alias = f"hive{i}"
            etc, root = base / alias / "ssh", base / alias / "root"
            etc.mkdir(parents=True)
            root.mkdir(parents=True)
            key = etc / "ssh_host_ed25519_key"
            public = _keygen(key, f"{alias}-host")
            config = etc / "sshd_config"
            config.write_text(_sshd_config(address, key, etc / "sshd.pid", authorized, root))
            log = etc / "sshd.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", netns, str(SSHD), "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            made.procs.append(proc)
            hives.append(
                TestHive(
                    alias=alias,
                    netns=netns,
                    veth=netns,
                    address=address,
                    host_address=host_address,
                    port=SSH_PORT,
                    root=root,
                    install_dir=root / "install",
                    host_key=key,
                    host_public_key=public,
                    sshd_config=config,
                    sshd_log=log,
                    sshd_pid=proc.pid,
                )
            )
        for hive, proc in zip(hives, made.procs, strict=True):
            _wait_for_sshd(proc, hive.address, hive.sshd_log)
        known_hosts = base / "known_hosts"
        known_hosts.write_text("".join(f"{h.address} {h.host_public_key}\n" for h in hives))
        conf = base / "hives.conf"
        conf.write_text(_hives_conf(hives, client_key, known_hosts))
        yield HiveSet(
            hives=tuple(hives),
            base=base,
            config=conf,
            known_hosts=known_hosts,
            client_key=client_key,
            subnet=f"10.231.{subnet}.0/24",
        )
    finally:
        problems = _teardown(made)
    if problems:
        raise RuntimeError("hive teardown left things behind: " + "; ".join(problems))


test_hives.__test__ = False  # type: ignore[attr-defined]


def _hives_conf(hives: Sequence[TestHive], client_key: Path, known_hosts: Path) -> str:
    out = [
        "IgnoreUnknown Rbee*",
        "# Written by tests/hives.py: each hive is a network namespace with its own sshd.",
    ]
    for h in hives:
        out += [
            "",
            f"Host {h.alias}",
            f"    HostName {h.address}",
            "    User root",
            f"    Port {h.port}",
            f"    IdentityFile {client_key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {known_hosts}",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    ConnectTimeout 5",
            f"    RbeeInstallDir {h.install_dir}",
            f"    RbeeHivePort {HIVE_PORT}",
        ]
    return "\n".join(out) + "\n"


def _started_after(pid: int, when: float) -> bool:
    """True if process `pid` started after the wall-clock time `when` (its pid was reused)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return boot + ticks / os.sysconf("SC_CLK_TCK") > when + 1


def _stale(name: str, created: float | None) -> bool:
    owner = _owner(name)
    if owner is None:
        return False
    if not pid_alive(owner):
        return True
    return created is not None and _started_after(owner, created)


def cleanup_stale() -> list[str]:
    """Remove rbee-t* namespaces and veths whose creating process is gone.

    Left by test runs that crashed or were killed; a live run's hives are never touched. Returns
    what was removed.
    """
    if unavailable_reason() is not None:
        return []
    removed = []
    with _lock():
        for ns in netns_names():
            with contextlib.suppress(OSError):
                if _stale(ns, Path("/run/netns", ns).stat().st_mtime):
                    _remove_netns(ns)
                    removed.append(ns)
        names = set(netns_names())
        for link in link_names():
            if _owner(link) is not None and (link not in names or _stale(link, None)):
                subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
                removed.append(link)
    return removed


# --- pytest fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_hives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HiveSet]:
    """Two hives ("hive1", "hive2") shared by a test module; skips where hives cannot run."""
    require_hives()
    cleanup_stale()
    with test_hives(2, tmp_path_factory.mktemp("hives")) as hive_set:
        yield hive_set
