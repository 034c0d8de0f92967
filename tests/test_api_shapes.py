"""The Responses and Anthropic Messages shapes as pure mappings: request bodies to chat requests
(bad fields refused with 400 naming them), chat answers and streams to each shape's answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rbee.api import anthropic, responses_api, sse
from rbee.api.openai import ChatMessage, parse_chat_request
from rbee.api.tools import ToolCall
from rbee.errors import ApiError
from rbee.queen.shapes import StreamShape, event_error, map_stream

# -- Anthropic: requests ---------------------------------------------------------------------

MESSAGES: dict[str, Any] = {
    "model": "m",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
TOOL_A: dict[str, Any] = {"name": "get_weather", "description": "The weather.",
                          "input_schema": WEATHER}  # fmt: skip
"""A tool in Anthropic's shape."""
USE: dict[str, Any] = {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                       "input": {"city": "Paris"}}  # fmt: skip


def said(*blocks: dict[str, Any]) -> dict[str, Any]:
    """Anthropic messages whose assistant turn is `blocks`."""
    return {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": list(blocks)}]}  # fmt: skip


def answered(*blocks: dict[str, Any]) -> dict[str, Any]:
    """Anthropic messages where the user answers the assistant's `USE` with `blocks`."""
    return {"messages": [*said(USE)["messages"], {"role": "user", "content": list(blocks)}]}


def test_a_messages_request_maps_to_a_chat_request() -> None:
    mapped = anthropic.parse_messages_request({
        **MESSAGES,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "text", "text": "b", "cache_control": {}}]},
            {"role": "assistant", "content": "c"},
            {"role": "user", "content": "d"},
        ],
        "temperature": 0.5, "top_p": 0.9, "stop_sequences": ["\n\n"], "stream": True,
        "metadata": {"user_id": "u"}, "top_k": None, "thinking": {"type": "disabled"},
        "output_config": {"effort": "low"}, "service_tier": "auto",
    })  # fmt: skip
    assert (mapped.model, mapped.stream) == ("m", True)
    parsed = parse_chat_request(mapped.chat)
    assert parsed.messages == (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "ab"),
        ChatMessage("assistant", "c"),
        ChatMessage("user", "d"),
    )
    sampling = parsed.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p) == (16, 0.5, 0.9)
    assert sampling.stop == ("\n\n",)
    assert (parsed.stream, parsed.include_usage) == (True, True)  # usage ends message_delta


def test_a_plain_messages_request_asks_no_stream() -> None:
    mapped = anthropic.parse_messages_request({**MESSAGES, "system": "s"})
    assert mapped.chat == {
        "model": "m",
        "messages": [{"role": "system", "content": [{"type": "text", "text": "s"}]},
                     {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 16,
    }  # fmt: skip
    assert not mapped.stream


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [
                {"type": "text", "text": "a"},
                {"type": "image", "source": {"type": "base64", "data": ""}},
            ]}]},
            "messages.0.content.1.type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x",
                                                        "tool_use_id": "t"}]}]},
            "messages.0.content.0.tool_use_id",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages.0.content.0.text"),
        ({"system": [{"type": "image"}]}, "system.0.type"),
        ({"system": 7}, "system"),
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"top_k": 40}, "top_k"),
        ({"stop_sequences": "x"}, "stop_sequences"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"stop_sequences": [""]}, "stop_sequences"),
        ({"stream": "yes"}, "stream"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"output_config": {"format": {"type": "json_schema", "schema": {}}}},
         "output_config.format"),
        ({"output_config": "high"}, "output_config"),
        ({"tools": {"name": "f"}}, "tools"),
        ({"tools": ["f"]}, "tools.0"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type"),
        ({"tools": [TOOL_A, {"type": "web_search_20250305", "name": "web_search"}]},
         "tools.1.type"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
        ({"tools": [{"name": "f", "input_schema": "object"}]}, "tools.0.input_schema"),
        ({"tools": [TOOL_A], "tool_choice": "auto"}, "tool_choice"),
        ({"tools": [TOOL_A], "tool_choice": {"type": "function"}}, "tool_choice.type"),
        ({"tools": [TOOL_A], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"tools": [TOOL_A], "tool_choice": {"type": "any", "disable_parallel_tool_use": 1}},
         "tool_choice.disable_parallel_tool_use"),
        ({"messages": [{"role": "user", "content": [USE]}]}, "messages.0.content.0.type"),
        (said({"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}),
         "messages.1.content.0.type"),
        (said({**USE, "input": "Paris"}), "messages.1.content.0.input"),
        (said({**USE, "id": None}), "messages.1.content.0.id"),
        (said({**USE, "name": "get weather"}), "messages.1.content.0.name"),
        (said({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}),
         "messages.1.content.0.type"),
        (answered({"type": "tool_result", "tool_use_id": "toolu_2", "content": "x"}),
         "messages.2.content.0.tool_use_id"),
        (answered({"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "image", "source": {"type": "base64", "data": ""}}]}),
         "messages.2.content.0.content.0.type"),
        (answered({"type": "tool_result", "tool_use_id": "toolu_1", "is_error": "yes"}),
         "messages.2.content.0.is_error"),
    ],
)  # fmt: skip
def test_bad_messages_fields_are_refused_naming_them(change: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        anthropic.parse_messages_request({**MESSAGES, **change})
    err = caught.value
    assert (err.status, err.param) == (400, param)
    assert err.message.startswith(f"{param}: ")  # Anthropic's body has no param: the message
    body = anthropic.error_body(err)
    assert body == {"type": "error",
                    "error": {"type": "invalid_request_error", "message": err.message}}  # fmt: skip


def test_count_tokens_takes_the_prompt_only() -> None:
    chat = anthropic.count_request({"model": "m", "system": "s", "messages": MESSAGES["messages"]})
    assert [m.role for m in parse_chat_request(chat).messages] == ["system", "user"]
    assert "max_tokens" not in chat
    with pytest.raises(ApiError) as caught:
        anthropic.count_request({"model": "m", "messages": [], "max_tokens": 5})
    assert caught.value.param == "messages"


@pytest.mark.parametrize(
    ("err", "status", "kind"),
    [
        (ApiError(400, "x"), 400, "invalid_request_error"),
        (ApiError(401, "x", code="invalid_api_key"), 401, "authentication_error"),
        (ApiError(404, "x", code="model_not_found"), 404, "not_found_error"),
        (ApiError(405, "x"), 405, "invalid_request_error"),
        (ApiError(413, "x", code="request_too_large"), 413, "request_too_large"),
        (ApiError(500, "x", type="server_error"), 500, "api_error"),
        (ApiError(502, "x", type="server_error"), 502, "api_error"),
        (ApiError(503, "x", code="worker_unavailable", retry_after=5), 503, "overloaded_error"),
        (ApiError(503, "x", code="server_overloaded", retry_after=2), 529, "overloaded_error"),
        (ApiError(504, "x", code="request_timeout"), 504, "timeout_error"),
    ],
)
def test_errors_take_anthropic_statuses_and_types(err: ApiError, status: int, kind: str) -> None:
    assert anthropic.error_status(err) == status
    assert anthropic.error_body(err)["error"] == {"type": kind, "message": "x"}


# -- Anthropic: answers ----------------------------------------------------------------------

CHAT_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Red."},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}  # fmt: skip


def test_a_chat_answer_maps_to_a_message() -> None:
    got = anthropic.message(CHAT_ANSWER, "m")
    assert got["id"].startswith("msg_")
    del got["id"]
    assert got == {
        "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": "Red."}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }  # fmt: skip
    cut = {**CHAT_ANSWER, "choices": [{**CHAT_ANSWER["choices"][0], "finish_reason": "length"}]}
    assert anthropic.message(cut, "m")["stop_reason"] == "max_tokens"
    # A choice a stop sequence ended names it (`stop_reason`, as rbee's workers and vLLM write).
    stopped = {**CHAT_ANSWER, "choices": [{**CHAT_ANSWER["choices"][0], "stop_reason": "##"}]}
    got = anthropic.message(stopped, "m")
    assert (got["stop_reason"], got["stop_sequence"]) == ("stop_sequence", "##")


async def test_a_stream_ended_by_a_stop_sequence_names_it() -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "##"}],
    }
    shape = anthropic.MessageStream("m")
    shape.opening()
    shape.chunk(chunk)
    events = shape.done().decode()
    assert '"stop_reason":"stop_sequence","stop_sequence":"##"' in events


Call = tuple[str, str, list[str]]
"""A call of a streamed answer: its id, its function's name, its arguments in pieces."""


def chat_stream(pieces: list[str], finish: str = "stop", calls: list[Call] | None = None) -> bytes:
    """A worker's chat stream with usage, as the relay passes it on: the text `pieces`, then
    the `calls` as OpenAI streams them (the first delta of a call with its id and name and empty
    arguments, then the pieces of its arguments)."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse.encode({"id": "c", "object": "chat.completion.chunk", "created": 1,
                           "model": "m", "choices": [choice], "usage": None})  # fmt: skip

    out = chunk({"role": "assistant", "content": ""})
    out += b"".join(chunk({"content": p}) for p in pieces)
    for index, (call_id, name, arguments) in enumerate(calls or []):
        first = {"index": index, "id": call_id, "type": "function",
                 "function": {"name": name, "arguments": ""}}  # fmt: skip
        out += chunk({"tool_calls": [first]})
        for piece in arguments:
            out += chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    out += chunk({}, finish)
    usage = {"prompt_tokens": 9, "completion_tokens": len(pieces), "total_tokens": 9 + len(pieces)}
    out += sse.encode({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [], "usage": usage})  # fmt: skip
    return out + sse.DONE


def first_events(stream: bytes, count: int) -> bytes:
    """The first `count` events of an SSE byte stream."""
    return b"".join(event + b"\n\n" for event in stream.split(b"\n\n")[:count])


class Source:
    """The relay's body: `data` in pieces of `size` bytes; records whether it was read to its
    end and closed."""

    def __init__(self, data: bytes, size: int) -> None:
        self._data = data
        self._size = size
        self.finished = False
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            for i in range(0, len(self._data), self._size):
                yield self._data[i : i + self._size]
            self.finished = True
        finally:
            self.closed = True


async def mapped(data: bytes, shape: StreamShape, size: int = 7) -> list[tuple[str | None, Any]]:
    """The (event name, payload) pairs `map_stream` makes of `data` cut in pieces; comments as
    (None, text)."""
    source = Source(data, size)
    out = b"".join([chunk async for chunk in map_stream(source, shape)])
    assert source.finished  # read to its end, so the relay counts the stream complete
    events: list[tuple[str | None, Any]] = []
    for frame in out.decode().split("\n\n")[:-1]:
        if frame.startswith(":"):
            events.append((None, frame))
            continue
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ")
        assert data_line.startswith("data: ")
        name, payload = name_line[7:], json.loads(data_line[6:])
        assert payload["type"] == name
        events.append((name, payload))
    return events


async def test_a_chat_stream_maps_to_anthropic_events_comments_passing() -> None:
    data = b": loading m\n\n: x-rbee-worker=w1\n\n" + chat_stream(["Re", "d."])
    events = await mapped(data, anthropic.MessageStream("m"))
    assert [name for name, _ in events] == [
        "message_start", None, None, "content_block_start", "ping", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0][1]["message"]
    assert (start["role"], start["content"], start["model"]) == ("assistant", [], "m")
    assert events[1] == (None, ": loading m")
    texts = [p["delta"]["text"] for n, p in events if n == "content_block_delta"]
    assert texts == ["Re", "d."]
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 9, "output_tokens": 2}


async def test_a_failing_stream_ends_with_an_anthropic_error_event() -> None:
    overloaded = ApiError(503, "full", type="server_error", code="server_overloaded")
    data = first_events(chat_stream(["a"]), 2) + sse.encode(overloaded.body()) + sse.DONE
    events = await mapped(data, anthropic.MessageStream("m"), size=5)
    error = {"type": "overloaded_error", "message": "full"}
    assert events[-1] == ("error", {"type": "error", "error": error})
    assert "message_stop" not in [name for name, _ in events]


async def test_a_stream_cut_short_ends_with_an_error() -> None:
    events = await mapped(chat_stream(["a", "b"])[: -len(sse.DONE)], anthropic.MessageStream("m"))
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        ({"message": "m", "type": "server_error", "code": "server_overloaded"}, 503,
         "server_overloaded"),
        ({"message": "m", "type": "server_error", "code": "request_timeout"}, 504,
         "request_timeout"),
        ({"message": "m", "type": "server_error", "code": None}, 500, None),
        ({"message": "m", "type": "invalid_request_error", "param": "x"}, 400, None),
    ],
)  # fmt: skip
def test_a_stream_error_event_is_told_by_its_code(
    error: dict[str, Any], status: int, code: str | None
) -> None:
    err = event_error({"error": error})
    assert (err.status, err.code, err.message) == (status, code, "m")


# -- Responses: requests ---------------------------------------------------------------------

RESPONSES: dict[str, Any] = {"model": "m", "input": "hi"}
TOOL: dict[str, Any] = {"type": "function", "name": "get_weather", "description": "The weather.",
                        "parameters": WEATHER}  # fmt: skip
"""A function tool in the Responses shape."""
CALL: dict[str, Any] = {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                        "arguments": '{"city": "Paris"}'}  # fmt: skip


def test_a_responses_request_maps_to_a_chat_request() -> None:
    mapped = responses_api.parse_responses_request({
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "a"},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "b", "annotations": []}]},
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "c"}, {"type": "input_text", "text": "d"}]},
        ],
        "max_output_tokens": 32, "temperature": 0.2, "top_p": 0.5, "stream": True,
        "store": False, "metadata": {"k": "v"}, "text": {"format": {"type": "text"}},
        "user": "u", "reasoning": {"effort": None}, "truncation": "disabled",
    })  # fmt: skip
    parsed = parse_chat_request(mapped.chat)
    assert parsed.messages == (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "a"),
        ChatMessage("assistant", "b"),
        ChatMessage("system", "cd"),
    )
    sampling = parsed.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p) == (32, 0.2, 0.5)
    assert (parsed.stream, parsed.include_usage, mapped.stream) == (True, True, True)
    assert mapped.echo["metadata"] == {"k": "v"}
    assert mapped.echo["instructions"] == "Be brief."


def test_a_string_input_is_one_user_message_and_store_may_be_absent() -> None:
    mapped = responses_api.parse_responses_request(RESPONSES)
    assert mapped.chat == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert not mapped.stream


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"input": None}, "input"),
        ({"input": 5}, "input"),
        ({"input": ["hi"]}, "input[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]},
         "input[0].call_id"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
         "input[0].content[0].text"),
        ({"input": [{"role": "user", "content": 3}]}, "input[0].content"),
        ({"instructions": ["x"]}, "instructions"),
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"text": {"format": "json"}}, "text.format"),
        ({"text": "plain"}, "text"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"truncation": "auto"}, "truncation"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"stream": 1}, "stream"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": ["f"]}, "tools[0]"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [TOOL, {"type": "file_search", "vector_store_ids": []}]}, "tools[1].type"),
        ({"tools": [TOOL], "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": "always"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({"tools": [TOOL], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
        ({"input": [{**CALL, "call_id": None}]}, "input[0].call_id"),
        ({"input": [{**CALL, "name": None}]}, "input[0].name"),
        ({"input": [{**CALL, "name": "get weather"}]}, "input[0].name"),
        ({"input": [{**CALL, "arguments": {"city": "Paris"}}]}, "input[0].arguments"),
        ({"input": [CALL, {"type": "function_call_output", "call_id": "call_1"}]},
         "input[1].output"),
        ({"input": [CALL, {"type": "function_call_output", "call_id": "call_2", "output": "x"}]},
         "input[1].call_id"),
        ({"input": [CALL, {"type": "function_call_output", "call_id": "call_1",
                           "output": [{"type": "input_image", "image_url": "u"}]}]},
         "input[1].output[0].type"),
        ({"input": [{"type": "custom_tool_call", "call_id": "c", "name": "f", "input": ""}]},
         "input[0].type"),
    ],
)  # fmt: skip
def test_bad_responses_fields_are_refused_naming_them(change: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        responses_api.parse_responses_request({**RESPONSES, **change})
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": "9"}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"input": [], "instructions": None}, "input"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"not": {}}}}},
         "text.format.schema.not"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "name": "get weather"}]}, "tools[0].name"),
        ({"tools": [TOOL, TOOL]}, "tools[1].name"),
        ({"tools": [{**TOOL, "description": 3}]}, "tools[0].description"),
        ({"tools": [{**TOOL, "parameters": {"type": "object", "properties": {
            "tags": {"type": "array", "uniqueItems": True}}}}]},
         "tools[0].parameters.properties.tags.uniqueItems"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "get_time"}},
         "tool_choice.name"),
    ],
)  # fmt: skip
def test_the_chat_parser_checks_the_rest_named_as_responses_name_it(
    change: dict[str, Any], param: str
) -> None:
    mapped = responses_api.parse_responses_request({**RESPONSES, **change})
    with pytest.raises(ApiError) as caught:
        parse_chat_request(mapped.chat)
    err = responses_api.rename(caught.value)
    assert (err.status, err.param) == (400, param)
    assert "max_tokens" not in err.message
    assert "].function" not in err.message


def test_a_format_maps_to_chat_and_is_echoed() -> None:
    fmt = {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}
    mapped = responses_api.parse_responses_request({**RESPONSES, "text": {"format": fmt}})
    schema = {"name": "x", "schema": {"type": "object"}, "strict": True}
    assert mapped.chat["response_format"] == {"type": "json_schema", "json_schema": schema}
    assert responses_api.response(CHAT_ANSWER, mapped)["text"] == {"format": fmt}
    plain = responses_api.parse_responses_request(RESPONSES)
    assert "response_format" not in plain.chat
    assert responses_api.response(CHAT_ANSWER, plain)["text"] == {"format": {"type": "text"}}
    json_object = {"type": "json_object"}
    mapped = responses_api.parse_responses_request({**RESPONSES, "text": {"format": json_object}})
    assert mapped.chat["response_format"] == json_object


# -- Responses: answers ----------------------------------------------------------------------


def test_a_chat_answer_maps_to_a_response() -> None:
    request = responses_api.parse_responses_request({**RESPONSES, "max_output_tokens": 5})
    got = responses_api.response(CHAT_ANSWER, request)
    assert got["id"].startswith("resp_")
    assert (got["object"], got["status"], got["model"]) == ("response", "completed", "m")
    assert (got["incomplete_details"], got["error"], got["store"]) == (None, None, False)
    assert got["max_output_tokens"] == 5
    (item,) = got["output"]
    assert (item["type"], item["role"], item["status"]) == ("message", "assistant", "completed")
    assert item["content"] == [
        {"type": "output_text", "text": "Red.", "annotations": [], "logprobs": []}
    ]
    assert got["usage"] == {
        "input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15,
    }  # fmt: skip
    cut = {**CHAT_ANSWER, "choices": [{**CHAT_ANSWER["choices"][0], "finish_reason": "length"}]}
    got = responses_api.response(cut, request)
    assert (got["status"], got["output"][0]["status"]) == ("incomplete", "incomplete")
    assert got["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize(("finish", "last"), [("stop", "response.completed"),
                                             ("length", "response.incomplete")])  # fmt: skip
async def test_a_chat_stream_maps_to_responses_events(finish: str, last: str) -> None:
    request = responses_api.parse_responses_request({**RESPONSES, "stream": True})
    data = b": loading m\n\n" + chat_stream(["Re", "d."], finish)
    events = await mapped(data, responses_api.ResponseStream(request), size=3)
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress", None, "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", last,
    ]  # fmt: skip
    payloads = [p for name, p in events if name is not None]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    rid = payloads[0]["response"]["id"]
    assert payloads[0]["response"]["status"] == "in_progress"
    final = payloads[-1]["response"]
    assert final["id"] == rid
    assert final["output"][0]["content"][0]["text"] == "Red."
    assert final["usage"]["input_tokens"] == 9
    assert final["usage"]["output_tokens"] == 2
    item_ids = {p["item_id"] for p in payloads if "item_id" in p}
    assert item_ids == {final["output"][0]["id"]}


async def test_a_failing_responses_stream_ends_with_error_and_failed() -> None:
    request = responses_api.parse_responses_request({**RESPONSES, "stream": True})
    late = ApiError(504, "late", type="server_error", code="request_timeout")
    data = first_events(chat_stream(["a"]), 2) + sse.encode(late.body()) + sse.DONE
    events = await mapped(data, responses_api.ResponseStream(request))
    assert [name for name, _ in events].count("response.output_text.delta") == 1
    (name, error), (failed_name, failed) = events[-2:]
    assert (name, error["code"], error["message"]) == ("error", "request_timeout", "late")
    assert failed_name == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "request_timeout", "message": "late"}


# -- tools: requests -------------------------------------------------------------------------


def test_anthropic_tools_map_to_chat_tools() -> None:
    mapped = anthropic.parse_messages_request({**MESSAGES, "tools": [
        {**TOOL_A, "cache_control": {"type": "ephemeral"}},
        {"type": "custom", "name": "get_time", "input_schema": {"type": "object"}, "strict": True},
    ]})  # fmt: skip
    assert mapped.chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "The weather.",
                                          "parameters": WEATHER}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"},
                                          "strict": True}},
    ]  # fmt: skip
    spec = parse_chat_request(mapped.chat).tools
    assert spec is not None
    assert [t.name for t in spec.tools] == ["get_weather", "get_time"]
    assert (spec.choice, spec.parallel) == ("auto", True)


@pytest.mark.parametrize(
    ("choice", "chat_choice", "kind", "function", "parallel"),
    [
        ({"type": "auto"}, "auto", "auto", None, True),
        ({"type": "any"}, "required", "required", None, True),
        ({"type": "tool", "name": "get_weather"},
         {"type": "function", "function": {"name": "get_weather"}}, "function", "get_weather",
         False),
        ({"type": "none"}, "none", "none", None, True),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", "required", None, False),
        ({"type": "auto", "disable_parallel_tool_use": False}, "auto", "auto", None, True),
    ],
)  # fmt: skip
def test_anthropic_tool_choice_maps_to_chats(
    choice: dict[str, Any], chat_choice: Any, kind: str, function: str | None, parallel: bool
) -> None:
    mapped = anthropic.parse_messages_request({**MESSAGES, "tools": [TOOL_A],
                                               "tool_choice": choice})  # fmt: skip
    assert mapped.chat["tool_choice"] == chat_choice
    spec = parse_chat_request(mapped.chat).tools
    assert spec is not None
    assert (spec.choice, spec.function, spec.parallel) == (kind, function, parallel)


def test_tool_use_and_tool_result_blocks_map_to_calls_and_tool_messages() -> None:
    time_use = {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}
    mapped = anthropic.parse_messages_request({**MESSAGES, "tools": [TOOL_A], "messages": [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, USE,
                                          time_use]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21 C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "no clock"}]},
            {"type": "text", "text": "And tomorrow?"},
        ]},
        {"role": "assistant", "content": [USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
    ]})  # fmt: skip
    calls = (ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),
             ToolCall("toolu_2", "get_time", "{}"))  # fmt: skip
    assert parse_chat_request(mapped.chat).messages == (
        ChatMessage("user", "Weather and time in Paris?"),
        ChatMessage("assistant", "Let me look.", tool_calls=calls),
        ChatMessage("tool", "21 C", tool_call_id="toolu_1"),
        ChatMessage("tool", "Error: no clock", tool_call_id="toolu_2"),
        ChatMessage("user", "And tomorrow?"),
        ChatMessage("assistant", "", tool_calls=calls[:1]),
        ChatMessage("tool", "", tool_call_id="toolu_1"),  # results alone: no user message after
    )


def test_count_tokens_takes_the_tools_too() -> None:
    chat = anthropic.count_request({"model": "m", "tools": [TOOL_A],
                                    "tool_choice": {"type": "any"}, **answered(
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21 C"})})  # fmt: skip
    parsed = parse_chat_request(chat)
    assert parsed.tools is not None
    assert parsed.tools.choice == "required"
    assert [m.role for m in parsed.messages] == ["user", "assistant", "tool"]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{**TOOL_A, "name": "get weather"}]}, "tools.0.name"),
        ({"tools": [TOOL_A, TOOL_A]}, "tools.1.name"),
        ({"tools": [{**TOOL_A, "description": 3}]}, "tools.0.description"),
        ({"tools": [{**TOOL_A, "input_schema": {"type": "array"}}]}, "tools.0.input_schema.type"),
        ({"tools": [{**TOOL_A, "input_schema": {"type": "object", "properties": {
            "x": {"anyOf": [{"type": "string"}, {"not": {"type": "null"}}]}}}}]},
         "tools.0.input_schema.properties.x.anyOf.1.not"),
        ({"tools": [TOOL_A], "tool_choice": {"type": "tool", "name": "get_time"}},
         "tool_choice.name"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ],
)  # fmt: skip
def test_the_chat_parser_checks_tools_named_as_anthropic_names_them(
    change: dict[str, Any], param: str
) -> None:
    mapped = anthropic.parse_messages_request({**MESSAGES, **change})
    with pytest.raises(ApiError) as caught:
        parse_chat_request(mapped.chat)
    err = anthropic.rename(caught.value)
    assert (err.status, err.param) == (400, param)
    assert err.message.startswith(f"{param}: ")
    assert not err.message.startswith(f"{param}: {param}")
    assert "tools[" not in err.message
    assert "].function" not in err.message


def test_responses_tools_map_to_chat_tools() -> None:
    untyped = {"type": "function", "name": "get_time", "parameters": None, "strict": False}
    mapped = responses_api.parse_responses_request({
        **RESPONSES, "tools": [TOOL, untyped], "tool_choice": "required",
        "parallel_tool_calls": False,
    })  # fmt: skip
    assert mapped.chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "The weather.",
                                          "parameters": WEATHER, "strict": True}},
        {"type": "function", "function": {"name": "get_time", "strict": False}},
    ]  # fmt: skip
    spec = parse_chat_request(mapped.chat).tools
    assert spec is not None
    assert (spec.choice, spec.parallel) == ("required", False)
    # The Response echoes them as OpenAI's does: strict unless said otherwise.
    assert mapped.echo["tools"] == [{**TOOL, "strict": True}, {**untyped, "description": None}]
    assert (mapped.echo["tool_choice"], mapped.echo["parallel_tool_calls"]) == ("required", False)


@pytest.mark.parametrize(
    ("choice", "kind", "function"),
    [
        ("auto", "auto", None),
        ("none", "none", None),
        ("required", "required", None),
        ({"type": "function", "name": "get_weather"}, "function", "get_weather"),
    ],
)
def test_responses_tool_choice_maps_to_chats(choice: Any, kind: str, function: str | None) -> None:
    mapped = responses_api.parse_responses_request({**RESPONSES, "tools": [TOOL],
                                                    "tool_choice": choice})  # fmt: skip
    spec = parse_chat_request(mapped.chat).tools
    assert spec is not None
    assert (spec.choice, spec.function) == (kind, function)
    assert mapped.echo["tool_choice"] == choice


def test_parallel_tool_calls_without_tools_is_accepted_and_ignored() -> None:
    mapped = responses_api.parse_responses_request({**RESPONSES, "parallel_tool_calls": True})
    assert "parallel_tool_calls" not in mapped.chat
    assert parse_chat_request(mapped.chat).tools is None


def test_function_call_items_map_to_calls_and_tool_messages() -> None:
    second = {**CALL, "call_id": "call_2", "arguments": '{"city": "Rome"}', "id": "fc_2",
              "status": "completed"}  # fmt: skip
    mapped = responses_api.parse_responses_request({**RESPONSES, "tools": [TOOL], "input": [
        {"role": "user", "content": "Paris and Rome?"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
        CALL,
        second,
        {"type": "function_call_output", "call_id": "call_1", "output": "21 C"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "19 C"}]},
        CALL,
        {"type": "function_call_output", "call_id": "call_1", "output": "22 C"},
        {"role": "user", "content": "Thanks."},
    ]})  # fmt: skip
    paris = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    rome = ToolCall("call_2", "get_weather", '{"city": "Rome"}')
    assert parse_chat_request(mapped.chat).messages == (
        ChatMessage("user", "Paris and Rome?"),
        ChatMessage("assistant", "Let me look.", tool_calls=(paris, rome)),  # one turn
        ChatMessage("tool", "21 C", tool_call_id="call_1"),
        ChatMessage("tool", "19 C", tool_call_id="call_2"),
        ChatMessage("assistant", "", tool_calls=(paris,)),
        ChatMessage("tool", "22 C", tool_call_id="call_1"),
        ChatMessage("user", "Thanks."),
    )


# -- tools: answers --------------------------------------------------------------------------

CALLS: list[Call] = [("call_a", "get_weather", ['{"city', '": "Par', 'is"}']),
                     ("call_b", "get_time", ["{}"])]  # fmt: skip


def answer_with(text: str | None, calls: list[Call], finish: str = "tool_calls") -> dict[str, Any]:
    """A whole chat answer whose message is `text` and `calls`, ended by `finish`."""
    tool_calls = [{"id": i, "type": "function", "function": {"name": n, "arguments": "".join(a)}}
                  for i, n, a in calls]  # fmt: skip
    message = {"role": "assistant", "content": text, "tool_calls": tool_calls}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {**CHAT_ANSWER, "choices": [choice]}


def test_a_chat_answer_with_calls_maps_to_tool_use_blocks() -> None:
    got = anthropic.message(answer_with("Let me look.", CALLS), "m")
    assert got["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
    ]
    assert got["stop_reason"] == "tool_use"
    alone = anthropic.message(answer_with(None, CALLS[:1]), "m")
    assert [b["type"] for b in alone["content"]] == ["tool_use"]
    cut = anthropic.message(answer_with(None, [("call_a", "get_weather", ['{"ci'])], "length"), "m")
    assert (cut["content"][0]["input"], cut["stop_reason"]) == ({}, "max_tokens")


@pytest.mark.parametrize("text", [["Let me", " look."], []])
async def test_a_chat_stream_with_calls_maps_to_tool_use_blocks(text: list[str]) -> None:
    events = await mapped(chat_stream(text, "tool_calls", CALLS), anthropic.MessageStream("m"))
    texts = ["content_block_start", "content_block_delta", "content_block_delta",
             "content_block_stop"] if text else []  # fmt: skip
    names = [name for name, _ in events if name != "ping"]
    assert names == [
        "message_start", *texts,
        "content_block_start", *["content_block_delta"] * 3, "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    pings = [i for i, (name, _) in enumerate(events) if name == "ping"]
    assert pings == [2]  # one, after the first block's start
    starts = [p for n, p in events if n == "content_block_start"]
    first = len(starts) - 2
    assert [p["index"] for p in starts] == list(range(len(starts)))
    assert [p["content_block"] for p in starts[first:]] == [
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
    ]
    stops = [p["index"] for n, p in events if n == "content_block_stop"]
    assert stops == list(range(len(starts)))
    json_of: dict[int, str] = {}
    for name, payload in events:
        if name == "content_block_delta" and payload["delta"]["type"] == "input_json_delta":
            json_of[payload["index"]] = (
                json_of.get(payload["index"], "") + payload["delta"]["partial_json"]
            )
    assert json_of == {first: '{"city": "Paris"}', first + 1: "{}"}
    assert events[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


def test_a_chat_answer_with_calls_maps_to_function_call_items() -> None:
    request = responses_api.parse_responses_request({**RESPONSES, "tools": [TOOL]})
    got = responses_api.response(answer_with("Let me look.", CALLS), request)
    message, *calls = got["output"]
    assert (message["type"], message["content"][0]["text"]) == ("message", "Let me look.")
    assert all(c["id"].startswith("fc_") for c in calls)
    assert [{k: v for k, v in c.items() if k != "id"} for c in calls] == [
        {"type": "function_call", "status": "completed", "call_id": "call_a",
         "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "status": "completed", "call_id": "call_b", "name": "get_time",
         "arguments": "{}"},
    ]  # fmt: skip
    assert got["status"] == "completed"
    assert (got["tools"], got["tool_choice"], got["parallel_tool_calls"]) == (
        [{**TOOL, "strict": True}],
        "auto",
        True,
    )
    alone = responses_api.response(answer_with(None, CALLS[:1]), request)
    assert [item["type"] for item in alone["output"]] == ["function_call"]
    cut = responses_api.response(answer_with("", [*CALLS[:1], ("c", "f", ['{"a'])], "length"),
                                 request)  # fmt: skip
    assert (cut["status"], [item["status"] for item in cut["output"]]) == (
        "incomplete",
        ["completed", "incomplete"],
    )
    assert cut["output"][-1]["arguments"] == '{"a'


@pytest.mark.parametrize(
    ("text", "finish", "last"),
    [
        (["Let me", " look."], "tool_calls", "response.completed"),
        ([], "tool_calls", "response.completed"),
        ([], "length", "response.incomplete"),
    ],
)
async def test_a_chat_stream_with_calls_maps_to_function_call_events(
    text: list[str], finish: str, last: str
) -> None:
    request = responses_api.parse_responses_request({**RESPONSES, "stream": True,
                                                     "tools": [TOOL]})  # fmt: skip
    stream = chat_stream(text, finish, CALLS)
    events = await mapped(stream, responses_api.ResponseStream(request), size=5)
    message = (
        [
            "response.output_item.added",
            "response.content_part.added",
            *["response.output_text.delta"] * len(text),
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
        ]
        if text
        else []
    )
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress", *message,
        "response.output_item.added", *["response.function_call_arguments.delta"] * 3,
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", last,
    ]  # fmt: skip
    payloads = [p for _, p in events]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    added = [p for n, p in events if n == "response.output_item.added"]
    done = [p for n, p in events if n == "response.output_item.done"]
    assert [p["output_index"] for p in added] == [p["output_index"] for p in done]
    assert [p["output_index"] for p in added] == list(range(len(added)))
    first = 1 if text else 0
    assert {k: v for k, v in added[first]["item"].items() if k != "id"} == {
        "type": "function_call", "status": "in_progress", "call_id": "call_a",
        "name": "get_weather", "arguments": "",
    }  # fmt: skip
    final = payloads[-1]["response"]
    assert final["output"] == [p["item"] for p in done]
    for index, (call_id, name, pieces) in enumerate(CALLS, start=first):
        item = final["output"][index]
        assert (item["type"], item["call_id"], item["name"]) == ("function_call", call_id, name)
        assert item["id"] == added[index]["item"]["id"]
        deltas = [p for n, p in events if n == "response.function_call_arguments.delta"
                  and p["output_index"] == index]  # fmt: skip
        assert [p["delta"] for p in deltas] == pieces
        assert {p["item_id"] for p in deltas} == {item["id"]}
        (arguments,) = [p for n, p in events if n == "response.function_call_arguments.done"
                        and p["output_index"] == index]  # fmt: skip
        assert arguments["arguments"] == item["arguments"] == "".join(pieces)
        assert arguments["item_id"] == item["id"]
    statuses = [item["status"] for item in final["output"]]
    assert statuses[-1] == ("completed" if finish == "tool_calls" else "incomplete")
    assert set(statuses[:-1]) <= {"completed"}
