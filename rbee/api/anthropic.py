"""Anthropic's Messages API on rbee's chat completions: pure mappings, both ways.

A `POST /v1/messages` body becomes a chat completion request body (a dict that the shared parser,
rbee.api.openai, then reads as it reads any chat request), and a chat completion answer, whole or
streamed chunk by chunk, becomes Anthropic's message or its events. Errors stay rbee's ApiError
until `error_body` renders them in Anthropic's shape. What rbee cannot honour is refused with a
400 naming the field in Anthropic's dotted style (`messages.0.content.1.type`): image and document
blocks, `top_k` (the engines sample with their own), extended `thinking`, and, until chat
completions have them, tools (`tools`, `tool_choice`, `tool_use` and `tool_result` blocks) and
structured outputs (`output_config.format`): `_refuse_for_now` is the one place to lift.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from rbee.api import sse
from rbee.api.openai import MAX_STOP_SEQUENCES
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
]

_MAX_TOKENS = 1 << 30
_TOOL_BLOCKS = frozenset({"tool_use", "tool_result", "server_tool_use", "mcp_tool_use",
                          "mcp_tool_result", "web_search_tool_result"})  # fmt: skip
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
    # Lifting: map Anthropic's tools ({name, description, input_schema}) to chat's
    # ({type: function, function: {name, description, parameters}}), tool_choice (auto, any,
    # tool, none) to chat's, tool_use / tool_result blocks (_TOOL_BLOCKS) to tool calls and tool
    # messages, and output_config.format ({type: json_schema, schema}) to chat's response_format.
    for key in ("tools", "tool_choice"):
        if body.get(key) not in (None, []):
            raise _bad(key, "tools are not supported yet", "unsupported_parameter")
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise _bad("output_config", f"must be an object, got {_type_name(config)}",
                   "invalid_type")  # fmt: skip
    if config and config.get("format") is not None:
        raise _bad("output_config.format", "structured outputs are not supported yet",
                   "unsupported_parameter")  # fmt: skip


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
    parts = []
    for j, block in enumerate(value):
        where = f"{param}.{j}"
        if not isinstance(block, dict):
            raise _bad(where, "each content block must be an object", "invalid_type")
        kind = block.get("type")
        if kind in _TOOL_BLOCKS:
            raise _bad(f"{where}.type", f"{kind} blocks (tools) are not supported yet",
                       "unsupported_parameter")  # fmt: skip
        if kind != "text":
            allowed = "text blocks" if system else "text blocks (rbee serves text models)"
            raise _bad(f"{where}.type", f"only {allowed} are supported, got {kind!r}",
                       "unsupported_parameter")  # fmt: skip
        text = block.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text", f"must be a string, got {_type_name(text)}",
                       "invalid_type")  # fmt: skip
        parts.append({"type": "text", "text": text})
    return parts


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
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _bad(f"messages.{i}", "each message must be an object", "invalid_type")
        role = item.get("role")
        if role not in ("user", "assistant"):
            raise _bad(f"messages.{i}.role", f"must be 'user' or 'assistant', got {role!r}")
        if "content" not in item:
            raise _bad(f"messages.{i}.content", "Field required", "missing_required_parameter")
        out.append({"role": role, "content": _text_blocks(f"messages.{i}.content",
                                                          item["content"])})  # fmt: skip
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
    counted: `model`, `system` and `messages`, checked as `POST /v1/messages` checks them."""
    body = _object(body)
    _refuse_for_now(body)
    model = _model(body)
    return {"model": model, "messages": _messages(body)}


def new_id() -> str:
    """A fresh message id in Anthropic's style."""
    return "msg_" + secrets.token_hex(12)


def _stop_reason(finish_reason: Any) -> str:
    # rbee does not say yet which of a request's stop sequences ended it, if any did (the
    # engines' stop matcher keeps it): a stop is end_turn and stop_sequence stays null.
    return "max_tokens" if finish_reason == "length" else "end_turn"


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def message(answer: dict[str, Any], model: str) -> dict[str, Any]:
    """Anthropic's message for a whole chat completion `answer` (its first choice)."""
    choice = answer["choices"][0]
    return {
        "id": new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": choice["message"].get("content") or ""}],
        "stop_reason": _stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": _usage(answer.get("usage")),
    }


def error_status(err: ApiError) -> int:
    """The HTTP status Anthropic gives what `err` says: 529 for overloaded, else its own."""
    return OVERLOADED if err.code == "server_overloaded" else err.status


def error_body(err: ApiError) -> dict[str, Any]:
    """Anthropic's error body for `err`: {"type": "error", "error": {"type", "message"}}."""
    status = error_status(err)
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}}


class MessageStream:
    """Turns a relayed chat completion stream (its chunks, with usage) into Anthropic's events:
    message_start, content_block_start, ping, content_block_delta..., content_block_stop,
    message_delta (stop_reason, usage), message_stop; an error event if it fails.

    `message_start` goes out before the prompt's token count is known (a chat stream tells it
    in its last chunk): it says 0 input tokens, and `message_delta` carries the real count.
    """

    def __init__(self, model: str) -> None:
        self._id = new_id()
        self._model = model
        self._block = False
        self._finish: Any = None
        self._usage: Any = None
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

    def _start_block(self) -> bytes:
        if self._block:
            return b""
        self._block = True
        return self._event(
            "content_block_start", index=0, content_block={"type": "text", "text": ""}
        ) + self._event("ping")

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """The events for one chat completion chunk."""
        out = b""
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            out += self._start_block()
            text = (choice.get("delta") or {}).get("content")
            if text:
                delta = {"type": "text_delta", "text": text}
                out += self._event("content_block_delta", index=0, delta=delta)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        return out

    def error(self, err: ApiError) -> bytes:
        """The error event that ends a failed stream."""
        self._ended = True
        return sse.encode_named("error", error_body(err))

    def done(self) -> bytes:
        """The events that end the message, once the chat stream said [DONE]."""
        if self._ended:
            return b""
        self._ended = True
        delta = {"stop_reason": _stop_reason(self._finish), "stop_sequence": None}
        return (
            self._start_block()
            + self._event("content_block_stop", index=0)
            + self._event("message_delta", delta=delta, usage=_usage(self._usage))
            + self._event("message_stop")
        )
