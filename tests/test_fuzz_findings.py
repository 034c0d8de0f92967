"""What fuzzing the queen from its OpenAPI document found (tests/test_fuzz.py, bench/fuzz.py),
each kept as a plain test against a real queen serving the real model, so it stays fixed."""

from __future__ import annotations

from typing import Any

import pytest

from tests import http
from tests.conftest import MODEL, RunningQueen

pytestmark = pytest.mark.slow

HUGE = -106271933630779822835210713428045856768
"""An integer of 39 digits (the one schemathesis sent): short enough for the body's number
limit, too big for the 64 bits llguidance writes a schema's numbers in."""

_SCHEMA = {"type": "object", "properties": {"a": {"type": "integer", "maximum": HUGE}}}
_CHAT: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 4,
}


def _refused(answer: Any, param: str) -> None:
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert "not JSON serializable" in error["message"]


def test_a_tool_schema_with_a_huge_integer_is_a_400_not_a_500(queen: RunningQueen) -> None:
    # Was: 500 internal_error (ValueError from llguidance's grammar_from_json_schema).
    tool = {"type": "function", "function": {"name": "f", "parameters": _SCHEMA}}
    answer = http.post(f"{queen.base_url}/chat/completions", json={**_CHAT, "tools": [tool]})
    _refused(answer, "tools[0].function.parameters.properties.a")


def test_a_response_format_with_a_huge_integer_is_a_400_not_a_500(queen: RunningQueen) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": _SCHEMA}}
    answer = http.post(f"{queen.base_url}/chat/completions", json={**_CHAT, "response_format": fmt})
    _refused(answer, "response_format.json_schema.schema.properties.a")


def test_the_same_schema_through_the_messages_api_is_anthropic_s_400(queen: RunningQueen) -> None:
    tool = {"name": "f", "input_schema": _SCHEMA}
    answer = http.post(f"{queen.url}/v1/messages", json={**_CHAT, "tools": [tool]})
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "not JSON serializable" in body["error"]["message"]


def test_the_same_schema_through_the_responses_api_is_a_400(queen: RunningQueen) -> None:
    tool = {"type": "function", "name": "f", "parameters": _SCHEMA}
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 4, "tools": [tool]}
    answer = http.post(f"{queen.base_url}/responses", json=body)
    assert answer.status_code == 400, answer.text
    assert "not JSON serializable" in answer.json()["error"]["message"]
    # The queen still serves.
    assert http.post(f"{queen.base_url}/chat/completions", json=_CHAT).status_code == 200


# F3: a list or an object where a string was looked up in a set ("unhashable type") was a 500.


def _anthropic_400(answer: Any) -> None:
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": [{"type": []}]}]},
        {"messages": [{"role": "user", "content": [{"type": {}}]}]},
        {"system": [{"type": []}]},
        {
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": []},
        },
    ],
    ids=["block-type-list", "block-type-object", "system-type-list", "tool-choice-type-list"],
)
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_an_unhashable_type_in_a_messages_request_is_a_400(
    queen: RunningQueen, path: str, change: dict[str, Any]
) -> None:
    _anthropic_400(http.post(f"{queen.url}{path}", json={**_CHAT, **change}))


@pytest.mark.parametrize(
    "item",
    [{"role": [], "content": "Hi"}, {"role": "user", "content": [{"type": []}]}],
    ids=["role-list", "part-type-list"],
)
def test_an_unhashable_role_or_part_in_a_responses_request_is_a_400(
    queen: RunningQueen, item: dict[str, Any]
) -> None:
    body = {"model": MODEL, "input": [item], "max_output_tokens": 4}
    answer = http.post(f"{queen.base_url}/responses", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"].startswith("input[0]")


def test_a_schema_format_that_is_a_list_is_a_400(queen: RunningQueen) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "format": []}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    answer = http.post(f"{queen.base_url}/chat/completions", json={**_CHAT, "response_format": fmt})
    assert answer.status_code == 400, answer.text
    assert (
        answer.json()["error"]["param"] == "response_format.json_schema.schema.properties.a.format"
    )


def test_a_chat_message_whose_role_is_a_list_is_a_400(queen: RunningQueen) -> None:
    body = {**_CHAT, "messages": [{"role": [], "content": "Hi"}]}
    answer = http.post(f"{queen.base_url}/chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "messages[0].role"


def test_an_integer_written_with_a_fraction_of_zero_is_an_integer(queen: RunningQueen) -> None:
    answer = http.post(f"{queen.base_url}/chat/completions", json={**_CHAT, "max_tokens": 4.0})
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] <= 4
    body = {"model": MODEL, "max_tokens": 3.0, "messages": [{"role": "user", "content": "Hi"}]}
    anthropic = http.post(f"{queen.url}/v1/messages", json=body)
    assert anthropic.status_code == 200, anthropic.text
    assert anthropic.json()["usage"]["output_tokens"] <= 3
    fraction = http.post(f"{queen.base_url}/chat/completions", json={**_CHAT, "max_tokens": 4.5})
    assert (fraction.status_code, fraction.json()["error"]["param"]) == (400, "max_tokens")


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"hive": ""}, 400, None),  # was: 500 (no such hive raised from the fleet)
        ({"hive": "\x00\x05"}, 400, None),
        ({"hive": "?", "lines": "316"}, 400, None),
        ({"hive": "gpu-box"}, 404, "hive_not_found"),  # an alias, but no hive of that name
        ({"worker": "m-1@gpu-box"}, 404, "worker_not_found"),
    ],
)
def test_a_log_of_a_hive_that_is_not_there_is_a_4xx(
    queen: RunningQueen, params: dict[str, str], status: int, code: str | None
) -> None:
    answer = http.get(f"{queen.url}/v1/dashboard/log", params=params)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert len(error["message"]) < 400


def test_an_embedding_input_of_no_tokens_is_a_400_naming_it(queen: RunningQueen) -> None:
    # Was: 500 (llama_decode returned -1 for an empty sequence; a NaN mean beside other inputs).
    # Control characters are no tokens at all to this model's tokenizer.
    for inputs, param in ((["\x16"], "input"), (["Hi", "\x1d", "there"], "input[1]")):
        answer = http.post(f"{queen.base_url}/embeddings", json={"model": MODEL, "input": inputs})
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["param"], error["code"]) == (param, "empty_input")
    fine = http.post(f"{queen.base_url}/embeddings", json={"model": MODEL, "input": ["Hi"]})
    assert fine.status_code == 200, fine.text
