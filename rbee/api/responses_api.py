"""OpenAI's Responses API, stateless, on rbee's chat completions: pure mappings, both ways.

A `POST /v1/responses` body becomes a chat completion request body (a dict that the shared
parser, rbee.api.openai, then reads as it reads any chat request: its errors are renamed to the
Responses fields by `rename`), and a chat completion answer, whole or streamed chunk by chunk,
becomes the Response object or its events. rbee keeps no state: nothing is stored (`store` absent
or false; the answer says `"store": false`), and `store: true`, `previous_response_id`,
`conversation` and `background` are refused with a 400 naming the field. `tools` and a non-text
`text.format` are refused for now (`NOT_YET`); `chat_body` already maps them to chat's `tools`
and `response_format`, so lifting them is taking them out of `NOT_YET` once chat has them.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from rbee.api import sse
from rbee.errors import ApiError

__all__ = [
    "NOT_YET",
    "ResponseStream",
    "ResponsesRequest",
    "new_id",
    "parse_responses_request",
    "rename",
    "response",
]

NOT_YET = frozenset({"tools", "text.format"})
"""Fields refused until chat completions take them (the mapping to chat passes them already)."""
_ROLES = frozenset({"user", "system", "developer", "assistant"})
_TEXT_PARTS = frozenset({"input_text", "output_text"})
_MAX_METADATA = 16
_RENAMED = {"max_tokens": "max_output_tokens", "response_format": "text.format"}


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


def _refuse_unsupported(body: dict[str, Any], not_yet: frozenset[str]) -> None:
    if "tools" in not_yet and body.get("tools"):
        raise _bad("tools", "tools are not supported yet on /v1/responses",
                   "unsupported_parameter")  # fmt: skip
    fmt = _format(body)
    if "text.format" in not_yet and fmt is not None:
        raise _bad("text.format", f"only text.format {{\"type\": \"text\"}} is supported yet, got "
                   f"{str(fmt.get('type'))[:40]!r}", "unsupported_parameter")  # fmt: skip
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
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _bad(param, f"content must be a string or a list of content parts, got "
                   f"{_type_name(value)}", "invalid_type")  # fmt: skip
    parts = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else _type_name(part)
        if kind not in _TEXT_PARTS:
            raise _bad(f"{where}.type", f"only input_text and output_text content parts are "
                       f"supported, got {kind!r}", "unsupported_parameter")  # fmt: skip
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text", f"text must be a string, got {_type_name(text)}",
                       "invalid_type")  # fmt: skip
        parts.append({"type": "text", "text": text})
    return parts


def _input(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("input")
    if value is None:
        raise _bad("input", "input is required", "missing_required_parameter")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _bad("input", f"input must be a string or a list of items, got "
                   f"{_type_name(value)}", "invalid_type")  # fmt: skip
    out = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "each input item must be an object", "invalid_type")
        kind = item.get("type", "message")
        if kind != "message":
            why = ("tools are not supported yet" if "call" in str(kind)
                   else "only message items are supported")  # fmt: skip
            raise _bad(f"{where}.type", f"{why}, got an item of type {str(kind)[:40]!r}",
                       "unsupported_parameter")  # fmt: skip
        role = item.get("role")
        if role not in _ROLES:
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


def _chat_tools(tools: list[Any]) -> list[Any]:
    """Responses function tools ({type, name, description, parameters, strict}) as chat's."""
    out = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            function = {k: v for k, v in tool.items() if k != "type"}
            out.append({"type": "function", "function": function})
        else:
            out.append(tool)  # chat refuses what it does not know
    return out


def _chat_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """A Responses `text.format` as chat's `response_format`."""
    if fmt.get("type") == "json_schema":
        schema = {k: v for k, v in fmt.items() if k != "type"}
        return {"type": "json_schema", "json_schema": schema}
    return fmt


def parse_responses_request(body: Any, *, not_yet: frozenset[str] = NOT_YET) -> ResponsesRequest:
    """Map the JSON body of `POST /v1/responses` to a chat completion request (400 naming the
    field for what is wrong or refused). `user`, `safety_identifier`, `prompt_cache_key`,
    `service_tier`, `parallel_tool_calls` and `stream_options` are accepted and ignored."""
    body = _object(body)
    _refuse_state(body)
    _refuse_unsupported(body, not_yet)
    model = body.get("model")
    chat: dict[str, Any] = {"model": model, "messages": _instructions(body) + _input(body)}
    for ours, theirs in (("max_tokens", "max_output_tokens"), ("temperature", "temperature"),
                         ("top_p", "top_p"), ("tool_choice", "tool_choice")):  # fmt: skip
        if body.get(theirs) is not None:
            chat[ours] = body[theirs]
    if body.get("tools"):
        chat["tools"] = _chat_tools(body["tools"])
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
    }
    return ResponsesRequest(chat=chat, echo=echo, stream=bool(stream))


def rename(err: ApiError) -> ApiError:
    """`err` as the Responses API names its fields (a chat parser's `max_tokens` is this API's
    `max_output_tokens`, `response_format` its `text.format`, `messages` its `input`)."""
    param = err.param
    if param is None:
        return err
    if param in _RENAMED:
        new, message = _RENAMED[param], err.message.replace(param, _RENAMED[param])
    elif param == "messages" or param.startswith("messages["):
        new, message = "input", err.message
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
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "truncation": "disabled",
        "usage": usage,
    }


def response(answer: dict[str, Any], request: ResponsesRequest) -> dict[str, Any]:
    """The Response object for a whole chat completion `answer` (its first choice)."""
    choice = answer["choices"][0]
    outcome = _outcome(choice.get("finish_reason"))
    text = choice["message"].get("content") or ""
    item = _item("msg_" + secrets.token_hex(24), text, outcome.status)
    return _body(new_id(), int(time.time()), request, status=outcome.status, output=[item],
                 usage=_usage(answer.get("usage")), incomplete=outcome.incomplete)  # fmt: skip


class ResponseStream:
    """Turns a relayed chat completion stream (its chunks, with usage) into the Responses
    events, each with its `sequence_number`: response.created, response.in_progress,
    response.output_item.added, response.content_part.added, response.output_text.delta...,
    response.output_text.done, response.content_part.done, response.output_item.done, then
    response.completed (response.incomplete when max_output_tokens cut it); an error event and
    response.failed if it fails.
    """

    def __init__(self, request: ResponsesRequest) -> None:
        self._request = request
        self._id = new_id()
        self._item = "msg_" + secrets.token_hex(24)
        self._created = int(time.time())
        self._sequence = 0
        self._text: list[str] = []
        self._opened = False
        self._finish: Any = None
        self._usage: Any = None
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

    def _open(self) -> bytes:
        if self._opened:
            return b""
        self._opened = True
        where = {"item_id": self._item, "output_index": 0, "content_index": 0}
        return self._event(
            "response.output_item.added",
            output_index=0,
            item=_item(self._item, None, "in_progress"),
        ) + self._event("response.content_part.added", **where, part=_text_part(""))

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """The events for one chat completion chunk."""
        out = b""
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            out += self._open()
            text = (choice.get("delta") or {}).get("content")
            if text:
                self._text.append(text)
                out += self._event("response.output_text.delta", item_id=self._item,
                                   output_index=0, content_index=0, delta=text,
                                   logprobs=[])  # fmt: skip
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
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
        """The events that end the response, once the chat stream said [DONE]."""
        if self._ended:
            return b""
        self._ended = True
        outcome = _outcome(self._finish)
        text = "".join(self._text)
        where = {"item_id": self._item, "output_index": 0, "content_index": 0}
        item = _item(self._item, text, outcome.status)
        final = self._response(outcome.status, output=[item], usage=_usage(self._usage),
                               incomplete=outcome.incomplete)  # fmt: skip
        last = "response.completed" if outcome.status == "completed" else "response.incomplete"
        return (
            self._open()
            + self._event("response.output_text.done", **where, text=text, logprobs=[])
            + self._event("response.content_part.done", **where, part=_text_part(text))
            + self._event("response.output_item.done", output_index=0, item=item)
            + self._event(last, response=final)
        )
