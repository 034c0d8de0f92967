"""Builders for OpenAI response objects (completions, chunks, usage, embeddings, model lists)."""

from __future__ import annotations

import base64 as b64
import secrets
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Choice",
    "Shape",
    "chunk",
    "completion",
    "embedding_list",
    "model_list",
    "new_id",
    "usage",
    "usage_chunk",
]

Shape = Literal["chat", "completion"]


@dataclass(frozen=True)
class Choice:
    """One choice of a whole completion."""

    text: str
    finish_reason: str
    logprobs: dict[str, Any] | None = None
    """Its `logprobs` object (rbee.api.logprobs), when the request asked for them."""
    tool_calls: tuple[dict[str, Any], ...] = ()
    """The calls it made, in chat's shape (rbee.api.tools.split_calls)."""
    stop_sequence: str | None = None
    """The stop sequence that ended it, if one did (see `chunk`)."""


def new_id(kind: Shape) -> str:
    """A fresh response id in OpenAI's style."""
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chunk(
    kind: Shape,
    rid: str,
    created: int,
    model: str,
    *,
    index: int = 0,
    text: str | None = None,
    role: bool = False,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    tool_call: dict[str, Any] | None = None,
    stop_sequence: str | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    """One streamed chunk with one choice, choice `index`, carrying `text` and its `logprobs`
    object (or the role, or a `tool_calls` delta of one call, or the finish reason).

    A choice that a stop sequence ended says which in `stop_reason` next to its
    `finish_reason: "stop"`, as vLLM's server does (OpenAI's own API does not say; its clients
    ignore the field): Anthropic's `stop_sequence` is read from it."""
    choice: dict[str, Any]
    if kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
            delta["content"] = ""
        if text is not None:
            delta["content"] = text
        if tool_call is not None:
            delta["tool_calls"] = [tool_call]
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion.chunk"
    else:
        choice = {
            "index": index,
            "text": text or "",
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        obj = "text_completion"
    if stop_sequence is not None:
        choice["stop_reason"] = stop_sequence
    out: dict[str, Any] = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if include_usage:
        out["usage"] = None
    return out


def usage_chunk(
    kind: Shape, rid: str, created: int, model: str, *, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The last chunk of a stream with `stream_options.include_usage`: no choices, the usage."""
    return {
        "id": rid,
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion(
    kind: Shape,
    model: str,
    *,
    choices: Sequence[Choice],
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A whole (non-streamed) chat or text completion; `completion_tokens` are all choices'."""
    bodies: list[dict[str, Any]] = []
    for index, c in enumerate(choices):
        if kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": c.text}
            if c.tool_calls:
                # OpenAI's shape: no content (null) when the answer is calls alone.
                message = {"role": "assistant", "content": c.text or None,
                           "tool_calls": list(c.tool_calls)}  # fmt: skip
            answer: dict[str, Any] = {"message": message}
        else:
            answer = {"text": c.text}
        body = {"index": index, **answer, "logprobs": c.logprobs, "finish_reason": c.finish_reason}
        if c.stop_sequence is not None:
            body["stop_reason"] = c.stop_sequence
        bodies.append(body)
    return {
        "id": new_id(kind),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": bodies,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def model_list(models: list[dict[str, Any]]) -> dict[str, Any]:
    """`GET /v1/models`: each entry gets OpenAI's `object` and `owned_by` fields."""
    return {
        "object": "list",
        "data": [{"object": "model", "owned_by": "rbee", **m} for m in models],
    }


def embedding_list(
    model: str, vectors: Sequence[bytes], *, base64: bool, prompt_tokens: int
) -> dict[str, Any]:
    """`POST /v1/embeddings`: each vector (little-endian float32) as floats or as base64 of them."""
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": (
                b64.b64encode(v).decode("ascii")
                if base64
                else list(struct.unpack(f"<{len(v) // 4}f", v))
            ),
        }
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
