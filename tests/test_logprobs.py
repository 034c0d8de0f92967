"""Log-probabilities without a model: the logits -> Logprob mapping every engine shares, how tokens
and their logprobs become pieces of text, and OpenAI's two shapes of them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rbee.api import responses
from rbee.api.logprobs import CompletionLogprobs, Logprob, chat_logprobs
from rbee.engines.base import Piece
from rbee.engines.detokenize import TokenText, logprob_of

PIECES = (b"a", b"b", b"c", b"", b"\xe2\x80", b"\x99")


def render(token: int) -> bytes:
    return PIECES[token] or b"<end>"


def test_logprob_of_is_the_log_softmax_with_the_likeliest_first() -> None:
    logits = np.array([1.0, 3.0, 2.0, 3.0, -50.0, 0.0], dtype=np.float32)
    expected = logits - math.log(np.exp(logits.astype(np.float64)).sum())
    entry = logprob_of(logits, 2, 3, render)
    assert entry.piece == b"c"
    assert entry.logprob == pytest.approx(expected[2], abs=1e-6)
    # A tie (tokens 1 and 3) puts the lower token id first; a token rendering as nothing shows
    # its special text.
    assert [t.piece for t in entry.top] == [b"b", b"<end>", b"c"]
    assert [t.logprob for t in entry.top] == pytest.approx([expected[1], expected[3], expected[2]])
    assert all(t.top == () for t in entry.top)
    assert sum(math.exp(x) for x in expected) == pytest.approx(1.0)


@pytest.mark.parametrize("shift", [0.0, 1000.0, -1000.0])
def test_logprob_of_does_not_care_where_the_logits_sit(shift: float) -> None:
    # Normalized or not, huge or tiny: the same distribution, every logprob <= 0.
    base = np.array([0.5, -1.0, 2.0, 0.0, 0.0, 0.0], dtype=np.float32)
    entry = logprob_of(base + shift, 2, 6, render)
    reference = logprob_of(base, 2, 6, render)
    assert entry.logprob == pytest.approx(reference.logprob, abs=1e-3)
    assert entry.logprob <= 0.0
    assert all(t.logprob <= 0.0 for t in entry.top)
    assert entry.top[0].logprob == entry.logprob  # the peak, and it was sampled


@pytest.mark.parametrize(("top", "count"), [(0, 0), (1, 1), (20, 6)])
def test_logprob_of_gives_as_many_alternatives_as_asked_and_the_vocabulary_has(
    top: int, count: int
) -> None:
    logits = np.arange(6, dtype=np.float32)
    entry = logprob_of(logits, 0, top, render)
    assert len(entry.top) == count
    assert [t.piece for t in entry.top] == [render(t) for t in (5, 4, 3, 2, 1, 0)][:count]


def lp(piece: bytes) -> Logprob:
    return Logprob(piece, -1.0)


def feed(text: TokenText, pieces: list[bytes]) -> list[str | Piece | None]:
    return [text.add(p, lp(p))[0] for p in pieces]


def test_tokens_without_logprobs_come_out_as_plain_text() -> None:
    text = TokenText(())
    assert [text.add(p)[0] for p in (b"a", b"\xe2\x80", b"\x99", b"b")] == [
        "a",
        None,
        "\u2019",
        "b",
    ]
    assert text.end() is None


def test_a_token_that_ends_mid_character_gives_its_logprob_to_the_next_piece() -> None:
    text = TokenText(())
    out = feed(text, [b"a", b"\xe2\x80", b"\x99b"])
    assert out == [
        Piece("a", (lp(b"a"),)),
        None,
        Piece("\u2019b", (lp(b"\xe2\x80"), lp(b"\x99b"))),
    ]
    assert text.end() is None


def test_held_back_text_keeps_its_logprobs_until_it_is_let_go() -> None:
    # "x" may start the stop string "xy": held, then let go with the next token's text.
    text = TokenText(("xy",))
    assert feed(text, [b"a", b"x", b"z"]) == [
        Piece("a", (lp(b"a"),)),
        None,
        Piece("xz", (lp(b"x"), lp(b"z"))),
    ]
    # Held at the end of generation: flushed with its logprob.
    text = TokenText(("xy",))
    assert feed(text, [b"x"]) == [None]
    assert text.end() == Piece("x", (lp(b"x"),))


def test_the_token_completing_a_stop_string_keeps_its_logprob_but_not_its_text() -> None:
    text = TokenText(("xy",))
    assert feed(text, [b"ax"]) == [Piece("a", (lp(b"ax"),))]
    out, stopped = text.add(b"yb", lp(b"yb"))
    assert stopped
    assert out == Piece("", (lp(b"yb"),))  # one logprob per generated (counted) token


def test_chat_logprobs_have_openais_shape() -> None:
    entry = Logprob(b" Red", -0.5, (Logprob(b" Red", -0.5), Logprob(b"\xe2\x80", -2.0)))
    assert chat_logprobs([entry]) == {
        "content": [
            {
                "token": " Red",
                "logprob": -0.5,
                "bytes": [32, 82, 101, 100],
                "top_logprobs": [
                    {"token": " Red", "logprob": -0.5, "bytes": [32, 82, 101, 100]},
                    # A piece of a character shows as escapes; its bytes are exact.
                    {"token": "\\xe2\\x80", "logprob": -2.0, "bytes": [226, 128]},
                ],
            }
        ],
        "refusal": None,
    }
    assert chat_logprobs([]) == {"content": [], "refusal": None}


def test_completion_logprobs_count_text_offsets_from_the_prompt_across_pieces() -> None:
    shaper = CompletionLogprobs("Hi!")
    first = shaper.add([Logprob(b" a", -0.1, (Logprob(b" b", -0.05),)), Logprob(b"\xe2\x80", -1)])
    assert first == {
        "tokens": [" a", "\\xe2\\x80"],
        "token_logprobs": [-0.1, -1],
        # The alternatives asked for, and the sampled token always.
        "top_logprobs": [{" b": -0.05, " a": -0.1}, {"\\xe2\\x80": -1}],
        "text_offset": [3, 5],
    }
    # The next piece completes the character the last one began: one character further on.
    second = shaper.add([Logprob(b"\x99", -0.2), Logprob(b"c", -0.3)])
    assert second["text_offset"] == [5, 6]


def test_a_whole_answer_lists_every_choice_with_its_index() -> None:
    body = responses.completion(
        "chat",
        "m",
        choices=[
            responses.Choice("one", "stop"),
            responses.Choice("two", "length", chat_logprobs([])),
        ],
        prompt_tokens=5,
        completion_tokens=7,
    )
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "one", "stop"),
        (1, "two", "length"),
    ]
    assert body["choices"][0]["logprobs"] is None
    assert body["choices"][1]["logprobs"] == {"content": [], "refusal": None}
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    chunk = responses.chunk("completion", "id", 0, "m", index=3, text="x", logprobs={"k": 1})
    assert chunk["choices"] == [
        {"index": 3, "text": "x", "logprobs": {"k": 1}, "finish_reason": None}
    ]
