"""Structured outputs end to end: the official openai client's `parse()` and `stream()` with a
pydantic model, through a real queen relaying to a real worker on the real model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests import http
from tests.conftest import MODEL, RunningQueen
from tests.schemas import PROMPT, Person

pytestmark = pytest.mark.slow

MESSAGES: list[dict[str, str]] = [{"role": "user", "content": PROMPT}]


@pytest.fixture
def client(queen: RunningQueen) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=queen.base_url, api_key="unused", max_retries=0) as client:
        yield client


def test_parse_gives_a_valid_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=MESSAGES,
        response_format=Person,
        max_tokens=400,
        temperature=0.7,
        seed=5,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    person = choice.message.parsed
    assert isinstance(person, Person)
    assert Person.model_validate_json(choice.message.content or "", strict=True) == person
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens < 400


def test_a_stream_with_a_schema_parses_too(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=MESSAGES,
        response_format=Person,
        max_tokens=400,
        temperature=0.7,
        seed=6,
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 5  # token by token, not one block at the end
    choice = final.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)
    assert "".join(deltas) == choice.message.content


def test_json_object_mode(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    text = answer.choices[0].message.content or ""
    assert text.startswith("{")
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens, as OpenAI cuts it
        assert answer.usage is not None
        assert answer.usage.completion_tokens == 200


def test_an_unenforceable_schema_is_refused_by_the_queen(queen: RunningQueen) -> None:
    worker = queen.workers()[0]
    before = queen.worker_health(worker)["stats"]["requests"]
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}},
    }
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
    }
    r = http.post(f"{queen.base_url}/chat/completions", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "response_format.json_schema.schema.properties.tags.uniqueItems"
    assert error["code"] == "unsupported_parameter"
    r = http.post(
        f"{queen.base_url}/completions",
        json={"model": MODEL, "prompt": "a", "response_format": {"type": "json_object"}},
    )
    assert (r.status_code, r.json()["error"]["param"]) == (400, "response_format")
    after = queen.worker_health(worker)["stats"]["requests"]
    assert after == before
