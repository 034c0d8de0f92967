"""Constrained decoding: a request's grammar (rbee.api.structured) bound to a model's tokenizer.

One library, llguidance, does it for every engine: an engine builds an `LLTokenizer` from its
vocabulary once (`Vocabulary`: lazily, at the first structured request, since reading a whole
vocabulary takes a while), `compile_grammar` binds a request's grammar to it in `prepare` (a
grammar the compiler refuses for this vocabulary is a 400 before any work), and each choice gets
a fresh `Constraint`: before each token, `allowed()` says which tokens may come next (a boolean per
token id, for the engine to set the others' logits to -inf); after it, `feed()` advances the
grammar. `done` is true once the grammar is complete and nothing more may follow: the engine ends
the answer there, with finish_reason "stop", without waiting for an end-of-turn token. Until then
the grammar allows the model's end tokens only where the answer could end (a top-level number,
say).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rbee.api.openai import ChatRequest, CompletionRequest
from rbee.errors import ApiError, EngineError

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

__all__ = [
    "Constraint",
    "Grammar",
    "Vocabulary",
    "compile_grammar",
    "grammar_for",
    "tokenizer_from_json",
]


def tokenizer_from_json(document: str, *, n_vocab: int | None, eos: Sequence[int]) -> LLTokenizer:
    """An LLTokenizer from a Hugging Face `tokenizer.json` text, ending only on the tokens `eos`.

    Its masks are `n_vocab` long (the model's logits may be wider than its vocabulary), and never
    shorter than the document's highest token id + 1: the `tokenizers` library counts the tokens
    it has, which is less when some ids are unused.
    """
    from llguidance import LLTokenizer  # noqa: PLC0415 - loaded on the first structured request

    try:
        parsed = json.loads(document)
        ids = [
            *parsed["model"]["vocab"].values(),
            *(t["id"] for t in parsed.get("added_tokens") or []),
        ]
        size = max(max(ids, default=-1) + 1, n_vocab or 0)
        return LLTokenizer(document, n_vocab=size, eos_token=list(eos))
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as err:
        raise EngineError(f"llguidance cannot read this model's tokenizer: {err}") from err


class Vocabulary:
    """A model's LLTokenizer, built by `build` the first time a request needs it (any thread)."""

    def __init__(self, build: Callable[[], LLTokenizer]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._tokenizer: LLTokenizer | None = None

    def get(self) -> LLTokenizer:
        """The tokenizer, built once."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._build()
            return self._tokenizer


class Grammar:
    """A request's grammar compiled for one tokenizer; `start()` gives each choice its own."""

    def __init__(self, matcher: LLMatcher, n_vocab: int) -> None:
        self._matcher = matcher
        self._n_vocab = n_vocab

    def start(self) -> Constraint:
        """A fresh Constraint at the start of the grammar."""
        return Constraint(self._matcher.deep_copy(), self._n_vocab)


def compile_grammar(tokenizer: LLTokenizer, grammar: str, *, what: str, param: str) -> Grammar:
    """Bind `grammar` (of `what`, the request field `param`) to `tokenizer`; ApiError(400) if it
    cannot be enforced with it."""
    from llguidance import LLMatcher  # noqa: PLC0415 - loaded on the first structured request

    matcher = LLMatcher(tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise ApiError(
            400,
            f"rbee cannot enforce {what} with this model's vocabulary: "
            f"{matcher.get_error().strip().splitlines()[0]}",
            param=param,
        )
    return Grammar(matcher, tokenizer.vocab_size)


class Constraint:
    """One choice's place in its grammar (used from the engine's one thread)."""

    def __init__(self, matcher: LLMatcher, n_vocab: int) -> None:
        import numpy as np  # noqa: PLC0415 - every engine's library depends on numpy

        self._matcher = matcher
        self._np = np
        self._n_vocab = n_vocab
        self.fed = 0
        """Tokens fed so far."""

    def allowed(self, size: int) -> Any:
        """A numpy bool array of `size`: True for each token id that may come next (ids the
        tokenizer does not have are never allowed)."""
        return self._mask(size, banned=False)

    def banned(self, size: int) -> Any:
        """The opposite of `allowed`: True for each token id that may not come next."""
        return self._mask(size, banned=True)

    def _mask(self, size: int, *, banned: bool) -> Any:
        np = self._np
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        self._check()
        # One bit per token id, little-endian: invert the packed bytes, not the unpacked bits.
        bits = ~bits if banned else bits
        mask = np.unpackbits(bits, bitorder="little")[: min(size, self._n_vocab)].view(np.bool_)
        if size > len(mask):
            rest = np.full(size - len(mask), banned, dtype=np.bool_)
            mask = np.concatenate([mask, rest])
        return mask

    def feed(self, token: int) -> None:
        """Advance past `token`; EngineError if the grammar does not allow it."""
        self._matcher.consume_token(token)
        self.fed += 1
        self._check()

    @property
    def done(self) -> bool:
        """True once the grammar is complete and allows nothing more."""
        return self._matcher.is_stopped()

    def _check(self) -> None:
        if self._matcher.is_error():
            # The first line says what failed; the rest is the parser's state and the grammar.
            why = self._matcher.get_error().strip().splitlines()
            raise EngineError(f"constrained decoding failed: {why[0] if why else 'unknown'}")


def grammar_for(request: ChatRequest | CompletionRequest, vocabulary: Vocabulary) -> Grammar | None:
    """`request`'s grammar bound to the model's tokenizer: its tools' (rbee.api.tools; they take
    a `response_format` in), else its `response_format`'s; None when it asks for free text."""
    if not isinstance(request, ChatRequest):
        return None
    if request.tools is not None and request.tools.grammar is not None:
        return _bind(vocabulary, request.tools.grammar, what="these tools", param="tools")
    fmt = request.response_format
    if fmt is None:
        return None
    param = "response_format" if fmt.type == "json_object" else "response_format.json_schema"
    return _bind(vocabulary, fmt.grammar, what=f"this {fmt.type}", param=param)


def _bind(vocabulary: Vocabulary, grammar: str, *, what: str, param: str) -> Grammar:
    try:
        tokenizer = vocabulary.get()
    except ApiError as err:  # the model cannot be constrained at all: say for which field
        raise ApiError(err.status, err.message, param=param, code=err.code) from err
    return compile_grammar(tokenizer, grammar, what=what, param=param)
