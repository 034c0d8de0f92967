"""The llama.cpp adapter on the real default model: token rendering, weight repacking."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rbee.api.openai import parse_chat_request
from rbee.engines.base import Finish
from rbee.engines.llamacpp import LlamaCppEngine
from rbee.engines.repack import RepackChoice


@pytest.fixture(scope="module")
def engine(model_cache: Path) -> LlamaCppEngine:
    loaded = LlamaCppEngine(next(model_cache.rglob("*.gguf")), n_ctx=256, n_threads=1)
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
        assert engine._pieces[tokens[0]] == text.encode()
    assert sum(len(p) > 32 for p in engine._pieces) == 47


def test_every_other_token_renders_as_the_library_does(engine: LlamaCppEngine) -> None:
    llm = engine._llm
    same = sum(llm.detokenize([t]) == engine._pieces[t] for t in range(llm.n_vocab()))
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
