"""Everything a sweep needs from one hive, read by one POSIX sh script in one round trip.

Like `rbee hive status` (rbee.ssh.facts), the script uses only sh and a few standard programs
(df, awk, sed; ps where there is no /proc; nvidia-smi where there is one), so a sweep starts no
Python on the hive. It prints `key value` lines: where rbee is installed and its version
(installed.json), free disk in the install and model dirs, RAM, the hive's rbee processes
(`rbee hive run --name ALIAS` and workers started with the hive's data dir, with their parent's
command name so an orphan can be told from a process an SSH session holds), and each GPU with
the processes using its memory.

Test hives share one process table (network namespaces only), so a hive process counts as this
hive's only if its HOME is this session's HOME, where /proc says so.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from rbee.errors import RbeeError
from rbee.ssh.connection import HiveConnection

__all__ = ["HIVE_SCRIPT", "Gpu", "GpuApp", "HiveProbe", "Proc", "parse_probe", "probe_hive"]

# `sh -c HIVE_SCRIPT rbee-sweep ALIAS INSTALL_DIR`. A folder not made yet is measured at its
# nearest existing parent (where it will be made). Memory is Linux's MemAvailable. Two programs
# only on Linux (df, awk; ps too elsewhere: the rest is sh builtins), as a sweep runs it on every
# hive at once.
# The user's processes are those of the uid ps gives this very shell.
HIVE_SCRIPT = r"""
alias=$1 install=$2
set -f
case $install in
    "~") install=$HOME ;;
    "~/"*) install=$HOME/${install#"~/"} ;;
esac
data=${RBEE_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/rbee}
echo "home $HOME"
echo "install_dir $install"
echo "data_dir $data"
if [ -r "$install/installed.json" ]; then
    version=
    while read -r line; do
        case $line in
            *'"rbee_version":'*)
                version=${line#*'"rbee_version":'}
                version=${version#"${version%%[! ]*}"}
                version=${version#\"}
                version=${version%%\"*} ;;
        esac
    done < "$install/installed.json"
    echo "installed_version ${version:-?}"
fi
nearest() {  # sets $found: the folder, or its nearest existing parent (where it will be made)
    found=$1
    while [ ! -d "$found" ]; do
        case $found in
            */*) found=${found%/*}; found=${found:-/} ;;
            *) found=. ;;
        esac
    done
}
nearest "$install"; install_fs=$found
nearest "$data/models"; models_fs=$found
df -Pk "$install_fs" "$models_fs" 2>/dev/null | {
    read -r header
    read -r fs blocks used avail rest && echo "disk_install_kib $fs $avail"
    read -r fs blocks used avail rest && echo "disk_models_kib $fs $avail"
}
if [ -r /proc/meminfo ]; then
    while read -r key value unit; do
        case $key in
            MemTotal:) echo "mem_total_kib $value" ;;
            MemAvailable:) echo "mem_available_kib $value"; break ;;
        esac
    done < /proc/meminfo
fi
# The user's rbee processes (not this shell nor its children), then the HOME of each hive
# process. Where there is /proc (Linux) one awk reads it: every command line, and the status of
# rbee's processes only (ps would read three files of every process on the machine, as many
# times as hives share it in tests). Elsewhere (macOS) ps lists them, the same lines.
# `rbee_proc KIND PID PPID UID RSS_KIB COMM ARGS` is each candidate; `homes` the end.
select='
    function candidate(pid, ppid, uid, rss, args,    a, kind) {
        if (uid != me || pid == self || ppid == self) return
        a = " " args " "
        kind = ""
        if (index(a, " hive run ") && index(a, " --name " alias " ")) kind = "hive"
        else if (index(a, " --data-dir " data " worker ")) kind = "worker"
        if (kind == "") return
        print "proc " kind " " pid " " ppid " " rss " " parent(ppid) " " args
        if (kind == "hive") hives[pid] = 1
    }
    function homes(    pid, file, entry) {
        RS = "\0"
        for (pid in hives) {
            file = "/proc/" pid "/environ"
            while ((getline entry < file) > 0)
                if (entry ~ /^HOME=/) print "home_of " pid " " substr(entry, 6)
            close(file)
        }
    }
'
if [ -r /proc/self/status ]; then
    set +f
    awk -v alias="$alias" -v data="$data" -v self="$$" "$select"'
    function status(pid,    file, line, f) {  # fills st[] from one read of the status file
        split("", st)
        file = "/proc/" pid "/status"
        RS = "\n"
        while ((getline line < file) > 0) {
            split(line, f, /[ \t]+/)
            st[f[1]] = (f[1] == "Uid:") ? f[3] : f[2]  # Uid: real, effective: the effective
        }
        close(file)
    }
    function parent(pid) {
        status(pid)
        return ("Name:" in st) ? st["Name:"] : "-"
    }
    BEGIN {
        status(self)
        me = st["Uid:"]
        for (i = 1; i < ARGC; i++) {
            pid = substr(ARGV[i], 7)
            file = ARGV[i] "/cmdline"
            RS = "\0"
            args = ""
            n = 0
            while ((getline part < file) > 0) args = (n++ ? args " " : "") part
            close(file)
            a = " " args " "
            if (!index(a, " hive run ") && !index(a, " worker ")) continue
            status(pid)
            rss = ("VmRSS:" in st) ? st["VmRSS:"] : 0
            candidate(pid, st["PPid:"], st["Uid:"], rss, args)
        }
        homes()
        exit
    }' /proc/[0-9]*
    set -f
else
    ps -A -o pid= -o ppid= -o uid= -o rss= -o comm= -o args= 2>/dev/null | awk \
        -v alias="$alias" -v data="$data" -v self="$$" "$select"'
    function parent(pid) { return (pid in comm) ? comm[pid] : "-" }
    { n++; line[n] = $0; comm[$1] = $5; if ($1 == self) me = $3 }
    END {
        for (i = 1; i <= n; i++) {
            split(line[i], f, " ")
            args = line[i]
            for (k = 1; k <= 5; k++) sub(/^[ \t]*[^ \t]+/, "", args)
            sub(/^[ \t]+/, "", args)
            candidate(f[1], f[2], f[3], f[4], args)
        }
        homes()
    }'
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,uuid,memory.total,memory.free --format=csv,noheader,nounits \
        2>/dev/null | sed 's/^/gpu /'
    nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits \
        2>/dev/null | sed 's/^/gpu_app /'
fi
exit 0
"""

_MIB = 1 << 20
_PARENT_PID = re.compile(r"(?:^| )--parent-pid (\d+)(?: |$)")


@dataclass(frozen=True)
class Proc:
    """One of the hive's rbee processes: a hive (`rbee hive run`) or a worker (or standby)."""

    kind: str
    pid: int
    ppid: int
    rss: int
    """Resident memory, bytes."""
    parent: str
    """The parent's command name (`sshd` for a hive an SSH session holds)."""
    args: str

    @property
    def parent_pid_arg(self) -> int | None:
        """The `--parent-pid` a worker was started with (the hive that started it)."""
        found = _PARENT_PID.search(self.args)
        return int(found.group(1)) if found else None


@dataclass(frozen=True)
class Gpu:
    """One GPU: memory total and free, bytes."""

    index: int
    uuid: str
    total: int
    free: int


@dataclass(frozen=True)
class GpuApp:
    """A process holding GPU memory."""

    gpu_uuid: str
    pid: int
    used: int


@dataclass(frozen=True)
class HiveProbe:
    """What the script read on one hive."""

    home: str
    install_dir: str
    data_dir: str
    installed_version: str | None
    disk_install: tuple[str, int] | None
    """(filesystem, bytes free) where rbee is installed."""
    disk_models: tuple[str, int] | None
    mem_total: int | None
    mem_available: int | None
    procs: tuple[Proc, ...] = ()
    gpus: tuple[Gpu, ...] = ()
    gpu_apps: tuple[GpuApp, ...] = ()
    homes: dict[int, str] = field(default_factory=dict)
    """HOME of each hive process whose environment could be read."""
    seconds: float = 0.0

    def hive_procs(self) -> list[Proc]:
        """This hive's `rbee hive run` processes (another HOME's are another machine's)."""
        return [
            p
            for p in self.procs
            if p.kind == "hive" and self.homes.get(p.pid, self.home) == self.home
        ]

    def worker_procs(self) -> list[Proc]:
        """This hive's worker and standby processes."""
        return [p for p in self.procs if p.kind == "worker"]


def _disk(value: str) -> tuple[str, int] | None:
    parts = value.split()
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]) * 1024


def _kib(value: str | None) -> int | None:
    return int(value) * 1024 if value is not None and value.isdigit() else None


def parse_probe(text: str, seconds: float = 0.0) -> HiveProbe:
    """A HiveProbe from HIVE_SCRIPT's output; RbeeError if it is not the script's."""
    values: dict[str, str] = {}
    procs: list[Proc] = []
    gpus: list[Gpu] = []
    apps: list[GpuApp] = []
    homes: dict[int, str] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        try:
            if key == "proc":
                kind, pid, ppid, rss, parent, args = rest.split(" ", 5)
                procs.append(Proc(kind, int(pid), int(ppid), int(rss) * 1024, parent, args))
            elif key == "home_of":
                pid, _, home = rest.partition(" ")
                homes[int(pid)] = home
            elif key == "gpu":
                index, uuid, total, free = (v.strip() for v in rest.split(","))
                gpus.append(Gpu(int(index), uuid, int(total) * _MIB, int(free) * _MIB))
            elif key == "gpu_app":
                uuid, pid, used = (v.strip() for v in rest.split(","))
                apps.append(GpuApp(uuid, int(pid), int(used) * _MIB))
            elif key:
                values[key] = rest.strip()
        except ValueError:
            raise RbeeError(f"unexpected line from the sweep script: {line[:200]!r}") from None
    if "home" not in values or "install_dir" not in values:
        raise RbeeError(f"the sweep script printed no home or install dir: {text[:200]!r}")
    return HiveProbe(
        home=values["home"],
        install_dir=values["install_dir"],
        data_dir=values.get("data_dir", ""),
        installed_version=values.get("installed_version"),
        disk_install=_disk(values.get("disk_install_kib", "")),
        disk_models=_disk(values.get("disk_models_kib", "")),
        mem_total=_kib(values.get("mem_total_kib")),
        mem_available=_kib(values.get("mem_available_kib")),
        procs=tuple(procs),
        gpus=tuple(gpus),
        gpu_apps=tuple(apps),
        homes=homes,
        seconds=seconds,
    )


async def probe_hive(conn: HiveConnection, alias: str, install_dir: str) -> HiveProbe:
    """Run HIVE_SCRIPT on an open connection (the caller bounds it with its deadline)."""
    started = time.monotonic()
    argv = ["sh", "-c", HIVE_SCRIPT, "rbee-sweep", alias, install_dir]
    result = await conn.check(argv, time_limit=30)
    return parse_probe(result.stdout, time.monotonic() - started)
