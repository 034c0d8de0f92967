"""Request parsing: every field's bad values are refused with 400 naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from rbee.api.openai import (
    ChatMessage,
    SamplingParams,
    parse_chat_request,
    parse_completion_request,
)
from rbee.errors import ApiError

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_minimal_chat_gets_openai_defaults() -> None:
    req = parse_chat_request(BASE)
    assert req.model == "m"
    assert req.messages == (ChatMessage("user", "hi"),)
    assert req.sampling == SamplingParams()
    assert (req.stream, req.include_usage) == (False, False)


def test_all_fields_are_carried() -> None:
    req = parse_chat_request({
        **BASE,
        "temperature": 0, "top_p": 0.5, "max_tokens": 7, "stop": "x", "seed": -3,
        "presence_penalty": 1.5, "frequency_penalty": -2, "stream": True,
        "stream_options": {"include_usage": True}, "n": 1, "user": "ignored",
    })  # fmt: skip
    assert req.sampling == SamplingParams(
        max_tokens=7, temperature=0.0, top_p=0.5, stop=("x",), seed=-3,
        presence_penalty=1.5, frequency_penalty=-2.0,
    )  # fmt: skip
    assert (req.stream, req.include_usage) == (True, True)


def test_text_parts_are_joined_and_developer_is_system() -> None:
    req = parse_chat_request({**BASE, "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "a"},
                                          {"type": "text", "text": "b"}]},
    ]})  # fmt: skip
    assert req.messages == (ChatMessage("system", "ab"),)


def test_max_completion_tokens_is_accepted() -> None:
    assert parse_chat_request({**BASE, "max_completion_tokens": 5}).sampling.max_tokens == 5


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"temperature": 2.5}, "temperature", "between 0 and 2"),
        ({"temperature": -0.1}, "temperature", "between 0 and 2"),
        ({"temperature": "hot"}, "temperature", "must be a number"),
        ({"temperature": True}, "temperature", "must be a number"),
        ({"temperature": float("nan")}, "temperature", "between"),
        ({"top_p": 1.5}, "top_p", "between 0 and 1"),
        ({"max_tokens": 0}, "max_tokens", "between 1"),
        ({"max_tokens": 2.5}, "max_tokens", "must be an integer"),
        ({"max_tokens": "10"}, "max_tokens", "must be an integer"),
        ({"presence_penalty": 3}, "presence_penalty", "between -2 and 2"),
        ({"frequency_penalty": -2.01}, "frequency_penalty", "between -2 and 2"),
        ({"seed": "1"}, "seed", "must be an integer"),
        ({"stop": 5}, "stop", "string or a list"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stop": [""]}, "stop", "must not be empty"),
        ({"stream": "yes"}, "stream", "must be a boolean"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed"),
        ({"stream": True, "stream_options": []}, "stream_options", "must be an object"),
        ({"n": 2}, "n", "not supported yet"),
        ({"n": "2"}, "n", "must be an integer"),
        ({"tools": [{"type": "function"}]}, "tools", "not supported"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "is supported yet"),
        ({"model": None}, "model", "required"),
        ({"model": 3}, "model", "non-empty string"),
        ({"messages": None}, "messages", "required"),
        ({"messages": []}, "messages", "must not be empty"),
        ({"messages": "hi"}, "messages", "must be a list"),
        ({"messages": ["hi"]}, "messages[0]", "must be an object"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "one of"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
            "only text",
        ),
    ],
)
def test_bad_chat_fields_are_refused_naming_the_field(
    change: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(ApiError) as caught:
        parse_chat_request({**BASE, **change})
    err = caught.value
    assert err.status == 400
    assert err.param == param
    assert words in err.message
    assert err.body()["error"]["param"] == param


@pytest.mark.parametrize("body", [None, [], "x", 3])
def test_non_object_bodies_are_refused(body: Any) -> None:
    with pytest.raises(ApiError) as caught:
        parse_chat_request(body)
    assert caught.value.status == 400


def test_completion_prompt_forms() -> None:
    assert parse_completion_request({"model": "m", "prompt": "a"}).prompt == "a"
    assert parse_completion_request({"model": "m", "prompt": ["a"]}).prompt == "a"
    for bad in (None, ["a", "b"], 5, [1, 2]):
        with pytest.raises(ApiError) as caught:
            parse_completion_request({"model": "m", "prompt": bad})
        assert caught.value.param == "prompt"
    with pytest.raises(ApiError) as caught:
        parse_completion_request({"model": "m", "prompt": "a", "echo": True})
    assert caught.value.param == "echo"
