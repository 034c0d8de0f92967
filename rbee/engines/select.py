"""Which engine runs a model on a hive, on which device: one pure function and its rules.

    NVIDIA CUDA    ExLlamaV2 when the model has an EXL2/GPTQ artifact, else llama.cpp offloading
                   to the GPU
    Apple Silicon  MLX when the model has an MLX artifact or a GGUF that MLX reads, else llama.cpp
                   with Metal
    CPU            llama.cpp

`--engine` and `--device` override. A choice that cannot work (ExLlamaV2 on a hive without an
NVIDIA GPU, an engine the hive has not installed, a model with no artifact for the engine) is
refused here, before anything is fetched or spawned, with the reason and what would work. When the
preferred engine is passed over, the Choice's note says why, so the user learns it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from rbee.errors import SelectionError
from rbee.facts import Facts

__all__ = [
    "AUTO",
    "ENGINES",
    "Choice",
    "ModelFormats",
    "default_engine",
    "engine_formats",
    "parse_device",
    "select_engine",
]

AUTO = "auto"

ENGINES = ("llamacpp", "mlx", "exllamav2")
"""Every engine rbee has an adapter for."""

# The module each engine imports, as the facts script reports importability.
_MODULES = {"llamacpp": "llama_cpp", "mlx": "mlx", "exllamav2": "exllamav2"}
_EXTRAS = {"llamacpp": "rbee", "mlx": "rbee[mlx]", "exllamav2": "rbee[cuda]"}
_NEEDS = {"llamacpp": "GGUF", "exllamav2": "EXL2 or GPTQ", "mlx": "MLX (or MLX-readable GGUF)"}
_PREFERRED = {"cuda": "exllamav2", "metal": "mlx", "cpu": "llamacpp"}
"""The engine a device kind runs best."""
_LABELS = {"gguf": "GGUF", "mlx": "MLX", "exl2": "EXL2", "gptq": "GPTQ"}

_DEVICE = re.compile(r"(cpu)|(cuda)(?::(\d{1,2}))?|(metal)(?::(0))?")


@dataclass(frozen=True)
class ModelFormats:
    """The artifact formats a model has (stored or fetchable), as selection needs them."""

    model: str
    formats: frozenset[str]
    gguf_mlx_readable: bool = False
    """True when the GGUF's quantization is one `mlx.core.load` reads (Q4_0, Q4_1, Q8_0, F16…)."""


@dataclass(frozen=True)
class Choice:
    """An engine, the device it runs on, and the artifact format it loads."""

    engine: str
    device: str
    format: str
    note: str = ""
    """Why the preferred engine was passed over, when it was; empty otherwise."""


def engine_formats(engine: str, model: ModelFormats) -> tuple[str, ...]:
    """The formats of `model` that `engine` can load, best first."""
    have = model.formats
    if engine == "llamacpp":
        wanted: tuple[str, ...] = ("gguf",)
    elif engine == "exllamav2":
        wanted = ("exl2", "gptq")
    elif engine == "mlx":
        wanted = ("mlx", "gguf") if model.gguf_mlx_readable else ("mlx",)
    else:
        return ()
    return tuple(f for f in wanted if f in have)


def parse_device(device: str, facts: Facts, hive: str) -> str:
    """Normalise `device` (cpu, cuda, cuda:N, metal, metal:0) and check the hive has it."""
    match = _DEVICE.fullmatch(device)
    if match is None:
        raise SelectionError(
            f"device {device!r} is not one of cpu, cuda:N, metal:0 (hive {hive} has: "
            f"{', '.join(_devices(facts))})"
        )
    if match.group(1):
        return "cpu"
    if match.group(2):
        index = int(match.group(3) or 0)
        if not any(g.index == index for g in facts.gpus):
            have = ", ".join(f"cuda:{g.index} ({g.name})" for g in facts.gpus) or "none"
            raise SelectionError(
                f"hive {hive} has no NVIDIA GPU cuda:{index} (NVIDIA GPUs there: {have})"
            )
        return f"cuda:{index}"
    if not facts.apple_silicon:
        raise SelectionError(f"hive {hive} is not an Apple Silicon Mac: it has no metal:0 device")
    return "metal:0"


def default_engine(facts: Facts) -> str:
    """The engine a worker left to `auto` most likely runs on this hive, whatever the model: the
    default device's own engine if it is installed, else llama.cpp."""
    preferred = _PREFERRED[_default_device(facts).split(":")[0]]
    return preferred if _installed(preferred, facts) else "llamacpp"


def _devices(facts: Facts) -> list[str]:
    found = [f"cuda:{g.index}" for g in facts.gpus]
    if facts.apple_silicon:
        found.append("metal:0")
    return [*found, "cpu"]


def _default_device(facts: Facts) -> str:
    if facts.gpus:
        best = max(facts.gpus, key=lambda g: (g.vram_free, -g.index))
        return f"cuda:{best.index}"
    return "metal:0" if facts.apple_silicon else "cpu"


def _installed(engine: str, facts: Facts) -> bool:
    return _MODULES[engine] in facts.engines


def _labels(formats: Collection[str]) -> str:
    return ", ".join(_LABELS.get(f, f) for f in sorted(formats)) or "none"


def _check_engine(engine: str, device: str, model: ModelFormats, facts: Facts, hive: str) -> str:
    """The format `engine` would load on `device`; SelectionError saying why it cannot."""
    kind = device.split(":", maxsplit=1)[0]
    if engine == "exllamav2" and kind != "cuda":
        where = "an NVIDIA GPU" if facts.gpus else f"an NVIDIA GPU, and hive {hive} has none"
        raise SelectionError(f"engine exllamav2 runs on CUDA only: use --device cuda:N on {where}")
    if engine == "mlx" and kind == "cuda":
        raise SelectionError("engine mlx does not run on CUDA: use --device metal:0 or cpu")
    problem = dict(facts.engine_problems).get(_MODULES[engine])
    if problem is not None:
        raise SelectionError(f"engine {engine} is installed on hive {hive} but unusable: {problem}")
    if not _installed(engine, facts):
        raise SelectionError(
            f"engine {engine} is not installed on hive {hive}: install {_EXTRAS[engine]} there "
            "(`rbee hive install` picks the engines by hardware)"
        )
    formats = engine_formats(engine, model)
    if not formats:
        need = _NEEDS[engine]
        raise SelectionError(
            f"model {model.model!r} has no {need} artifact for engine {engine} (it has: "
            f"{_labels(model.formats)}); import or download one with `rbee model import` / "
            "`rbee model download`, or pick another engine"
        )
    return formats[0]


def select_engine(
    facts: Facts,
    model: ModelFormats,
    *,
    engine: str = AUTO,
    device: str = AUTO,
    hive: str = "localhost",
) -> Choice:
    """Pick the engine, device and artifact format for `model` on a hive with `facts`.

    Raises SelectionError with the reason when the request cannot work on this hive.
    """
    if engine != AUTO and engine not in ENGINES:
        raise SelectionError(f"unknown engine {engine!r} (engines: {', '.join(ENGINES)}, or auto)")
    dev = _default_device(facts) if device == AUTO else parse_device(device, facts, hive)
    if engine != AUTO:
        return Choice(engine, dev, _check_engine(engine, dev, model, facts, hive))
    kind = dev.split(":")[0]
    preferred = _PREFERRED[kind]
    try:
        return Choice(preferred, dev, _check_engine(preferred, dev, model, facts, hive))
    except SelectionError as passed_over:
        if preferred == "llamacpp":
            raise
        why = str(passed_over)
    offload = {"cuda": "CUDA offload", "metal": "Metal"}[kind]
    try:
        fmt = _check_engine("llamacpp", dev, model, facts, hive)
    except SelectionError as err:
        raise SelectionError(f"{why}; and llama.cpp cannot run it either: {err}") from None
    return Choice("llamacpp", dev, fmt, note=f"llama.cpp with {offload}: {why}")
