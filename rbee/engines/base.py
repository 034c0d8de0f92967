"""The engine protocol every adapter implements, and the pure pieces they share.

An engine loads one model, turns a request into a prepared prompt (refusing what cannot fit the
context before any work is done), and generates text pieces on the calling thread, checking a
cancel flag between tokens. The worker runs it on a dedicated thread, never on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from rbee.api.openai import ChatRequest, CompletionRequest, SamplingParams

__all__ = ["Engine", "Finish", "FinishReason", "Prepared", "StopMatcher"]

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Prepared:
    """A request ready for generation: its tokens, and how many more may follow."""

    tokens: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams


@dataclass(frozen=True)
class Finish:
    """The last item a generation yields."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class Engine(Protocol):
    """What a worker needs from an inference library."""

    name: str

    @property
    def context_length(self) -> int:
        """Tokens of context the loaded model was given."""
        ...

    def load(self) -> None:
        """Load the model; raise EngineError with the reason if it cannot."""
        ...

    def prepare(self, request: ChatRequest | CompletionRequest) -> Prepared:
        """Template and tokenize `request`; raise ApiError(400) if it cannot fit the context."""
        ...

    def generate(self, prepared: Prepared, cancel: threading.Event) -> Iterator[str | Finish]:
        """Yield text pieces as tokens come, then one Finish; stop soon after `cancel` is set."""
        ...

    def close(self) -> None:
        """Free the model's memory."""
        ...


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back what could start one.

    feed() returns the text that is safe to emit and whether a stop sequence was reached; flush()
    returns what was held back once generation ends without one.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add `piece`; return (text to emit now, stop reached)."""
        if not self._stops:
            return piece, False
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        keep = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:n]):
                    keep = n
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The held-back text, once no more pieces will come."""
        held, self._held = self._held, ""
        return held
