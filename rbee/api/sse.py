"""Server-sent events as OpenAI streams them: `data: <json>\\n\\n`, ending `data: [DONE]\\n\\n`;
named events (`event: <name>` then `data:`) as Anthropic's and OpenAI's Responses streams send them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

__all__ = ["DONE", "encode", "encode_named", "frames", "iter_events"]

DONE = b"data: [DONE]\n\n"


def encode(payload: dict[str, Any]) -> bytes:
    """One SSE `data:` event carrying `payload` as compact JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def encode_named(event: str, payload: dict[str, Any]) -> bytes:
    """One SSE event named `event` carrying `payload` as compact JSON."""
    return f"event: {event}\n".encode() + encode(payload)


async def frames(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The events of a byte stream cut anywhere, each whole with its blank line (a comment such
    as a keep-alive is an event of its own); a last event without its blank line comes as is."""
    held = b""
    async for chunk in chunks:
        held += chunk
        *whole, held = held.split(b"\n\n")
        for event in whole:
            yield event + b"\n\n"
    if held.strip():
        yield held


def iter_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Decode the JSON payloads of a `data:` event stream, stopping at `[DONE]`.

    An `{"error": ...}` payload is yielded like any other; the caller decides what it means.
    """
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        if data:
            yield json.loads(data)
