"""The llama.cpp adapter on the real default model: token rendering, weight repacking, logprobs,
several choices of one request."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rbee.api.logprobs import Logprob
from rbee.api.openai import (
    ChatRequest,
    CompletionRequest,
    parse_chat_request,
    parse_completion_request,
)
from rbee.engines.base import Finish, Piece
from rbee.engines.llamacpp import LlamaCppEngine
from rbee.engines.repack import RepackChoice
from rbee.worker.runner import EngineRunner


@pytest.fixture(scope="module")
def gguf(model_cache: Path) -> Path:
    """The default model's GGUF file."""
    return next(model_cache.rglob("*.gguf"))


@pytest.fixture(scope="module")
def engine(gguf: Path) -> LlamaCppEngine:
    loaded = LlamaCppEngine(gguf, n_ctx=256, n_threads=1)
    loaded.load()
    return loaded


def test_tokens_longer_than_32_bytes_render_whole(engine: LlamaCppEngine) -> None:
    # Llama.detokenize([t]) renders into 32 bytes and gives b"" for these: a newline and 32
    # spaces is one SmolLM2 token, as is a run of 64 dashes.
    llm = engine._llm
    for text in ("\n" + " " * 32, "-" * 64):
        tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert len(tokens) == 1, tokens
        assert llm.detokenize(tokens) in (b"", text.encode())  # the library's own rendering
        assert engine._vocab().piece(tokens[0]) == text.encode()
    vocab = engine._vocab()
    assert sum(len(vocab.piece(t)) > 32 for t in range(llm.n_vocab())) == 47


def test_every_other_token_renders_as_the_library_does(engine: LlamaCppEngine) -> None:
    llm = engine._llm
    vocab = engine._vocab()
    same = sum(llm.detokenize([t]) == vocab.piece(t) for t in range(llm.n_vocab()))
    assert same == llm.n_vocab() - 47


@pytest.mark.parametrize("on", [False, True])
def test_the_real_engine_loads_with_repacking_as_chosen_and_answers(
    model_cache: Path, on: bool
) -> None:
    import llama_cpp  # noqa: PLC0415

    defaults = llama_cpp.llama_cpp.llama_model_default_params
    engine = LlamaCppEngine(
        next(model_cache.rglob("*.gguf")),
        n_ctx=256,
        n_threads=1,
        cpu_repack=RepackChoice(on, "test"),
    )
    engine.load()
    try:
        # The params llama.cpp loaded the model with carry the choice ...
        assert engine._llm.model_params.use_extra_bufts is on
        # ... and the library's own defaults are as they were.
        assert llama_cpp.llama_cpp.llama_model_default_params is defaults
        assert defaults().use_extra_bufts is True
        request = parse_chat_request(
            {
                "model": "m",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
                "seed": 1,
            }
        )
        pieces = list(engine.generate(engine.prepare(request), threading.Event()))
        finish = pieces[-1]
        assert isinstance(finish, Finish)
        assert finish.completion_tokens > 0
        assert "".join(p for p in pieces if isinstance(p, str)).strip()
    finally:
        engine.close()


def run_logprobs(
    engine: LlamaCppEngine, request: ChatRequest | CompletionRequest
) -> tuple[str, list[Logprob], Finish]:
    """The text, every token's Logprob and the Finish of one generation asked for logprobs."""
    items = list(engine.generate(engine.prepare(request), threading.Event()))
    finish = items[-1]
    assert isinstance(finish, Finish)
    pieces = items[:-1]
    assert all(isinstance(p, Piece) for p in pieces)  # with logprobs asked for: Pieces only
    text = "".join(p.text for p in pieces if isinstance(p, Piece))
    return text, [e for p in pieces if isinstance(p, Piece) for e in p.logprobs], finish


def test_logprobs_are_the_log_softmax_of_llama_cpps_own_logits(
    engine: LlamaCppEngine, gguf: Path
) -> None:
    import llama_cpp  # noqa: PLC0415

    request = parse_completion_request(
        {"model": "m", "prompt": "1, 2, 3,", "max_tokens": 8, "temperature": 0, "seed": 1,
         "logprobs": 5}
    )  # fmt: skip
    text, entries, finish = run_logprobs(engine, request)
    assert finish.completion_tokens == len(entries) == 8
    assert b"".join(e.piece for e in entries).decode() == text
    for e in entries:
        assert e.logprob <= 0.0
        assert len(e.top) == 5
        assert e.top[0] == Logprob(e.piece, e.logprob)  # at temperature 0: the likeliest token
        assert [t.logprob for t in e.top] == sorted((t.logprob for t in e.top), reverse=True)
    # The reference: every position's logits kept by llama-cpp-python itself (logits_all), turned
    # into logprobs by its own log-softmax, along the same greedy path.
    reference = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=256, n_threads=1,
        logits_all=True, verbose=False,
    )  # fmt: skip
    try:
        reference.eval(list(engine.prepare(request).tokens))
        for e in entries:
            row = llama_cpp.Llama.logits_to_logprobs(reference.scores[reference.n_tokens - 1])
            token = int(np.argmax(row))
            assert engine._vocab().piece(token) == e.piece
            assert e.logprob == pytest.approx(float(row[token]), abs=1e-2)
            best = np.sort(row)[::-1][:5]
            assert [t.logprob for t in e.top] == pytest.approx(best.tolist(), abs=1e-2)
            reference.eval([token])
    finally:
        reference.close()


def test_logprobs_follow_the_text_through_a_stop_string(engine: LlamaCppEngine) -> None:
    def ask(**extra: Any) -> tuple[str, list[Logprob], Finish]:
        return run_logprobs(engine, parse_chat_request({
            "model": "m", "messages": [{"role": "user", "content": "Count from 1 to 9."}],
            "max_tokens": 24, "temperature": 0, "seed": 1, "logprobs": True, **extra,
        }))  # fmt: skip

    free, all_entries, _ = ask()
    assert all(e.top == () for e in all_entries)  # top_logprobs left out: no alternatives
    assert "4" in free, free
    cut, entries, finish = ask(stop=["4"])
    assert (cut, finish.reason, finish.stop_sequence) == (free[: free.index("4")], "stop", "4")
    assert ask()[2].stop_sequence is None
    # One logprob per generated token, the one that reached the stop string included.
    assert len(entries) == finish.completion_tokens
    assert entries == all_entries[: len(entries)]
    assert b"4" in entries[-1].piece


async def test_choices_of_a_seeded_request_repeat_exactly_and_differ(gguf: Path) -> None:
    async def texts(runner: EngineRunner, n: int) -> list[str]:
        request = parse_chat_request({
            "model": "m", "messages": [{"role": "user", "content": "Write a poem about rain."}],
            "max_tokens": 12, "temperature": 1.0, "seed": 1234, "n": n,
        })  # fmt: skip
        out = [""]
        finishes = []
        async for item in runner.stream(await runner.prepare(request)):
            if isinstance(item, Finish):
                finishes.append(item)
                out.append("")
            else:
                assert isinstance(item, str)
                out[-1] += item
        assert [f.index for f in finishes] == list(range(n))
        return out[:-1]

    async with EngineRunner(LlamaCppEngine(gguf, n_ctx=256, n_threads=1)) as runner:
        first = await texts(runner, 3)
        again = await texts(runner, 3)
        alone = await texts(runner, 1)
    assert first == again
    assert len(set(first)) > 1, first  # each choice has a seed of its own
    assert alone == first[:1]  # choice 0 keeps the request's seed: n=1 samples as before


def test_end_of_generation_tokens_and_special_texts_are_llama_cpps(
    engine: LlamaCppEngine,
) -> None:
    # Asked per token, lazily: the same answers llama.cpp gives for the whole vocabulary.
    import llama_cpp  # noqa: PLC0415

    llm = engine._llm
    raw = llama_cpp.llama_model_get_vocab(llm.model)
    eog = {t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(raw, t)}
    vocab = engine._vocab()
    assert eog == {t for t in range(llm.n_vocab()) if vocab.is_eog(t)}
    assert llm.token_eos() in eog
    im_end = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    assert len(im_end) == 1
    assert vocab.piece(im_end[0]) == b""  # nothing in an answer...
    assert vocab.text(im_end[0]) == b"<|im_end|>"  # ...its name in logprobs
