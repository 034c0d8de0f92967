"""Request parsing: every field's bad values are refused with 400 naming the field."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from rbee.api.openai import (
    MAX_LOGIT_BIAS,
    ChatMessage,
    SamplingParams,
    choice_seed,
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


def test_logit_bias_is_carried_sorted_by_token_id() -> None:
    req = parse_chat_request({**BASE, "logit_bias": {"50256": -100, "0": 5.5, "7": 100}})
    assert req.sampling.logit_bias == ((0, 5.5), (7, 100.0), (50256, -100.0))
    most = {str(i): -1 for i in range(MAX_LOGIT_BIAS)}
    assert len(parse_chat_request({**BASE, "logit_bias": most}).sampling.logit_bias) == 300
    for empty in (None, {}):
        assert parse_chat_request({**BASE, "logit_bias": empty}).sampling.logit_bias == ()
    completion = parse_completion_request({"model": "m", "prompt": "a", "logit_bias": {"3": -1}})
    assert completion.sampling.logit_bias == ((3, -1.0),)


def test_tool_choice_is_left_to_the_tools_check_when_tools_are_given() -> None:
    with pytest.raises(ApiError) as caught:
        parse_chat_request({**BASE, "tools": [{"type": "function"}], "tool_choice": "auto"})
    assert caught.value.param == "tools[0].function"


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
        ({"n": 9}, "n", "between 1 and 8"),
        ({"n": 0}, "n", "between 1 and 8"),
        ({"n": "2"}, "n", "must be an integer"),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "must be an object"),
        ({"tool_choice": "auto"}, "tool_choice", "only allowed when tools are specified"),
        ({"tool_choice": "none", "tools": []}, "tool_choice", "only allowed when tools"),
        ({"logit_bias": [1, 2]}, "logit_bias", "must be an object"),
        ({"logit_bias": "50256"}, "logit_bias", "must be an object"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "the key 'abc'"),
        ({"logit_bias": {"-1": 1}}, "logit_bias", "the key '-1'"),
        ({"logit_bias": {"01": 1}}, "logit_bias", "the key '01'"),
        ({"logit_bias": {"1.5": 1}}, "logit_bias", "the key '1.5'"),
        ({"logit_bias": {"2147483648": 1}}, "logit_bias", "the key '2147483648'"),
        ({"logit_bias": {"7": "up"}}, "logit_bias", "logit_bias['7'] must be a number"),
        ({"logit_bias": {"7": None}}, "logit_bias", "logit_bias['7'] must be a number"),
        ({"logit_bias": {"7": True}}, "logit_bias", "logit_bias['7'] must be a number"),
        ({"logit_bias": {"7": 100.5}}, "logit_bias", "logit_bias['7'] must be between -100"),
        ({"logit_bias": {"7": -101}}, "logit_bias", "logit_bias['7'] must be between -100"),
        ({"logit_bias": {"7": float("inf")}}, "logit_bias", "between -100 and 100"),
        (
            {"logit_bias": {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}},
            "logit_bias",
            "at most 300 tokens, got 301",
        ),
        ({"logprobs": 1}, "logprobs", "must be a boolean"),
        ({"top_logprobs": 2}, "top_logprobs", "only allowed when logprobs is true"),
        ({"logprobs": False, "top_logprobs": 0}, "top_logprobs", "only allowed when logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "between 0 and 20"),
        ({"logprobs": True, "top_logprobs": 2.5}, "top_logprobs", "must be an integer"),
        ({"response_format": {"type": "xml"}}, "response_format.type", 'must be "text"'),
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


@pytest.mark.parametrize(
    ("change", "n", "logprobs"),
    [
        ({}, 1, None),
        ({"n": 1}, 1, None),
        ({"n": 8}, 8, None),
        ({"n": None}, 1, None),
        ({"logprobs": False}, 1, None),
        ({"logprobs": True}, 1, 0),
        ({"logprobs": True, "top_logprobs": 0}, 1, 0),
        ({"logprobs": True, "top_logprobs": 20, "n": 3}, 3, 20),
        ({"logprobs": None, "top_logprobs": None}, 1, None),
    ],
)
def test_chat_choices_and_logprobs_are_carried(
    change: dict[str, Any], n: int, logprobs: int | None
) -> None:
    sampling = parse_chat_request({**BASE, **change}).sampling
    assert (sampling.n, sampling.logprobs) == (n, logprobs)


@pytest.mark.parametrize(
    ("change", "n", "logprobs"),
    [
        ({}, 1, None),
        ({"n": 2}, 2, None),
        ({"logprobs": 0}, 1, 0),
        ({"logprobs": 5, "n": 8}, 8, 5),
        # top_logprobs is a chat field; a legacy completion ignores it, as any unknown field.
        ({"top_logprobs": 3}, 1, None),
    ],
)
def test_completion_choices_and_logprobs_are_carried(
    change: dict[str, Any], n: int, logprobs: int | None
) -> None:
    sampling = parse_completion_request({"model": "m", "prompt": "a", **change}).sampling
    assert (sampling.n, sampling.logprobs) == (n, logprobs)


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"logprobs": 6}, "logprobs", "between 0 and 5"),
        ({"logprobs": -1}, "logprobs", "between 0 and 5"),
        ({"logprobs": True}, "logprobs", "must be an integer"),
        ({"n": 9}, "n", "between 1 and 8"),
        ({"best_of": 2}, "best_of", "not supported"),
    ],
)
def test_bad_completion_fields_are_refused_naming_the_field(
    change: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(ApiError) as caught:
        parse_completion_request({"model": "m", "prompt": "a", **change})
    assert (caught.value.status, caught.value.param) == (400, param)
    assert words in caught.value.message


def sha_seed(text: bytes) -> int:
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def test_each_choice_gets_a_seed_derived_from_the_request_seed_and_its_index() -> None:
    # As docs/api.md states it: choice 0 keeps the seed; choice i > 0 takes the first 8 bytes of
    # SHA-256("{seed}:{i}"), big-endian, shifted right by one bit.
    assert choice_seed(42, 0) == 42
    assert choice_seed(42, 1) == sha_seed(b"42:1")
    assert choice_seed(-7, 3) == sha_seed(b"-7:3")
    seeds = {choice_seed(s, i) for s in (41, 42, 43) for i in range(1, 8)}
    assert len(seeds) == 21  # no two (seed, choice) pairs share one
    assert all(0 <= s < 2**63 for s in seeds)
    sampling = SamplingParams(seed=42, n=3)
    assert [sampling.for_choice(i).seed for i in range(3)] == [choice_seed(42, i) for i in range(3)]
    assert sampling.for_choice(0) is sampling
    assert SamplingParams(n=3).for_choice(2).seed is None  # unseeded choices stay random
