"""The Responses API and Anthropic's Messages API through a real queen relaying to a real worker
on the real default model, read by the official `openai` and `anthropic` clients: whole answers,
streams and their helpers, token counts, errors as each client's own exceptions, keep-alives
while a model loads, and the API key as Anthropic's clients send it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anthropic
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, rbee, running_queen, wait_until
from tests.schemas import PROMPT, Person

pytestmark = pytest.mark.slow

QUESTION = "Name three colors."
MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": QUESTION}]
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}
"""Temperature 0 for the `anthropic` client, whose methods no longer take `temperature` (the API
still does, and older clients send it)."""
BAD_SCHEMA = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
"""A tool schema rbee cannot enforce: refused by the chat parser, named as each API names it."""


@pytest.fixture
def oai(queen: RunningQueen) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=queen.base_url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(queen: RunningQueen) -> Iterator[anthropic.Anthropic]:
    # Anthropic's clients take the URL without /v1: they ask for /v1/messages.
    with anthropic.Anthropic(base_url=queen.url, api_key="unused", max_retries=0) as client:
        yield client


def chat_answer(oai: openai.OpenAI, max_tokens: int) -> tuple[str, int, int]:
    """The chat completion of QUESTION at temperature 0: text, prompt and completion tokens."""
    answer = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=max_tokens,
        temperature=0,
    )  # fmt: skip
    assert answer.usage is not None
    text = answer.choices[0].message.content or ""
    return text, answer.usage.prompt_tokens, answer.usage.completion_tokens


def worker_requests(queen: RunningQueen) -> int:
    worker = queen.workers()[0]
    requests: int = queen.worker_health(worker)["stats"]["requests"]
    return requests


# -- the Responses API -----------------------------------------------------------------------


def test_a_response_is_the_chat_answer_in_the_responses_shape(oai: openai.OpenAI) -> None:
    text, prompt_tokens, completion_tokens = chat_answer(oai, 24)
    got = oai.responses.create(
        model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0, metadata={"k": "v"}
    )
    assert got.id.startswith("resp_")
    assert (got.object, got.model, got.store) == ("response", MODEL, False)
    assert got.output_text == text  # the same prompt at temperature 0: the same answer
    (item,) = got.output
    assert item.type == "message"
    assert item.role == "assistant"
    assert [c.type for c in item.content] == ["output_text"]
    assert got.usage is not None
    assert (got.usage.input_tokens, got.usage.output_tokens) == (prompt_tokens, completion_tokens)
    assert got.usage.total_tokens == prompt_tokens + completion_tokens
    assert got.metadata == {"k": "v"}
    if completion_tokens == 24:
        assert got.status == "incomplete"
        assert got.incomplete_details is not None
        assert got.incomplete_details.reason == "max_output_tokens"
    else:
        assert (got.status, got.incomplete_details) == ("completed", None)


def test_max_output_tokens_makes_an_incomplete_response(oai: openai.OpenAI) -> None:
    got = oai.responses.create(
        model=MODEL,
        instructions="You are a poet.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Write a long poem."}]}],
        max_output_tokens=3,
    )
    assert got.status == "incomplete"
    assert got.incomplete_details is not None
    assert got.incomplete_details.reason == "max_output_tokens"
    assert got.usage is not None
    assert got.usage.output_tokens == 3
    assert got.instructions == "You are a poet."


def test_a_streamed_response_sends_the_responses_events_in_order(oai: openai.OpenAI) -> None:
    whole = oai.responses.create(model=MODEL, input=QUESTION, max_output_tokens=20, temperature=0)
    stream = oai.responses.create(
        model=MODEL, input=QUESTION, max_output_tokens=20, temperature=0, stream=True
    )
    events = list(stream)
    kinds = [e.type for e in events]
    last = "response.completed" if whole.status == "completed" else "response.incomplete"
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 0
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * deltas,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        last,
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    final = events[-1]
    assert final.type == last
    assert final.response.output_text == text
    assert final.response.usage is not None
    assert whole.usage is not None
    assert final.response.usage.output_tokens == whole.usage.output_tokens
    assert {e.response.id for e in events if hasattr(e, "response")} == {events[0].response.id}


def test_the_stream_helper_gives_the_final_response(oai: openai.OpenAI) -> None:
    # Room enough for the model to end its answer by itself: the helper's final response is the
    # one of `response.completed`.
    with oai.responses.stream(
        model=MODEL, input="Say hello.", max_output_tokens=200, temperature=0
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas)
    assert final.output_text


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "name": "f", "parameters": BAD_SCHEMA}]},
         "tools[0].parameters.properties.tags.uniqueItems"),
        ({"input": [{"type": "function_call_output", "call_id": "call_1", "output": "21 C"}]},
         "input[0].call_id"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": BAD_SCHEMA}}},
         "text.format.schema.properties.tags.uniqueItems"),
        ({"max_output_tokens": 100_000}, "max_output_tokens"),
        ({"temperature": 5}, "temperature"),
    ],
)  # fmt: skip
def test_refused_responses_are_bad_requests_naming_the_field_before_any_worker(
    oai: openai.OpenAI, queen: RunningQueen, extra: dict[str, Any], param: str
) -> None:
    before = worker_requests(queen)
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(**{"model": MODEL, "input": "Hi", **extra})
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == param
    assert worker_requests(queen) == before


# -- function tools through the Responses API ------------------------------------------------


class Weather(BaseModel):
    """The weather tool's arguments: bounded, so a call always ends well within max tokens."""

    model_config = ConfigDict(extra="forbid")

    city: str = Field(min_length=1, max_length=20)
    unit: Literal["celsius", "fahrenheit"]


ASK = "What is the weather in Paris?"
FUNCTION: dict[str, Any] = {
    "type": "function", "name": "get_weather", "description": "The current weather in a city.",
    "parameters": Weather.model_json_schema(), "strict": True,
}  # fmt: skip
"""The weather tool in the Responses shape."""
FORCED: dict[str, Any] = {
    "model": MODEL, "input": ASK, "tools": [FUNCTION], "tool_choice": "required",
    "parallel_tool_calls": False, "max_output_tokens": 80, "temperature": 0,
}  # fmt: skip
"""A Responses request that must call the weather tool once, greedily."""


def test_a_response_calls_a_function_with_valid_arguments(oai: openai.OpenAI) -> None:
    got = oai.responses.create(**FORCED)
    assert got.status == "completed"
    (call,) = got.output
    assert call.type == "function_call"
    assert (call.name, call.status) == ("get_weather", "completed")
    assert call.id is not None
    assert call.id.startswith("fc_")
    assert call.call_id.startswith("call_")
    Weather.model_validate_json(call.arguments)
    assert [t.type == "function" and t.name for t in got.tools] == ["get_weather"]
    assert (got.tool_choice, got.parallel_tool_calls) == ("required", False)


def test_the_stream_helper_assembles_a_function_call(oai: openai.OpenAI) -> None:
    whole = oai.responses.create(**FORCED)
    with oai.responses.stream(**FORCED) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1  # the arguments come as they are generated
    (call,) = final.output
    assert call.type == "function_call"
    assert call.arguments == "".join(deltas)
    assert call.parsed_arguments == json.loads(call.arguments)  # the helper read a strict tool's
    Weather.model_validate_json(call.arguments)
    (same,) = whole.output
    assert same.type == "function_call"
    assert same.arguments == call.arguments  # greedy: the same call, whole or streamed
    kinds = [e.type for e in events]
    assert kinds[kinds.index("response.output_item.added") :] == [
        "response.output_item.added", *["response.function_call_arguments.delta"] * len(deltas),
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip


def test_a_function_output_sent_back_gets_a_text_answer(oai: openai.OpenAI) -> None:
    first = oai.responses.create(**FORCED)
    (call,) = first.output
    assert call.type == "function_call"
    output = {"type": "function_call_output", "call_id": call.call_id,
              "output": '{"temperature": 21, "sky": "clear"}'}  # fmt: skip
    then = oai.responses.create(
        model=MODEL, input=[{"role": "user", "content": ASK}, call.to_dict(), output],
        tools=[FUNCTION], tool_choice="none", max_output_tokens=30, temperature=0,
    )  # fmt: skip
    assert [item.type for item in then.output] == ["message"]
    assert then.output_text
    assert then.status in {"completed", "incomplete"}


def test_a_response_with_a_schema_parses(oai: openai.OpenAI) -> None:
    # The SDK sends text.format json_schema (strict) and parses output_text into the model.
    got = oai.responses.parse(
        model=MODEL, input=PROMPT, text_format=Person, max_output_tokens=400, temperature=0.7
    )
    assert got.status == "completed"
    assert isinstance(got.output_parsed, Person)
    assert Person.model_validate_json(got.output_text, strict=True) == got.output_parsed
    assert got.text.format is not None
    assert got.text.format.type == "json_schema"
    with oai.responses.stream(
        model=MODEL, input=PROMPT, text_format=Person, max_output_tokens=400, temperature=0.7
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 5
    assert isinstance(final.output_parsed, Person)


def test_a_response_for_an_unknown_model_is_not_found(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        oai.responses.create(model="gpt-5", input="Hi")
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["param"]) == ("model_not_found", "model")


# -- Anthropic's Messages API ----------------------------------------------------------------


def test_a_message_is_the_chat_answer_in_anthropics_shape(
    claude: anthropic.Anthropic, oai: openai.OpenAI
) -> None:
    text, prompt_tokens, completion_tokens = chat_answer(oai, 24)
    got = claude.messages.create(
        model=MODEL, max_tokens=24, messages=MESSAGES, metadata={"user_id": "u"}, **GREEDY
    )
    assert got.id.startswith("msg_")
    assert (got.type, got.role, got.model) == ("message", "assistant", MODEL)
    (block,) = got.content
    assert block.type == "text"
    assert block.text == text
    assert (got.usage.input_tokens, got.usage.output_tokens) == (prompt_tokens, completion_tokens)
    assert got.stop_reason == ("max_tokens" if completion_tokens == 24 else "end_turn")
    assert got.stop_sequence is None
    counted = claude.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert counted.input_tokens == prompt_tokens  # the prompt as the worker templates it


def test_a_system_prompt_and_turns_are_counted_as_generation_sees_them(
    claude: anthropic.Anthropic,
) -> None:
    messages: list[anthropic.types.MessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "Hi."}]},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a fruit."},
    ]
    system = "Answer in one word."
    got = claude.messages.create(model=MODEL, max_tokens=3, system=system, messages=messages)
    assert 0 < got.usage.output_tokens <= 3
    assert got.stop_reason in {"end_turn", "max_tokens"}
    counted = claude.messages.count_tokens(model=MODEL, system=system, messages=messages)
    assert counted.input_tokens == got.usage.input_tokens
    # Without a system prompt the template puts in its own (SmolLM2's names the model): the
    # count is of the prompt the template makes, not of the words sent.
    plain = claude.messages.count_tokens(model=MODEL, messages=messages)
    assert plain.input_tokens != counted.input_tokens


def test_a_stop_sequence_that_ends_a_message_is_named(claude: anthropic.Anthropic) -> None:
    free = claude.messages.create(model=MODEL, max_tokens=30, messages=MESSAGES, **GREEDY)
    text = "".join(b.text for b in free.content if b.type == "text")
    words = text.split()
    assert len(words) > 3, text
    stop = words[2]  # greedy: the same answer again, cut where its third word begins
    cut = claude.messages.create(
        model=MODEL, max_tokens=30, messages=MESSAGES, stop_sequences=["zzqx", stop], **GREEDY
    )
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)
    assert "".join(b.text for b in cut.content if b.type == "text") == text[: text.index(stop)]
    with claude.messages.stream(
        model=MODEL, max_tokens=30, messages=MESSAGES, stop_sequences=[stop], **GREEDY
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
    # Without a stop sequence in the way, the answer ends its turn or runs out of tokens.
    assert free.stop_reason in ("end_turn", "max_tokens")
    assert free.stop_sequence is None


def test_a_streamed_message_sends_anthropics_events_in_order(
    claude: anthropic.Anthropic,
) -> None:
    whole = claude.messages.create(model=MODEL, max_tokens=20, messages=MESSAGES, **GREEDY)
    stream = claude.messages.create(
        model=MODEL, max_tokens=20, messages=MESSAGES, stream=True, **GREEDY
    )
    events = list(stream)  # the client skips `ping` itself
    kinds = [e.type for e in events]
    deltas = kinds.count("content_block_delta")
    assert deltas > 0
    assert kinds == [
        "message_start", "content_block_start", *["content_block_delta"] * deltas,
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert [b.text for b in whole.content if b.type == "text"] == [text]
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == whole.stop_reason
    assert delta.usage.output_tokens == whole.usage.output_tokens
    assert delta.usage.input_tokens == whole.usage.input_tokens


def test_the_stream_helper_gives_the_final_message(claude: anthropic.Anthropic) -> None:
    whole = claude.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES, **GREEDY)
    with claude.messages.stream(model=MODEL, max_tokens=16, messages=MESSAGES, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert [b.text for b in final.content if b.type == "text"] == [text]
    assert [b.text for b in whole.content if b.type == "text"] == [text]
    assert final.stop_reason == whole.stop_reason
    # message_start cannot know the prompt's count; message_delta carries it.
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"extra_body": {"top_k": 40}}, "top_k"),
        ({"extra_body": {"temperature": 1.5}}, "temperature"),
        ({"max_tokens": 20_000}, "max_tokens"),  # past the context; the client caps it
        (
            {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
            "output_config.format",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"name": "f", "input_schema": BAD_SCHEMA}]},
         "tools.0.input_schema.properties.tags.uniqueItems"),
        ({"tools": [{"name": "f", "input_schema": {"type": "object"}}],
          "tool_choice": {"type": "tool", "name": "g"}}, "tool_choice.name"),
        (
            {"messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}},
            ]}]},
            "messages.0.content.0.type",
        ),
    ],
)  # fmt: skip
def test_refused_messages_are_anthropic_bad_requests_naming_the_field_before_any_worker(
    claude: anthropic.Anthropic, queen: RunningQueen, extra: dict[str, Any], field: str
) -> None:
    before = worker_requests(queen)
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 8, "messages": MESSAGES, **extra}
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(**params)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert field in body["error"]["message"]
    assert worker_requests(queen) == before


# -- custom tools through Anthropic's Messages API -------------------------------------------

TOOL: dict[str, Any] = {"name": "get_weather", "description": "The current weather in a city.",
                        "input_schema": Weather.model_json_schema()}  # fmt: skip
"""The weather tool in Anthropic's shape."""
ASKED: list[anthropic.types.MessageParam] = [{"role": "user", "content": ASK}]
ANY: dict[str, Any] = {
    "model": MODEL, "max_tokens": 80, "messages": ASKED, "tools": [TOOL],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True}, **GREEDY,
}  # fmt: skip
"""A message that must use the weather tool once, greedily."""


def test_a_message_uses_a_tool_with_valid_input(claude: anthropic.Anthropic) -> None:
    got = claude.messages.create(**ANY)
    assert got.stop_reason == "tool_use"
    (block,) = got.content
    assert block.type == "tool_use"
    assert block.id.startswith("toolu_")
    assert block.name == "get_weather"
    assert isinstance(block.input, dict)
    Weather.model_validate(block.input)
    # The tools are in the prompt: counted as generation saw them.
    counted = claude.messages.count_tokens(
        model=MODEL, messages=ASKED, tools=[TOOL], tool_choice=ANY["tool_choice"]
    )
    assert counted.input_tokens == got.usage.input_tokens
    plain = claude.messages.count_tokens(model=MODEL, messages=ASKED)
    assert plain.input_tokens < counted.input_tokens


def test_the_stream_helper_assembles_a_tool_use(claude: anthropic.Anthropic) -> None:
    whole = claude.messages.create(**ANY)
    with claude.messages.stream(**ANY) as stream:
        events = list(stream)
        final = stream.get_final_message()
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(pieces) > 1  # the input comes as it is generated
    assert final.stop_reason == "tool_use"
    (block,) = final.content
    assert block.type == "tool_use"
    assert block.input == json.loads("".join(pieces))
    Weather.model_validate(block.input)
    (same,) = whole.content
    assert same.type == "tool_use"
    assert same.input == block.input  # greedy: the same call, whole or streamed
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_a_tool_result_sent_back_gets_a_text_answer(claude: anthropic.Anthropic) -> None:
    first = claude.messages.create(**ANY)
    (use,) = first.content
    assert use.type == "tool_use"
    messages: list[anthropic.types.MessageParam] = [
        *ASKED,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "21 C and clear"}]},
    ]  # fmt: skip
    then = claude.messages.create(model=MODEL, max_tokens=30, messages=messages, tools=[TOOL],
                                  tool_choice={"type": "none"}, **GREEDY)  # fmt: skip
    assert [b.type for b in then.content] == ["text"]
    assert then.stop_reason in {"end_turn", "max_tokens"}
    counted = claude.messages.count_tokens(model=MODEL, messages=messages, tools=[TOOL],
                                           tool_choice={"type": "none"})  # fmt: skip
    assert counted.input_tokens == then.usage.input_tokens


def test_an_unknown_model_is_anthropics_not_found(claude: anthropic.Anthropic) -> None:
    for ask in (
        lambda: claude.messages.create(model="claude-x", max_tokens=8, messages=MESSAGES),
        lambda: claude.messages.count_tokens(model="claude-x", messages=MESSAGES),
    ):
        with pytest.raises(anthropic.NotFoundError) as caught:
            ask()
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["error"]["type"] == "not_found_error"
        assert MODEL in body["error"]["message"]


def test_a_deadline_is_anthropics_timeout_whole_and_in_a_stream(
    claude: anthropic.Anthropic,
) -> None:
    long: dict[str, Any] = {
        "model": MODEL, "max_tokens": 2000, **GREEDY,
        "messages": [{"role": "user", "content": "Count from 1 to 1000."}],
        "extra_headers": {"x-rbee-deadline": "0.5"},
    }  # fmt: skip
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude.messages.create(**long)
    assert caught.value.status_code == 504
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "timeout_error"
    # Whether the deadline comes before the stream's first event or after, the client raises it.
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        claude.messages.stream(**long) as stream,
    ):
        stream.until_done()
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "timeout_error"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": MODEL, "max_tokens": 2, "messages": MESSAGES}),
        ("/v1/messages", {"model": MODEL, "max_tokens": 2, "messages": MESSAGES, "stream": True}),
        ("/v1/responses", {"model": MODEL, "max_output_tokens": 2, "input": QUESTION}),
        ("/v1/responses", {"model": MODEL, "max_output_tokens": 2, "input": QUESTION,
                           "stream": True}),
        ("/v1/messages/count_tokens", {"model": MODEL, "messages": MESSAGES}),
    ],
)  # fmt: skip
def test_mapped_answers_keep_the_trace_headers(
    queen: RunningQueen, path: str, body: dict[str, Any]
) -> None:
    with http.stream("POST", f"{queen.url}{path}", json=body) as response:
        assert response.status_code == 200
        response.read()
    worker = queen.workers()[0]
    assert response.headers["x-rbee-worker"] == worker["id"]
    assert response.headers["x-rbee-hive"] == "localhost"
    assert "x-rbee-queued-ms" in response.headers
    streamed = response.headers["content-type"].startswith("text/event-stream")
    assert streamed == body.get("stream", False)


# -- keep-alives while a model loads ---------------------------------------------------------


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[RunningQueen]:
    """A queen with the model stored and no worker, whose workers are parked after 2 s idle."""
    paths = make_paths(tmp_path_factory.mktemp("shapes-idle"), model_cache)
    # Keep-alive comments every 0.05 s: a load of the default model (a few tenths of a second,
    # from a standby) is sure to get some.
    with running_queen(paths, "--idle-ttl", "2", "--keepalive", "0.05", models=()) as queen:
        yield queen


def cold(queen: RunningQueen) -> None:
    """Wait until no worker of the model serves (parked, or none yet)."""
    wait_until(
        lambda: all(w["state"] == "parked" for w in queen.workers()), 30, "the worker to park"
    )


def raw_lines(queen: RunningQueen, path: str, body: dict[str, Any]) -> list[str]:
    with http.stream("POST", f"{queen.url}{path}", json=body) as response:
        assert response.status_code == 200
        return list(response.iter_lines())


@pytest.mark.parametrize(
    ("path", "body", "first"),
    [
        ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": MESSAGES, "stream": True},
         "event: message_start"),
        ("/v1/responses", {"model": MODEL, "max_output_tokens": 4, "input": "Hi", "stream": True},
         "event: response.created"),
    ],
)  # fmt: skip
def test_a_stream_waiting_for_its_model_gets_comments_the_clients_skip(
    idle: RunningQueen, path: str, body: dict[str, Any], first: str
) -> None:
    cold(idle)
    lines = raw_lines(idle, path, body)
    assert lines[0] == first
    comments = [line for line in lines if line.startswith(":")]
    assert f": loading {MODEL}" in comments, lines
    assert any("x-rbee-worker=" in c for c in comments)
    # The same, through each official client's stream helper.
    cold(idle)
    if path == "/v1/messages":
        with (
            anthropic.Anthropic(base_url=idle.url, api_key="x", max_retries=0) as claude,
            claude.messages.stream(model=MODEL, max_tokens=4, messages=MESSAGES) as stream,
        ):
            assert stream.get_final_message().usage.output_tokens > 0
    else:
        with (
            openai.OpenAI(base_url=idle.base_url, api_key="x", max_retries=0) as oai,
            oai.responses.create(model=MODEL, input="Hi", max_output_tokens=4, stream=True) as s,
        ):
            assert [e.type for e in s][-1] in {"response.completed", "response.incomplete"}


# -- overload --------------------------------------------------------------------------------


@contextlib.contextmanager
def busy(queen: RunningQueen) -> Iterator[None]:
    """The worker generating a long stream until the block ends (then it is cancelled)."""
    body = {"model": MODEL, "prompt": "Count from 1 to 1000: 1, 2, 3,", "max_tokens": 2000,
            "temperature": 0, "stream": True}  # fmt: skip
    with http.stream("POST", f"{queen.base_url}/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        while not next(lines).startswith("data:"):
            pass
        yield


def test_a_full_worker_is_anthropics_529_with_retry_after(
    tmp_path: Path, model_cache: Path
) -> None:
    paths = make_paths(tmp_path, model_cache)
    with running_queen(paths, models=()) as queen:
        spawned = rbee(paths, "--queen", queen.url, "worker", "spawn", "--model", MODEL,
                       "--max-queued", "0", "--threads", "1")  # fmt: skip
        assert spawned.returncode == 0, spawned.stderr
        body = {"model": MODEL, "max_tokens": 4, "messages": MESSAGES}
        with busy(queen):
            full = http.post(f"{queen.url}/v1/messages", json=body)
            assert full.status_code == 529
            assert full.json()["error"]["type"] == "overloaded_error"
            assert int(full.headers["retry-after"]) >= 1
            with (
                anthropic.Anthropic(base_url=queen.url, api_key="x", max_retries=0) as claude,
                pytest.raises(anthropic.OverloadedError),
            ):
                claude.messages.create(**body)
            responses = http.post(
                f"{queen.base_url}/responses", json={"model": MODEL, "input": "Hi"}
            )
            assert responses.status_code == 503
            assert responses.json()["error"]["code"] == "server_overloaded"
            assert "retry-after" in responses.headers


# -- the API key -----------------------------------------------------------------------------

KEY = "s3cret"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningQueen]:
    """A queen on loopback that asks for an API key (no model: none is needed here)."""
    paths = make_paths(tmp_path_factory.mktemp("shapes-key"), None)
    with running_queen(paths, models=(), global_args=("--api-key", KEY)) as queen:
        yield queen


def test_anthropic_clients_key_is_taken_and_a_wrong_one_is_anthropics_401(
    keyed: RunningQueen,
) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": MESSAGES}
    url = f"{keyed.url}/v1/messages"
    # Past the key, the request reaches the route: no such model here, in Anthropic's body.
    for headers in ({"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                    {"authorization": f"Bearer {KEY}"}):  # fmt: skip
        r = http.post(url, json=body, headers=headers)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["type"] == "not_found_error"
    for headers in ({"x-api-key": "wrong"}, {}, {"authorization": "Bearer wrong"}):
        r = http.post(url, json=body, headers=headers)
        assert r.status_code == 401
        assert r.json() == {
            "type": "error",
            "error": {"type": "authentication_error", "message": r.json()["error"]["message"]},
        }
        assert "x-api-key" in r.json()["error"]["message"]
    # OpenAI's routes keep OpenAI's body, and take Anthropic's header too.
    refused = http.get(f"{keyed.url}/v1/models", headers={"x-api-key": "wrong"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert http.get(f"{keyed.url}/v1/models", headers={"x-api-key": KEY}).status_code == 200
    # The official client, with its own way of sending the key, and with a wrong one.
    with (
        anthropic.Anthropic(base_url=keyed.url, api_key=KEY, max_retries=0) as claude,
        pytest.raises(anthropic.NotFoundError),
    ):
        claude.messages.count_tokens(model=MODEL, messages=MESSAGES)
    with anthropic.Anthropic(
        base_url=keyed.url, api_key=None, auth_token=None, max_retries=0,
        default_headers={"x-api-key": "wrong"},
    ) as claude:  # fmt: skip
        with pytest.raises(anthropic.AuthenticationError) as caught:
            claude.messages.create(**body)
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["error"]["type"] == "authentication_error"
