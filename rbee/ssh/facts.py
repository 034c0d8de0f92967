"""Hardware facts of a remote hive, read over its SSH connection.

Two readers. `remote_facts` runs the facts script with the hive's own Python: exact Python
details, what install needs. `status_facts` is what `rbee hive status` shows, read by a POSIX sh
script with a handful of small programs (uname, getconf, df, `python --version`, nvidia-smi where
there is one) and no Python start-up on the hive, which made most of a status's cost on a fleet:
the hardware, the Python that would run the hive (RbeePython, found on PATH as ssh runs it), and
the engines in rbee's venv there (none before rbee is installed). What a machine is does not change
while a connection to it is held, so on a connection that has read the facts before, the script
re-reads only what moves: free RAM, free disk and free VRAM.
"""

from __future__ import annotations

import dataclasses

from rbee.errors import RbeeError
from rbee.facts import FACTS_SCRIPT, NVIDIA_SMI_QUERY, Facts, parse_facts, parse_nvidia_smi
from rbee.ssh.connection import HiveConnection

__all__ = ["ENGINE_MODULES", "STATUS_SCRIPT", "parse_status", "remote_facts", "status_facts"]

ENGINE_MODULES = ("llama_cpp", "exllamav2", "mlx")

# `sh -c STATUS_SCRIPT rbee-status MODE PYTHON INSTALL_DIR` prints `key value` lines, then, where
# nvidia-smi is asked, a line `nvidia_smi` and its CSV. MODE `full` reads everything, `fresh` only
# mem_available_kib and disk_free_kib, `fresh-gpus` those and nvidia-smi. Free memory is Linux's
# MemAvailable (none elsewhere), free disk is df's Available for $HOME (statvfs' f_bavail, as the
# facts script reads it), CPUs are the online ones (os.cpu_count), and an engine is a module
# folder or file in the site-packages of INSTALL_DIR/venv (the venv rbee install made).
STATUS_SCRIPT = r"""
mode=$1 python=$2 install=$3
set -f
if [ -r /proc/meminfo ]; then
    while read -r key value unit; do
        case $key in
            MemTotal:) [ "$mode" = full ] && echo "mem_total_kib $value" ;;
            MemAvailable:) echo "mem_available_kib $value"; break ;;
        esac
    done < /proc/meminfo
fi
set -- $(df -Pk "${HOME:-/}" 2>/dev/null)
echo "disk_free_kib ${11}"
if [ "$mode" = full ]; then
    uname=$(uname -snm)
    echo "uname $uname"
    cpus=
    if [ -r /sys/devices/system/cpu/online ]; then
        # "0-3,6,8-9" -> 7, with shell builtins only (no process started)
        read -r online < /sys/devices/system/cpu/online
        cpus=0
        IFS=,
        for range in $online; do
            case $range in
                *-*) cpus=$((cpus + ${range#*-} - ${range%-*} + 1)) ;;
                ?*) cpus=$((cpus + 1)) ;;
            esac
        done
        unset IFS
    fi
    [ "${cpus:-0}" -gt 0 ] 2>/dev/null || cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null)
    echo "cpus $cpus"
    case $uname in
        "Darwin "*)
            echo "memsize $(sysctl -n hw.memsize 2>/dev/null)"
            echo "chip $(sysctl -n machdep.cpu.brand_string 2>/dev/null)" ;;
    esac
    # The rule of HiveConnection.resolve (rbee.ssh.connection.expand_home), here in sh so that
    # a status costs no extra round trip; tests/test_facts.py checks both agree.
    case $install in
        "~") install=$HOME ;;
        "~/"*) install=$HOME/${install#"~/"} ;;
    esac
    if found=$(command -v "$python"); then
        echo "python_path $found"
        # Installed: the venv (made by this Python) records its version; else ask it (slower).
        version=
        if [ -r "$install/venv/pyvenv.cfg" ]; then
            while read -r key eq value; do
                [ "$key" = version ] && [ "$eq" = "=" ] && version="Python $value"
            done < "$install/venv/pyvenv.cfg"
        fi
        echo "python_version ${version:-$("$found" --version 2>&1)}"
    fi
    set +f
    for site in "$install"/venv/lib/python*/site-packages; do
        for module in ENGINE_MODULES; do
            if [ -e "$site/$module" ] || [ -e "$site/$module.py" ]; then echo "engine $module"; fi
        done
    done
fi
if [ "$mode" = fresh-gpus ] || { [ "$mode" = full ] && command -v nvidia-smi >/dev/null; }; then
    echo nvidia_smi
    NVIDIA_SMI 2>/dev/null
fi
exit 0
""".replace("NVIDIA_SMI", " ".join(NVIDIA_SMI_QUERY)).replace(
    "ENGINE_MODULES", " ".join(ENGINE_MODULES)
)

_KEYS = {
    "mem_total_kib", "mem_available_kib", "disk_free_kib", "uname", "cpus", "memsize", "chip",
    "python_path", "python_version", "engine",
}  # fmt: skip


async def remote_facts(conn: HiveConnection, python: str) -> Facts:
    """Run the facts script with the hive's `python` (works before rbee is installed there)."""
    result = await conn.check([python, "-c", FACTS_SCRIPT], time_limit=60)
    return parse_facts(result.stdout)


async def status_facts(
    conn: HiveConnection, python: str, install_dir: str, known: Facts | None = None
) -> Facts:
    """The hive's facts as `rbee hive status` shows them; `known`, read earlier on this same
    connection, leaves only free RAM, disk and VRAM to read again."""
    mode = "full" if known is None else "fresh-gpus" if known.gpus else "fresh"
    argv = ["sh", "-c", STATUS_SCRIPT, "rbee-status", mode, python, install_dir]
    result = await conn.check(argv, time_limit=30)
    return parse_status(result.stdout, known)


def parse_status(text: str, known: Facts | None = None) -> Facts:
    """Facts from STATUS_SCRIPT's output (`known` with the fresh figures where it is given);
    RbeeError if the output is not the script's."""
    head, smi_marker, smi = text.partition("nvidia_smi\n")
    values: dict[str, str] = {}
    engines: list[str] = []
    for line in head.splitlines():
        key, _, value = line.partition(" ")
        if key not in _KEYS:
            raise RbeeError(f"unexpected line from the status script: {line!r}")
        if key == "engine":
            engines.append(value)
        else:
            values[key] = value.strip()

    def kib(key: str) -> int | None:
        value = values.get(key, "")
        return int(value) * 1024 if value.isdigit() else None

    mem_available = kib("mem_available_kib")
    disk_free = kib("disk_free_kib") or 0  # df printed nothing: the facts script's 0 too
    if known is not None:
        gpus = parse_nvidia_smi(smi) if known.gpus else ()
        return dataclasses.replace(
            known, mem_available=mem_available, disk_free=disk_free, gpus=gpus
        )
    uname = values.get("uname", "").split()
    if len(uname) != 3 or not values.get("cpus", "").isdigit():
        raise RbeeError(f"the status script printed no uname or CPU count: {text[:200]!r}")
    system, hostname, arch = uname
    version = values.get("python_version", "").split()
    memsize = values.get("memsize", "")
    return Facts(
        os=system.lower(),
        arch=arch,
        hostname=hostname,
        python=version[1] if len(version) >= 2 and version[0] == "Python" else "",
        python_path=values.get("python_path", ""),
        cpu_count=int(values["cpus"]) or 1,
        mem_total=int(memsize) if memsize.isdigit() else kib("mem_total_kib"),
        mem_available=mem_available,
        disk_free=disk_free,
        gpus=parse_nvidia_smi(smi) if smi_marker else (),
        apple_chip=values.get("chip") or None,
        engines=tuple(sorted(set(engines))),
    )
