"""The engine protocol every adapter implements, and the pure pieces they share.

An engine loads one model, turns a request into a prepared prompt (refusing what cannot fit the
context before any work is done), and generates text pieces on the calling thread, checking a
cancel flag between tokens. The worker runs it on a dedicated thread, never on the event loop.
One generate() call samples one choice; the runner calls it once per choice of a request with
`n` > 1, each time with that choice's sampling (`SamplingParams.for_choice`).
A request with a `response_format` is prepared with its grammar (rbee.engines.grammar); each
choice follows it from the start, and ends with "stop" once the grammar is complete.

An engine loaded for embeddings is an `Embedder` as well: it tokenizes the inputs (refusing what
cannot fit, again before any work) and turns them into unit-length vectors, on that same thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from rbee.api.logprobs import Logprob
from rbee.api.openai import ChatRequest, CompletionRequest, EmbeddingInput, SamplingParams
from rbee.engines.grammar import Grammar
from rbee.errors import ApiError

__all__ = [
    "Embedder",
    "Embeddings",
    "Engine",
    "Finish",
    "FinishReason",
    "Piece",
    "Prepared",
    "StopMatcher",
    "check_embedding_tokens",
    "check_logit_bias",
    "embedder_of",
    "fit_context",
]

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Prepared:
    """A request ready for generation: its tokens, and how many more may follow."""

    tokens: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams
    grammar: Grammar | None = None
    """The answer's grammar bound to the model's tokenizer (a `response_format`), if any."""


@dataclass(frozen=True)
class Finish:
    """The last item a generation yields."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    index: int = 0
    """The choice it ends (the runner sets it; an engine generates one choice at a time)."""
    stop_sequence: str | None = None
    """The request's stop sequence that ended it, if one did."""


@dataclass(frozen=True)
class Piece:
    """Text and the log-probabilities of the tokens it came from: what a generation yields in
    place of a plain `str` when the request asked for logprobs."""

    text: str
    logprobs: tuple[Logprob, ...]


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

    def generate(
        self, prepared: Prepared, cancel: threading.Event
    ) -> Iterator[str | Piece | Finish]:
        """Yield text pieces as tokens come (Pieces when `prepared.sampling.logprobs` is set),
        then one Finish; stop soon after `cancel` is set."""
        ...

    def close(self) -> None:
        """Free the model's memory."""
        ...


@dataclass(frozen=True)
class Embeddings:
    """What an embedder returns: one vector per input, in order, and the tokens it read."""

    vectors: tuple[bytes, ...]
    """Each a unit-length vector as little-endian float32 (OpenAI's base64 payload, decoded)."""
    prompt_tokens: int


@runtime_checkable
class Embedder(Protocol):
    """What a worker loaded for embeddings needs from its engine (next to `Engine`)."""

    name: str
    embedding: bool
    """True when the model was loaded for embeddings (it then serves nothing else)."""

    @property
    def embedding_length(self) -> int:
        """The length of the vectors (the model's n_embd)."""
        ...

    def tokenize_inputs(self, inputs: Sequence[EmbeddingInput]) -> tuple[tuple[int, ...], ...]:
        """Tokenize texts, keep token ids; raise ApiError(400) for what cannot fit the context."""
        ...

    def embed(self, inputs: Sequence[Sequence[int]], cancel: threading.Event) -> Embeddings:
        """Embed tokenized inputs; raise EngineError soon after `cancel` is set."""
        ...


def embedder_of(engine: object) -> Embedder | None:
    """`engine` if it was loaded for embeddings, else None."""
    if isinstance(engine, Embedder) and engine.embedding:
        return engine
    return None


def check_embedding_tokens(
    tokens: Sequence[int], index: int, count: int, context: int, vocab: int
) -> None:
    """Refuse input `index` (of `count`) if it is no tokens at all, overflows the context or
    leaves the vocabulary."""
    param = "input" if count == 1 else f"input[{index}]"
    if not tokens:
        # A text of characters the tokenizer drops (control characters, for one) is no tokens:
        # llama.cpp cannot decode an empty sequence, and the mean of no vectors is no vector.
        raise ApiError(
            400,
            f"{param} is no tokens once tokenized (its characters are ones this model's "
            "tokenizer drops); there is nothing to embed",
            param=param,
            code="empty_input",
        )
    if len(tokens) > context:
        raise ApiError(
            400,
            f"{param} is {len(tokens)} tokens; this model's context is {context} tokens",
            param=param,
            code="context_length_exceeded",
        )
    bad = next((t for t in tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise ApiError(
            400,
            f"{param} holds the token id {bad}; this model's vocabulary is 0 to {vocab - 1}",
            param=param,
        )


def check_logit_bias(sampling: SamplingParams, vocab: int) -> None:
    """Refuse a `logit_bias` naming a token outside the model's vocabulary (0 to `vocab` - 1)."""
    bad = next((t for t, _ in sampling.logit_bias if t >= vocab), None)
    if bad is not None:
        raise ApiError(
            400,
            f"logit_bias has the token id {bad}; this model's vocabulary is 0 to {vocab - 1}",
            param="logit_bias",
        )


def fit_context(
    tokens: list[int] | tuple[int, ...],
    request: ChatRequest | CompletionRequest,
    n_ctx: int,
    *,
    param: str,
) -> Prepared:
    """`tokens` prepared for generation, or ApiError(400) when there are none or they overflow
    `n_ctx` tokens.

    The prompt must leave room for one token, and an explicit max_tokens must fit what is left;
    without one, generation may use all of it. `param` names the prompt field in the error.
    """
    if not tokens:
        # No token to condition on: an engine would fail deep in its decode (a 500), not refuse.
        raise ApiError(
            400,
            f"{param} tokenizes to no tokens at all for this model; send some text",
            param=param,
            code="empty_prompt",
        )
    room = n_ctx - len(tokens)
    if room < 1:
        raise ApiError(
            400,
            f"the prompt is {len(tokens)} tokens; this model's context is {n_ctx} tokens",
            param=param,
            code="context_length_exceeded",
        )
    wanted = request.sampling.max_tokens
    if wanted is not None and wanted > room:
        raise ApiError(
            400,
            f"max_tokens is too large: {wanted}. This model's context is {n_ctx} tokens "
            f"and the prompt uses {len(tokens)}, so at most {room} can be generated",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return Prepared(tokens=tuple(tokens), max_tokens=wanted or room, sampling=request.sampling)


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back what could start one.

    feed() returns the text that is safe to emit and whether a stop sequence was reached; flush()
    returns what was held back once generation ends without one.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""
        self.matched: str | None = None
        """The stop sequence the text was cut at, once one was (the earliest in the text; of
        two starting there, the one listed first)."""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add `piece`; return (text to emit now, stop reached)."""
        if not self._stops:
            return piece, False
        text = self._held + piece
        found = [(at, i) for i, at in enumerate(text.find(s) for s in self._stops) if at >= 0]
        if found:
            cut, which = min(found)
            self.matched = self._stops[which]
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
