"""From sampled tokens to what a generation yields: text, and each token's log-probability.

Every engine renders tokens the same way: each token's bytes through an incremental UTF-8 decoder
(no re-detokenizing the answer per token), stop strings cut by StopMatcher. `TokenText` does both
for one choice and, when the request asked for logprobs, keeps each token's `Logprob` with the text
it became: a token that ends mid-character, or that may start a stop string, adds no text yet, so
its logprob waits for the next text that is emitted. One Logprob per generated token counted in
`usage`: the token that completes a stop string is counted and keeps its logprob (its text is cut).

`logprob_of` turns one row of logits into a Logprob: the log-softmax of the model's own
distribution, before logit_bias, penalties and the samplers (temperature, top-p, ...). numpy is
imported only there: only a request that asks for logprobs pays for it.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable
from typing import Any

from rbee.api.logprobs import Logprob
from rbee.engines.base import Piece, StopMatcher

__all__ = ["TokenText", "logprob_of"]


class TokenText:
    """Turns one choice's tokens into the items its generation yields (str, or Piece when
    logprobs are given with the tokens)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)
        self._pending: list[Logprob] = []

    def add(self, piece: bytes, logprob: Logprob | None = None) -> tuple[str | Piece | None, bool]:
        """Feed one token's bytes: (what to yield now, or None; whether a stop string was
        reached, after which nothing more is to be fed)."""
        if logprob is not None:
            self._pending.append(logprob)
        text, stopped = self._stops.feed(self._decoder.decode(piece))
        return self._out(text, last=stopped), stopped

    @property
    def matched(self) -> str | None:
        """The stop sequence that ended the text, if one did."""
        return self._stops.matched

    def end(self) -> str | Piece | None:
        """What is left to yield once generation ended without a stop string."""
        tail = self._stops.feed(self._decoder.decode(b"", final=True))[0] + self._stops.flush()
        return self._out(tail, last=True)

    def _out(self, text: str, *, last: bool) -> str | Piece | None:
        if self._pending and (text or last):
            out = Piece(text, tuple(self._pending))
            self._pending.clear()
            return out
        return text or None


def logprob_of(logits: Any, token: int, top: int, render: Callable[[int], bytes]) -> Logprob:
    """The Logprob of `token` sampled from `logits` (one row over the vocabulary, normalized or
    not), with the `top` likeliest tokens, likeliest first (ties: lower token id first);
    `render(t)` gives token t's bytes."""
    import numpy as np  # noqa: PLC0415 - only requests asking for logprobs need it

    row = np.asarray(logits, dtype=np.float32).reshape(-1)
    peak = float(row.max())
    # log-sum-exp around the maximum: the sum holds exp(0) = 1, so every logprob comes out <= 0.
    norm = peak + math.log(float(np.exp(row - peak).sum(dtype=np.float64)))
    alternatives: tuple[Logprob, ...] = ()
    if top > 0:
        k = min(top, row.size)
        best = np.argpartition(row, row.size - k)[row.size - k :].tolist()
        best.sort(key=lambda t: (-float(row[t]), t))
        alternatives = tuple(Logprob(render(t), float(row[t]) - norm) for t in best)
    return Logprob(render(token), float(row[token]) - norm, alternatives)
