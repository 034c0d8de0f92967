"""The llama.cpp adapter's token rendering, on the real default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.engines.llamacpp import LlamaCppEngine


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
