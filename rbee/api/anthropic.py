"""Anthropic's Messages API on rbee's chat completions: pure mappings, both ways.

A `POST /v1/messages` body becomes a chat completion request body (a dict that the shared parser,
rbee.api.openai, then reads as it reads any chat request), and a chat completion answer, whole or
streamed chunk by chunk, becomes Anthropic's message or its events. Errors stay rbee's ApiError
until `error_body` renders them in Anthropic's shape (`rename` names a chat parser's fields as
Anthropic does). What rbee cannot honour is refused with a 400 naming the field in Anthropic's
dotted style (`messages.0.content.1.type`): image and document blocks, `top_k` (the engines sample
with their own), extended `thinking`, Anthropic's server tools (bash, web search, ...) and their
blocks, and for now structured outputs (`output_config.format`, in `_refuse_for_now`).

Custom tools are chat's tools (rbee.api.tools): `tools` (`{name, description, input_schema}`)
and `tool_choice` (auto, any, tool, none; `disable_parallel_tool_use`) map to chat's, an
assistant's `tool_use` blocks to its `tool_calls` and a user's `tool_result` blocks to `tool`
messages; each call of the answer becomes a `tool_use` block (streamed as `input_json_delta`s),
and an answer that ends in calls stops with `tool_use`.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from rbee.api import sse
from rbee.api.chat_chunks import ChatChunks, stop_sequence_of
from rbee.api.openai import MAX_STOP_SEQUENCES
from rbee.api.tools import parse_tool_calls
from rbee.errors import ApiError

__all__ = [
    "MessageStream",
    "MessagesRequest",
    "count_request",
    "error_body",
    "error_status",
    "message",
    "new_id",
    "parse_messages_request",
    "rename",
]

_MAX_TOKENS = 1 << 30
_SERVER_BLOCKS = frozenset({"server_tool_use", "mcp_tool_use", "mcp_tool_result",
                            "web_search_tool_result", "web_fetch_tool_result",
                            "code_execution_tool_result", "bash_code_execution_tool_result",
                            "text_editor_code_execution_tool_result",
                            "tool_search_tool_result", "container_upload"})  # fmt: skip
_CHOICES: dict[str, str] = {"auto": "auto", "any": "required", "none": "none"}
_CHAT_TOOL = re.compile(r"tools\[(\d+)\]\.function(\.parameters\b)?([\w.$\[\]-]*)")
_INDEX = re.compile(r"\[(\d+)\]")
_TOOL_USE_FIELDS = {"id": "id", "function.name": "name", "function.arguments": "input"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OVERLOADED = 529
"""Anthropic's status for an API that is too busy now (rbee's 503 `server_overloaded`)."""


@dataclass(frozen=True)
class MessagesRequest:
    """A `POST /v1/messages` mapped onto chat completions: the chat request body to relay."""

    chat: dict[str, Any]
    model: str
    stream: bool


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_type_name(body)}")
    return body


def _model(body: dict[str, Any]) -> str:
    value = body.get("model")
    if value is None:
        raise _bad("model", "Field required", "missing_required_parameter")
    if not isinstance(value, str) or not value:
        raise _bad("model", f"must be a non-empty string, got {_type_name(value)}", "invalid_type")
    return value


def _refuse_for_now(body: dict[str, Any]) -> None:
    # Lifting: map output_config.format ({type: json_schema, schema}) to chat's response_format.
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise _bad("output_config", f"must be an object, got {_type_name(config)}",
                   "invalid_type")  # fmt: skip
    if config and config.get("format") is not None:
        raise _bad("output_config.format", "structured outputs are not supported yet",
                   "unsupported_parameter")  # fmt: skip


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's custom tools as chat's (server tools refused)."""
    value = body.get("tools")
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("tools", f"must be a list, got {_type_name(value)}", "invalid_type")
    out = []
    for i, tool in enumerate(value):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise _bad(where, f"must be an object, got {_type_name(tool)}", "invalid_type")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _bad(f"{where}.type", f"{str(kind)[:60]!r} is a server tool, which rbee does not "
                       "run; only custom tools ({name, description, input_schema}) are supported",
                       "unsupported_parameter")  # fmt: skip
        if "input_schema" not in tool:
            raise _bad(f"{where}.input_schema", "Field required", "missing_required_parameter")
        function = {"name": tool.get("name"), "description": tool.get("description"),
                    "parameters": tool["input_schema"], "strict": tool.get("strict")}  # fmt: skip
        if not isinstance(function["parameters"], dict):
            raise _bad(f"{where}.input_schema", "must be a JSON Schema object, got "
                       f"{_type_name(function['parameters'])}", "invalid_type")  # fmt: skip
        out.append({"type": "function",
                    "function": {k: v for k, v in function.items() if v is not None}})  # fmt: skip
    return out


def _tool_choice(body: dict[str, Any]) -> dict[str, Any]:
    """`tool_choice` as chat's `tool_choice` and `parallel_tool_calls` (none when absent)."""
    value = body.get("tool_choice")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("tool_choice", f"must be an object, got {_type_name(value)}", "invalid_type")
    kind = value.get("type")
    out: dict[str, Any] = {}
    if kind == "tool":
        name = value.get("name")
        if not isinstance(name, str):
            code = "missing_required_parameter" if name is None else "invalid_type"
            raise _bad("tool_choice.name", f"must be a string, got {_type_name(name)}", code)
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif isinstance(kind, str) and kind in _CHOICES:
        out["tool_choice"] = _CHOICES[kind]
    else:
        raise _bad("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none', got "
                   f"{str(kind)[:40]!r}")  # fmt: skip
    single = value.get("disable_parallel_tool_use")
    if single is not None and not isinstance(single, bool):
        raise _bad("tool_choice.disable_parallel_tool_use",
                   f"must be a boolean, got {_type_name(single)}", "invalid_type")  # fmt: skip
    if single and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def _text_block(where: str, block: Any, *, system: bool = False) -> dict[str, str]:
    """A text block as chat's text part (any other block refused)."""
    if not isinstance(block, dict):
        raise _bad(where, "each content block must be an object", "invalid_type")
    kind = block.get("type")
    if isinstance(kind, str) and kind in _SERVER_BLOCKS:  # a list or object is no set member
        raise _bad(f"{where}.type", f"{kind} blocks (server tools) are not supported",
                   "unsupported_parameter")  # fmt: skip
    if kind != "text":
        allowed = "text blocks" if system else "text blocks (rbee serves text models)"
        raise _bad(f"{where}.type", f"only {allowed} are supported here, got {kind!r}",
                   "unsupported_parameter")  # fmt: skip
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}.text", f"must be a string, got {_type_name(text)}", "invalid_type")
    return {"type": "text", "text": text}


def _text_blocks(param: str, value: Any, *, system: bool = False) -> list[dict[str, str]]:
    """A content value (a string or a list of blocks) as chat's text parts."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise _bad(
            param,
            f"must be a string or a list of content blocks, got {_type_name(value)}",
            "invalid_type",
        )
    return [_text_block(f"{param}.{j}", block, system=system) for j, block in enumerate(value)]


def _id(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(f"{where}.{key}", f"must be a non-empty string, got {_type_name(value)}",
                   "missing_required_parameter" if value is None else "invalid_type")  # fmt: skip
    return value


def _tool_use(where: str, block: dict[str, Any]) -> dict[str, Any]:
    """An assistant's `tool_use` block as a chat tool call, held to chat's rules for one."""
    call_id, name = _id(block, "id", where), _id(block, "name", where)
    value = block.get("input")
    if not isinstance(value, dict):
        raise _bad(f"{where}.input", f"must be an object, got {_type_name(value)}",
                   "missing_required_parameter" if value is None else "invalid_type")  # fmt: skip
    arguments = json.dumps(value, ensure_ascii=False)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    try:
        parse_tool_calls(0, [call])
    except ApiError as err:
        inner = (err.param or "").removeprefix("messages[0].tool_calls[0].")
        param = f"{where}.{_TOOL_USE_FIELDS.get(inner, inner)}"
        message = err.message.replace(f"messages[0].tool_calls[0].{inner} ", "")
        raise _bad(param, message, err.code or "invalid_value") from None
    return call


def _tool_result(where: str, block: dict[str, Any], calls: set[str]) -> dict[str, Any]:
    """A user's `tool_result` block as a chat `tool` message; it answers one of `calls`."""
    call_id = _id(block, "tool_use_id", where)
    if call_id not in calls:
        raise _bad(f"{where}.tool_use_id", f"unexpected tool_use_id {call_id[:80]!r}: each "
                   "tool_result block must answer a tool_use block of the message before "
                   "it")  # fmt: skip
    error = block.get("is_error")
    if error is not None and not isinstance(error, bool):
        raise _bad(f"{where}.is_error", f"must be a boolean, got {_type_name(error)}",
                   "invalid_type")  # fmt: skip
    value = block.get("content")
    parts = [] if value is None else _text_blocks(f"{where}.content", value)
    if error:
        # Chat's tool messages have no error flag: the model reads it in the result.
        parts.insert(0, {"type": "text", "text": "Error: "})
    return {"role": "tool", "tool_call_id": call_id, "content": parts}


def _turn(where: str, role: str, value: Any, calls: set[str]) -> list[dict[str, Any]]:
    """One message as chat messages: an assistant's text and tool_use blocks as one message
    with tool_calls; a user's tool_result blocks as tool messages (answering `calls`), then its
    text, if any, as a user message."""
    if not isinstance(value, list):
        return [{"role": role, "content": _text_blocks(where, value)}]
    parts, uses, results = [], [], []
    for j, block in enumerate(value):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in ("tool_use", "tool_result"):
            wanted = "assistant" if kind == "tool_use" else "user"
            if role != wanted:
                raise _bad(f"{where}.{j}.type", f"{kind} blocks belong in {wanted} messages")
            if kind == "tool_use":
                uses.append(_tool_use(f"{where}.{j}", block))
            else:
                results.append(_tool_result(f"{where}.{j}", block, calls))
        else:
            parts.append(_text_block(f"{where}.{j}", block))
    if role == "assistant":
        return [{"role": role, "content": parts, **({"tool_calls": uses} if uses else {})}]
    return results + ([{"role": role, "content": parts}] if parts or not results else [])


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system not in (None, "", []):
        out.append({"role": "system", "content": _text_blocks("system", system, system=True)})
    value = body.get("messages")
    if value is None:
        raise _bad("messages", "Field required", "missing_required_parameter")
    if not isinstance(value, list):
        raise _bad("messages", f"must be a list, got {_type_name(value)}", "invalid_type")
    if not value:
        raise _bad("messages", "at least one message is required")
    calls: set[str] = set()  # the tool_use ids of the message before: what tool_result answers
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _bad(f"messages.{i}", "each message must be an object", "invalid_type")
        role = item.get("role")
        if role not in ("user", "assistant"):
            raise _bad(f"messages.{i}.role", f"must be 'user' or 'assistant', got {role!r}")
        if "content" not in item:
            raise _bad(f"messages.{i}.content", "Field required", "missing_required_parameter")
        turn = _turn(f"messages.{i}.content", role, item["content"], calls)
        calls = {c["id"] for m in turn for c in m.get("tool_calls", ())}
        out.extend(turn)
    return out


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, f"must be a number, got {_type_name(value)}", "invalid_type")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise _bad(key, f"must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_tokens")
    if value is None:
        raise _bad("max_tokens", "Field required", "missing_required_parameter")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 4.0 is an integer to JSON Schema
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad("max_tokens", f"must be an integer, got {_type_name(value)}", "invalid_type")
    if not 1 <= value <= _MAX_TOKENS:
        raise _bad("max_tokens", f"must be at least 1, got {value}")
    return value


def _stop_sequences(body: dict[str, Any]) -> list[str]:
    value = body.get("stop_sequences")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _bad("stop_sequences", "must be a list of strings", "invalid_type")
    if len(value) > MAX_STOP_SEQUENCES:
        raise _bad("stop_sequences", f"rbee takes at most {MAX_STOP_SEQUENCES} stop sequences, "
                   f"got {len(value)}")  # fmt: skip
    if any(not s for s in value):
        raise _bad("stop_sequences", "stop sequences must not be empty")
    return list(value)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if body.get("top_k") is not None:
        raise _bad("top_k", "top_k is not supported: rbee's engines sample with their own top-k; "
                   "leave it out", "unsupported_parameter")  # fmt: skip
    thinking = body.get("thinking")
    if thinking is not None and not (isinstance(thinking, dict) and
                                     thinking.get("type") == "disabled"):  # fmt: skip
        raise _bad("thinking", "extended thinking is not supported", "unsupported_parameter")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", f"must be a boolean, got {_type_name(stream)}", "invalid_type")


def _tool_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Chat's `tools`, `tool_choice` and `parallel_tool_calls` for the request's tools."""
    tools, choice = _tools(body), _tool_choice(body)
    if not tools:
        choice.pop("parallel_tool_calls", None)
        return choice  # a tool_choice without tools: chat's parser refuses it
    return {"tools": tools, **choice}


def parse_messages_request(body: Any) -> MessagesRequest:
    """Map the JSON body of `POST /v1/messages` to a chat completion request (400 naming the
    field for what is wrong or refused). `metadata`, `output_config.effort`, `service_tier` and
    the other fields rbee has no use for are accepted and ignored."""
    body = _object(body)
    _refuse_for_now(body)
    model = _model(body)
    messages = _messages(body)
    max_tokens = _max_tokens(body)
    _refuse_unsupported(body)
    stream = body.get("stream") is True
    chat: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    chat.update(_tool_fields(body))
    for key in ("temperature", "top_p"):
        value = _number(body, key, 0.0, 1.0)
        if value is not None:
            chat[key] = value
    stops = _stop_sequences(body)
    if stops:
        chat["stop"] = stops
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return MessagesRequest(chat=chat, model=model, stream=stream)


def count_request(body: Any) -> dict[str, Any]:
    """Map the JSON body of `POST /v1/messages/count_tokens` to the chat request whose prompt is
    counted: `model`, `system`, `messages` and the tools, checked as `POST /v1/messages` checks
    them."""
    body = _object(body)
    _refuse_for_now(body)
    model = _model(body)
    return {"model": model, "messages": _messages(body), **_tool_fields(body)}


def new_id() -> str:
    """A fresh message id in Anthropic's style."""
    return "msg_" + secrets.token_hex(12)


def _stop_reason(finish_reason: Any, stop_sequence: Any = None) -> str:
    # A chat choice that a stop sequence ended names it in `stop_reason` (rbee.api.responses).
    if finish_reason == "tool_calls":
        return "tool_use"
    if finish_reason == "stop" and isinstance(stop_sequence, str):
        return "stop_sequence"
    return "max_tokens" if finish_reason == "length" else "end_turn"


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def _tool_use_id(call_id: str) -> str:
    """A chat call's id in Anthropic's style (`call_X` is `toolu_X`)."""
    return "toolu_" + call_id.removeprefix("call_")


def _input(arguments: str) -> dict[str, Any]:
    """A call's arguments as a tool_use block's `input`: {} for arguments max_tokens cut short."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def message(answer: dict[str, Any], model: str) -> dict[str, Any]:
    """Anthropic's message for a whole chat completion `answer` (its first choice): its text
    block (when it has text, or nothing else), then a tool_use block per call."""
    choice = answer["choices"][0]
    text = choice["message"].get("content") or ""
    calls = choice["message"].get("tool_calls") or []
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not calls else []
    content += [{"type": "tool_use", "id": _tool_use_id(c["id"]), "name": c["function"]["name"],
                 "input": _input(c["function"]["arguments"])} for c in calls]  # fmt: skip
    return {
        "id": new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason"), stop_sequence_of(choice)),
        "stop_sequence": stop_sequence_of(choice),
        "usage": _usage(answer.get("usage")),
    }


def _anthropic_path(match: re.Match[str]) -> str:
    head = f"tools.{match[1]}" + (".input_schema" if match[2] else "")
    return _INDEX.sub(r".\1", head + match[3])


def rename(err: ApiError) -> ApiError:
    """`err`, raised by the chat parser reading a mapped request, as Anthropic names the fields
    of tools (`tools[0].function.parameters.x` is `tools.0.input_schema.x`,
    `tool_choice.function.name` is `tool_choice.name`), its message starting with the field as
    Anthropic's do; errors about other fields as they are."""
    param = err.param
    if param is None or not param.startswith(("tools", "tool_choice", "parallel_tool_calls")):
        return err
    new = _CHAT_TOOL.sub(_anthropic_path, param)
    new = new.replace("tool_choice.function.", "tool_choice.")
    new = new.replace("parallel_tool_calls", "tool_choice.disable_parallel_tool_use")
    message = _CHAT_TOOL.sub(_anthropic_path, err.message).replace(param, new)
    message = message.removeprefix(f"{new} ")  # "tools.0.name must be ..." once, as a prefix
    return ApiError(err.status, f"{new}: {message}", type=err.type, param=new, code=err.code)


def error_status(err: ApiError) -> int:
    """The HTTP status Anthropic gives what `err` says: 529 for overloaded, else its own."""
    return OVERLOADED if err.code == "server_overloaded" else err.status


def error_body(err: ApiError) -> dict[str, Any]:
    """Anthropic's error body for `err`: {"type": "error", "error": {"type", "message"}}."""
    status = error_status(err)
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}}


class MessageStream(ChatChunks):
    """Turns a relayed chat completion stream (its chunks, with usage) into Anthropic's events:
    message_start, then each content block in turn (content_block_start, a ping after the
    first, content_block_delta... with `text_delta`s for text, `input_json_delta`s for a
    tool_use's input, content_block_stop), message_delta (stop_reason, usage), message_stop;
    an error event if it fails.

    `message_start` goes out before the prompt's token count is known (a chat stream tells it
    in its last chunk): it says 0 input tokens, and `message_delta` carries the real count.
    """

    def __init__(self, model: str) -> None:
        super().__init__()
        self._id = new_id()
        self._model = model
        self._blocks = 0
        """Content blocks started."""
        self._open: str | None = None
        """The kind of the open block: "text", "tool_use" or None."""
        self._ended = False

    def _event(self, name: str, **fields: Any) -> bytes:
        return sse.encode_named(name, {"type": name, **fields})

    def opening(self) -> bytes:
        """The first event: the message, empty."""
        empty: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return self._event("message_start", message=empty)

    def _stop(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return self._event("content_block_stop", index=self._blocks - 1)

    def _start(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._stop() + self._event("content_block_start", index=self._blocks,
                                         content_block=block)  # fmt: skip
        if not self._blocks:
            out += self._event("ping")
        self._open = kind
        self._blocks += 1
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._event("content_block_delta", index=self._blocks - 1, delta=delta)

    def _text(self, text: str) -> bytes:
        out = b""
        if self._open != "text":
            out = self._start("text", {"type": "text", "text": ""})
        if text:
            out += self._delta({"type": "text_delta", "text": text})
        return out

    def _call(self, call: dict[str, Any]) -> bytes:
        """The events for one `tool_calls` delta: a call's start (it has an id), or a piece of
        its arguments."""
        out = b""
        function = call.get("function") or {}
        if call.get("id"):
            block = {"type": "tool_use", "id": _tool_use_id(str(call["id"])),
                     "name": str(function.get("name") or ""), "input": {}}  # fmt: skip
            out = self._start("tool_use", block)
        piece = function.get("arguments")
        if piece and self._open == "tool_use":
            out += self._delta({"type": "input_json_delta", "partial_json": piece})
        return out

    def error(self, err: ApiError) -> bytes:
        """The error event that ends a failed stream."""
        self._ended = True
        return sse.encode_named("error", error_body(err))

    def done(self) -> bytes:
        """The events that end the message, once the chat stream said [DONE] (an answer with
        nothing in it gets its empty text block)."""
        if self._ended:
            return b""
        self._ended = True
        delta = {"stop_reason": _stop_reason(self._finish, self._stop_sequence),
                 "stop_sequence": self._stop_sequence}  # fmt: skip
        return (
            (b"" if self._blocks else self._text(""))
            + self._stop()
            + self._event("message_delta", delta=delta, usage=_usage(self._usage))
            + self._event("message_stop")
        )
