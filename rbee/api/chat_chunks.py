"""Reading a relayed chat completion stream chunk by chunk, for the API shapes built on it.

The Responses API and Anthropic's Messages API answer a stream of chat completion chunks with
events of their own (rbee.api.responses_api, rbee.api.anthropic). Both read a chunk the same way:
its usage, its text, its tool call deltas and its finish; `ChatChunks` does that once and leaves
what each piece becomes to the shape.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ChatChunks", "stop_sequence_of"]


def stop_sequence_of(choice: dict[str, Any]) -> str | None:
    """The stop sequence that ended a chat choice (its `stop_reason` beside `finish_reason:
    "stop"`, rbee.api.responses), None if none did."""
    value = choice.get("stop_reason")
    return value if choice.get("finish_reason") == "stop" and isinstance(value, str) else None


class ChatChunks:
    """Turns chat completion chunks into a shape's events: `chunk()` calls `_text` for each
    piece of text and `_call` for each `tool_calls` delta, and keeps the usage, the finish
    reason and the stop sequence that ended the answer (if one did) for the shape's last
    events."""

    def __init__(self) -> None:
        self._finish: Any = None
        """The chat `finish_reason`, once a chunk carried it."""
        self._stop_sequence: str | None = None
        self._usage: Any = None

    def _text(self, text: str) -> bytes:
        raise NotImplementedError

    def _call(self, call: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """The events for one chat completion chunk."""
        out = b""
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                self._stop_sequence = stop_sequence_of(choice)
        return out
