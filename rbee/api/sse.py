"""Server-sent events as OpenAI streams them: `data: <json>\\n\\n`, ending `data: [DONE]\\n\\n`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["DONE", "encode", "iter_events"]

DONE = b"data: [DONE]\n\n"


def encode(payload: dict[str, Any]) -> bytes:
    """One SSE `data:` event carrying `payload` as compact JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


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
