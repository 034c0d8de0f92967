"""Engine benchmark: the default model on llama.cpp and on MLX (CPU), same prompts, one run.

What is measured
    Two rbee workers serve the default GGUF (SmolLM2-135M-Instruct, Q4_1), one with
    `--engine llamacpp`, one with `--engine mlx --device cpu` (MLX reads the same GGUF through
    `mlx.core.load`: Q4_1 becomes MLX 4-bit, group size 32). Every request is a streamed
    `POST /v1/chat/completions` (temperature 0, fixed max_tokens) over the first four of the
    relay benchmark's prompts, one request at a time. Per engine:
      ready        seconds from starting `rbee worker run` to its /health answering (process
                   start, imports, model load)
      TTFT         from sending a request to its first content chunk
      decode rate  (completion tokens - 1) / (last content chunk - first content chunk)
      aggregate    completion tokens / wall time of the engine's batches
      peak RSS     the worker's VmHWM (Linux) after the run
    and how often the two engines' greedy answers are the same text (they run different kernels,
    so they drift apart once two logits are close).

How
    Both workers stay loaded; only one generates at a time. Batches are interleaved in rounds
    (llamacpp, mlx, llamacpp, ...) so drift on a shared machine hits both alike, after one
    short unmeasured warm-up request each. The number of rounds is bounded by a time budget.

Run `.venv/bin/python bench/engines.py` (about 8 minutes) or add `--quick` (about a minute,
indicative figures only). MLX on Linux needs `mlx[cpu]` (installed by `make setup`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import importlib.util
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from benchdoc import run_main, write_section
from relay import (
    HTTP_TIMEOUT,
    MODEL,
    N_CTX,
    PROMPTS,
    THREADS,
    Sample,
    Target,
    cpu_model,
    free_port,
    load_average,
    measure_one,
    percentile,
    poll_json,
    rbee_env,
    request_body,
    spawn,
    stop,
    wait_for,
)

import rbee

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START_MARK = "<!-- engines:start -->"
END_MARK = "<!-- engines:end -->"
ENGINES = ("llamacpp", "mlx")
LABELS = {"llamacpp": "llama.cpp (llama-cpp-python)", "mlx": "MLX (mlx[cpu])"}
DEVICE = {"llamacpp": "cpu", "mlx": "cpu"}


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[engines {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    """How much to run."""

    quick: bool
    prompts: int
    """The first this many of the relay benchmark's prompts."""
    max_tokens: int
    rounds: int
    budget: float


@dataclass
class Tally:
    """Everything measured for one engine."""

    ready_s: float = math.nan
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    wall: float = 0.0
    rounds: int = 0
    peak_rss: int | None = None
    answers: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Worker:
    """One running `rbee worker run`."""

    engine: str
    url: str
    pid: int
    ready_s: float


def peak_rss(pid: int) -> int | None:
    """The process's peak resident set size in bytes (VmHWM), or None off Linux."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_argv(data: Path, engine: str, port: int) -> list[str]:
    """`rbee worker run` for one engine, with the same context and thread count for both."""
    return [sys.executable, "-m", "rbee", "--data-dir", str(data), "worker", "run",
            "--model", MODEL, "--engine", engine, "--device", DEVICE[engine],
            "--port", str(port), "--ctx-size", str(N_CTX), "--threads", str(THREADS)]  # fmt: skip


@contextmanager
def workers() -> Iterator[dict[str, Worker]]:
    """Start one worker per engine (one after the other, timing each); stop both after."""
    tmp = Path(tempfile.mkdtemp(prefix="rbee-bench-engines-"))
    data, env = rbee_env(tmp)
    procs = []
    running: dict[str, Worker] = {}
    finished = False
    progress(f"logs in {tmp}")
    try:
        for engine in ENGINES:
            port = free_port()
            log = tmp / f"{engine}.log"
            started = time.monotonic()
            proc = spawn(worker_argv(data, engine, port), env, log)
            procs.append((proc, engine))
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda url=url: poll_json(f"{url}/health"), proc, log, f"{engine} worker")
            running[engine] = Worker(engine, url, proc.pid, time.monotonic() - started)
            progress(f"{engine} worker ready in {running[engine].ready_s:.1f}s at {url}")
        yield running
        finished = True
    finally:
        for proc, engine in procs:
            stop(proc, f"{engine} worker")
        if finished:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            progress(f"logs kept in {tmp}")


async def run_batch(
    client: httpx.AsyncClient, target: Target, settings: Settings, tally: Tally
) -> None:
    """Every prompt once, one at a time."""
    started = time.perf_counter()
    for prompt in PROMPTS[: settings.prompts]:
        try:
            sample = await measure_one(client, target, request_body(prompt, settings.max_tokens))
        except Exception as err:
            tally.failures.append(f"{type(err).__name__}: {err}")
            continue
        tally.samples.append(sample)
        tally.answers.setdefault(prompt, []).append(sample.text)
    wall = time.perf_counter() - started
    tally.wall += wall
    progress(f"  {LABELS[target.name]:<30} {wall:5.1f}s")


async def run_all(running: dict[str, Worker], settings: Settings) -> dict[str, Tally]:
    """Warm up, then interleave one batch per engine per round within the time budget."""
    tallies = {e: Tally(ready_s=running[e].ready_s) for e in ENGINES}
    targets = {e: Target(e, running[e].url) for e in ENGINES}
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, trust_env=False) as client:
        for engine in ENGINES:
            progress(f"warming up {LABELS[engine]}")
            await measure_one(client, targets[engine], request_body(PROMPTS[-1], 8))
        deadline = time.monotonic() + settings.budget
        for round_no in range(1, settings.rounds + 1):
            progress(f"round {round_no} of at most {settings.rounds}")
            started = time.monotonic()
            for engine in ENGINES:
                await run_batch(client, targets[engine], settings, tallies[engine])
                tallies[engine].rounds += 1
            if time.monotonic() + (time.monotonic() - started) > deadline:
                break
    for engine in ENGINES:
        tallies[engine].peak_rss = peak_rss(running[engine].pid)
    return tallies


def _mib(n: int | None) -> str:
    return f"{n / (1 << 20):.0f}" if n else "n/a"


def row(engine: str, tally: Tally) -> list[str]:
    """One table row."""
    rates = [s.decode_rate for s in tally.samples if s.decode_rate is not None]
    ttfts = [s.ttft * 1000 for s in tally.samples]
    tokens = sum(s.tokens for s in tally.samples)
    return [
        LABELS[engine],
        f"{tally.ready_s:.1f}",
        str(len(tally.samples)),
        str(len(tally.failures)),
        f"{statistics.median(rates):.1f}" if rates else "n/a",
        f"{tokens / tally.wall:.1f}" if tally.wall else "n/a",
        f"{percentile(ttfts, 50):.0f}",
        f"{percentile(ttfts, 95):.0f}",
        _mib(tally.peak_rss),
    ]


def ratio(value: float, base: float) -> str:
    """value / base, or n/a."""
    return (
        f"{value / base:.2f}x" if base and not math.isnan(value) and not math.isnan(base) else "n/a"
    )


def agreement(tallies: dict[str, Tally]) -> tuple[int, int]:
    """(prompts whose greedy answers are the same text on both engines, prompts compared)."""
    first = {p: a[0] for p, a in tallies["llamacpp"].answers.items() if a}
    second = {p: a[0] for p, a in tallies["mlx"].answers.items() if a}
    common = sorted(set(first) & set(second))
    return sum(first[p] == second[p] for p in common), len(common)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def render(tallies: dict[str, Tally], settings: Settings, load: tuple[str, str]) -> str:
    """The markdown section between the markers."""
    quick = " Quick run (`--quick`): the figures are indicative only." if settings.quick else ""
    stats = {}
    for engine, tally in tallies.items():
        rates = [s.decode_rate for s in tally.samples if s.decode_rate is not None]
        tokens = sum(s.tokens for s in tally.samples)
        stats[engine] = (
            statistics.median(rates) if rates else math.nan,
            tokens / tally.wall if tally.wall else math.nan,
            percentile([s.ttft for s in tally.samples], 50),
            float(tally.peak_rss or math.nan),
        )
    same, compared = agreement(tallies)
    failures = sorted({f for t in tallies.values() for f in t.failures})
    mlx, cpp = stats["mlx"], stats["llamacpp"]
    lines = [
        START_MARK,
        "## Engines: the default model on llama.cpp and on MLX (CPU)",
        "",
        "Written by `bench/engines.py` (`make bench`); do not edit by hand." + quick,
        "",
        "| | |",
        "|---|---|",
        f"| date | {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC |",
        f"| CPU | {os.cpu_count()} x {cpu_model()} ({platform.machine()}) |",
        f"| python | {platform.python_version()} |",
        f"| rbee | {rbee.__version__} |",
        f"| llama-cpp-python | {_version('llama-cpp-python')} |",
        f"| mlx / mlx-lm | {_version('mlx')} / {_version('mlx-lm')} |",
        f"| model | {MODEL} (Q4_1 GGUF, the same file for both), n_ctx {N_CTX}, "
        f"{THREADS} threads for llama.cpp |",
        f"| workload | {settings.prompts} chat prompts, max_tokens {settings.max_tokens}, "
        "temperature 0, "
        f"one request at a time; rounds: {tallies['llamacpp'].rounds} "
        f"(at most {settings.rounds}, within a {settings.budget:.0f}s budget) |",
        f"| load average (1 min) | {load[0]} at start, {load[1]} at end |",
        "| command | `.venv/bin/python bench/engines.py` |",
        "",
        "| engine | ready (s) | requests | failed | decode tok/s (median) | aggregate tok/s "
        "| TTFT p50 (ms) | TTFT p95 (ms) | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *("| " + " | ".join(row(e, tallies[e])) + " |" for e in ENGINES),
        "",
        "| MLX / llama.cpp | ratio |",
        "|---|---:|",
        f"| decode tok/s | {ratio(mlx[0], cpp[0])} |",
        f"| aggregate tok/s | {ratio(mlx[1], cpp[1])} |",
        f"| TTFT p50 | {ratio(mlx[2], cpp[2])} |",
        f"| peak RSS | {ratio(mlx[3], cpp[3])} |",
        "",
        "Notes:",
        "",
        f"- Greedy answers identical on both engines for {same} of {compared} prompts (first "
        "round). Both engines tokenize the prompt identically (tests/test_engine_mlx.py checks "
        "it); the answers drift apart where two logits are close, because the kernels differ.",
        "- ready: from starting the worker process to its /health answering; it includes Python "
        "start-up and importing the engine's library.",
        "- peak RSS counts the whole worker process (Python, the HTTP server, the engine).",
        "- MLX here is its CPU backend (`mlx[cpu]` on Linux), which rbee uses to test the MLX "
        "engine for real on machines without Apple Silicon; its matrix kernels are far slower "
        "than llama.cpp's on x86 (prompt evaluation too, hence the TTFT). That is why selection "
        "never picks MLX on a CPU by itself: only `--engine mlx` does. On Apple Silicon MLX runs "
        "on the GPU (Metal), which this machine cannot measure.",
        *([f"- Failed requests: {'; '.join(failures)[:500]}"] if failures else []),
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """--quick: shorter answers and fewer rounds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    args = parser.parse_args(argv)
    if args.quick:
        return Settings(quick=True, prompts=2, max_tokens=16, rounds=1, budget=60)
    # MLX's CPU backend decodes this model at a few tokens/s here: a round of 4 prompts takes it
    # about two minutes, so the run stays within about 8 minutes.
    return Settings(quick=False, prompts=4, max_tokens=32, rounds=3, budget=300)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the workers, measure, write docs/benchmarks.md, print the section."""
    settings = parse_args(argv)
    if importlib.util.find_spec("mlx") is None:
        sys.exit("engines: mlx is not installed: run `make setup` (it installs mlx[cpu] on Linux)")
    started = time.monotonic()
    load_start = load_average()
    with workers() as running:
        tallies = asyncio.run(run_all(running, settings))
    section = render(tallies, settings, (load_start, load_average()))
    write_section(section, START_MARK, END_MARK, DOC)
    progress(f"wrote {DOC.relative_to(ROOT)} in {time.monotonic() - started:.0f}s")
    print(section, end="")
    return 0


if __name__ == "__main__":
    run_main(main, progress)
