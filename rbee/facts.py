"""Hardware facts of a hive's machine: a script that gathers them and a pure parser.

The script runs with the machine's own Python (`python3 -c FACTS_SCRIPT`, locally or over SSH,
before rbee is installed there) and prints one JSON object of raw readings; `parse_facts` turns
that into a frozen `Facts`. Keeping the reading dumb and the parsing pure lets the parser be tested
with plain tables (nvidia-smi output included) on machines without the hardware.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from rbee.errors import RbeeError

__all__ = ["CPU_FLAGS", "FACTS_SCRIPT", "NVIDIA_SMI_APPS", "NVIDIA_SMI_QUERY", "Facts", "Gpu",
           "local_facts", "parse_facts", "parse_gpu_apps", "parse_nvidia_smi", "read_gpu_apps",
           "read_gpus"]  # fmt: skip

NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,name,memory.total,memory.free,driver_version",
    "--format=csv,noheader,nounits",
]

NVIDIA_SMI_APPS = [
    "nvidia-smi",
    "--query-compute-apps=pid,used_memory",
    "--format=csv,noheader,nounits",
]
"""The processes using GPU memory, and how much (MiB), on every GPU."""

CPU_FLAGS = frozenset(
    {"amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "avx512f", "avx512_vnni", "avx512_bf16",
     "avx_vnni", "avx2", "fma", "f16c", "asimd", "sve", "i8mm"}
)  # fmt: skip
"""The CPU flags (of /proc/cpuinfo) that decide how an engine computes on a machine."""

# Python start-up is most of what the script costs, so it imports only os and sys (json, platform,
# shutil and subprocess would triple its CPU time; subprocess is imported only to run a program),
# and it keeps to syntax that any Python 3 reads, so an old one can still say what it is. The
# engines found are imported for real (llama_cpp 0.2 s, mlx.core 0.03 s here): an installed
# package whose native library does not load (mlx without its CPU or Metal backend, exllamav2
# without CUDA) is no engine. exllamav2 (torch, CUDA) is imported only where there is a GPU.
FACTS_SCRIPT = r"""
import os, sys
def run(argv):
    import subprocess
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
def which(name):
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None
def found(module):
    return any(getattr(f, "find_spec", None) and f.find_spec(module, None) is not None
               for f in sys.meta_path)
def imports(package, module, why_not):
    # True if `module` imports, False if `package` is not installed, else why it cannot be used.
    # While importing, fd 1 points at stderr: a library that prints must not spoil the JSON.
    if not found(package):
        return False
    if why_not:
        return why_not
    out = os.dup(1)
    os.dup2(2, 1)
    try:
        __import__(module)
        return True
    except BaseException as e:
        return ("%s: %s" % (type(e).__name__, e)).splitlines()[0][:300]
    finally:
        sys.stdout.flush()
        os.dup2(out, 1)
        os.close(out)
def js(v):
    if v is None or v is True or v is False:
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{" + ", ".join(js(k) + ": " + js(x) for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(js(x) for x in v) + "]"
    out = []
    for c in v:
        n = ord(c)
        if 32 <= n < 127 and c not in '"\\':
            out.append(c)
        elif n < 0x10000:
            out.append("\\u%04x" % n)
        else:
            out.append("\\u%04x\\u%04x" % (0xD7C0 + (n >> 10), 0xDC00 + (n & 0x3FF)))
    return '"' + "".join(out) + '"'
u = os.uname()
f = {"os": u.sysname.lower(), "arch": u.machine, "hostname": u.nodename,
     "python": sys.version.split()[0], "python_path": sys.executable,
     "cpu_count": os.cpu_count() or 1, "mem_total": None, "mem_available": None}
if f["os"] == "linux":
    try:
        info = dict(l.split(":", 1) for l in open("/proc/meminfo") if ":" in l)
        f["mem_total"] = int(info["MemTotal"].split()[0]) * 1024
        f["mem_available"] = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        for l in open("/proc/cpuinfo"):
            key, _, value = l.partition(":")
            key = key.strip()
            if key == "model name" and "cpu_model" not in f:
                f["cpu_model"] = value.strip()
            elif key in ("flags", "Features"):
                f["cpu_flags"] = [x for x in value.split() if x in CPU_FLAGS]
                break
    except OSError:
        pass
elif f["os"] == "darwin":
    out = run(["sysctl", "-n", "hw.memsize"])
    f["mem_total"] = int(out) if out and out.strip().isdigit() else None
    f["chip"] = (run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "").strip() or None
disk = os.statvfs(os.path.expanduser("~"))
f["disk_free"] = disk.f_bavail * disk.f_frsize
f["nvidia_smi"] = run(NVIDIA_SMI) if which("nvidia-smi") else None
f["engines"] = {"llama_cpp": imports("llama_cpp", "llama_cpp", None),
                "mlx": imports("mlx", "mlx.core", None),
                "exllamav2": imports("exllamav2", "exllamav2",
                                     None if f["nvidia_smi"] else "not imported: no NVIDIA GPU")}
print(js(f))
""".replace("NVIDIA_SMI", repr(NVIDIA_SMI_QUERY)).replace("CPU_FLAGS", repr(sorted(CPU_FLAGS)))


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU as nvidia-smi reports it (memory in bytes)."""

    index: int
    name: str
    vram_total: int
    vram_free: int
    driver: str


@dataclass(frozen=True)
class Facts:
    """What a hive knows about its machine."""

    os: str
    arch: str
    hostname: str
    python: str
    python_path: str
    cpu_count: int
    mem_total: int | None
    mem_available: int | None
    disk_free: int
    gpus: tuple[Gpu, ...]
    apple_chip: str | None
    engines: tuple[str, ...]
    """The engine modules that import on the machine."""
    engine_problems: tuple[tuple[str, str], ...] = ()
    """(module, why) for engines installed there that do not import."""
    cpu_model: str | None = None
    cpu_flags: tuple[str, ...] = ()
    """The flags of CPU_FLAGS the CPU has (Linux; empty elsewhere or when unknown)."""

    @property
    def amx(self) -> bool:
        """True on a CPU with Intel AMX (Sapphire Rapids and later Xeons)."""
        return any(flag.startswith("amx_") for flag in self.cpu_flags)

    @property
    def apple_silicon(self) -> bool:
        """True on an Apple Silicon Mac (Metal, unified memory)."""
        return self.os == "darwin" and self.arch == "arm64"


def parse_nvidia_smi(text: str | None) -> tuple[Gpu, ...]:
    """Parse `nvidia-smi --query-gpu=index,name,memory.total,memory.free,driver_version` CSV."""
    gpus = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5:
            raise RbeeError(f"unexpected nvidia-smi line: {line!r}")
        index, name, total, free, driver = fields
        try:
            gpus.append(Gpu(int(index), name, int(float(total)) << 20, int(float(free)) << 20,
                            driver))  # fmt: skip
        except ValueError as err:
            raise RbeeError(f"unexpected nvidia-smi line: {line!r}") from err
    return tuple(gpus)


def parse_gpu_apps(text: str | None) -> dict[int, int]:
    """pid → bytes of GPU memory, summed over the GPUs, from `NVIDIA_SMI_APPS`' CSV (MiB). A
    line nvidia-smi could not fill (`[N/A]`, as for another container's process) is skipped."""
    used: dict[int, int] = {}
    for line in (text or "").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2:
            continue
        try:
            pid, mib = int(fields[0]), int(float(fields[1]))
        except ValueError:
            continue
        used[pid] = used.get(pid, 0) + (mib << 20)
    return used


def read_gpu_apps(timeout: float = 10.0) -> dict[int, int] | None:
    """The GPU memory each process uses now (`parse_gpu_apps`); None where nvidia-smi cannot be
    asked (no NVIDIA GPU here)."""
    try:
        done = subprocess.run(
            NVIDIA_SMI_APPS, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_gpu_apps(done.stdout) if done.returncode == 0 else None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def parse_facts(text: str) -> Facts:
    """Turn the facts script's JSON output into Facts; RbeeError if it is not that."""
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise RbeeError(f"the facts script printed no JSON ({err}): {text[:200]!r}") from err
    if not isinstance(raw, dict):
        raise RbeeError(f"the facts script printed no JSON object: {text[:200]!r}")
    try:
        engines = raw.get("engines") or {}
        facts = Facts(
            os=str(raw["os"]),
            arch=str(raw["arch"]),
            hostname=str(raw.get("hostname", "")),
            python=str(raw["python"]),
            python_path=str(raw.get("python_path", "")),
            cpu_count=int(raw["cpu_count"]),
            mem_total=_int_or_none(raw.get("mem_total")),
            mem_available=_int_or_none(raw.get("mem_available")),
            disk_free=int(raw.get("disk_free") or 0),
            gpus=parse_nvidia_smi(raw.get("nvidia_smi")),
            apple_chip=raw.get("chip") or None,
            engines=tuple(sorted(k for k, v in engines.items() if v is True)),
            engine_problems=tuple(sorted((k, v) for k, v in engines.items() if isinstance(v, str))),
            cpu_model=str(raw["cpu_model"]) if raw.get("cpu_model") else None,
            cpu_flags=tuple(sorted(str(x) for x in raw.get("cpu_flags") or () if x in CPU_FLAGS)),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise RbeeError(
            f"the facts script printed something unexpected ({err}): {text[:200]!r}"
        ) from err
    return facts


def read_gpus(timeout: float = 10.0) -> tuple[Gpu, ...] | None:
    """This machine's NVIDIA GPUs as nvidia-smi reports them now; None if it cannot be asked."""
    try:
        out = subprocess.run(
            NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=timeout, check=False
        ).stdout
        return parse_nvidia_smi(out)
    except (OSError, subprocess.SubprocessError, RbeeError):
        return None


def local_facts(python: str = sys.executable, timeout: float = 30.0) -> Facts:
    """Facts of this machine, gathered the same way as on a remote hive."""
    proc = subprocess.run(
        [python, "-c", FACTS_SCRIPT], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RbeeError(f"the facts script failed ({proc.returncode}): {proc.stderr[-500:]}")
    return parse_facts(proc.stdout)
