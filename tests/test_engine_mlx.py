"""The MLX engine, for real: the default GGUF loaded by mlx-lm on the CPU (`mlx[cpu]` on Linux).

The engine tests load the real default model and stream real tokens; the parity test runs the
same greedy prompts through llama.cpp and compares token by token. They skip, saying so, only
where mlx or mlx-lm cannot be imported. The GGUF-metadata mapping is also checked on its own,
without MLX, with plain tables.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from rbee.api.openai import ChatMessage, ChatRequest, CompletionRequest, SamplingParams
from rbee.engines import gguf_meta
from rbee.engines.base import Finish, Piece
from rbee.engines.llamacpp import LlamaCppEngine
from rbee.engines.mlx import MlxEngine, _logprob, _make_vocab, _penalties, _RawLogits, token_pieces
from rbee.errors import ApiError, EngineError, InsufficientMemoryError
from rbee.worker.runner import EngineRunner
from tests.conftest import MODEL

try:
    import mlx.core as mx
    from mlx_lm import load as mlx_lm_load
    from mlx_lm.generate import generate_step

    MLX_MISSING = ""
except ImportError as err:
    MLX_MISSING = f"mlx / mlx-lm cannot be imported ({err}); install rbee[mlx]"

needs_mlx = pytest.mark.skipif(bool(MLX_MISSING), reason=MLX_MISSING)

N_CTX = 2048

# Fixed prompts for the parity test: facts, lists, arithmetic, translation, code, prose.
PARITY_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "Who wrote Hamlet?",
    "Translate 'good morning' to Spanish.",
    "What is 12 times 7?",
    "Give me a tip for learning Python.",
)
PARITY_TOKENS = 32


def chat(text: str, **sampling: Any) -> ChatRequest:
    return ChatRequest(
        model=MODEL,
        messages=(ChatMessage(role="user", content=text),),
        sampling=SamplingParams(**sampling),
    )


def complete(prompt: str, **sampling: Any) -> CompletionRequest:
    return CompletionRequest(model=MODEL, prompt=prompt, sampling=SamplingParams(**sampling))


def run(engine: Any, request: ChatRequest | CompletionRequest) -> tuple[list[str], Finish]:
    """Every piece a generation yields, and its Finish (checked to come last, once)."""
    items = list(engine.generate(engine.prepare(request), threading.Event()))
    assert all(isinstance(i, str) for i in items[:-1])
    assert isinstance(items[-1], Finish)
    return items[:-1], items[-1]


@pytest.fixture(scope="module")
def gguf(model_cache: Path) -> Path:
    """The default model's GGUF file in the shared model cache."""
    return next((model_cache / MODEL).rglob("*.gguf"))


@pytest.fixture(scope="module")
def engine(gguf: Path) -> Iterator[MlxEngine]:
    """The MLX engine with the default GGUF loaded, shared by this module."""
    if MLX_MISSING:
        pytest.skip(MLX_MISSING)
    mlx_engine = MlxEngine(gguf, n_ctx=N_CTX)
    mlx_engine.load()
    yield mlx_engine
    mlx_engine.close()


# --- the GGUF metadata mapping, without MLX ---------------------------------------------------


@pytest.mark.parametrize(
    ("gguf_name", "expected"),
    [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("blk.12.attn_k.scales", "model.layers.12.self_attn.k_proj.scales"),
        ("blk.3.attn_v.biases", "model.layers.3.self_attn.v_proj.biases"),
        ("blk.29.attn_output.weight", "model.layers.29.self_attn.o_proj.weight"),
        ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
        ("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight"),
        ("blk.1.ffn_down.scales", "model.layers.1.mlp.down_proj.scales"),
        ("blk.7.attn_norm.weight", "model.layers.7.input_layernorm.weight"),
        ("blk.7.ffn_norm.weight", "model.layers.7.post_attention_layernorm.weight"),
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("token_embd.biases", "model.embed_tokens.biases"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        ("rope_freqs.weight", None),
        ("blk.0.attn_q_norm.weight", None),
        ("blk.x.attn_q.weight", None),
    ],
)
def test_gguf_tensor_names_map_to_mlx_lm_names(gguf_name: str, expected: str | None) -> None:
    assert gguf_meta.weight_name(gguf_name) == expected


LLAMA_META: dict[str, Any] = {
    "general.architecture": "llama",
    "llama.embedding_length": 576,
    "llama.block_count": 30,
    "llama.feed_forward_length": 1536,
    "llama.attention.head_count": 9,
    "llama.attention.head_count_kv": 3,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "llama.vocab_size": 49152,
    "llama.rope.freq_base": 100000.0,
    "llama.context_length": 8192,
}


def test_llama_config_comes_from_the_metadata() -> None:
    config = gguf_meta.llama_config(LLAMA_META, ["token_embd.weight"], "m.gguf")
    assert config == {
        "model_type": "llama",
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "vocab_size": 49152,
        "rope_theta": 100000.0,
        "rope_traditional": True,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
    }
    untied = gguf_meta.llama_config(LLAMA_META, ["output.weight"], "m.gguf")
    assert untied["tie_word_embeddings"] is False


@pytest.mark.parametrize(
    ("change", "tensors", "message"),
    [
        (
            {"general.architecture": "qwen2"},
            [],
            "llama-architecture GGUF files, this one is 'qwen2'",
        ),
        ({}, ["rope_freqs.weight"], "rope_freqs tensor"),
        ({"llama.rope.scaling.type": "yarn"}, [], "RoPE scaling 'yarn'"),
        ({"llama.block_count": None}, [], None),
    ],
)
def test_llama_config_refuses_what_it_cannot_reproduce(
    change: dict[str, Any], tensors: list[str], message: str | None
) -> None:
    meta = {k: v for k, v in {**LLAMA_META, **change}.items() if v is not None}
    with pytest.raises(EngineError) as err:
        gguf_meta.llama_config(meta, tensors, "m.gguf")
    assert str(err.value).startswith("m.gguf: ")
    assert (message or "has no 'llama.block_count'") in str(err.value)


TOKENIZER_META: dict[str, Any] = {
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.pre": "smollm",
    "tokenizer.ggml.tokens": ["<|endoftext|>", "<|im_end|>", "<tool>", "a", "b", "ab", "Ġ", "Ġab"],
    "tokenizer.ggml.token_type": [3, 3, 4, 1, 1, 1, 1, 1],
    "tokenizer.ggml.merges": ["a b", "Ġ ab"],
    "tokenizer.ggml.bos_token_id": 0,
    "tokenizer.ggml.eos_token_id": 1,
    "tokenizer.ggml.add_bos_token": False,
}


def test_tokenizer_json_keeps_special_and_user_tokens_apart() -> None:
    doc = gguf_meta.tokenizer_json(TOKENIZER_META, "m.gguf")
    added = {t["content"]: t["special"] for t in doc["added_tokens"]}
    assert added == {"<|endoftext|>": True, "<|im_end|>": True, "<tool>": False}
    assert doc["model"]["merges"] == [["a", "b"], ["Ġ", "ab"]]
    assert doc["model"]["vocab"]["Ġab"] == 7
    assert doc["post_processor"] is None  # the file says no BOS
    assert doc["pre_tokenizer"]["pretokenizers"][0] == {"type": "Digits", "individual_digits": True}
    with_bos = gguf_meta.tokenizer_json(
        {**TOKENIZER_META, "tokenizer.ggml.add_bos_token": True}, "m.gguf"
    )
    assert with_bos["post_processor"]["special_tokens"]["<|endoftext|>"]["ids"] == [0]
    # Rendered back: control tokens as nothing, user-defined ones as their text, bytes decoded.
    assert token_pieces(doc, "m.gguf") == (b"", b"", b"<tool>", b"a", b"b", b"ab", b" ", b" ab")
    assert gguf_meta.eog_token_ids(TOKENIZER_META) == [0, 1]
    assert gguf_meta.special_token_text(TOKENIZER_META, "eos") == "<|im_end|>"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokenizer.ggml.model": "llama"}, "GPT-2-style BPE tokenizers from GGUF metadata"),
        ({"tokenizer.ggml.pre": "default"}, "pre-tokenizer 'default'"),
        ({"tokenizer.ggml.pre": "qwen2"}, "pre-tokenizer 'qwen2'"),
    ],
)
def test_tokenizers_that_would_cut_text_differently_are_refused(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(EngineError, match=message):
        gguf_meta.tokenizer_json({**TOKENIZER_META, **change}, "m.gguf")


def test_sentencepiece_pieces_turn_markers_into_spaces_and_bytes() -> None:
    doc = {
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"},
            ],
        },
        "added_tokens": [{"id": 0, "content": "<s>", "special": True}],
        "model": {"vocab": {"<s>": 0, "\u2581the": 1, "<0x0A>": 2, "<0xE2>": 3, "x": 4}},
    }
    assert token_pieces(doc, "f") == (b"", b" the", b"\n", b"\xe2", b"x")
    with pytest.raises(EngineError, match="neither byte-level BPE nor SentencePiece"):
        token_pieces({**doc, "decoder": {"type": "WordPiece"}}, "f")


# --- the engine on the real default model -----------------------------------------------------


@needs_mlx
def test_load_refuses_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        MlxEngine(tmp_path / "nope.gguf").load()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a GGUF file" * 100)
    with pytest.raises(EngineError, match="MLX could not read"):
        MlxEngine(junk).load()
    unloaded = MlxEngine(junk)
    with pytest.raises(EngineError, match="not loaded"):
        unloaded.prepare(chat("hi"))


def test_load_says_when_mlx_is_missing(gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlx_lm", None)  # what `import mlx_lm` meets when absent
    with pytest.raises(EngineError, match=r"MLX is not installed .*install rbee\[mlx\]"):
        MlxEngine(gguf).load()


@needs_mlx
def test_a_model_that_does_not_fit_is_refused_before_loading(
    gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rbee.engines.mlx.mem_available", lambda: 50 << 20)
    mlx_engine = MlxEngine(gguf)
    with pytest.raises(
        InsufficientMemoryError, match=r"needs about .* on (cpu|metal:0), but only 50 MiB"
    ):
        mlx_engine.load()
    with pytest.raises(EngineError, match="not loaded"):
        mlx_engine.prepare(chat("hi"))


@needs_mlx
@pytest.mark.slow
def test_chat_streams_sensible_text_with_exact_counts(engine: MlxEngine) -> None:
    request = chat("What is the capital of France?", temperature=0, max_tokens=24)
    prepared = engine.prepare(request)
    pieces, finish = run(engine, request)
    text = "".join(pieces)
    assert "Paris" in text
    assert len(pieces) > 1  # streamed, not one lump
    ids = list(engine.token_ids(prepared, threading.Event()))
    assert finish == Finish(
        reason="stop", prompt_tokens=len(prepared.tokens), completion_tokens=len(ids)
    )
    assert engine._vocab is not None
    assert b"".join(engine._vocab.pieces[i] for i in ids).decode() == text


@needs_mlx
@pytest.mark.slow
def test_greedy_is_deterministic(engine: MlxEngine) -> None:
    request = complete("The honey bee is", temperature=0, max_tokens=8)
    assert run(engine, request) == run(engine, request)


@needs_mlx
@pytest.mark.slow
def test_a_seed_makes_sampling_reproducible(engine: MlxEngine) -> None:
    def sample(seed: int) -> str:
        request = complete("Once upon a time", temperature=1.0, top_p=0.95, seed=seed, max_tokens=6)
        pieces, finish = run(engine, request)
        assert finish.completion_tokens == 6
        return "".join(pieces)

    first = sample(1234)
    assert sample(1234) == first
    others = {sample(seed) for seed in (1, 2)}
    assert others != {first}, "different seeds all gave the same text"


@needs_mlx
@pytest.mark.slow
def test_stop_strings_cut_the_text(engine: MlxEngine) -> None:
    prompt = "Monday, Tuesday, Wednesday,"
    full = "".join(run(engine, complete(prompt, temperature=0, max_tokens=10))[0])
    # A stop string from the middle of the answer, wherever the token boundaries fall.
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3, full
    pieces, finish = run(engine, complete(prompt, temperature=0, max_tokens=10, stop=(stop, "@@")))
    assert "".join(pieces) == full[: full.index(stop)]
    assert (finish.reason, finish.stop_sequence) == ("stop", stop)


@needs_mlx
@pytest.mark.slow
def test_max_tokens_ends_with_length(engine: MlxEngine) -> None:
    request = complete("Bees are", temperature=0, max_tokens=3)
    _, finish = run(engine, request)
    assert finish == Finish(reason="length", prompt_tokens=3, completion_tokens=3)
    assert engine.prepare(request).tokens == (50, 4123, 359)  # "B", "ees", " are": no BOS


@needs_mlx
@pytest.mark.slow
def test_cancel_stops_early(engine: MlxEngine) -> None:
    prepared = engine.prepare(complete("Bees are", temperature=0, max_tokens=200))
    cancel = threading.Event()
    items: list[str | Finish] = []
    for item in engine.generate(prepared, cancel):
        items.append(item)
        cancel.set()
    finish = items[-1]
    assert isinstance(finish, Finish)
    assert finish.reason == "cancelled"
    assert 1 <= finish.completion_tokens <= 2


@needs_mlx
@pytest.mark.slow
async def test_the_worker_runner_drives_it_on_its_engine_thread(gguf: Path) -> None:
    # As in a worker: loaded and generating on the runner's thread, prepared on another.
    async with EngineRunner(MlxEngine(gguf, n_ctx=N_CTX)) as runner:
        prepared = await runner.prepare(complete("Bees are", temperature=0, max_tokens=4))
        items = [item async for item in runner.stream(prepared)]
    assert items[-1] == Finish(reason="length", prompt_tokens=3, completion_tokens=4)
    assert all(isinstance(i, str) for i in items[:-1])
    assert "".join(i for i in items[:-1] if isinstance(i, str)).strip()


@needs_mlx
def test_penalties_follow_openai_over_the_generated_tokens() -> None:
    # logit[j] -= count[j] * frequency + (count[j] > 0) * presence, counting only the answer:
    # the prompt's tokens (here two 5s) are not penalized.
    sampling = SamplingParams(frequency_penalty=0.5, presence_penalty=1.0)
    (penalize,) = _penalties(sampling, prompt_len=2)
    logits = penalize(mx.array([5, 5, 7, 7, 9]), mx.zeros((1, 10)))
    expected = [0.0] * 10
    expected[7], expected[9] = -2.0, -1.5
    assert logits.tolist() == [expected]
    assert _penalties(SamplingParams(), prompt_len=2) == []


@needs_mlx
@pytest.mark.slow
def test_a_frequency_penalty_breaks_a_repetitive_answer(engine: MlxEngine) -> None:
    prompt = "1, 1, 1, 1, 1, 1,"
    plain = "".join(run(engine, complete(prompt, temperature=0, max_tokens=16))[0])
    assert plain.count("1") >= 4, plain
    penalized = complete(prompt, temperature=0, max_tokens=16, frequency_penalty=2.0)
    assert "".join(run(engine, penalized)[0]).count("1") < plain.count("1")


@needs_mlx
@pytest.mark.slow
def test_logit_bias_bans_and_forces_tokens(engine: MlxEngine) -> None:
    def greedy(**sampling: Any) -> list[int]:
        prepared = engine.prepare(complete("The capital of France is", temperature=0, **sampling))
        return list(engine.token_ids(prepared, threading.Event()))

    plain = greedy(max_tokens=3)
    banned = greedy(max_tokens=3, logit_bias=((plain[0], -100.0),))
    assert banned[0] != plain[0]
    banana = 21285  # " banana" in SmolLM2's vocabulary
    assert greedy(max_tokens=3, logit_bias=((banana, 100.0),)) == [banana] * 3
    with pytest.raises(ApiError) as caught:
        engine.prepare(complete("Hi", logit_bias=((1_000_000, 1.0),)))
    assert caught.value.param == "logit_bias"
    assert "1000000" in caught.value.message


@needs_mlx
@pytest.mark.slow
def test_context_overflow_is_refused_before_generation(engine: MlxEngine) -> None:
    with pytest.raises(ApiError) as err:
        engine.prepare(chat("bee " * N_CTX))
    assert (err.value.status, err.value.code) == (400, "context_length_exceeded")
    with pytest.raises(ApiError) as err:
        engine.prepare(chat("hi", max_tokens=N_CTX))
    assert (err.value.status, err.value.param) == (400, "max_tokens")
    assert engine.context_length == N_CTX


# --- parity with llama.cpp --------------------------------------------------------------------


def llama_greedy(llm: Any, prompt: list[int], eog: set[int], n: int) -> tuple[list[int], list[Any]]:
    """llama.cpp's greedy continuation of `prompt` (up to an end-of-generation token, excluded),
    and the logits row of every choice it made, the ending one included."""
    llm.reset()
    llm.eval(prompt)
    tokens: list[int] = []
    rows: list[Any] = []
    while len(tokens) < n:
        row = np.array(llm.scores[llm.n_tokens - 1])
        rows.append(row)
        token = int(np.argmax(row))
        if token in eog:
            break
        tokens.append(token)
        llm.eval([token])
    return tokens, rows


def first_split(
    ours: list[int], theirs: list[int], rows: list[Any], eog: set[int]
) -> tuple[int, float | None]:
    """How many leading tokens agree, and at the first difference, how far llama.cpp's logit for
    its own choice was above its logit for MLX's (an ending counts as its best end token)."""
    same = 0
    while same < min(len(ours), len(theirs)) and ours[same] == theirs[same]:
        same += 1
    if len(ours) == len(theirs) == same or same == len(rows):
        return same, None  # identical, or both ran to the token limit together
    row = rows[same]
    best_end = max(float(row[t]) for t in eog)
    theirs_logit = float(row[theirs[same]]) if same < len(theirs) else best_end
    ours_logit = float(row[ours[same]]) if same < len(ours) else best_end
    return same, theirs_logit - ours_logit


@needs_mlx
@pytest.mark.slow
def test_greedy_tokens_agree_with_llama_cpp(engine: MlxEngine, gguf: Path) -> None:
    """MLX and llama.cpp run different kernels on the same weights: MLX dequantizes exactly and
    multiplies in float32, llama.cpp quantizes the activations to 8 bits for its dot products.
    Measured, the gap between two candidates' logits differs by up to a few tenths between the
    engines, so greedy decoding may part ways where llama.cpp's own top two are that close. The
    test measures where the two part and asserts it is only at such near ties.
    """
    reference = LlamaCppEngine(gguf, n_ctx=N_CTX, n_threads=2)
    reference.load()
    # Logits for every position: 256 tokens hold the longest prompt and its answer.
    llm = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=256, n_threads=2, logits_all=True, verbose=False
    )
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eog = {t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    assert engine._vocab is not None
    assert set(engine._vocab.eog) <= eog
    assert {0, 2} <= engine._vocab.eog  # <|endoftext|>, <|im_end|>
    # Every token renders to the bytes llama.cpp gives it (without special tokens).
    buffer = ctypes.create_string_buffer(256)
    for token, piece in enumerate(engine._vocab.pieces):
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
        assert buffer.raw[:n] == piece, token
    report = []
    try:
        for i, text in enumerate(PARITY_PROMPTS):
            request = chat(text, temperature=0, max_tokens=PARITY_TOKENS)
            prepared = engine.prepare(request)
            # Both engines cut the templated prompt into exactly the same tokens.
            assert prepared.tokens == reference.prepare(request).tokens, text
            ours = list(engine.token_ids(prepared, threading.Event()))
            theirs, rows = llama_greedy(llm, list(prepared.tokens), eog, PARITY_TOKENS)
            if i < 2:  # the raw loop above is what the llama.cpp engine does at temperature 0
                assert "".join(run(reference, request)[0]).encode() == llm.detokenize(theirs)
            same, margin = first_split(ours, theirs, rows, eog)
            report.append((text, same, len(ours), len(theirs), margin))
        # Raw completion prompts too: special-token text read as text, BOS as the file says.
        for prompt in ("<|im_start|>user 2024", "Bees are", "  x\n\ny 1.5e-3 🐝"):
            request = complete(prompt, max_tokens=1)
            assert engine.prepare(request).tokens == reference.prepare(request).tokens, prompt
    finally:
        reference.close()
        llm.close()
    print(f"\nMLX vs llama.cpp, greedy, first {PARITY_TOKENS} tokens:")
    for text, same, n_ours, n_theirs, margin in report:
        where = (
            "" if margin is None else f", split where llama.cpp's top two differ by {margin:.3f}"
        )
        print(f"  {same:2d} common of {n_ours}/{n_theirs}  {text!r}{where}")
    prefixes = [same for _, same, _, _, _ in report]
    mean = sum(prefixes) / len(prefixes)
    identical_first = sum(1 for p in prefixes if p > 0)
    print(f"  mean common prefix {mean:.1f}; first token identical on {identical_first}/8")
    # Every parting of the ways is a near tie in llama.cpp's own logits. Measured: 0.07 to 0.28
    # logits apart, about as far as the two engines' logits for the same token differ.
    margins = [m for *_, m in report if m is not None]
    assert all(m < 0.5 for m in margins), report
    # Measured: 6 of 8 prompts share the first token (the two others open on near ties, "L" vs
    # "The" and "In" vs "The"); the mean common prefix is 12.4 tokens, one prompt (8 tokens,
    # both ended) agrees throughout. The bounds leave room for another CPU's llama.cpp kernels.
    assert identical_first >= 5, report
    assert mean >= 8, report


# --- an mlx-lm folder -------------------------------------------------------------------------


@needs_mlx
@pytest.mark.slow
def test_the_model_written_as_an_mlx_lm_folder_loads_and_answers_the_same(
    engine: MlxEngine, tmp_path: Path
) -> None:
    folder = tmp_path / "smollm2-mlx"
    engine.save_folder(folder)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["group_size"] == 32
    assert config["quantization"]["bits"] == 4  # Q4_1
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}  # Q8_0
    assert config["eos_token_id"] == [0, 2]
    weights = mx.load(str(folder / "model.safetensors"))
    assert weights["model.layers.0.self_attn.q_proj.scales"].dtype == mx.float16  # as in the GGUF

    from_folder = MlxEngine(folder, n_ctx=N_CTX)
    from_folder.load()
    try:
        for request in (chat(PARITY_PROMPTS[0]), complete("<|im_start|>Bees 2024")):
            assert from_folder.prepare(request).tokens == engine.prepare(request).tokens
        request = complete("The honey bee is", temperature=0, max_tokens=8)
        assert run(from_folder, request) == run(engine, request)
    finally:
        from_folder.close()

    # mlx-lm's own loader reads the folder as well, and greedy decoding gives the same tokens.
    model, tokenizer = mlx_lm_load(str(folder))
    prepared = engine.prepare(request)
    steps = generate_step(mx.array(prepared.tokens), model, max_tokens=8)
    assert [int(t) for t, _ in steps] == list(engine.token_ids(prepared, threading.Event()))
    messages = [{"role": "user", "content": "Hello 123"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert tuple(ids) == engine.prepare(chat("Hello 123")).tokens


# --- logprobs ---------------------------------------------------------------------------------


@needs_mlx
def test_logprobs_map_an_mlx_row_of_logits_to_tokens_and_their_text() -> None:
    # The toy vocabulary: <|endoftext|> and <|im_end|> are special (they show their text here,
    # though they render as nothing in an answer), <tool> is a user-defined token.
    vocab = _make_vocab(
        gguf_meta.tokenizer_json(TOKENIZER_META, "m.gguf"),
        eog=[0, 1],
        template=None,
        bos_text="",
        eos_text="<|im_end|>",
        where="m.gguf",
    )
    logits = [0.5, 3.0, 1.0, -2.0, 0.0, 2.5, 0.25, 1.5]
    row = mx.array([logits], dtype=mx.float16)  # as the model gives it: one row, half precision
    entry = _logprob(row, 5, 3, vocab)
    expected = np.array(logits) - np.log(np.exp(np.array(logits)).sum())
    assert entry.piece == b"ab"
    assert entry.logprob == pytest.approx(expected[5], abs=1e-3)
    assert [t.piece for t in entry.top] == [b"<|im_end|>", b"ab", b" ab"]
    assert [t.logprob for t in entry.top] == pytest.approx(expected[[1, 5, 7]].tolist(), abs=1e-3)
    assert _logprob(row, 2, 0, vocab).piece == b"<tool>"
    assert _logprob(row, 2, 0, vocab).top == ()


@needs_mlx
def test_the_raw_logits_queue_up_one_per_step_unchanged() -> None:
    raw = _RawLogits()
    rows = [mx.array([[float(i), 0.0]]) for i in range(3)]
    assert [raw(mx.array([1]), r) is r for r in rows] == [True, True, True]
    assert list(raw.rows) == rows


@needs_mlx
@pytest.mark.slow
def test_logprobs_are_the_models_own_before_penalties(engine: MlxEngine) -> None:
    def ask(**sampling: Any) -> tuple[str, list[Any], Finish]:
        request = complete("1, 2, 3,", temperature=0, max_tokens=8, logprobs=3, **sampling)
        items = list(engine.generate(engine.prepare(request), threading.Event()))
        assert isinstance(items[-1], Finish)
        pieces = [i for i in items[:-1] if isinstance(i, Piece)]
        assert len(pieces) == len(items) - 1
        entries = [e for p in pieces for e in p.logprobs]
        assert len(entries) == items[-1].completion_tokens
        return "".join(p.text for p in pieces), entries, items[-1]

    text, entries, _ = ask()
    assert b"".join(e.piece for e in entries).decode() == text
    # mlx-lm's own logprobs along the same greedy path (no logits processors: unchanged logits).
    prepared = engine.prepare(complete("1, 2, 3,", temperature=0, max_tokens=8))
    assert engine._vocab is not None
    steps = generate_step(mx.array(prepared.tokens), engine._model, max_tokens=8)
    for entry, (token, logprobs) in zip(entries, steps, strict=True):
        assert entry.piece == engine._vocab.pieces[token]
        # mlx's own log-sum-exp on the CPU is off by about 2e-4 (rbee sums in float64).
        assert entry.logprob == pytest.approx(float(logprobs[token]), abs=1e-3)
        assert entry.logprob <= 0.0
        assert entry.top[0].piece == entry.piece  # greedy: the likeliest token
        assert [t.logprob for t in entry.top] == sorted(
            (t.logprob for t in entry.top), reverse=True
        )
    # With a penalty the answer changes, the model's logprobs do not: wherever the two answers
    # share what came before, the logprobs are the same, also where the penalty picked another
    # token than the likeliest.
    penalized_text, penalized, _ = ask(frequency_penalty=2.0)
    assert penalized_text != text
    pairs = zip(entries, penalized, strict=False)
    same = next(i for i, (a, b) in enumerate(pairs) if a.piece != b.piece)
    assert penalized[same].logprob < penalized[same].top[0].logprob
    for a, b in zip(entries[: same + 1], penalized[: same + 1], strict=True):
        assert [t.piece for t in b.top] == [t.piece for t in a.top]
        assert [t.logprob for t in b.top] == pytest.approx([t.logprob for t in a.top], abs=1e-4)
