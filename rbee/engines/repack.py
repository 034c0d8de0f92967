"""Whether llama.cpp repacks a model's weights for the CPU (its "extra buffer types"), by CPU facts.

llama.cpp can lay weights out again at load time for faster CPU kernels: its CPU_REPACK buffers
(AVX2, AVX-512, ARM i8mm) and, on Intel CPUs with AMX, its AMX buffers. The AMX path crashes
(SIGSEGV on the first decode) on Sapphire Rapids with current llama.cpp builds
(https://github.com/ggml-org/llama.cpp/issues/20824), and llama-cpp-python offers no way to keep
the other repacking while dropping AMX: `use_extra_bufts` turns both off together. So rbee turns
repacking off where the CPU has AMX, and leaves it on elsewhere. `--cpu-repack on|off` (spawn,
worker, the RbeeCpuRepack key of hives.conf) overrides the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from rbee.api.workers import REPACK_SETTINGS
from rbee.facts import Facts

__all__ = [
    "LLAMA_DEFAULT_REPACK",
    "REPACK_SETTINGS",
    "UPSTREAM_AMX_ISSUE",
    "RepackChoice",
    "choose_cpu_repack",
]

UPSTREAM_AMX_ISSUE = "https://github.com/ggml-org/llama.cpp/issues/20824"


@dataclass(frozen=True)
class RepackChoice:
    """Repack or not, and why (logged by the worker)."""

    on: bool
    why: str

    @property
    def setting(self) -> str:
        """`on` or `off`, as a worker's --cpu-repack takes it."""
        return "on" if self.on else "off"


LLAMA_DEFAULT_REPACK = RepackChoice(True, "llama.cpp's default")


def choose_cpu_repack(setting: str, facts: Facts | None) -> RepackChoice:
    """The repacking a llama.cpp worker gets: `setting` unless auto, else by the CPU's flags."""
    if setting not in REPACK_SETTINGS:
        raise ValueError(f"cpu repack must be one of {', '.join(REPACK_SETTINGS)}, got {setting!r}")
    if setting != "auto":
        return RepackChoice(setting == "on", f"--cpu-repack {setting} was asked for")
    if facts is not None and facts.amx:
        amx = " ".join(f for f in facts.cpu_flags if f.startswith("amx_"))
        return RepackChoice(
            False,
            f"the CPU has AMX ({amx}), whose weight repacking crashes llama.cpp on the first "
            f"decode ({UPSTREAM_AMX_ISSUE}); --cpu-repack on overrides",
        )
    return RepackChoice(True, "the CPU has no AMX")
