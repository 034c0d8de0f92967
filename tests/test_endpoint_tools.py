"""Tool calls end to end: the official openai client (create, its stream helper, parse with
pydantic tools) and LangChain's ChatOpenAI (bind_tools, with_structured_output), through a real
queen relaying to a real worker on the real default model.

The 135M default model is weak at choosing tools, so these check the protocol and what
constrained decoding guarantees (a required call is a call, its arguments valid for the schema),
not the model's judgement.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field

from tests import http
from tests.conftest import MODEL, RunningQueen
from tests.schemas import Person

pytestmark = pytest.mark.slow

QUESTION: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


class GetWeather(BaseModel):
    """The weather in a city now."""

    model_config = ConfigDict(extra="forbid")

    city: str = Field(min_length=1, max_length=20)
    unit: Literal["celsius", "fahrenheit"]


WEATHER_TOOL: Any = openai.pydantic_function_tool(GetWeather, name="get_weather")
CLOCK_TOOL: Any = {
    "type": "function",
    "function": {"name": "clock", "description": "The time now"},  # no parameters: takes none
}


@pytest.fixture
def client(queen: RunningQueen) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=queen.base_url, api_key="unused", max_retries=0) as client:
        yield client


def valid_weather(arguments: str) -> GetWeather:
    return GetWeather.model_validate_json(arguments, strict=True)


def test_a_required_call_comes_whole(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER_TOOL, CLOCK_TOOL],
        tool_choice="required",
        max_tokens=120,
        temperature=0.7,
        seed=3,
    )
    choice = answer.choices[0]
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert calls
    # With parallel calls a small model may go on calling until max_tokens cuts the last one.
    assert choice.finish_reason in ("tool_calls", "length")
    whole = calls if choice.finish_reason == "tool_calls" else calls[:-1]
    for call in whole:
        assert call.type == "function"
        assert call.id.startswith("call_")
        if call.function.name == "get_weather":
            valid_weather(call.function.arguments)
        else:
            assert (call.function.name, json.loads(call.function.arguments)) == ("clock", {})
    assert len({c.id for c in calls}) == len(calls)
    assert answer.usage is not None
    assert answer.usage.completion_tokens <= 120


def test_a_named_function_without_parallel_calls_is_one_call(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[CLOCK_TOOL, WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=120,
        temperature=1.0,
        seed=4,
        n=2,
    )
    for choice in answer.choices:
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert [c.function.name for c in calls] == ["get_weather"]
        valid_weather(calls[0].function.arguments)


def test_the_stream_helper_assembles_call_deltas(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        seed=5,
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    pieces = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(pieces) > 3  # arguments stream in pieces, as OpenAI's do
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [e.name for e in done] == ["get_weather"]
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = (choice.message.tool_calls or [])[0]
    assert isinstance(call.function.parsed_arguments, GetWeather)  # strict tool: the SDK parses
    assert call.function.parsed_arguments == valid_weather(call.function.arguments)
    assert "".join(e.arguments_delta for e in pieces) == call.function.arguments


def test_raw_stream_chunks_have_openais_shape(queen: RunningQueen) -> None:
    body = {
        "model": MODEL,
        "messages": QUESTION,
        "tools": [CLOCK_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stream": True,
        "max_tokens": 60,
    }
    with http.stream("POST", queen.base_url + "/chat/completions", json=body) as response:
        assert response.status_code == 200
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    first, rest = calls[0], calls[1:]
    assert first["index"] == 0
    assert first["type"] == "function"
    assert first["id"].startswith("call_")
    assert first["function"] == {"name": "clock", "arguments": ""}
    # Later deltas carry only the index and a piece of the arguments.
    assert all(
        set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in rest
    )
    assert json.loads("".join(c["function"]["arguments"] for c in rest)) == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_parse_gives_parsed_arguments(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=120,
        seed=6,
    )
    call = (completion.choices[0].message.tool_calls or [])[0]
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_a_round_trip_call_result_answer(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="required",
        parallel_tool_calls=False, max_tokens=120, seed=7,
    )  # fmt: skip
    call = (first.choices[0].message.tool_calls or [])[0]
    history: list[Any] = [
        *QUESTION,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny and 18 degrees."},
    ]
    for stream in (False, True):
        if stream:
            with client.chat.completions.stream(
                model=MODEL,
                messages=history,
                tools=[WEATHER_TOOL],
                tool_choice="none",
                max_tokens=40,
                temperature=0,
            ) as events:
                final = events.get_final_completion()  # fmt: skip
        else:
            final = client.chat.completions.create(
                model=MODEL, messages=history, tools=[WEATHER_TOOL], tool_choice="none",
                max_tokens=40, temperature=0,
            )  # fmt: skip
        choice = final.choices[0]
        assert choice.finish_reason in ("stop", "length")
        assert not choice.message.tool_calls
        assert (choice.message.content or "").strip()


def test_auto_answers_text_or_valid_calls(client: openai.OpenAI) -> None:
    for seed in range(3):
        answer = client.chat.completions.create(
            model=MODEL, messages=QUESTION, tools=[WEATHER_TOOL], max_tokens=80,
            temperature=1.0, seed=seed,
        )  # fmt: skip
        choice = answer.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason in ("tool_calls", "length")
            if choice.finish_reason == "tool_calls":
                for call in choice.message.tool_calls:
                    valid_weather(call.function.arguments)
        else:
            assert choice.finish_reason in ("stop", "length")
            assert "<tool_call>" not in (choice.message.content or "")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "any"}, "tool_choice"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"not": {}}}},
                        },
                    }
                ]
            },
            "tools[0].function.parameters.properties.a.not",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ],
)
def test_bad_tools_are_400_naming_the_field(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=QUESTION, extra_body=extra)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


# ---- LangChain -------------------------------------------------------------------------------


@pytest.fixture
def chat(queen: RunningQueen) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL, base_url=queen.base_url, api_key="unused", max_retries=0,
        max_tokens=120, temperature=0.7, seed=8,
    )  # fmt: skip


def test_langchain_bind_tools_round_trip(chat: ChatOpenAI) -> None:
    bound = chat.bind_tools([GetWeather], tool_choice="GetWeather")
    question = HumanMessage("What is the weather in Paris?")
    reply = bound.invoke([question])
    assert isinstance(reply, AIMessage)
    assert [c["name"] for c in reply.tool_calls] == ["GetWeather"]
    GetWeather.model_validate(reply.tool_calls[0]["args"], strict=True)
    call_id = reply.tool_calls[0]["id"]
    assert call_id
    result = ToolMessage("Sunny and 18 degrees.", tool_call_id=call_id)
    final = chat.invoke([question, reply, result])
    assert isinstance(final, AIMessage)
    assert isinstance(final.content, str)


def test_langchain_structured_output_both_ways(chat: ChatOpenAI) -> None:
    prompt = "Describe a fictional person: name, age, role, skills and address."
    for method in ("json_schema", "function_calling"):
        person = chat.with_structured_output(Person, method=method).invoke(prompt)
        assert isinstance(person, Person), method
