"""Token log-probabilities: the type engines produce, and OpenAI's two shapes of them.

Chat completions give each token as `{token, logprob, bytes, top_logprobs: [{token, logprob,
bytes}]}` under `logprobs.content`; legacy completions give parallel lists `tokens`,
`token_logprobs`, `top_logprobs` (one `{token: logprob}` object per token, the sampled token
always in it) and `text_offset` (each token's character offset, counted from the start of the
prompt, as OpenAI counts it).

A token's `token` is its text; a token that is not whole UTF-8 on its own (a piece of a
character) shows its bytes as `\\xNN` escapes there, as OpenAI shows them: `bytes` is exact.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CompletionLogprobs", "Logprob", "chat_logprobs"]


@dataclass(frozen=True)
class Logprob:
    """One token's log-probability: a sampled token with its likeliest alternatives, or one of
    those alternatives (then `top` is empty)."""

    piece: bytes
    """What the token renders as."""
    logprob: float
    top: tuple[Logprob, ...] = ()
    """The likeliest tokens at that position, likeliest first (as many as were asked for)."""

    @property
    def token(self) -> str:
        """The token's text, a piece of a character as `\\xNN` escapes."""
        return self.piece.decode("utf-8", errors="backslashreplace")


def _chat_token(entry: Logprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.piece)}


def chat_logprobs(entries: Sequence[Logprob]) -> dict[str, Any]:
    """A chat choice's (or chunk's) `logprobs` object for these tokens."""
    return {
        "content": [
            {**_chat_token(e), "top_logprobs": [_chat_token(t) for t in e.top]} for e in entries
        ],
        "refusal": None,
    }


class CompletionLogprobs:
    """Builds one legacy completion choice's `logprobs` objects, piece after piece (a stream
    sends one per chunk), keeping `text_offset` counting across them."""

    def __init__(self, prompt: str) -> None:
        self._offset = len(prompt)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, entries: Sequence[Logprob]) -> dict[str, Any]:
        """The `logprobs` object of the next `entries`."""
        offsets = []
        for entry in entries:
            offsets.append(self._offset)
            self._offset += len(self._decoder.decode(entry.piece))
        return {
            "tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [
                {**{t.token: t.logprob for t in e.top}, e.token: e.logprob} for e in entries
            ],
            "text_offset": offsets,
        }
