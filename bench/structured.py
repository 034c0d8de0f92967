"""Structured-outputs benchmark: 50 prompt/schema pairs answered with `response_format` and as
free text, by rbee and by llama-cpp-python's own OpenAI server, in one run; the result table goes
to docs/benchmarks.md.

What is measured
    Both servers serve the default GGUF with the same threads and context (bench/relay.py's
    `rbee_and_llama`: rbee as `rbee queen run` with one worker, llama_cpp.server beside it). Each
    pair is a chat prompt asking for JSON and a schema with nested objects, enums, arrays, integer
    ranges and required fields (every string and array bounded, so a schema-following answer
    ends). Every pair is sent four ways, streamed, temperature 0, max_tokens 384, no seed:
      rbee, schema    `response_format: {"type": "json_schema", "json_schema": {"name", "schema",
                      "strict": true}}` (OpenAI's shape)
      rbee, free      the same prompt without response_format
      llama, schema   `response_format: {"type": "json_object", "schema": ...}`: llama_cpp.server
                      does not take OpenAI's json_schema shape; this is its own form of the same
                      request (a GBNF grammar from the schema)
      llama, free     the same prompt without response_format
    The four run one after another per pair, in an order that rotates from pair to pair, so drift
    on a shared machine hits every way alike. Each message starts with its own request number
    ("Request 0042. ..."), so no request finds its prompt cached by the one before it (both
    servers reuse a cached prompt prefix). Per request, as in bench/relay.py:
      TTFT         from sending the request to the first SSE chunk with non-empty content
      decode rate  (completion tokens - 1) / (last content chunk - first content chunk)
      valid        the answer parses as JSON and validates against the schema (a validator for
                   the keywords these schemas use, in this file); finish_reason is recorded
    Completion tokens come from `stream_options.include_usage` when the server sends usage (rbee
    does), else the number of content chunks (llama_cpp.server).

    Then the same queen's worker is replaced by an MLX worker of the same model (`mlx[cpu]` on
    Linux, Metal on a Mac) and one pair per schema (10) is asked twice more: `mlx-schema` and
    `mlx-free` (skipped, saying why, where mlx cannot be imported). mlx[cpu] decodes about 15
    times slower than llama.cpp here: 50 pairs would take over an hour.

Goals (issue 11)
    rbee with the schema, on each engine: 100% valid answers; median decode rate >= 0.9x of free
    generation on the same prompts; median TTFT <= +10% of free generation's.

Each server is warmed up with two unmeasured requests of each kind first; rbee's very first
structured request after start, which builds the model's vocabulary for the grammar compiler
(once per worker), is timed and reported apart.

Run `.venv/bin/python bench/structured.py` (about 25 minutes on 2 cores): it rewrites the
`## Structured outputs` section of docs/benchmarks.md. `--quick` runs 10 pairs (one per schema)
and writes nothing unless `--write` is given. `make bench` installs what llama_cpp.server needs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import relay
from benchdoc import run_main, write_section
from relay import cpu_model, delta_text, load_average, model_gguf, parse_event, percentile

import rbee

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START_MARK = "<!-- structured:start -->"
END_MARK = "<!-- structured:end -->"
MODEL = relay.MODEL
MAX_TOKENS = 384
WAYS = ("rbee-schema", "rbee-free", "llama-schema", "llama-free")
"""The first phase: rbee with a llama.cpp worker, and llama_cpp.server."""
MLX_WAYS = ("mlx-schema", "mlx-free")
"""The second phase: the same queen with its worker replaced by an MLX one. It asks one pair per
schema (10), not 50: mlx[cpu] on Linux decodes this model about 15 times slower than llama.cpp
(a pair took 1.5 min), and every schema is still covered."""
LABELS = {
    "rbee-schema": "rbee (llama.cpp), json_schema",
    "rbee-free": "rbee (llama.cpp), free",
    "llama-schema": "llama_cpp.server, json_object + schema",
    "llama-free": "llama_cpp.server, free",
    "mlx-schema": "rbee (MLX), json_schema",
    "mlx-free": "rbee (MLX), free",
}
SERVER_NAMES = {"rbee": "rbee (llama.cpp)", "mlx": "rbee (MLX)",
                "llama": "llama_cpp.server (for comparison)"}  # fmt: skip
RATE_GOAL = 0.9
REQUEST_TIMEOUT = 300.0
"""Seconds one request may take: 384 tokens at a few tokens per second on a loaded machine."""
TTFT_GOAL = 1.1


# ---------------------------------------------------------------------------------------------
# The 50 pairs: 10 schemas, 5 prompts each


def _s(n: int = 24) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": n}


def _enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def _int(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _obj(**props: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


def _arr(items: dict[str, Any], lo: int = 1, hi: int = 3) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": lo, "maxItems": hi}


SCHEMAS: dict[str, dict[str, Any]] = {
    "person": _obj(
        name=_s(),
        age=_int(0, 120),
        role=_enum("admin", "editor", "viewer"),
        skills=_arr(_s(16)),
        address=_obj(city=_s(), country=_enum("FR", "DE", "JP", "BR", "US")),
    ),
    "product": _obj(
        name=_s(),
        category=_enum("book", "toy", "food", "tool"),
        price_cents=_int(1, 100000),
        in_stock={"type": "boolean"},
        tags=_arr(_s(12), 0, 3),
        supplier=_obj(name=_s(), rating=_int(1, 5)),
    ),
    "recipe": _obj(
        title=_s(32),
        difficulty=_enum("easy", "medium", "hard"),
        minutes=_int(1, 240),
        ingredients=_arr(_obj(item=_s(16), grams=_int(1, 2000)), 1, 4),
    ),
    "event": _obj(
        title=_s(32),
        kind=_enum("concert", "talk", "match", "fair"),
        day=_int(1, 31),
        month=_enum(
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"
        ),
        venue=_obj(name=_s(), capacity=_int(10, 100000)),
    ),
    "book": _obj(
        title=_s(32),
        author=_obj(name=_s(), born=_int(1500, 2020)),
        genre=_enum("fiction", "history", "science", "poetry"),
        pages=_int(10, 2000),
        themes=_arr(_s(16)),
    ),
    "weather": _obj(
        city=_s(),
        sky=_enum("clear", "cloudy", "rain", "snow", "storm"),
        celsius=_int(-40, 50),
        wind=_obj(kmh=_int(0, 200), direction=_enum("N", "E", "S", "W")),
    ),
    "order": _obj(
        order_id=_int(1, 999999),
        status=_enum("new", "paid", "shipped", "delivered"),
        lines=_arr(_obj(sku=_s(12), quantity=_int(1, 20)), 1, 3),
        customer=_obj(name=_s(), vip={"type": "boolean"}),
    ),
    "movie": _obj(
        title=_s(32),
        year=_int(1900, 2030),
        rating=_enum("G", "PG", "PG-13", "R"),
        cast=_arr(_obj(actor=_s(), role=_s()), 1, 3),
    ),
    "tasks": _obj(
        project=_s(),
        tasks=_arr(
            _obj(title=_s(32), priority=_enum("low", "medium", "high"), done={"type": "boolean"}),
            1,
            4,
        ),
    ),
    "trip": _obj(
        destination=_s(),
        nights=_int(1, 30),
        transport=_enum("train", "plane", "car", "boat"),
        stops=_arr(_obj(city=_s(), nights=_int(1, 10)), 1, 3),
    ),
}

PROMPTS: dict[str, tuple[str, ...]] = {
    "person": ("a software engineer in Paris", "a retired teacher", "a young chef in Tokyo",
               "a football coach", "a museum curator in Berlin"),
    "product": ("a children's puzzle", "a cordless drill", "a box of chocolates",
                "a cookbook", "a set of garden tools"),
    "recipe": ("pancakes", "a tomato soup", "a lemon cake", "fried rice", "a green salad"),
    "event": ("a jazz concert", "a science talk", "a local football match", "a book fair",
              "a summer music festival"),
    "book": ("a novel about the sea", "a history of Rome", "a book of love poems",
             "a popular physics book", "a detective story"),
    "weather": ("a winter day in Oslo", "a summer afternoon in Madrid", "a stormy night in Dublin",
                "a spring morning in Kyoto", "a rainy day in London"),
    "order": ("an order of office supplies", "a grocery order", "an order of two books",
              "a furniture order", "an order of running shoes"),
    "movie": ("a space adventure film", "a romantic comedy", "a crime thriller",
              "an animated family film", "a war drama"),
    "tasks": ("moving to a new flat", "planning a wedding", "launching a website",
              "preparing an exam", "renovating a kitchen"),
    "trip": ("a week in Italy", "a weekend in the mountains", "a tour of Japan",
             "a road trip across France", "a cruise in Greece"),
}  # fmt: skip


@dataclass(frozen=True)
class Pair:
    """One prompt and the schema its answer must follow."""

    name: str
    prompt: str
    schema: dict[str, Any]


def pairs(quick: bool) -> list[Pair]:
    """Every (prompt, schema) pair; one per schema with `quick`."""
    out = []
    for index in range(1 if quick else 5):
        for name, schema in SCHEMAS.items():
            subject = PROMPTS[name][index]
            prompt = f"Describe {subject} as a JSON {name} object. Answer with the JSON only."
            out.append(Pair(name, prompt, schema))
    return out


# ---------------------------------------------------------------------------------------------
# Validating answers (the keywords the schemas above use)


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Why `value` is not valid against `schema` (empty if it is)."""
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if kind is not None and not checks[kind](value):
        return [f"{path}: not a {kind}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in the enum")
    if kind == "string" and not schema.get("minLength", 0) <= len(value) <= schema.get(
        "maxLength", len(value)
    ):
        errors.append(f"{path}: length {len(value)} out of bounds")
    if kind == "integer" and not schema.get("minimum", value) <= value <= schema.get(
        "maximum", value
    ):
        errors.append(f"{path}: {value} out of range")
    if kind == "array":
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            errors.append(f"{path}: {len(value)} items out of bounds")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    if kind == "object":
        props = schema.get("properties", {})
        errors += [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            errors += [f"{path}: unexpected {k!r}" for k in value if k not in props]
        for key, sub in props.items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{path}.{key}")
    return errors


def validity(text: str, schema: dict[str, Any]) -> tuple[bool, bool]:
    """(the text parses as JSON, it also validates against `schema`)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False, False
    return True, not schema_errors(value, schema)


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Sample:
    """One measured request."""

    ttft: float
    decode_rate: float | None
    tokens: int
    finish: str | None
    parses: bool
    valid: bool


@dataclass
class Tally:
    """Everything measured for one way of asking."""

    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[structured {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def request_body(way: str, pair: Pair, number: int = 0) -> dict[str, Any]:
    """The streamed chat request for one way of asking (`repeat_penalty`: see bench/relay.py).

    The message starts with the request's `number`, so no request finds its prompt in a server's
    KV cache from the request before it (both servers reuse a cached prefix): each way reads the
    whole prompt but the chat template's shared start, alike, and TTFTs compare.
    """
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request {number:04d}. {pair.prompt}"}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "repeat_penalty": 1.0,
    }
    if way in ("rbee-schema", "mlx-schema"):
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": pair.name, "schema": pair.schema, "strict": True},
        }
    elif way == "llama-schema":
        body["response_format"] = {"type": "json_object", "schema": pair.schema}
    return body


async def measure(client: httpx.AsyncClient, url: str, way: str, pair: Pair, number: int) -> Sample:
    """Send one streamed request; time its first and last content chunks, check its answer."""
    times: list[float] = []
    parts: list[str] = []
    usage_tokens: int | None = None
    finish: str | None = None
    async with asyncio.timeout(REQUEST_TIMEOUT):
        sent = time.perf_counter()
        body = request_body(way, pair, number)
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"HTTP {resp.status_code}: {detail}")
            async for line in resp.aiter_lines():
                event = parse_event(line)
                if event is None:
                    continue
                if text := delta_text(event):
                    times.append(time.perf_counter())
                    parts.append(text)
                for choice in event.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                if event.get("usage"):
                    usage_tokens = int(event["usage"]["completion_tokens"])
    if not times:
        raise RuntimeError("the stream carried no content")
    tokens = usage_tokens if usage_tokens is not None else len(times)
    span = times[-1] - times[0]
    rate = (tokens - 1) / span if tokens > 1 and span > 0 else None
    parses, valid = validity("".join(parts), pair.schema)
    return Sample(times[0] - sent, rate, tokens, finish, parses, valid)


@dataclass
class Run:
    """What one run measured."""

    quick: bool
    tallies: dict[str, Tally] = field(
        default_factory=lambda: {w: Tally() for w in (*WAYS, *MLX_WAYS)}
    )
    first_structured_ttft: dict[str, float] = field(default_factory=dict)
    """Per rbee engine ("rbee", "mlx"): its first structured request's TTFT."""
    mlx_skipped: str | None = None
    """Why the MLX phase did not run, if it did not."""
    mlx_pairs: int = 0
    pairs: int = 0
    load: list[str] = field(default_factory=list)
    llama_command: str = ""


async def run_pairs(urls: dict[str, str], run: Run, ways: tuple[str, ...] = WAYS) -> None:
    """Warm up, then every pair each of `ways`, in an order that rotates from pair to pair (the
    MLX ways: one pair per schema, see MLX_WAYS)."""
    chosen = pairs(run.quick or ways == MLX_WAYS)
    if ways == WAYS:
        run.pairs = len(chosen)
    else:
        run.mlx_pairs = len(chosen)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(
        timeout=relay.HTTP_TIMEOUT, limits=limits, trust_env=False
    ) as client:
        numbers = iter(range(1, 10_000))
        engine = ways[0].split("-")[0]
        first = await measure(client, urls[engine], f"{engine}-schema", chosen[-1], next(numbers))
        run.first_structured_ttft[engine] = first.ttft
        progress(
            f"{SERVER_NAMES[engine]}: first structured request TTFT {first.ttft * 1000:.0f} ms"
        )
        for way in ways:
            for pair in chosen[:2]:
                await measure(client, urls[way.split("-")[0]], way, pair, next(numbers))
        for index, pair in enumerate(chosen):
            order = ways[index % len(ways) :] + ways[: index % len(ways)]
            for way in order:
                tally = run.tallies[way]
                url = urls[way.split("-")[0]]
                try:
                    sample = await measure(client, url, way, pair, next(numbers))
                except (RuntimeError, httpx.HTTPError, TimeoutError) as err:
                    tally.failures.append(f"{pair.name}: {type(err).__name__}: {err}"[:300])
                    continue
                tally.samples.append(sample)
                if way.endswith("schema") and not sample.valid:
                    tally.invalid.append(f"{pair.name} ({sample.finish})")
            progress(f"pair {index + 1}/{len(chosen)} ({pair.name}) done")


# ---------------------------------------------------------------------------------------------
# Report


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rates(tally: Tally) -> list[float]:
    return [s.decode_rate for s in tally.samples if s.decode_rate is not None]


def ttfts(tally: Tally) -> list[float]:
    return [s.ttft for s in tally.samples]


def results_table(run: Run) -> list[str]:
    """One row per way of asking."""
    lines = [
        "| way | answers | failed | valid JSON | schema-valid | finish stop | decode tok/s "
        "(median) | tokens (median) | TTFT p50 ms | TTFT p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for way in ways_run(run):
        tally = run.tallies[way]
        n = len(tally.samples)
        parses = sum(s.parses for s in tally.samples)
        valid = sum(s.valid for s in tally.samples)
        stops = sum(s.finish == "stop" for s in tally.samples)
        lines.append(
            f"| {LABELS[way]} | {n} | {len(tally.failures)} | {parses}/{n} | {valid}/{n} | "
            f"{stops}/{n} | {_median(rates(tally)):.1f} | "
            f"{_median([s.tokens for s in tally.samples]):.0f} | "
            f"{percentile(ttfts(tally), 50) * 1000:.0f} | "
            f"{percentile(ttfts(tally), 95) * 1000:.0f} |"
        )
    return lines


def ways_run(run: Run) -> tuple[str, ...]:
    """The ways this run asked: the MLX ones too unless that phase was skipped."""
    return WAYS if run.mlx_skipped else (*WAYS, *MLX_WAYS)


def goals(run: Run) -> list[tuple[str, str, str, bool]]:
    """(goal, server, measured, met) for rbee on each engine and, for comparison,
    llama_cpp.server."""
    out = []
    for server in ("rbee", "mlx", "llama"):
        if server == "mlx" and run.mlx_skipped:
            continue
        schema, free = run.tallies[f"{server}-schema"], run.tallies[f"{server}-free"]
        n = len(schema.samples) + len(schema.failures)
        valid = sum(s.valid for s in schema.samples)
        rate = _median(rates(schema)) / _median(rates(free))
        ttft = percentile(ttfts(schema), 50) / percentile(ttfts(free), 50)
        out += [
            ("schema-valid answers: 100%", server, f"{valid}/{n}", n > 0 and valid == n),
            (f"decode rate, schema / free: >= {RATE_GOAL}x", server, f"{rate:.3f}x",
             rate >= RATE_GOAL),
            (f"TTFT p50, schema / free: <= {TTFT_GOAL}x", server, f"{ttft:.3f}x",
             ttft <= TTFT_GOAL),
        ]  # fmt: skip
    return out


def goals_table(run: Run) -> list[str]:
    lines = ["| goal | server | measured | met |", "|---|---|---:|---|"]
    for goal, server, measured, met in goals(run):
        name = SERVER_NAMES[server]
        lines.append(f"| {goal} | {name} | {measured} | {'yes' if met else '**no**'} |")
    return lines


def notes(run: Run) -> list[str]:
    lines = []
    for engine, ttft in run.first_structured_ttft.items():
        lines.append(
            f"- {SERVER_NAMES[engine]}: the first structured request after the worker started "
            f"(unmeasured above): TTFT {ttft * 1000:.0f} ms; it builds the grammar compiler's "
            "view of the model's vocabulary, once per worker."
        )
    if run.mlx_skipped:
        lines.append(f"- The MLX phase did not run: {run.mlx_skipped}.")
    for way in ways_run(run):
        tally = run.tallies[way]
        if way.endswith("schema") and tally.invalid:
            lines.append(f"- {LABELS[way]}, not schema-valid: {', '.join(tally.invalid)[:400]}")
        if tally.failures:
            lines.append(f"- {LABELS[way]}, failed: {'; '.join(tally.failures)[:400]}")
    lines.append(
        "- Free answers are the same prompts without response_format: their length differs "
        "(the model may stop early or ramble to max_tokens); the decode rate is per token, so "
        "it compares."
    )
    return lines


def environment_lines(run: Run) -> list[str]:
    command = shlex.join([".venv/bin/python", *sys.argv])
    return [
        "| | |",
        "|---|---|",
        f"| date | {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} |",
        f"| machine | {os.cpu_count()} cores, {cpu_model()} ({platform.machine()}) |",
        f"| python, rbee, llama-cpp-python, llguidance | {platform.python_version()}, "
        f"{rbee.__version__}, {importlib.metadata.version('llama-cpp-python')}, "
        f"{importlib.metadata.version('llguidance')} |",
        f"| model | {MODEL} ({model_gguf().name}), n_ctx {relay.N_CTX}, {relay.THREADS} "
        "engine threads on both servers |",
        f"| workload | {run.pairs} prompt/schema pairs ({len(SCHEMAS)} schemas), each asked "
        f"{len(ways_run(run))} ways, one at a time, streamed, temperature 0, "
        f"max_tokens {MAX_TOKENS}; the MLX ways after the others ({run.mlx_pairs} pairs, one "
        "per schema: mlx[cpu] is slow), on the same queen with its worker replaced by an MLX "
        "one |",
        f"| load average (1 min) | {' at start, '.join(run.load)} at end |",
        f"| command | `{command}` |",
        f"| llama_cpp.server | `{run.llama_command}` |",
    ]


def render(run: Run) -> str:
    """The markdown section between the markers."""
    quick = " Quick run (`--quick`): indicative only." if run.quick else ""
    lines = [
        START_MARK,
        "## Structured outputs",
        "",
        "Written by `bench/structured.py` (`make bench`); do not edit by hand." + quick,
        "",
        *environment_lines(run),
        "",
        *results_table(run),
        "",
        *goals_table(run),
        "",
        "Notes:",
        "",
        *notes(run),
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main


def mlx_missing() -> str | None:
    """Why rbee cannot run an MLX worker here, or None."""
    try:
        import mlx.core  # noqa: F401, PLC0415
        import mlx_lm  # noqa: F401, PLC0415
    except ImportError as err:
        return f"mlx / mlx-lm cannot be imported ({err})"
    return None


def swap_to_mlx(queen_url: str, worker_id: str) -> None:
    """Replace the queen's llama.cpp worker by an MLX worker of the same model."""
    progress(f"stopping {worker_id}; starting an MLX worker of {MODEL}")
    with httpx.Client(timeout=600.0, trust_env=False) as client:
        client.delete(f"{queen_url}/v1/workers/{worker_id}").raise_for_status()
        spec = {"model": MODEL, "engine": "mlx", "threads": relay.THREADS,
                "ctx_size": relay.N_CTX}  # fmt: skip
        worker = client.post(f"{queen_url}/v1/workers", json=spec)
        if worker.status_code != 201:
            raise RuntimeError(f"the MLX worker did not start: {worker.text[:300]}")
    progress(f"ready: MLX worker {worker.json()['id']}")


def parse_args(argv: Sequence[str] | None = None) -> tuple[bool, bool]:
    """(--quick, whether to write docs/benchmarks.md)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10 pairs, one per schema")
    parser.add_argument(
        "--write", action="store_true", help="write docs/benchmarks.md after a --quick run too"
    )
    args = parser.parse_args(argv)
    return args.quick, args.write or not args.quick


def main(argv: Sequence[str] | None = None) -> int:
    """Start the servers, measure, print the section; write it to docs/benchmarks.md."""
    quick, write = parse_args(argv)
    relay.check_server_extra()
    started = time.monotonic()
    run = Run(quick, load=[load_average()])
    with contextlib.suppress(OSError):
        if os.getloadavg()[0] > 0.5:
            progress(f"the machine is busy (load average {load_average()}): figures will suffer")
    with relay.rbee_and_llama(relay.queen_argv, "rbee-structured-") as pair:
        run.llama_command = pair.llama_command
        asyncio.run(run_pairs({"rbee": pair.queen_url, "llama": pair.llama_url}, run))
        run.mlx_skipped = mlx_missing()
        if run.mlx_skipped is None:
            try:
                swap_to_mlx(pair.queen_url, str(pair.worker["id"]))
            except (RuntimeError, httpx.HTTPError) as err:
                run.mlx_skipped = f"the MLX worker could not be started: {err}"
                progress(run.mlx_skipped)
            else:
                asyncio.run(run_pairs({"mlx": pair.queen_url}, run, MLX_WAYS))
    run.load.append(load_average())
    section = render(run)
    if write:
        write_section(section, START_MARK, END_MARK, DOC)
        progress(f"wrote {DOC.relative_to(ROOT)}")
    else:
        progress("not writing docs/benchmarks.md (a --quick run; add --write to)")
    progress(f"done in {time.monotonic() - started:.0f}s")
    print(section, end="")
    return 0


if __name__ == "__main__":
    run_main(main, progress)
