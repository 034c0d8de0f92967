"""OpenAI's Responses API, stateless, on rbee's chat completions: pure mappings, both ways.

A `POST /v1/responses` body becomes a chat completion request body (a dict that the shared
parser, rbee.api.openai, then reads as it reads any chat request: its errors are renamed to the
Responses fields by `rename`), and a chat completion answer, whole or streamed chunk by chunk,
becomes the Response object or its events. rbee keeps no state: nothing is stored (`store` absent
or false; the answer says `"store": false`), and `store: true`, `previous_response_id`,
`conversation` and `background` are refused with a 400 naming the field.

Function tools are chat's tools (rbee.api.tools): `tools` (`{"type": "function", "name",
"description", "parameters", "strict"}`), `tool_choice` and `parallel_tool_calls` map to chat's,
`function_call` input items to an assistant message's `tool_calls` and `function_call_output`
items to `tool` messages; each call of the answer becomes a `function_call` output item (streamed
as `response.function_call_arguments.delta` events). Hosted tools (web search, file search, ...)
are refused. `text.format` (`json_object`, or `json_schema` with `name`, `schema`, `strict` at
its top level, as this API writes it) is chat's `response_format`: the answer's text is JSON
valid for the schema (rbee.api.structured), and a schema rbee cannot enforce is a 400 naming its
path under `text.format.schema`.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from rbee.api import sse
from rbee.api.chat_chunks import ChatChunks
from rbee.api.tools import parse_tool_calls
from rbee.errors import ApiError

__all__ = [
    "ResponseStream",
    "ResponsesRequest",
    "new_id",
    "parse_responses_request",
    "rename",
    "response",
]

_ROLES = frozenset({"user", "system", "developer", "assistant"})
_TEXT_PARTS = frozenset({"input_text", "output_text"})
_MAX_METADATA = 16
_RENAMED = {"max_tokens": "max_output_tokens", "response_format": "text.format",
            "response_format.type": "text.format.type"}  # fmt: skip
_SCHEMA_PATH = re.compile(r"response_format\.json_schema\b")
_CHAT_TOOL = re.compile(r"tools\[(\d+)\]\.function\b")
_CALL_FIELDS = {"id": "call_id", "function.name": "name", "function.arguments": "arguments"}


@dataclass(frozen=True)
class ResponsesRequest:
    """A `POST /v1/responses` mapped onto chat completions: the chat request body to relay,
    and the request's settings a Response echoes."""

    chat: dict[str, Any]
    echo: dict[str, Any]
    stream: bool

    @property
    def model(self) -> str:
        """The model asked for."""
        model: str = self.chat["model"]
        return model


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_type_name(body)}")
    return body


def _refuse_state(body: dict[str, Any]) -> None:
    """rbee stores no response: refuse what would need one."""
    if body.get("store") is True:
        raise _bad("store", "store: true is not supported: rbee keeps no responses; leave store "
                   "out or send false", "unsupported_parameter")  # fmt: skip
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise _bad(key, f"{key} is not supported: rbee keeps no responses; send the whole "
                       "conversation in input", "unsupported_parameter")  # fmt: skip
    if body.get("background") is True:
        raise _bad("background", "background responses are not supported: rbee keeps no "
                   "responses", "unsupported_parameter")  # fmt: skip


def _format(body: dict[str, Any]) -> dict[str, Any] | None:
    """`text.format` as it was given; None for plain text."""
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _bad("text", f"text must be an object, got {_type_name(text)}", "invalid_type")
    fmt = text.get("format")
    if fmt is None or fmt == {"type": "text"}:
        return None
    if not isinstance(fmt, dict):
        raise _bad("text.format", f"text.format must be an object, got {_type_name(fmt)}",
                   "invalid_type")  # fmt: skip
    return fmt


def _refuse_unsupported(body: dict[str, Any]) -> None:
    reasoning = body.get("reasoning")
    if reasoning is not None and not (isinstance(reasoning, dict) and
                                      all(v is None for v in reasoning.values())):  # fmt: skip
        raise _bad("reasoning", "reasoning is not supported by rbee's models",
                   "unsupported_parameter")  # fmt: skip
    if body.get("include"):
        raise _bad("include", "include is not supported yet", "unsupported_parameter")
    if body.get("top_logprobs") is not None:
        raise _bad("top_logprobs", "top_logprobs is not supported yet on /v1/responses",
                   "unsupported_parameter")  # fmt: skip
    if body.get("truncation") not in (None, "disabled"):
        raise _bad("truncation", 'only truncation "disabled" is supported',
                   "unsupported_parameter")  # fmt: skip
    if body.get("prompt") is not None:
        raise _bad("prompt", "prompt templates are not supported: rbee keeps no prompts",
                   "unsupported_parameter")  # fmt: skip


def _content(param: str, value: Any) -> str | list[dict[str, str]]:
    """A message's content, or a function call's output: a string or text parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _bad(param, f"{param} must be a string or a list of content parts, got "
                   f"{_type_name(value)}", "invalid_type")  # fmt: skip
    parts = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else _type_name(part)
        if not isinstance(kind, str) or kind not in _TEXT_PARTS:  # a list is no set member
            raise _bad(f"{where}.type", f"only input_text and output_text content parts are "
                       f"supported, got {kind!r}", "unsupported_parameter")  # fmt: skip
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text", f"text must be a string, got {_type_name(text)}",
                       "invalid_type")  # fmt: skip
        parts.append({"type": "text", "text": text})
    return parts


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(f"{where}.{key}", f"{where}.{key} must be a non-empty string, got "
                   f"{_type_name(value)}", "missing_required_parameter" if value is None
                   else "invalid_type")  # fmt: skip
    return value


def _function_call(where: str, item: dict[str, Any]) -> dict[str, Any]:
    """A `function_call` input item as a chat tool call, held to chat's rules for one."""
    call_id, name = _string(item, "call_id", where), _string(item, "name", where)
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        raise _bad(f"{where}.arguments", f"{where}.arguments must be a string (JSON), got "
                   f"{_type_name(arguments)}", "invalid_type")  # fmt: skip
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    try:
        parse_tool_calls(0, [call])
    except ApiError as err:
        inner = (err.param or "").removeprefix("messages[0].tool_calls[0].")
        param = f"{where}.{_CALL_FIELDS.get(inner, inner)}"
        message = err.message.replace(f"messages[0].tool_calls[0].{inner}", param)
        raise _bad(param, message, err.code or "invalid_value") from None
    return call


def _function_output(where: str, item: dict[str, Any], calls: set[str]) -> dict[str, Any]:
    """A `function_call_output` input item as a chat `tool` message."""
    call_id = _string(item, "call_id", where)
    if call_id not in calls:
        raise _bad(f"{where}.call_id", f"no function_call item before {where} has the call_id "
                   f"{call_id[:80]!r}")  # fmt: skip
    if "output" not in item:
        raise _bad(f"{where}.output", f"{where}.output is required", "missing_required_parameter")
    return {"role": "tool", "tool_call_id": call_id,
            "content": _content(f"{where}.output", item["output"])}  # fmt: skip


def _input(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("input")
    if value is None:
        raise _bad("input", "input is required", "missing_required_parameter")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _bad("input", f"input must be a string or a list of items, got "
                   f"{_type_name(value)}", "invalid_type")  # fmt: skip
    out: list[dict[str, Any]] = []
    calls: set[str] = set()
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "each input item must be an object", "invalid_type")
        kind = item.get("type", "message")
        if kind == "function_call":
            call = _function_call(where, item)
            calls.add(call["id"])
            # One turn's calls (and the text before them) are one assistant message in chat.
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            continue
        if kind == "function_call_output":
            out.append(_function_output(where, item, calls))
            continue
        if kind != "message":
            raise _bad(f"{where}.type", "only message, function_call and function_call_output "
                       f"items are supported, got an item of type {str(kind)[:40]!r}",
                       "unsupported_parameter")  # fmt: skip
        role = item.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _bad(f"{where}.role", f"role must be one of {', '.join(sorted(_ROLES))}, got "
                       f"{role!r}")  # fmt: skip
        out.append({"role": role, "content": _content(f"{where}.content", item.get("content"))})
    return out


def _instructions(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("instructions")
    if value is None:
        return []
    if not isinstance(value, str):
        raise _bad("instructions", f"instructions must be a string, got {_type_name(value)}",
                   "invalid_type")  # fmt: skip
    return [{"role": "system", "content": value}] if value else []


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    value = body.get("metadata")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad("metadata", "metadata must be an object of strings", "invalid_type")
    if len(value) > _MAX_METADATA:
        raise _bad("metadata", f"metadata takes at most {_MAX_METADATA} keys, got {len(value)}")
    return value


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The function tools of a request, each as the Response echoes it (hosted tools refused)."""
    value = body.get("tools")
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("tools", f"tools must be a list, got {_type_name(value)}", "invalid_type")
    out = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(where, f"{where} must be an object, got {_type_name(tool)}", "invalid_type")
        kind = tool.get("type")
        if kind != "function":
            raise _bad(f"{where}.type", f'only function tools ("type": "function") are supported: '
                       f"rbee runs no hosted tools, got {str(kind)[:40]!r}",
                       "unsupported_parameter")  # fmt: skip
        # OpenAI's Responses API holds function tools to their schema unless strict is false.
        strict = True if tool.get("strict") is None else tool["strict"]
        out.append({"type": "function", "name": tool.get("name"),
                    "description": tool.get("description"), "parameters": tool.get("parameters"),
                    "strict": strict})  # fmt: skip
    return out


def _chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses function tools ({type, name, description, parameters, strict}) as chat's."""
    return [
        {"type": "function",
         "function": {k: v for k, v in tool.items() if k != "type" and v is not None}}
        for tool in tools
    ]  # fmt: skip


def _tool_choice(body: dict[str, Any]) -> str | dict[str, Any] | None:
    """`tool_choice` as chat's: "auto", "none", "required" or a named function."""
    value = body.get("tool_choice")
    if value is None or value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if not isinstance(name, str):
            raise _bad("tool_choice.name", f"tool_choice.name must be a string, got "
                       f"{_type_name(name)}", "invalid_type")  # fmt: skip
        return {"type": "function", "function": {"name": name}}
    hosted = isinstance(value, dict) and isinstance(value.get("type"), str)
    raise _bad("tool_choice", 'tool_choice must be "auto", "none", "required" or {"type": '
               f'"function", "name": ...}}, got {str(value)[:100]}',
               "unsupported_parameter" if hosted else "invalid_value")  # fmt: skip


def _parallel(body: dict[str, Any]) -> bool | None:
    value = body.get("parallel_tool_calls")
    if value is not None and not isinstance(value, bool):
        raise _bad("parallel_tool_calls", f"parallel_tool_calls must be a boolean, got "
                   f"{_type_name(value)}", "invalid_type")  # fmt: skip
    return value


def _chat_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """A Responses `text.format` as chat's `response_format`."""
    if fmt.get("type") == "json_schema":
        schema = {k: v for k, v in fmt.items() if k != "type"}
        return {"type": "json_schema", "json_schema": schema}
    return fmt


def parse_responses_request(body: Any) -> ResponsesRequest:
    """Map the JSON body of `POST /v1/responses` to a chat completion request (400 naming the
    field for what is wrong or refused). `user`, `safety_identifier`, `prompt_cache_key`,
    `service_tier` and `stream_options` are accepted and ignored, and so is
    `parallel_tool_calls` without tools."""
    body = _object(body)
    _refuse_state(body)
    _refuse_unsupported(body)
    model = body.get("model")
    chat: dict[str, Any] = {"model": model, "messages": _instructions(body) + _input(body)}
    for ours, theirs in (("max_tokens", "max_output_tokens"), ("temperature", "temperature"),
                         ("top_p", "top_p")):  # fmt: skip
        if body.get(theirs) is not None:
            chat[ours] = body[theirs]
    tools, choice, parallel = _tools(body), _tool_choice(body), _parallel(body)
    if tools:
        chat["tools"] = _chat_tools(tools)
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    if choice is not None:
        chat["tool_choice"] = choice
    fmt = _format(body)
    if fmt is not None:
        chat["response_format"] = _chat_format(fmt)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", f"stream must be a boolean, got {_type_name(stream)}",
                   "invalid_type")  # fmt: skip
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": _metadata(body),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "user": body.get("user"),
        "tools": tools,
        "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": parallel is not False,
        "text": {"format": fmt or {"type": "text"}},
    }
    return ResponsesRequest(chat=chat, echo=echo, stream=bool(stream))


def _tool_names(text: str) -> str:
    """`text` with chat's paths into tools named as the Responses API's."""
    return _CHAT_TOOL.sub(r"tools[\1]", text).replace("tool_choice.function.", "tool_choice.")


def rename(err: ApiError) -> ApiError:
    """`err` as the Responses API names its fields (a chat parser's `max_tokens` is this API's
    `max_output_tokens`, `response_format` its `text.format`, `messages` its `input`,
    `tools[0].function.name` its `tools[0].name`)."""
    param = err.param
    if param is None:
        return err
    if param in _RENAMED:
        new, message = _RENAMED[param], err.message.replace(param, _RENAMED[param])
    elif param == "messages" or param.startswith("messages["):
        new, message = "input", err.message
    elif _SCHEMA_PATH.match(param):
        new, message = _SCHEMA_PATH.sub("text.format", param), _SCHEMA_PATH.sub(
            "text.format", err.message)  # fmt: skip
    elif param.startswith(("tools[", "tool_choice.")):
        new, message = _tool_names(param), _tool_names(err.message)
    else:
        return err
    return ApiError(err.status, message, type=err.type, param=new, code=err.code,
                    retry_after=err.retry_after)  # fmt: skip


def new_id() -> str:
    """A fresh response id in OpenAI's style."""
    return "resp_" + secrets.token_hex(24)


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}  # fmt: skip


def _message_id() -> str:
    return "msg_" + secrets.token_hex(24)


def _function_id() -> str:
    return "fc_" + secrets.token_hex(24)


def _output(message: dict[str, Any], status: str) -> list[dict[str, Any]]:
    """The output items of a whole chat `message`: its text (when it has some, or nothing else),
    then a function_call item per call; the last item has `status`, the ones before it are
    complete."""
    text = message.get("content") or ""
    calls = message.get("tool_calls") or []
    items = [_item(_message_id(), text, "completed")] if text or not calls else []
    for call in calls:
        function = call["function"]
        items.append(_call_item(_function_id(), call["id"], function["name"],
                                function["arguments"], "completed"))  # fmt: skip
    items[-1]["status"] = status
    return items


@dataclass(frozen=True)
class _Outcome:
    status: str
    incomplete: dict[str, str] | None


def _outcome(finish_reason: Any) -> _Outcome:
    if finish_reason == "length":
        return _Outcome("incomplete", {"reason": "max_output_tokens"})
    return _Outcome("completed", None)


def _body(
    rid: str,
    created: int,
    request: ResponsesRequest,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete: dict[str, str] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete,
        **request.echo,
        "model": request.model,
        "output": output,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "truncation": "disabled",
        "usage": usage,
    }


def response(answer: dict[str, Any], request: ResponsesRequest) -> dict[str, Any]:
    """The Response object for a whole chat completion `answer` (its first choice)."""
    choice = answer["choices"][0]
    outcome = _outcome(choice.get("finish_reason"))
    output = _output(choice["message"], outcome.status)
    return _body(new_id(), int(time.time()), request, status=outcome.status, output=output,
                 usage=_usage(answer.get("usage")), incomplete=outcome.incomplete)  # fmt: skip


@dataclass
class _Open:
    """The output item a stream is writing: a message or a function call."""

    index: int
    id: str
    call_id: str | None = None
    """None for a message."""
    name: str = ""
    parts: list[str] = field(default_factory=list)
    """Its text, or its arguments, so far."""


class ResponseStream(ChatChunks):
    """Turns a relayed chat completion stream (its chunks, with usage) into the Responses
    events, each with its `sequence_number`: response.created, response.in_progress, then each
    output item in turn (a message: response.output_item.added, response.content_part.added,
    response.output_text.delta..., response.output_text.done, response.content_part.done,
    response.output_item.done; a function call: response.output_item.added,
    response.function_call_arguments.delta..., response.function_call_arguments.done,
    response.output_item.done), then response.completed (response.incomplete when
    max_output_tokens cut it); an error event and response.failed if it fails.
    """

    def __init__(self, request: ResponsesRequest) -> None:
        super().__init__()
        self._request = request
        self._id = new_id()
        self._created = int(time.time())
        self._sequence = 0
        self._items: list[dict[str, Any]] = []
        """The output items done."""
        self._open: _Open | None = None
        self._ended = False

    def _event(self, name: str, **fields: Any) -> bytes:
        payload = {"type": name, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse.encode_named(name, payload)

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        return _body(self._id, self._created, self._request, status=status, **fields)

    def opening(self) -> bytes:
        """The first events: the response, created and in progress."""
        empty = self._response("in_progress", output=[], usage=None)
        return self._event("response.created", response=empty) + self._event(
            "response.in_progress", response=empty
        )

    def _close(self, status: str) -> bytes:
        """The events that end the open item, if any, which gets `status`."""
        item, self._open = self._open, None
        if item is None:
            return b""
        text = "".join(item.parts)
        if item.call_id is None:
            done = _item(item.id, text, status)
            where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
            out = self._event(
                "response.output_text.done", **where, text=text, logprobs=[]
            ) + self._event("response.content_part.done", **where, part=_text_part(text))
        else:
            done = _call_item(item.id, item.call_id, item.name, text, status)
            out = self._event("response.function_call_arguments.done", item_id=item.id,
                              output_index=item.index, arguments=text)  # fmt: skip
        self._items.append(done)
        return out + self._event("response.output_item.done", output_index=item.index, item=done)

    def _text(self, text: str) -> bytes:
        out = b""
        item = self._open
        if item is None or item.call_id is not None:
            out = self._close("completed")
            item = self._open = _Open(len(self._items), _message_id())
            where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
            out += self._event(
                "response.output_item.added",
                output_index=item.index,
                item=_item(item.id, None, "in_progress"),
            ) + self._event("response.content_part.added", **where, part=_text_part(""))
        if text:
            item.parts.append(text)
            out += self._event("response.output_text.delta", item_id=item.id,
                               output_index=item.index, content_index=0, delta=text,
                               logprobs=[])  # fmt: skip
        return out

    def _call(self, call: dict[str, Any]) -> bytes:
        """The events for one `tool_calls` delta: a call's start (it has an id), or a piece of
        its arguments."""
        out = b""
        function = call.get("function") or {}
        if call.get("id"):
            out = self._close("completed")
            self._open = _Open(len(self._items), _function_id(), str(call["id"]),
                               str(function.get("name") or ""))  # fmt: skip
            added = _call_item(self._open.id, self._open.call_id or "", self._open.name, "",
                               "in_progress")  # fmt: skip
            out += self._event("response.output_item.added", output_index=self._open.index,
                               item=added)  # fmt: skip
        piece, item = function.get("arguments"), self._open
        if piece and item is not None and item.call_id is not None:
            item.parts.append(piece)
            out += self._event("response.function_call_arguments.delta", item_id=item.id,
                               output_index=item.index, delta=piece)  # fmt: skip
        return out

    def error(self, err: ApiError) -> bytes:
        """The events that end a failed stream: an error event, then response.failed."""
        self._ended = True
        code = err.code or ("server_error" if err.status >= 500 else "invalid_request")
        failed = self._response("failed", output=[], usage=None,
                                error={"code": code, "message": err.message})  # fmt: skip
        error = self._event("error", code=code, message=err.message, param=err.param)
        return error + self._event("response.failed", response=failed)

    def done(self) -> bytes:
        """The events that end the response, once the chat stream said [DONE]: the open item
        ends (an answer with nothing in it gets its empty message), then the Response."""
        if self._ended:
            return b""
        self._ended = True
        outcome = _outcome(self._finish)
        out = b"" if self._items or self._open else self._text("")
        out += self._close(outcome.status)
        final = self._response(outcome.status, output=self._items, usage=_usage(self._usage),
                               incomplete=outcome.incomplete)  # fmt: skip
        last = "response.completed" if outcome.status == "completed" else "response.incomplete"
        return out + self._event(last, response=final)
