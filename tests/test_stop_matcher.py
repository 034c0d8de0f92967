"""Stop sequences cut streamed text exactly, however the pieces split them."""

from __future__ import annotations

import pytest

from rbee.engines.base import StopMatcher


def run(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        ((), ["ab", "cd"], ("abcd", False)),
        (("END",), ["hello ", "world"], ("hello world", False)),
        (("END",), ["hello E", "ND more"], ("hello ", True)),
        (("END",), ["E", "N", "D"], ("", True)),
        (("END",), ["EN", "d"], ("ENd", False)),
        (("END",), ["xEN"], ("xEN", False)),
        (("\n\n", "###"), ["a\n", "\nb"], ("a", True)),
        (("\n\n", "###"), ["a#", "#", "#b"], ("a", True)),
        (("ab", "b"), ["xab"], ("x", True)),
    ],
)
def test_stop_matcher(
    stops: tuple[str, ...], pieces: list[str], expected: tuple[str, bool]
) -> None:
    assert run(stops, pieces) == expected


@pytest.mark.parametrize(
    ("stops", "pieces", "matched"),
    [
        (("END",), ["hello ", "world"], None),
        (("END",), ["hello E", "ND more"], "END"),
        (("\n\n", "###"), ["a#", "#", "#b\n\n"], "###"),  # the earliest in the text
        (("b", "ab"), ["xab"], "ab"),
        (("ab", "a"), ["xab"], "ab"),  # two starting at one place: the one listed first
    ],
)
def test_the_matcher_says_which_stop_it_cut_at(
    stops: tuple[str, ...], pieces: list[str], matched: str | None
) -> None:
    matcher = StopMatcher(stops)
    for piece in pieces:
        if matcher.feed(piece)[1]:
            break
    assert matcher.matched == matched


def test_held_text_is_released_once_it_cannot_start_a_stop() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.feed("aE") == ("a", False)
    assert matcher.feed("x") == ("Ex", False)
