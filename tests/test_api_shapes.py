"""The Responses and Anthropic Messages shapes as pure mappings: request bodies to chat requests
(bad fields refused with 400 naming them), chat answers and streams to each shape's answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rbee.api import anthropic, responses_api, sse
from rbee.api.openai import ChatMessage, parse_chat_request
from rbee.errors import ApiError
from rbee.queen.shapes import StreamShape, event_error, map_stream

# -- Anthropic: requests ---------------------------------------------------------------------

MESSAGES: dict[str, Any] = {
    "model": "m",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


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
            "messages.0.content.0.type",
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
        ({"tools": [{"name": "f", "input_schema": {}}]}, "tools"),
        ({"tool_choice": {"type": "auto"}}, "tool_choice"),
        ({"output_config": {"format": {"type": "json_schema", "schema": {}}}},
         "output_config.format"),
        ({"output_config": "high"}, "output_config"),
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


def chat_stream(pieces: list[str], finish: str = "stop") -> bytes:
    """A worker's chat stream with usage, as the relay passes it on."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse.encode({"id": "c", "object": "chat.completion.chunk", "created": 1,
                           "model": "m", "choices": [choice], "usage": None})  # fmt: skip

    out = chunk({"role": "assistant", "content": ""})
    out += b"".join(chunk({"content": p}) for p in pieces)
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
         "input[0].type"),
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
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "text.format"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"text": "plain"}, "text"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"truncation": "auto"}, "truncation"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"stream": 1}, "stream"),
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
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_the_chat_parser_checks_the_rest_named_as_responses_name_it(
    change: dict[str, Any], param: str
) -> None:
    mapped = responses_api.parse_responses_request({**RESPONSES, **change})
    with pytest.raises(ApiError) as caught:
        parse_chat_request(mapped.chat)
    err = responses_api.rename(caught.value)
    assert (err.status, err.param) == (400, param)
    assert "max_tokens" not in err.message


def test_tools_and_formats_map_to_chat_once_lifted() -> None:
    tool = {"type": "function", "name": "f", "description": "d",
            "parameters": {"type": "object"}, "strict": True}  # fmt: skip
    fmt = {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}
    mapped = responses_api.parse_responses_request(
        {**RESPONSES, "tools": [tool], "text": {"format": fmt}, "tool_choice": "auto"},
        not_yet=frozenset(),
    )
    function = {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True}
    assert mapped.chat["tools"] == [{"type": "function", "function": function}]
    schema = {"name": "x", "schema": {"type": "object"}, "strict": True}
    assert mapped.chat["response_format"] == {"type": "json_schema", "json_schema": schema}
    assert mapped.chat["tool_choice"] == "auto"


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
