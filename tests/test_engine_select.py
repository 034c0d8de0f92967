"""Engine selection by hardware: one table of (machine, model, overrides) -> choice or refusal."""

from __future__ import annotations

import pytest

from rbee.engines.select import (
    Choice,
    ModelFormats,
    default_engine,
    engine_formats,
    select_engine,
)
from rbee.errors import SelectionError
from rbee.facts import Facts, Gpu


def machine(
    kind: str, engines: tuple[str, ...] = ("exllamav2", "llama_cpp", "mlx"), gpus: int = 1
) -> Facts:
    """A CPU box, an NVIDIA box with `gpus` GPUs, or an Apple Silicon Mac."""
    return Facts(
        os="darwin" if kind == "mac" else "linux",
        arch="arm64" if kind == "mac" else "x86_64",
        hostname=kind,
        python="3.11.7",
        python_path="/usr/bin/python3",
        cpu_count=8,
        mem_total=32 << 30,
        mem_available=16 << 30,
        disk_free=100 << 30,
        gpus=tuple(Gpu(i, "RTX 4090", 24 << 30, (20 - 8 * i) << 30, "550.54") for i in range(gpus))
        if kind == "cuda"
        else (),
        apple_chip="Apple M2" if kind == "mac" else None,
        engines=engines,
    )


GGUF = ModelFormats("m", frozenset({"gguf"}))
GGUF_MLX = ModelFormats("m", frozenset({"gguf"}), gguf_mlx_readable=True)
EXL2 = ModelFormats("m", frozenset({"exl2", "gguf"}))
EXL2_ONLY = ModelFormats("m", frozenset({"exl2"}))
GPTQ = ModelFormats("m", frozenset({"gptq"}))
MLX = ModelFormats("m", frozenset({"mlx", "gguf"}))
NONE = ModelFormats("m", frozenset())

CHOICES = [
    # machine, model, engine, device -> engine, device, format, note contains
    ("cpu", GGUF, "auto", "auto", "llamacpp", "cpu", "gguf", ""),
    ("cpu", EXL2, "auto", "auto", "llamacpp", "cpu", "gguf", ""),
    ("cuda", EXL2, "auto", "auto", "exllamav2", "cuda:0", "exl2", ""),
    ("cuda", GPTQ, "auto", "auto", "exllamav2", "cuda:0", "gptq", ""),
    ("cuda", GGUF, "auto", "auto", "llamacpp", "cuda:0", "gguf", "no EXL2 or GPTQ artifact"),
    ("cuda", EXL2, "llamacpp", "auto", "llamacpp", "cuda:0", "gguf", ""),
    ("cuda", EXL2, "auto", "cpu", "llamacpp", "cpu", "gguf", ""),
    ("cuda", EXL2, "auto", "cuda:1", "exllamav2", "cuda:1", "exl2", ""),
    ("cuda", EXL2, "auto", "cuda", "exllamav2", "cuda:0", "exl2", ""),
    ("mac", MLX, "auto", "auto", "mlx", "metal:0", "mlx", ""),
    ("mac", GGUF_MLX, "auto", "auto", "mlx", "metal:0", "gguf", ""),
    ("mac", GGUF, "auto", "auto", "llamacpp", "metal:0", "gguf", "llama.cpp with Metal"),
    ("mac", MLX, "llamacpp", "auto", "llamacpp", "metal:0", "gguf", ""),
    ("mac", MLX, "auto", "metal", "mlx", "metal:0", "mlx", ""),
    ("mac", MLX, "auto", "cpu", "llamacpp", "cpu", "gguf", ""),
    ("cpu", GGUF_MLX, "mlx", "auto", "mlx", "cpu", "gguf", ""),
    ("cpu", MLX, "mlx", "cpu", "mlx", "cpu", "mlx", ""),
]


@pytest.mark.parametrize(
    ("kind", "model", "engine", "device", "want_engine", "want_device", "want_format", "note"),
    CHOICES,
)
def test_choices(
    kind: str,
    model: ModelFormats,
    engine: str,
    device: str,
    want_engine: str,
    want_device: str,
    want_format: str,
    note: str,
) -> None:
    gpus = 2 if device == "cuda:1" else 1
    choice = select_engine(machine(kind, gpus=gpus), model, engine=engine, device=device)
    assert (choice.engine, choice.device, choice.format) == (want_engine, want_device, want_format)
    if note:
        assert note in choice.note
    else:
        assert choice.note == ""


def test_default_cuda_device_is_the_one_with_most_free_vram() -> None:
    facts = machine("cuda", gpus=2)
    facts = Facts(**{**facts.__dict__, "gpus": tuple(reversed(facts.gpus))})
    assert select_engine(facts, EXL2).device == "cuda:0"
    gpus = (Gpu(0, "A", 24 << 30, 1 << 30, "x"), Gpu(1, "B", 24 << 30, 9 << 30, "x"))
    low_first = Facts(**{**facts.__dict__, "gpus": gpus})
    assert select_engine(low_first, EXL2) == Choice("exllamav2", "cuda:1", "exl2")


def test_exllamav2_not_installed_falls_back_and_says_so() -> None:
    facts = machine("cuda", engines=("llama_cpp",))
    choice = select_engine(facts, EXL2)
    assert (choice.engine, choice.format) == ("llamacpp", "gguf")
    assert "rbee[cuda]" in choice.note


REFUSALS = [
    # machine, model, engine, device, engines installed -> message contains
    ("cpu", EXL2, "exllamav2", "auto", None, "runs on CUDA only"),
    ("cpu", EXL2, "exllamav2", "auto", None, "has none"),
    ("cuda", EXL2, "exllamav2", "cpu", None, "runs on CUDA only"),
    ("cuda", GGUF, "exllamav2", "auto", None, "no EXL2 or GPTQ artifact"),
    ("cuda", EXL2_ONLY, "auto", "cpu", None, "no GGUF artifact"),
    ("cuda", EXL2, "auto", "cuda:3", None, "no NVIDIA GPU cuda:3"),
    ("cpu", GGUF, "auto", "cuda:0", None, "NVIDIA GPUs there: none"),
    ("cpu", GGUF, "auto", "metal:0", None, "not an Apple Silicon Mac"),
    ("cpu", GGUF, "auto", "tpu", None, "not one of cpu, cuda:N, metal:0"),
    ("cpu", GGUF, "auto", "cuda:0;rm", None, "not one of"),
    ("cpu", GGUF, "vllm", "auto", None, "unknown engine 'vllm'"),
    ("cuda", GGUF, "mlx", "cuda:0", None, "does not run on CUDA"),
    ("cpu", GGUF, "mlx", "auto", None, "no MLX (or MLX-readable GGUF) artifact"),
    ("cpu", GGUF_MLX, "mlx", "auto", ("llama_cpp",), "mlx is not installed on hive"),
    ("cpu", GGUF, "auto", "auto", (), "llamacpp is not installed"),
    ("cpu", NONE, "auto", "auto", None, "it has: none"),
    ("mac", ModelFormats("m", frozenset({"exl2"})), "auto", "auto", None,
     "llama.cpp cannot run it either"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "model", "engine", "device", "engines", "message"), REFUSALS)
def test_refusals(
    kind: str,
    model: ModelFormats,
    engine: str,
    device: str,
    engines: tuple[str, ...] | None,
    message: str,
) -> None:
    facts = machine(kind, gpus=0) if kind == "cpu" else machine(kind)
    if engines is not None:
        facts = Facts(**{**facts.__dict__, "engines": engines})
    with pytest.raises(SelectionError, match=r".*") as err:
        select_engine(facts, model, engine=engine, device=device, hive="box")
    assert message in str(err.value)


def test_engine_formats_best_first() -> None:
    both = ModelFormats("m", frozenset({"gguf", "mlx", "exl2", "gptq"}), gguf_mlx_readable=True)
    assert engine_formats("mlx", both) == ("mlx", "gguf")
    assert engine_formats("exllamav2", both) == ("exl2", "gptq")
    assert engine_formats("llamacpp", both) == ("gguf",)
    assert engine_formats("mlx", GGUF) == ()
    assert engine_formats("nope", both) == ()


def test_an_engine_that_does_not_import_is_refused_with_why() -> None:
    mac = machine("mac", engines=("llama_cpp",))
    broken = Facts(**{**mac.__dict__, "engine_problems": (("mlx", "ImportError: no libmlx"),)})
    with pytest.raises(SelectionError) as err:
        select_engine(broken, MLX, engine="mlx", device="auto", hive="box")
    assert (
        str(err.value) == "engine mlx is installed on hive box but unusable: ImportError: no libmlx"
    )
    # auto passes over it: llama.cpp with Metal
    assert select_engine(broken, MLX, hive="box").engine == "llamacpp"


@pytest.mark.parametrize(
    ("kind", "engines", "expected"),
    [
        ("cpu", ("exllamav2", "llama_cpp", "mlx"), "llamacpp"),
        ("cuda", ("exllamav2", "llama_cpp"), "exllamav2"),
        ("cuda", ("llama_cpp",), "llamacpp"),  # no cuda extra: llama.cpp with offload
        ("mac", ("llama_cpp", "mlx"), "mlx"),
        ("mac", ("llama_cpp",), "llamacpp"),
    ],
)
def test_default_engine_is_what_auto_mostly_picks(
    kind: str, engines: tuple[str, ...], expected: str
) -> None:
    assert default_engine(machine(kind, engines)) == expected
