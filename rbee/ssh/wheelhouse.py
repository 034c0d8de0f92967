"""The wheelhouse a hive installs from: rbee's wheel and its runtime dependencies, built by a queen.

A hive never reaches a package index. The queen gathers every wheel the hive needs under its data
dir (`wheelhouse/<python tag>-<platform>-<rbee version>/`) and the hive runs `pip install
--no-index` on an uploaded copy. When the hive's platform is the queen's own, the dependencies are
the queen's installed versions fetched by `pip wheel` (which reuses pip's cache, so a locally built
llama-cpp-python is not rebuilt); for another platform they are `pip download`ed as binary wheels,
and the packages with none are named. A manifest (names, sizes, sha256) makes a second build a
no-op: pip runs again only when the pinned set changes, and rbee's wheel only when its sources do.

The planning functions at the top are pure; `build_wheelhouse` and the helpers below it act.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.markers import InvalidMarker, Marker

import rbee
from rbee.errors import WheelhouseError
from rbee.fsutil import atomic_write_text, sha256_file

__all__ = [
    "EXTRA_ENV",
    "LOCK_FILE",
    "Manifest",
    "RbeeSource",
    "Target",
    "WheelFile",
    "Wheelhouse",
    "build_wheelhouse",
    "dependency_pins",
    "extra_dirs_from_env",
    "local_target",
    "lock_constraints",
    "marker_environment",
    "missing_packages",
    "normalize",
    "pip_argv",
    "platform_tags",
    "rbee_source",
    "runtime_requirements",
    "same_platform",
    "wheel_from_installed",
]

log = logging.getLogger(__name__)

EXTRA_ENV = "RBEE_WHEELHOUSE_EXTRA"
"""Directories of extra wheels (os.pathsep-separated) for packages with no wheel on the index."""

Installed = Mapping[str, tuple[str, Sequence[str]]]
"""Installed distributions: normalized name -> (version, requirement strings)."""

LOCK_FILE = "requirements.lock"
"""The checkout's lock (`make lock`): every version rbee was tested with, for every platform."""

_PIP_TIMEOUT = 1800.0  # a first native build may compile llama-cpp-python from source
_MANIFEST = "manifest.json"
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")
_MISSING = re.compile(r"No matching distribution found for ([A-Za-z0-9][A-Za-z0-9._-]*)")
_ARCH = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


# --- pure planning --------------------------------------------------------------------------------


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Target:
    """The platform wheels are for: OS, CPU, Python version and implementation, C library."""

    os: str
    """platform.system().lower(): linux, darwin."""
    arch: str
    """x86_64, aarch64 (Linux) or arm64 (macOS)."""
    python: str
    """major.minor, e.g. 3.11."""
    implementation: str = "cp"
    libc: str = ""
    """glibc or musl on Linux; empty when unknown or on macOS."""
    os_version: str = ""
    """The libc version on Linux, the macOS version on macOS."""

    @classmethod
    def of(cls, os_: str, arch: str, python: str, *, implementation: str = "cpython",
           libc: str = "", os_version: str = "") -> Target:  # fmt: skip
        """A Target from raw readings (platform.machine(), a full Python version, ...)."""
        os_ = os_.lower()
        arch = _ARCH.get(arch.lower(), arch.lower())
        if os_ == "darwin" and arch == "aarch64":
            arch = "arm64"
        impl = {"cpython": "cp", "pypy": "pp"}.get(implementation.lower(), implementation.lower())
        return cls(os_, arch, ".".join(python.split(".")[:2]), impl, libc.lower(), os_version)

    @property
    def python_tag(self) -> str:
        """cp311 and the like."""
        return self.implementation + self.python.replace(".", "")

    @property
    def key(self) -> str:
        """A folder name: cp311-linux_x86_64-glibc2.36."""
        platform_ = f"{self.os}_{self.arch}"
        libc = f"{self.libc}{self.os_version}" if self.os == "linux" else self.os_version
        return f"{self.python_tag}-{platform_}" + (f"-{libc}" if libc else "")

    def describe(self) -> str:
        """For messages: Python 3.11 (cp) on linux x86_64, glibc 2.36."""
        libc = f", {self.libc} {self.os_version}".rstrip() if self.libc else ""
        return f"Python {self.python} ({self.implementation}) on {self.os} {self.arch}{libc}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def same_platform(queen: Target, hive: Target) -> bool:
    """True if wheels built for the queen run on the hive (its libc may only be newer)."""
    same = (queen.os, queen.arch, queen.python, queen.implementation, queen.libc) == (
        hive.os, hive.arch, hive.python, hive.implementation, hive.libc)  # fmt: skip
    return same and _version(hive.os_version) >= _version(queen.os_version)


def platform_tags(target: Target) -> list[str]:
    """The `pip download --platform` values a binary wheel for `target` may carry."""
    arch, (major, minor, *_) = target.arch, (*_version(target.os_version), 0, 0)
    if target.os == "linux" and target.libc == "musl":
        return [f"musllinux_1_{m}_{arch}" for m in range(minor, -1, -1)]
    if target.os == "linux":
        if target.libc != "glibc" or major != 2:
            raise WheelhouseError(f"cannot pick wheels for {target.describe()}: unknown C library")
        oldest = 5 if arch in ("x86_64", "i686") else 17
        tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, oldest - 1, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        return tags + [f"{legacy[m]}_{arch}" for m in legacy if oldest <= m <= minor]
    if target.os == "darwin":
        archs = [arch, "universal2"] + (["intel"] if arch == "x86_64" else [])
        versions = [f"{m}_0" for m in range(major, 10, -1)]
        if arch == "x86_64":
            versions += [f"10_{m}" for m in range(15 if major > 10 else minor, 8, -1)]
        return [f"macosx_{v}_{a}" for v in versions for a in archs]
    raise WheelhouseError(f"cannot pick wheels for {target.describe()}: unsupported OS")


def _parse(requirement: str) -> tuple[str, set[str], str]:
    """(normalized name, extras, marker) of a requirement string."""
    m = _REQUIREMENT.match(requirement)
    if m is None:
        raise WheelhouseError(f"cannot read requirement {requirement!r}")
    extras = {normalize(e) for e in (m[2] or "").split(",") if e.strip()}
    return normalize(m[1]), extras, requirement.partition(";")[2]


def dependency_pins(
    requirements: Sequence[str], installed: Installed
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(name==version for everything installed that `requirements` pull in, the rest unpinned).

    Markers other than `extra` are not evaluated: a pin the hive does not need is harmless (its
    pip installs only what it resolves), one it needs and lacks is not.
    """
    pins: dict[str, str] = {}
    unpinned: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    stack = [(r, True) for r in requirements]
    while stack:
        requirement, top = stack.pop()
        name, extras, _ = _parse(requirement)
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        if name not in installed:
            if top:
                unpinned.append(requirement)
            continue
        version, requires = installed[name]
        pins[name] = version
        for sub in requires:
            wanted = _EXTRA_MARKER.search(sub.partition(";")[2])
            if wanted is None or normalize(wanted[1]) in extras:
                stack.append((sub, False))
    return tuple(f"{n}=={v}" for n, v in sorted(pins.items())), tuple(sorted(unpinned))


_LOCK_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)\s*(?:;(.*))?$")


def marker_environment(target: Target) -> dict[str, str]:
    """The PEP 508 marker values of `target` (what its pip would evaluate a marker with)."""
    system = {"linux": "Linux", "darwin": "Darwin"}.get(target.os, target.os.capitalize())
    implementation = {"cp": "CPython", "pp": "PyPy"}.get(target.implementation, "CPython")
    return {
        "os_name": "posix",
        "sys_platform": target.os,
        "platform_system": system,
        "platform_machine": target.arch,
        "platform_release": "",
        "platform_version": "",
        "python_version": target.python,
        "python_full_version": f"{target.python}.0",
        "implementation_name": implementation.lower(),
        "implementation_version": f"{target.python}.0",
        "platform_python_implementation": implementation,
    }


def lock_constraints(lock_text: str, target: Target, pinned: Collection[str] = ()) -> list[str]:
    """`name==version` for each line of requirements.lock that applies to `target`.

    The lock is universal (one file for every platform; markers say which lines apply where), and
    a wheelhouse for another platform is resolved here, so the markers are evaluated for the
    target, not for this machine. Names in `pinned` (normalized) are left out: the queen's own
    installed versions pin those already.
    """
    environment = marker_environment(target)
    constraints = []
    for line in lock_text.splitlines():
        m = _LOCK_LINE.match(line.strip())
        if m is None:
            continue
        name, version, marker = normalize(m[1]), m[2], (m[3] or "").strip()
        if name in pinned:
            continue
        try:
            applies = not marker or Marker(marker).evaluate(environment)
        except InvalidMarker as err:
            raise WheelhouseError(f"{LOCK_FILE}: bad marker in {line.strip()!r}: {err}") from err
        if applies:
            constraints.append(f"{name}=={version}")
    return constraints


def dependency_key(
    target: Target,
    native: bool,
    pins: Sequence[str],
    unpinned: Sequence[str],
    extra_listing: Sequence[str],
) -> str:
    """What the dependency wheels depend on; a change means pip must run again."""
    data = [1, target.key, native, sorted(pins), sorted(unpinned), sorted(extra_listing)]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def pip_argv(
    python: str,
    target: Target,
    dest: Path,
    requirements: Sequence[str],
    *,
    native: bool,
    find_links: Sequence[Path] = (),
    no_deps: bool = False,
    constraints: Path | None = None,
) -> list[str]:
    """`pip wheel` (same platform, pip's cache) or `pip download` of binary wheels for `target`."""
    if native:
        argv = [python, "-m", "pip", "wheel", "-w", str(dest)]
    else:
        argv = [python, "-m", "pip", "download", "-d", str(dest), "--only-binary", ":all:",
                "--python-version", target.python,
                "--implementation", target.implementation]  # fmt: skip
        for tag in platform_tags(target):
            argv += ["--platform", tag]
    for d in find_links:
        argv += ["--find-links", str(d)]
    if no_deps:
        argv.append("--no-deps")
    if constraints is not None:
        argv += ["-c", str(constraints)]
    return [*argv, *requirements]


def missing_packages(pip_stderr: str) -> list[str]:
    """The packages pip found no distribution of (normalized names)."""
    return list(dict.fromkeys(normalize(n) for n in _MISSING.findall(pip_stderr)))


@dataclass(frozen=True)
class WheelFile:
    """One wheel of a wheelhouse."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a wheelhouse folder holds, and what it was built from."""

    rbee_version: str
    target: str
    native: bool
    deps_key: str
    rbee_source: str
    rbee_wheel: WheelFile
    dependencies: tuple[WheelFile, ...]

    @property
    def content_hash(self) -> str:
        """One hash of every wheel's name and sha256: equal hashes, equal installs."""
        lines = sorted(f"{f.name} {f.sha256}\n" for f in (self.rbee_wheel, *self.dependencies))
        return hashlib.sha256("".join(lines).encode()).hexdigest()

    def to_json(self) -> str:
        """The manifest file's text."""
        return json.dumps({**asdict(self), "content_hash": self.content_hash}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Read a manifest file's text; ValueError, KeyError or TypeError if it is not one."""
        raw = json.loads(text)
        return cls(
            rbee_version=str(raw["rbee_version"]),
            target=str(raw["target"]),
            native=bool(raw["native"]),
            deps_key=str(raw["deps_key"]),
            rbee_source=str(raw["rbee_source"]),
            rbee_wheel=WheelFile(**raw["rbee_wheel"]),
            dependencies=tuple(WheelFile(**f) for f in raw["dependencies"]),
        )


# --- reading this machine -------------------------------------------------------------------------


@dataclass(frozen=True)
class RbeeSource:
    """Where rbee's wheel comes from: a source checkout (root) or the installed distribution."""

    version: str
    root: Path | None
    digest: str
    """sha256 of the checkout's files, or `installed-<version>`."""
    top_files: tuple[str, ...] = ()
    """The checkout's top-level files a build reads (pyproject.toml, README.md)."""


def local_target() -> Target:
    """The queen's own platform."""
    libc, libc_version = platform.libc_ver()
    os_version = libc_version if sys.platform == "linux" else platform.mac_ver()[0]
    return Target.of(
        platform.system(),
        platform.machine(),
        platform.python_version(),
        implementation=sys.implementation.name,
        libc=libc,
        os_version=os_version,
    )


def rbee_source(package_dir: Path | None = None) -> RbeeSource:
    """rbee's source: a checkout if the package's parent holds its pyproject.toml."""
    package = package_dir or Path(rbee.__file__).resolve().parent
    root = package.parent
    if not (root / "pyproject.toml").is_file():
        return RbeeSource(rbee.__version__, None, f"installed-{rbee.__version__}")
    top = tuple(n for n in ("pyproject.toml", "README.md", "LICENSE") if (root / n).is_file())
    digest = hashlib.sha256()
    files = [root / n for n in top] + sorted(
        p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    for path in files:
        digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return RbeeSource(rbee.__version__, root, digest.hexdigest(), top)


def runtime_requirements(source: RbeeSource, extras: Sequence[str] = ()) -> list[str]:
    """rbee's `[project].dependencies` (plus the named extras), never the dev or bench ones."""
    if source.root is not None:
        project = tomllib.loads((source.root / "pyproject.toml").read_text())["project"]
        optional = project.get("optional-dependencies", {})
        return [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]
    requires = importlib.metadata.requires("rbee") or []
    picked = []
    for r in requires:
        wanted = _EXTRA_MARKER.search(r.partition(";")[2])
        if wanted is None or normalize(wanted[1]) in {normalize(e) for e in extras}:
            picked.append(r)
    return picked


def wheel_from_installed(name: str, dest: Path) -> Path:
    """Pack the files of an installed (non-editable) distribution that RECORD lists as a wheel."""
    dist = importlib.metadata.distribution(name)
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct.get("dir_info", {}).get("editable") or not dist.files:
        raise WheelhouseError(f"cannot pack {name}: it is an editable install or has no RECORD")
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]  # fmt: skip
    if not tags:
        raise WheelhouseError(f"cannot pack {name}: its WHEEL file names no tag")
    stem = f"{re.sub(r'[-_.]+', '_', dist.metadata['Name'])}-{dist.version}"
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    path = dest / f"{stem}-{tags[0]}.whl"
    record, info = [], ""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in dist.files:
            parts = f.parts
            if parts[0] == ".." or "__pycache__" in parts or f.suffix == ".pyc":
                continue
            if parts[0].endswith(".dist-info"):
                info = parts[0]
                if len(parts) == 2 and parts[1] in skip:
                    continue
            data = Path(str(dist.locate_file(f))).read_bytes()
            zf.writestr(f.as_posix(), data)
            b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f.as_posix()},sha256={b64},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


# --- building -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wheelhouse:
    """A complete wheelhouse on the queen's disk, ready to upload."""

    directory: Path
    manifest: Manifest
    built: tuple[str, ...]
    """What this call (re)built: () when the cache was complete."""

    @property
    def files(self) -> tuple[WheelFile, ...]:
        """Every wheel, rbee's first."""
        return (self.manifest.rbee_wheel, *self.manifest.dependencies)

    @property
    def total_bytes(self) -> int:
        """The size of all wheels together."""
        return sum(f.size for f in self.files)


def extra_dirs_from_env(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The directories `RBEE_WHEELHOUSE_EXTRA` names."""
    value = (os.environ if env is None else env).get(EXTRA_ENV, "")
    return tuple(Path(p).expanduser() for p in value.split(os.pathsep) if p.strip())


def build_wheelhouse(
    target: Target,
    cache_root: Path,
    *,
    extras: Sequence[str] = (),
    extra_dirs: Sequence[Path] = (),
    python: str = sys.executable,
) -> Wheelhouse:
    """Make the wheelhouse for `target` complete under `cache_root` (fast when it already is)."""
    queen = local_target()
    native = same_platform(queen, target)
    build_for = queen if native else target
    source = rbee_source()
    pins, unpinned = dependency_pins(runtime_requirements(source, extras), _installed())
    # What the queen has not installed (another platform's engine) comes from the lock too.
    locked = _lock_for(source, build_for, pins) if unpinned else []
    deps_key = dependency_key(build_for, native, pins, [*unpinned, *locked], _listing(extra_dirs))
    directory = cache_root / f"{build_for.key}-{source.version}"
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(cache_root / ".lock"):
        old = _read_manifest(directory)
        built: list[str] = []
        deps = old.dependencies if old and old.deps_key == deps_key else None
        if deps is None or not _present(directory, deps):
            deps = _build_dependencies(
                directory,
                build_for,
                native=native,
                pins=pins,
                unpinned=unpinned,
                locked=locked,
                extra_dirs=extra_dirs,
                python=python,
            )
            built.append("dependencies")
        wheel = old.rbee_wheel if old and old.rbee_source == source.digest else None
        if wheel is None or not _present(directory, (wheel,)):
            wheel = _build_rbee(directory, source, python)
            built.append("rbee")
        manifest = Manifest(source.version, build_for.key, native, deps_key, source.digest, wheel,
                            deps)  # fmt: skip
        if manifest != old:
            _prune(directory, {f.name for f in (wheel, *deps)})
            atomic_write_text(directory / _MANIFEST, manifest.to_json())
    log.debug("wheelhouse %s: built %s", directory, built or "nothing")
    return Wheelhouse(directory=directory, manifest=manifest, built=tuple(built))


def _lock_for(source: RbeeSource, target: Target, pins: Sequence[str]) -> list[str]:
    """The lock's constraints for `target`, less what `pins` fixes; none without a checkout."""
    lock = source.root / LOCK_FILE if source.root is not None else None
    if lock is None or not lock.is_file():
        return []
    pinned = {normalize(p.split("==")[0]) for p in pins}
    return lock_constraints(lock.read_text(), target, pinned)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build per cache at a time, across threads and processes."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _installed() -> dict[str, tuple[str, Sequence[str]]]:
    found: dict[str, tuple[str, Sequence[str]]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) not in found:
            found[normalize(name)] = (dist.version, tuple(dist.requires or ()))
    return found


def _listing(dirs: Sequence[Path]) -> list[str]:
    out = []
    for d in dirs:
        if not d.is_dir():
            raise WheelhouseError(f"{EXTRA_ENV}: {d} is not a directory")
        out += [f"{p.name} {p.stat().st_size}" for p in sorted(d.glob("*.whl"))]
    return out


def _read_manifest(directory: Path) -> Manifest | None:
    try:
        return Manifest.from_json((directory / _MANIFEST).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _present(directory: Path, files: Sequence[WheelFile]) -> bool:
    try:
        return all((directory / f.name).stat().st_size == f.size for f in files)
    except OSError:
        return False


def _prune(directory: Path, keep: set[str]) -> None:
    for p in directory.iterdir():
        if p.name not in keep and p.name != _MANIFEST:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


def _wheel_file(path: Path) -> WheelFile:
    return WheelFile(name=path.name, size=path.stat().st_size, sha256=sha256_file(path))


def _tail(text: str) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-3:] if line.strip())


# Zip timestamps from a fixed date: the same source gives the same wheel, byte for byte, so a
# wheelhouse rebuilt elsewhere (another data dir, another queen) still finds a hive up to date.
_REPRODUCIBLE = {"SOURCE_DATE_EPOCH": "315532800"}


def _pip(
    argv: list[str], extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    log.info("wheelhouse: %s", " ".join(argv))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
           **(extra_env or {})}  # fmt: skip
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT,
                              check=False, env=env)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        raise WheelhouseError(f"`{' '.join(argv)}` failed: {err}") from err


def _build_dependencies(
    directory: Path,
    target: Target,
    *,
    native: bool,
    pins: tuple[str, ...],
    unpinned: tuple[str, ...],
    locked: Sequence[str] = (),
    extra_dirs: Sequence[Path],
    python: str,
) -> tuple[WheelFile, ...]:
    """Fetch every dependency wheel into a fresh folder, then move them into `directory`."""
    with tempfile.TemporaryDirectory(prefix=".deps-", dir=directory) as tmp:
        out = Path(tmp)
        remaining, missing = list(pins), []
        while remaining:
            argv = pip_argv(python, target, out, remaining, native=native, find_links=extra_dirs,
                            no_deps=True)  # fmt: skip
            proc = _pip(argv)
            if proc.returncode == 0:
                break
            names = missing_packages(proc.stderr)
            if not names:
                raise WheelhouseError(
                    f"`{' '.join(argv)}` exited {proc.returncode}: {_tail(proc.stderr)}"
                )
            found = [p for p in remaining if normalize(p.split("==")[0]) in names]
            if not found:
                raise WheelhouseError(f"`{' '.join(argv)}`: {_tail(proc.stderr)}")
            for pin in found:
                remaining.remove(pin)
                if native:  # installed here but on no index: pack the installed files
                    wheel_from_installed(pin.split("==")[0], out)
                else:
                    missing.append(pin)
        if unpinned and not missing:
            constraints = out / "constraints.txt"
            constraints.write_text("".join(p + "\n" for p in (*pins, *locked)))
            argv = pip_argv(python, target, out, unpinned, native=native, find_links=extra_dirs,
                            constraints=constraints)  # fmt: skip
            proc = _pip(argv)
            if proc.returncode != 0:
                missing += missing_packages(proc.stderr) or list(unpinned)
        if missing:
            raise WheelhouseError(
                f"no wheel for {target.describe()} of: {', '.join(missing)}; build them on such a "
                f"machine (`pip wheel -w DIR {' '.join(missing)}`) and point {EXTRA_ENV} at DIR"
            )
        for old in directory.glob("*.whl"):
            if not old.name.startswith("rbee-"):  # rbee's own wheel is kept apart
                old.unlink()
        wheels = sorted(out.glob("*.whl"))
        for w in wheels:
            os.replace(w, directory / w.name)
    return tuple(_wheel_file(directory / w.name) for w in wheels)


def _build_rbee(directory: Path, source: RbeeSource, python: str) -> WheelFile:
    """rbee's own wheel: pip builds it from a copy of the checkout, or the installed files."""
    with tempfile.TemporaryDirectory(prefix=".rbee-", dir=directory) as tmp:
        out = Path(tmp, "out")
        out.mkdir()
        if source.root is None:
            built = wheel_from_installed("rbee", out)
        else:
            # A copy, so the build's own folders (build/, *.egg-info) stay out of the checkout.
            tree = Path(tmp, "src")
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(source.root / "rbee", tree / "rbee", ignore=ignore)
            for name in source.top_files:
                shutil.copy2(source.root / name, tree / name)
            built = _pip_wheel_rbee(python, tree, out)
        for old in directory.glob("rbee-*.whl"):
            old.unlink()
        os.replace(built, directory / built.name)
    return _wheel_file(directory / built.name)


def _pip_wheel_rbee(python: str, tree: Path, out: Path) -> Path:
    base = [python, "-m", "pip", "wheel", "--no-deps", "-w", str(out)]
    proc = _pip([*base, "--no-build-isolation", str(tree)], _REPRODUCIBLE)
    if proc.returncode != 0:
        # This environment's build backend is missing or older than pyproject.toml needs: let pip
        # fetch the one it names (the queen has an index; hives never need one).
        log.info("building rbee's wheel without build isolation failed; retrying with isolation")
        proc = _pip([*base, str(tree)], _REPRODUCIBLE)
    wheels = sorted(out.glob("rbee-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise WheelhouseError(f"building rbee's wheel failed: {_tail(proc.stderr)}")
    return wheels[0]
