"""Several choices (`n`) and logprobs through a real queen and worker, read by the official openai
client's own types: whole answers and streams, chat and legacy completions."""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest
from openai.types import Completion
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionTokenLogprob,
)

from tests import http
from tests.conftest import MODEL, RunningQueen

pytestmark = pytest.mark.slow

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a short poem about rain."}
]


@pytest.fixture
def client(queen: RunningQueen) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=queen.base_url, api_key="unused", max_retries=0) as client:
        yield client


def by_choice(chunks: list[ChatCompletionChunk]) -> dict[int, list[ChatCompletionChunk]]:
    """The chunks of each choice, in the order they came."""
    out: dict[int, list[ChatCompletionChunk]] = {}
    for c in chunks:
        if c.choices:
            assert len(c.choices) == 1  # each chunk carries one choice's delta, as OpenAI's do
            out.setdefault(c.choices[0].index, []).append(c)
    return out


def test_n_chat_choices_whole_and_streamed(client: openai.OpenAI) -> None:
    def ask(stream: bool) -> ChatCompletion | openai.Stream[ChatCompletionChunk]:
        return client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=16, temperature=1.0, seed=7, n=2,
            logprobs=True, stream=stream,
            stream_options={"include_usage": True} if stream else None,
        )  # fmt: skip

    whole = ask(stream=False)
    assert isinstance(whole, ChatCompletion)
    assert [c.index for c in whole.choices] == [0, 1]
    texts = [c.message.content or "" for c in whole.choices]
    assert texts[0] != texts[1]  # each choice has a seed of its own
    assert all(c.finish_reason in {"stop", "length"} for c in whole.choices)
    # Usage counts the prompt once and every choice's tokens (one logprob per token).
    assert whole.usage is not None
    counts = [len(c.logprobs.content or []) if c.logprobs else -1 for c in whole.choices]
    assert whole.usage.completion_tokens == sum(counts)
    assert all(0 < n <= 16 for n in counts)

    stream = ask(stream=True)
    assert isinstance(stream, openai.Stream)
    chunks = list(stream)
    choices = by_choice(chunks)
    assert sorted(choices) == [0, 1]
    for index, own in choices.items():
        assert own[0].choices[0].delta.role == "assistant"
        finishes = [c.choices[0].finish_reason for c in own]
        assert finishes[-1] == whole.choices[index].finish_reason
        assert all(f is None for f in finishes[:-1])
        text = "".join(c.choices[0].delta.content or "" for c in own)
        assert text == texts[index]  # the same seed: the same choices, streamed or not
        tokens = [
            t for c in own if c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
        ]
        assert len(tokens) == counts[index]
    # Choice 1 comes after choice 0 has ended.
    first_of_1 = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].index == 1)
    assert all(c.choices[0].index == 0 for c in chunks[:first_of_1] if c.choices)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_n_completion_choices_whole_and_streamed(client: openai.OpenAI) -> None:
    def ask(stream: bool) -> Completion | openai.Stream[Completion]:
        return client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=11, n=3,
            stream=stream,
        )  # fmt: skip

    whole = ask(stream=False)
    assert isinstance(whole, Completion)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    streamed = ["", "", ""]
    finishes: list[tuple[int, str]] = []
    stream = ask(stream=True)
    assert isinstance(stream, openai.Stream)
    for chunk in stream:
        (choice,) = chunk.choices
        streamed[choice.index] += choice.text
        if choice.finish_reason is not None:
            finishes.append((choice.index, choice.finish_reason))
    assert streamed == [c.text for c in whole.choices]
    assert finishes == [(c.index, c.finish_reason) for c in whole.choices]
    assert len(set(streamed)) > 1


def check_chat_token(entry: ChatCompletionTokenLogprob, top: int) -> None:
    """One token's logprob as OpenAI gives it, at temperature 0."""
    assert entry.logprob <= 0.0
    assert entry.bytes is not None
    assert bytes(entry.bytes).decode("utf-8", errors="backslashreplace") == entry.token
    assert len(entry.top_logprobs) == top
    assert entry.top_logprobs[0].token == entry.token  # greedy: the likeliest token
    assert entry.top_logprobs[0].logprob == entry.logprob
    values = [t.logprob for t in entry.top_logprobs]
    assert values == sorted(values, reverse=True)
    assert sum(math.exp(v) for v in values) <= 1.0 + 1e-6


def test_chat_logprobs_whole_and_streamed(client: openai.OpenAI) -> None:
    def ask(stream: bool) -> ChatCompletion | openai.Stream[ChatCompletionChunk]:
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name three colors."}],
            max_tokens=12, temperature=0, seed=3, logprobs=True, top_logprobs=3, stream=stream,
        )  # fmt: skip

    whole = ask(stream=False)
    assert isinstance(whole, ChatCompletion)
    (choice,) = whole.choices
    assert choice.logprobs is not None
    content = choice.logprobs.content or []
    assert whole.usage is not None
    assert len(content) == whole.usage.completion_tokens
    assert b"".join(bytes(e.bytes or []) for e in content).decode() == choice.message.content
    for entry in content:
        check_chat_token(entry, 3)

    stream = ask(stream=True)
    assert isinstance(stream, openai.Stream)
    chunks = list(stream)
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content or []]  # fmt: skip
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-3)
    for entry in streamed:
        check_chat_token(entry, 3)
    # The role chunk and the finish chunk carry no logprobs; every text chunk does.
    assert chunks[0].choices[0].logprobs is None
    assert chunks[-1].choices[0].logprobs is None
    for c in chunks[1:-1]:
        assert c.choices[0].logprobs is not None
        text = "".join(t.token for t in c.choices[0].logprobs.content or [])
        assert text == c.choices[0].delta.content


def test_completion_logprobs_whole_and_streamed(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"

    def ask(stream: bool) -> Completion | openai.Stream[Completion]:
        return client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=8, temperature=0, seed=3, logprobs=2,
            stream=stream,
        )  # fmt: skip

    whole = ask(stream=False)
    assert isinstance(whole, Completion)
    (choice,) = whole.choices
    lp = choice.logprobs
    assert lp is not None
    assert lp.tokens
    assert lp.token_logprobs
    assert lp.top_logprobs
    assert lp.text_offset is not None
    assert "".join(lp.tokens) == choice.text
    # Offsets count from the start of the prompt, as OpenAI's do.
    assert lp.text_offset[0] == len(prompt)
    assert lp.text_offset == [
        len(prompt) + len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))
    ]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0.0
        assert top[token] == logprob  # the sampled token is always among them
        assert max(top.values()) == logprob  # greedy: the likeliest
        assert 1 <= len(top) <= 3

    tokens: list[str] = []
    offsets: list[int] = []
    stream = ask(stream=True)
    assert isinstance(stream, openai.Stream)
    for chunk in stream:
        part = chunk.choices[0].logprobs
        if part is not None:
            tokens += part.tokens or []
            offsets += part.text_offset or []
    assert (tokens, offsets) == (lp.tokens, lp.text_offset)


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("chat/completions", {"n": 9}, "n"),
        ("chat/completions", {"n": 0}, "n"),
        ("chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("chat/completions", {"logprobs": 3}, "logprobs"),
        ("completions", {"logprobs": 6}, "logprobs"),
        ("completions", {"n": 9}, "n"),
    ],
)
def test_the_queen_refuses_bad_choice_and_logprob_fields_before_any_worker(
    queen: RunningQueen, path: str, extra: dict[str, object], param: str
) -> None:
    worker = queen.workers()[0]
    before = queen.worker_health(worker)["stats"]["requests"]
    body = {"model": MODEL, **extra}
    body.update({"messages": MESSAGES} if path.startswith("chat") else {"prompt": "Hi"})
    r = http.post(f"{queen.base_url}/{path}", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert queen.worker_health(worker)["stats"]["requests"] == before
