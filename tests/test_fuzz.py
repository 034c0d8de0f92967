"""Fuzzing the whole queen API from its own OpenAPI document (GET /openapi.json) with schemathesis:
a real queen serving the real default model answers generated requests, valid ones and ones
that break the schema, and no answer may be a 5xx, break the document's answer schemas, carry a
status or content type the document does not name.

The run here is bounded (a few examples per operation, derandomized so CI sees the same requests
every time); bench/fuzz.py runs the same driver for thousands of requests and records its table
in docs/security.md. Whatever either finds becomes a test in tests/test_fuzz_findings.py.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, running_queen

FUZZ_MAX_TOKENS = 4
"""Generation's bound while fuzzing: what is fuzzed is the parsing and the answers' shapes, and
a few tokens exercise the whole path (worker, relay, stream) as much as thousands would."""

_CLAMP_ABOVE = 8192
"""Token limits from FUZZ_MAX_TOKENS up to this one are cut down to FUZZ_MAX_TOKENS (larger ones
are left to be refused); a negative case may break the schema's bound, which the queen, rightly,
accepts when it fits the context, and must not then generate for minutes."""

_MAX_KEYS = {
    "/v1/chat/completions": "max_tokens",
    "/v1/completions": "max_tokens",
    "/v1/responses": "max_output_tokens",
    "/v1/messages": "max_tokens",
}

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


def fuzz_document(doc: dict[str, Any], model: str) -> dict[str, Any]:
    """The queen's document bent for a cheap, deep fuzzing run: valid requests name the real
    model (a random name would never reach a worker; invalid ones still name others), and
    generation asks for at most FUZZ_MAX_TOKENS tokens (the key is required, so every valid
    request says so)."""
    doc = copy.deepcopy(doc)
    schemas = doc["components"]["schemas"]
    for name, key in (
        ("ChatRequest", "max_tokens"),
        ("CompletionRequest", "max_tokens"),
        ("ResponsesRequest", "max_output_tokens"),
        ("MessagesRequest", "max_tokens"),
    ):
        schema = schemas[name]
        schema["properties"][key] = {"type": "integer", "minimum": 1, "maximum": FUZZ_MAX_TOKENS}
        schema["required"] = sorted({*schema["required"], key})
        schema["properties"].pop("max_completion_tokens", None)
    for name in ("ChatRequest", "CompletionRequest", "ResponsesRequest", "MessagesRequest",
                 "CountTokensRequest", "EmbeddingRequest"):  # fmt: skip
        props = schemas[name]["properties"]
        props["model"] = {"const": model}
        if "n" in props:
            props["n"] = {"type": "integer", "minimum": 1, "maximum": 2}
    for path, key in _MAX_KEYS.items():
        example = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        if "example" in example:  # kept within the bounds above, or schemathesis skips it
            example["example"] = {**example["example"], key: FUZZ_MAX_TOKENS}
    return doc


def clamp(case: Case) -> None:
    """Cut a generated request's token limit to FUZZ_MAX_TOKENS (see _CLAMP_ABOVE), and add one
    where a negative case dropped it."""
    key = _MAX_KEYS.get(case.operation.path)
    body = case.body
    if key is None or not isinstance(body, dict):
        return
    value = body.get(key)
    if key not in body or (
        isinstance(value, int)
        and not isinstance(value, bool)
        and FUZZ_MAX_TOKENS < value <= _CLAMP_ABOVE
    ):
        body[key] = FUZZ_MAX_TOKENS


@dataclass
class Tally:
    """What a fuzzing run saw, per operation."""

    requests: Counter[str] = field(default_factory=Counter)
    server_errors: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _describe(case: Case, status: int, failures: list[Failure]) -> str:
    body = repr(case.body)[:300]
    path = case.formatted_path
    query = f"?{case.query}" if case.query else ""
    titles = "; ".join(f"{f.title}: {f.message[:300]}" for f in failures)
    return f"{case.method} {path}{query} body={body} -> {status}: {titles}"


def _unwrap(err: Exception) -> list[Failure]:
    if isinstance(err, FailureGroup):
        return [f for f in err.exceptions if isinstance(f, Failure)]
    return [err] if isinstance(err, Failure) else []


def _fuzz_one(
    operation: Any,
    strategy: Any,
    queen_url: str,
    tally: Tally,
    *,
    examples: int,
    derandomize: bool,
    seed: int | None,
    negative: bool = False,
) -> None:
    """`examples` requests of one operation drawn from `strategy`, tallied."""
    label = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one(case: Case) -> None:
        clamp(case)
        response = case.call(base_url=queen_url, timeout=120)
        tally.requests[label] += 1
        tally.statuses[(label, response.status_code)] += 1
        if response.status_code >= 500:
            tally.server_errors[label] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (Failure, FailureGroup) as err:
            if response.status_code < 500:
                tally.violations[label] += 1
            tally.failures.append(_describe(case, response.status_code, _unwrap(err)))

    try:
        (hypothesis_seed(seed)(one) if seed is not None else one)()
    except Unsatisfiable:
        # An operation that takes nothing (GET /v1/workers) has no invalid request to make.
        if not negative:
            raise


def fuzz_operations(
    queen_url: str,
    *,
    examples: int,
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
    derandomize: bool = True,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Tally:
    """Run `examples` generated requests per operation and mode against a queen; count them,
    the 5xx answers and the answers that break the document, and describe each failure."""
    tally = Tally()
    doc = fuzz_document(http.get(f"{queen_url}/openapi.json").json(), MODEL)
    schema = schemathesis.openapi.from_dict(doc)
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        # The document's own examples first: one streamed request per generation route, so
        # every run checks the SSE answers too.
        for strategy in schema.get_strategies_from_examples(operation):
            _fuzz_one(
                operation, strategy, queen_url, tally,
                examples=1, derandomize=True, seed=None,
            )  # fmt: skip
        for mode in modes:
            _fuzz_one(
                operation, operation.as_strategy(generation_mode=mode), queen_url, tally,
                examples=examples, derandomize=derandomize, seed=seed,
                negative=mode is GenerationMode.NEGATIVE,
            )  # fmt: skip
            if progress is not None:
                label = f"{operation.method.upper()} {operation.path}"
                progress(f"{label} ({mode.value}): {tally.requests[label]} requests")
    tally.seconds = time.monotonic() - started
    return tally


@pytest.fixture(scope="module")
def fuzz_queen(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[RunningQueen]:
    """A real queen serving the real default model, for this module alone (fuzzing changes
    policies and starts failing jobs; no other test should see that)."""
    paths = make_paths(tmp_path_factory.mktemp("fuzz"), model_cache)
    with running_queen(paths) as queen:
        yield queen


@pytest.mark.slow
def test_the_whole_api_survives_a_bounded_fuzzing_run(fuzz_queen: RunningQueen) -> None:
    tally = fuzz_operations(fuzz_queen.url, examples=6)
    total = sum(tally.requests.values())
    # Every operation of the document was called, valid and invalid requests alike.
    assert len(tally.requests) >= 28, tally.requests
    assert total >= 28 * 6, total
    assert tally.failures == [], "\n".join(tally.failures)
    assert fuzz_queen.proc.poll() is None, "the queen died while being fuzzed"
