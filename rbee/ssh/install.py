"""Install rbee on a hive over one SSH connection, and remove it again.

The steps (facts, lock, wheelhouse, compare, upload, venv, pip, verify, switch) report through a
`Progress` callback, so the CLI prints them and a queen job can stream them. The hive's side is
driven by argv lists only: small Python scripts run by the hive's own interpreter (`python -c
SCRIPT ARG...`) expand `~` there, take the lock and swap venvs. A new venv is built beside the
current one (`venv-<hash>-<time>`); only once `rbee --version` works in it does the `venv` symlink
move to it (venvs cannot be renamed: their scripts name their interpreter by absolute path), and
`installed.json` is replaced right after. Any failure removes the new venv; the old one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncssh

from rbee.config.hives import Hive
from rbee.errors import InstallError, RemoteCommandError, SshError, WheelhouseError
from rbee.facts import Facts
from rbee.ssh.connection import HiveConnection
from rbee.ssh.facts import remote_facts
from rbee.ssh.wheelhouse import Target, WheelFile, Wheelhouse

__all__ = [
    "LOCK_STALE_SECONDS",
    "InstallResult",
    "Progress",
    "StepEvent",
    "UninstallResult",
    "WheelhouseFor",
    "engine_extras",
    "install_hive",
    "uninstall_hive",
    "wheels_to_send",
]

log = logging.getLogger(__name__)

LOCK_STALE_SECONDS = 3600.0
"""A lock older than this is left from a crashed install and may be taken over."""
MIN_PYTHON = (3, 11)
TOTAL_STEPS = 9
_ENGINE_MODULES = {"cuda": "exllamav2", "mlx": "mlx"}


@dataclass(frozen=True)
class StepEvent:
    """One step of an install as it starts, ends or fails."""

    alias: str
    index: int
    total: int
    title: str
    state: Literal["start", "done", "failed"]
    seconds: float = 0.0
    result: str = ""
    """How it ended: "done", "up to date", "3 of 31 files", ...; the error on failure."""


Progress = Callable[[StepEvent], None]
WheelhouseFor = Callable[[Target, tuple[str, ...]], Wheelhouse]
"""Builds (or finds) the wheelhouse for a platform and engine extras; blocking, run in a thread."""


@dataclass(frozen=True)
class InstallResult:
    """What an install did."""

    alias: str
    install_dir: str
    rbee_version: str
    up_to_date: bool
    seconds: float
    steps: tuple[tuple[str, float], ...]
    uploaded_files: int = 0
    uploaded_bytes: int = 0


@dataclass(frozen=True)
class UninstallResult:
    """What an uninstall did: removed the install dir, or found nothing to remove."""

    alias: str
    install_dir: str
    removed: bool
    seconds: float
    left: tuple[str, ...] = ()
    """Entries in the install dir that rbee did not make (kept, and the dir with them)."""


def engine_extras(facts: Facts, backend: str) -> tuple[str, ...]:
    """rbee's extras for the engine a hive will run (llama.cpp is always there)."""
    if backend == "exllamav2" or (backend == "auto" and facts.gpus):
        return ("cuda",)
    if backend == "mlx" or (backend == "auto" and facts.apple_silicon):
        return ("mlx",)
    return ()


def _quiet(event: StepEvent) -> None:
    """The default Progress: say nothing."""


@dataclass
class _Steps:
    """Numbers steps, times them, reports them, and turns failures into InstallError."""

    alias: str
    progress: Progress
    total: int = TOTAL_STEPS
    index: int = 0
    done: list[tuple[str, float]] = field(default_factory=list)
    title: str = ""
    result: str = "done"

    def error(self, reason: str) -> InstallError:
        """An InstallError for the step running now."""
        return InstallError(self.alias, self.title, reason)

    @contextlib.asynccontextmanager
    async def step(self, title: str) -> AsyncIterator[_Steps]:
        """Run the body as the next step; report its start and its end."""
        self.index += 1
        self.title, self.result = title, "done"
        event = StepEvent(self.alias, self.index, self.total, title, "start")
        self.progress(event)
        started = time.monotonic()

        def end(state: Literal["done", "failed"], result: str) -> None:
            seconds = time.monotonic() - started
            self.progress(StepEvent(self.alias, self.index, self.total, title, state, seconds,
                                    result))  # fmt: skip
            if state == "done":
                self.done.append((title, seconds))

        try:
            yield self
        except RemoteCommandError as err:
            status = "was killed" if err.exit_status is None else f"exited {err.exit_status}"
            end("failed", status)
            raise InstallError(self.alias, title, status, argv=err.argv,
                               exit_status=err.exit_status, stderr=err.stderr) from err  # fmt: skip
        except InstallError as err:
            end("failed", str(err))
            raise
        except (SshError, WheelhouseError, asyncssh.Error, OSError) as err:
            reason = str(err).removeprefix(f"{self.alias}: ")
            end("failed", reason)
            raise InstallError(self.alias, title, reason) from err
        end("done", self.result)


async def _helper(conn: HiveConnection, python: str, command: str, *args: str,
                  time_limit: float = 60.0) -> Any:  # fmt: skip
    """Run one function of the helper script below with the hive's Python; its JSON output."""
    result = await conn.check([python, "-c", _HELPER, command, *args], time_limit=time_limit)
    return json.loads(result.stdout)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _describe(f: Facts) -> str:
    gpus = ", ".join(f"{g.name} {g.vram_total / (1 << 30):.0f} GiB" for g in f.gpus)
    ram = "?" if f.mem_total is None else f"{f.mem_total / (1 << 30):.1f} GiB RAM"
    extra = gpus or f.apple_chip or "no NVIDIA GPU"
    return f"{f.os} {f.arch}, Python {f.python}, {f.cpu_count} CPUs, {ram}, {extra}"


async def install_hive(
    conn: HiveConnection,
    hive: Hive,
    wheelhouse_for: WheelhouseFor,
    progress: Progress = _quiet,
) -> InstallResult:
    """Install (or find up to date) rbee in the hive's install dir; InstallError on failure."""
    started, steps, token = time.monotonic(), _Steps(hive.alias, progress), uuid.uuid4().hex
    async with steps.step("reading facts") as s:
        facts = await remote_facts(conn, hive.python)
        s.result = _describe(facts)
        if tuple(int(p) for p in facts.python.split(".")[:2]) < MIN_PYTHON:
            raise s.error(f"Python {facts.python} at {facts.python_path} is too old: rbee needs "
                          "3.11 or newer (point RbeePython in hives.conf at one)")  # fmt: skip
    python = facts.python_path or hive.python
    install_dir = await conn.resolve(hive.install_dir)
    async with steps.step(f"locking {install_dir}") as s:
        where = await _helper(conn, python, "prepare", install_dir, str(LOCK_STALE_SECONDS),
                              token)  # fmt: skip
        root = str(where["dir"])
        if where["lock"] == "refused":
            raise s.error(f"{root} is not a folder of rbee's own ({where['why']}): point "
                          "RbeeInstallDir in hives.conf at one")  # fmt: skip
        if where["lock"] == "busy":
            raise s.error(f"another install holds {root}/.lock (for {where['lock_age']:.0f}s); "
                          "try again when it is done")  # fmt: skip
        if where["lock"] == "stale":
            s.result = (
                f"took over a lock an unfinished install left {where['lock_age'] / 3600:.1f} h ago"
            )
            log.warning("%s: %s/.lock: %s", hive.alias, root, s.result)
    libc, libc_version = where["libc"]
    target = Target.of(facts.os, facts.arch, facts.python, implementation=where["implementation"],
                       libc=libc, os_version=libc_version or where["mac"])  # fmt: skip
    job = _Install(conn, hive, steps, facts, python, root, engine_extras(facts, hive.backend))
    try:
        uploaded = await job.run(target, wheelhouse_for)
    finally:
        try:
            await _helper(conn, python, "release", posixpath.join(root, ".lock"), token)
        except (SshError, ValueError) as err:
            log.warning("%s: could not release %s/.lock: %s", hive.alias, root, err)
    return InstallResult(hive.alias, root, rbee_version=job.version, up_to_date=uploaded is None,
                         seconds=time.monotonic() - started, steps=tuple(steps.done),
                         uploaded_files=len(uploaded or ()),
                         uploaded_bytes=sum(f.size for f in uploaded or ()))  # fmt: skip


def wheels_to_send(
    files: Sequence[WheelFile], remote: Mapping[str, Sequence[Any]]
) -> tuple[list[WheelFile], list[str]]:
    """(wheels whose remote copy is missing or differs, remote wheels no longer wanted)."""
    send = [f for f in files if tuple(remote.get(f.name, ())) != (f.size, f.sha256)]
    wanted = {f.name for f in files}
    return send, sorted(n for n in remote if n not in wanted)


@dataclass
class _Install:
    """The steps that run while the install dir's lock is held."""

    conn: HiveConnection
    hive: Hive
    steps: _Steps
    facts: Facts
    python: str
    root: str
    extras: tuple[str, ...]
    version: str = ""

    async def run(self, target: Target, wheelhouse_for: WheelhouseFor) -> list[WheelFile] | None:
        """Install; the wheels uploaded, or None if the install was up to date."""
        async with self.steps.step(f"building the wheelhouse ({target.describe()})") as s:
            house = await asyncio.to_thread(wheelhouse_for, target, self.extras)
            made = ", ".join(house.built) if house.built else "cached"
            s.result = f"{made}: {len(house.files)} files, {_mb(house.total_bytes)}"
        manifest, self.version = house.manifest, house.manifest.rbee_version
        record = {"manifest_hash": manifest.content_hash, "rbee_version": self.version,
                  "python_path": self.python, "extras": list(self.extras)}  # fmt: skip
        async with self.steps.step("checking the installed version") as s:
            old = await _helper(self.conn, self.python, "installed", self.root) or {}
            if all(old.get(k) == v for k, v in record.items()) and await self._works("venv"):
                s.result = "up to date"
                return None
            there = await _helper(self.conn, self.python, "wheels", self.root, time_limit=300)
            send, stale = wheels_to_send(house.files, there)
            s.result = f"{'reinstall' if old else 'not installed'}: {len(send)} of " \
                       f"{len(house.files)} wheels to upload"  # fmt: skip
        size = sum(f.size for f in send)
        async with self.steps.step(f"uploading the wheelhouse ({len(send)} files, {_mb(size)})"):
            await self._upload(house, send, stale)
        name = f"venv-{manifest.content_hash[:8]}-{int(time.time())}"
        record.update(venv=name, python=self.facts.python, target=manifest.target,
                      installed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
        try:
            await self._build_venv(name)
            async with self.steps.step("switching to the new venv"):
                await _helper(self.conn, self.python, "switch", self.root, name,
                              json.dumps(record, indent=1))  # fmt: skip
        except BaseException:
            with contextlib.suppress(SshError, ValueError):
                await _helper(self.conn, self.python, "discard", self.root, name, time_limit=120)
            raise
        return send

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    async def _works(self, venv: str) -> bool:
        """True if `venv`'s rbee prints this version."""
        out = await self.conn.run([self._path(venv, "bin", "rbee"), "--version"])
        return out.exit_status == 0 and out.stdout.split() == ["rbee", self.version]

    async def _build_venv(self, name: str) -> None:
        new, wheels = self._path(name), self._path("wheelhouse")
        async with self.steps.step(f"creating {name}"):
            await self.conn.check([self.python, "-m", "venv", new], time_limit=300)
        spec = f"rbee[{','.join(self.extras)}]" if self.extras else "rbee"
        async with self.steps.step(f"installing rbee {self.version} (pip --no-index)"):
            await self.conn.check([f"{new}/bin/python", "-m", "pip", "install", "--no-index",
                                   "--find-links", wheels, "--only-binary", ":all:",
                                   "--disable-pip-version-check", "--no-input",
                                   f"{spec}=={self.version}"], time_limit=1800)  # fmt: skip
        async with self.steps.step("checking the new venv") as s:
            if not await self._works(name):
                raise s.error(f"`{new}/bin/rbee --version` does not print rbee {self.version}")
            modules = ["llama_cpp", *(_ENGINE_MODULES[e] for e in self.extras)]
            await self.conn.check([f"{new}/bin/python", "-c", _IMPORT, *modules])

    async def _upload(self, house: Wheelhouse, send: list[WheelFile], stale: list[str]) -> None:
        """Put each wheel under a temporary name, then rename it; drop wheels no longer wanted."""
        wheels = self._path("wheelhouse")
        async with self.conn.sftp() as sftp:
            await sftp.makedirs(wheels, exist_ok=True)
            for f in send:
                final, part = (
                    posixpath.join(wheels, f.name),
                    posixpath.join(wheels, f".{f.name}.part"),
                )
                await sftp.put(str(house.directory / f.name), part)
                try:
                    await sftp.posix_rename(part, final)
                except asyncssh.SFTPOpUnsupported:
                    with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                        await sftp.remove(final)
                    await sftp.rename(part, final)
            for name in stale:
                await sftp.remove(posixpath.join(wheels, name))


async def uninstall_hive(
    conn: HiveConnection,
    hive: Hive,
    confirm: Callable[[str], bool] | None = None,
) -> UninstallResult:
    """Remove the hive's install dir after `confirm(path)` says yes (None: no question asked)."""
    started = time.monotonic()
    install_dir = await conn.resolve(hive.install_dir)
    try:
        found = await _helper(conn, hive.python, "uninstall", install_dir, "check",
                              str(LOCK_STALE_SECONDS))  # fmt: skip
        root = str(found["dir"])
        if found["state"] == "refused":
            raise InstallError(hive.alias, "uninstall", f"will not remove {root}: {found['why']}")
        if found["state"] == "absent":
            return UninstallResult(hive.alias, root, False, time.monotonic() - started)
        if confirm is not None and not confirm(root):
            raise InstallError(hive.alias, "uninstall", f"not removing {root} (answer y, or pass "
                               "--yes)")  # fmt: skip
        done = await _helper(conn, hive.python, "uninstall", install_dir, "remove",
                             str(LOCK_STALE_SECONDS), time_limit=300)  # fmt: skip
        if done["state"] != "removed":
            raise InstallError(hive.alias, "uninstall", f"will not remove {root}: {done['why']}")
    except RemoteCommandError as err:
        raise InstallError(hive.alias, "uninstall", f"exited {err.exit_status}", argv=err.argv,
                           exit_status=err.exit_status, stderr=err.stderr) from err  # fmt: skip
    return UninstallResult(hive.alias, root, True, time.monotonic() - started, tuple(done["left"]))


# --- the hive's side: `python -c _HELPER COMMAND ARG...` prints one JSON value -------------------

_IMPORT = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"

_HELPER = r"""
import hashlib, json, os, platform, shutil, sys, time
OURS = {"installed.json", "venv", "wheelhouse", ".lock", "installed.json.tmp", ".venv.link"}

def ours(entry):
    return entry in OURS or entry.startswith(("venv-", ".lock.stale-"))

def where(path):
    # The queen resolved `~` already (HiveConnection.resolve); the path is absolute here.
    path = os.path.abspath(path)
    why = None
    if os.path.realpath(path) in ("/", os.path.realpath(os.path.expanduser("~"))):
        why = "it is / or the home folder"
    elif os.path.lexists(path) and not os.path.isdir(path):
        why = "it is not a folder"
    elif os.path.isdir(path) and os.listdir(path) and not any(map(ours, os.listdir(path))):
        why = "it holds files, but no installed.json, venv or wheelhouse"
    return path, why

def age(lock):
    return time.time() - os.stat(lock).st_mtime if os.path.isdir(lock) else None

def prepare(path, stale, token):
    path, why = where(path)
    out = {"dir": path, "why": why, "lock": "refused" if why else "busy", "lock_age": 0,
           "implementation": sys.implementation.name, "libc": list(platform.libc_ver()),
           "mac": platform.mac_ver()[0]}
    if why:
        return out
    os.makedirs(path, exist_ok=True)
    lock = os.path.join(path, ".lock")
    try:
        os.mkdir(lock)
        out["lock"] = "taken"
    except FileExistsError:
        out["lock_age"] = age(lock) or 0
        if out["lock_age"] > float(stale):
            try:  # a rename succeeds for one taker only
                os.rename(lock, lock + ".stale-" + token)
                shutil.rmtree(lock + ".stale-" + token, ignore_errors=True)
                os.mkdir(lock)
                out["lock"] = "stale"
            except OSError:
                pass
    if out["lock"] != "busy":
        with open(os.path.join(lock, "owner"), "w") as f:
            f.write(token)
    return out

def release(lock, token):
    try:
        with open(os.path.join(lock, "owner")) as f:
            mine = f.read() == token
    except OSError:
        mine = False
    if mine:
        shutil.rmtree(lock)
    return mine

def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

def installed(root):
    try:
        with open(os.path.join(root, "installed.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = None
    return record if isinstance(record, dict) else None

def wheels(root):
    folder = os.path.join(root, "wheelhouse")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    for name in names:
        if name.endswith(".part"):
            os.remove(os.path.join(folder, name))
    return {n: [os.path.getsize(os.path.join(folder, n)), sha256(os.path.join(folder, n))]
            for n in names if n.endswith(".whl")}

def discard(root, name):
    link = os.path.join(root, "venv")
    if os.path.islink(link) and os.readlink(link) == name:
        return False  # the switch happened after all: this venv is the one in use
    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return True

def switch(root, name, record):
    link, tmp = os.path.join(root, "venv"), os.path.join(root, ".venv.link")
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(name, tmp)
    path = os.path.join(root, "installed.json")
    with open(path + ".tmp", "w") as f:  # written before the switch, renamed right after it
        f.write(record)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, link)
    os.replace(path + ".tmp", path)
    removed = [e for e in os.listdir(root) if e.startswith("venv-") and e != name]
    for e in removed:
        shutil.rmtree(os.path.join(root, e), ignore_errors=True)
    return removed

def uninstall(path, mode, stale):
    path, why = where(path)
    out = {"dir": path, "why": why, "state": "refused" if why else "present", "left": []}
    lock_age = None if why or not os.path.isdir(path) else age(os.path.join(path, ".lock"))
    if why:
        pass
    elif not os.path.lexists(path) or not os.listdir(path):
        if os.path.isdir(path):
            os.rmdir(path)
        out["state"] = "absent"
    elif lock_age is not None and lock_age < float(stale):
        out.update(state="refused", why="an install is running there (.lock)")
    elif mode == "remove":
        for entry in sorted(os.listdir(path), key=lambda e: e != "installed.json"):
            full = os.path.join(path, entry)
            if not ours(entry):
                out["left"].append(entry)
            elif os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)
        if not out["left"]:
            (os.remove if os.path.islink(path) else os.rmdir)(path)
        out["state"] = "removed"
    return out

print(json.dumps(globals()[sys.argv[1]](*sys.argv[2:])))
"""
