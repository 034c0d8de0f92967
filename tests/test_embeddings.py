"""/v1/embeddings: request parsing, response shape, routing by capability, and the real model.

The end-to-end part runs one real queen with a chat worker and, spawned through the real CLI with
`--embeddings`, an embedding worker of the same default model; the official `openai` client talks
to the queen. The model's own figures (n_embd, its tokenizer) come from the GGUF through
llama-cpp-python directly, not through rbee.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from rbee.api.openai import MAX_EMBEDDING_INPUTS, EmbeddingRequest, parse_embedding_request
from rbee.api.responses import embedding_list
from rbee.api.workers import (
    WorkerInfo,
    WorkerSpec,
    parse_worker_info,
    parse_worker_spec,
)
from rbee.config.settings import Paths
from rbee.engines.base import check_embedding_tokens
from rbee.errors import ApiError
from rbee.hive.argv import worker_argv
from rbee.queen.registry import Registry
from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, rbee, running_queen

# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"input": "hi"}, EmbeddingRequest("m", ("hi",))),
        ({"input": ["a", "b"]}, EmbeddingRequest("m", ("a", "b"))),
        ({"input": [1, 2, 3]}, EmbeddingRequest("m", ((1, 2, 3),))),
        ({"input": [[1, 2], [3]]}, EmbeddingRequest("m", ((1, 2), (3,)))),
        ({"input": "x", "encoding_format": "base64"}, EmbeddingRequest("m", ("x",), "base64")),
        ({"input": "x", "encoding_format": None}, EmbeddingRequest("m", ("x",), "float")),
        ({"input": "x", "dimensions": 576}, EmbeddingRequest("m", ("x",), dimensions=576)),
        ({"input": "x", "user": "someone"}, EmbeddingRequest("m", ("x",))),
        ({"input": ["x"] * MAX_EMBEDDING_INPUTS}, EmbeddingRequest("m", ("x",) * 2048)),
        # One list of token ids is one input, however long (the worker checks the context).
        ({"input": [7] * 5000}, EmbeddingRequest("m", ((7,) * 5000,))),
    ],
)
def test_valid_requests(body: dict[str, Any], expected: EmbeddingRequest) -> None:
    assert parse_embedding_request({"model": "m", **body}) == expected


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": "x"}, "model", "model is required"),
        ({"model": "m"}, "input", "input is required"),
        ({"model": "m", "input": ""}, "input", "empty string"),
        ({"model": "m", "input": []}, "input", "empty list"),
        ({"model": "m", "input": 3}, "input", "must be a string, a list of strings"),
        ({"model": "m", "input": {"text": "x"}}, "input", "got dict"),
        ({"model": "m", "input": ["a", ""]}, "input[1]", "empty string"),
        ({"model": "m", "input": ["a", 1]}, "input[1]", "string or a list of token ids"),
        ({"model": "m", "input": ["a", ["b"]]}, "input[1]", "not a mix"),
        ({"model": "m", "input": [[1], "a"]}, "input[1]", "not a mix"),
        ({"model": "m", "input": [True]}, "input[0]", "got bool"),
        ({"model": "m", "input": [None]}, "input[0]", "got null"),
        ({"model": "m", "input": [[1], []]}, "input[1]", "empty list of token ids"),
        ({"model": "m", "input": [[1, "2"]]}, "input[0][1]", "token ids must be integers"),
        ({"model": "m", "input": [[1, 2.0]]}, "input[0][1]", "token ids must be integers"),
        ({"model": "m", "input": [5, -1]}, "input[1]", "from 0 to"),
        ({"model": "m", "input": ["x"] * 2049}, "input", "at most 2048 items, got 2049"),
        ({"model": "m", "input": [[1]] * 2049}, "input", "at most 2048"),
        ({"model": "m", "input": "x", "encoding_format": "binary"}, "encoding_format", "base64"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions", "between 1 and"),
        ({"model": "m", "input": "x", "dimensions": "576"}, "dimensions", "must be an integer"),
        ({"model": "m", "input": "x", "dimensions": True}, "dimensions", "must be an integer"),
    ],
)
def test_bad_requests_name_the_param(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_embedding_request(body)
    assert caught.value.status == 400
    assert caught.value.param == param
    assert words in caught.value.message


def test_body_must_be_an_object() -> None:
    with pytest.raises(ApiError) as caught:
        parse_embedding_request(["x"])
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("tokens", "index", "count", "param", "words"),
    [
        ((1,) * 9, 0, 1, "input", "9 tokens; this model's context is 8"),
        ((1,) * 9, 3, 5, "input[3]", "9 tokens"),
        ((1, 100), 0, 2, "input[0]", "token id 100; this model's vocabulary is 0 to 99"),
    ],
)
def test_inputs_beyond_the_model_are_refused(
    tokens: tuple[int, ...], index: int, count: int, param: str, words: str
) -> None:
    with pytest.raises(ApiError) as caught:
        check_embedding_tokens(tokens, index, count, context=8, vocab=100)
    assert (caught.value.status, caught.value.param) == (400, param)
    assert words in caught.value.message


def test_inputs_within_the_model_pass() -> None:
    check_embedding_tokens((0,) * 8, 0, 1, context=8, vocab=100)
    check_embedding_tokens((99,), 0, 1, context=8, vocab=100)


def test_response_shape_and_base64_is_little_endian_float32() -> None:
    vectors = [struct.pack("<3f", 0.6, 0.8, 0.0), struct.pack("<3f", -1.0, 0.0, 0.0)]
    floats = embedding_list("m", vectors, base64=False, prompt_tokens=7)
    assert floats["object"] == "list"
    assert floats["model"] == "m"
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["object"] for d in floats["data"]] == ["embedding", "embedding"]
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["data"][1]["embedding"] == [-1.0, 0.0, 0.0]
    assert floats["data"][0]["embedding"] == pytest.approx([0.6, 0.8, 0.0], abs=1e-7)
    encoded = embedding_list("m", vectors, base64=True, prompt_tokens=7)
    for as_floats, as_b64 in zip(floats["data"], encoded["data"], strict=True):
        raw = base64.b64decode(as_b64["embedding"])
        assert list(struct.unpack("<3f", raw)) == as_floats["embedding"]
    # The exact bytes OpenAI sends for [1.0]: 00 00 80 3f.
    one = embedding_list("m", [struct.pack("<f", 1.0)], base64=True, prompt_tokens=1)
    assert one["data"][0]["embedding"] == base64.b64encode(b"\x00\x00\x80\x3f").decode()


# --- the worker option, from the CLI to the hive's argv and back in the worker's report ---------


def test_worker_spec_and_info_carry_embeddings() -> None:
    assert parse_worker_spec({"model": "m"}).embeddings is False
    assert parse_worker_spec({"model": "m", "embeddings": True}) == WorkerSpec(
        model="m", embeddings=True
    )
    with pytest.raises(ApiError) as caught:
        parse_worker_spec({"model": "m", "embeddings": "yes"})
    assert caught.value.param == "embeddings"
    raw = {"id": "w", "model": "m", "engine": "llamacpp", "device": "cpu", "state": "ready"}
    assert parse_worker_info(raw).embeddings is False
    assert parse_worker_info({**raw, "embeddings": True}).embeddings is True
    with pytest.raises(TypeError, match="embeddings"):
        parse_worker_info({**raw, "embeddings": 1})


@pytest.mark.parametrize("embeddings", [False, True])
def test_hive_argv_passes_embeddings(embeddings: bool) -> None:
    argv = worker_argv(
        WorkerSpec(model="m", embeddings=embeddings),
        data_dir="/d",
        ready_fd=3,
        lifeline_fd=4,
        parent_pid=1,
        python="py",
    )
    assert ("--embeddings" in argv) is embeddings


def _info(worker_id: str, *, embeddings: bool, ctx: int = 4096) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id, model="m", engine="llamacpp", device="cpu", state="ready", port=1,
        context_length=ctx, embeddings=embeddings,
    )  # fmt: skip


def test_registry_routes_by_capability() -> None:
    registry = Registry()
    registry.update("localhost", _info("chat", embeddings=False, ctx=2048))
    registry.update("localhost", _info("emb", embeddings=True, ctx=512))
    for _ in range(3):  # whatever the counters say, the capability decides
        chosen = registry.choose("m", set(), embeddings=True)
        assert chosen is not None
        assert chosen.id == "emb"
        chosen.outstanding += 1
        chat = registry.choose("m", set())
        assert chat is not None
        assert chat.id == "chat"
        chat.outstanding += 1
    tried = {chosen.attempt}  # a worker tried once (in this life) is not chosen again
    assert registry.choose("m", tried, embeddings=True) is None
    assert registry.served_models(embeddings=False) == {"m": 2048}
    assert registry.served_models(embeddings=True) == {"m": 512}
    assert registry.served_models() == {"m": 512}


# --- the real model, through a real queen -------------------------------------------------------

TEXTS = [
    "The cat sat on the mat.",
    "A kitten is sleeping on the rug.",
    "The stock market fell sharply today as investors sold shares.",
    "Share prices dropped on Wall Street this afternoon.",
    "It is raining heavily in London this morning.",
    "Heavy rain and storms are expected across the city.",
]


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def gguf(model_cache: Path) -> Any:
    """The default model's vocabulary and metadata, read by llama-cpp-python directly."""
    import llama_cpp  # noqa: PLC0415 - only the real-model tests need it

    path = next((model_cache / MODEL).rglob("*.gguf"))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def n_embd(gguf: Any) -> int:
    arch = gguf.metadata["general.architecture"]
    return int(gguf.metadata[f"{arch}.embedding_length"])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[RunningQueen]:
    """A queen with a chat worker and, spawned by the CLI with --embeddings, an embedding one."""
    paths = make_paths(tmp_path_factory.mktemp("embeddings"), model_cache)
    with running_queen(paths) as q:
        spawned = rbee(
            paths, "--queen", q.url, "worker", "spawn", "--model", MODEL, "--embeddings",
            "--ctx-size", "1024",
        )  # fmt: skip
        assert spawned.returncode == 0, spawned.stderr
        assert "embeddings" in spawned.stdout
        yield q


def _worker_url(queen: RunningQueen, *, embeddings: bool) -> str:
    workers = [w for w in queen.workers() if w["embeddings"] is embeddings]
    assert len(workers) == 1, queen.workers()
    url = workers[0]["url"]
    assert isinstance(url, str)
    return url


@pytest.fixture
def client(fleet: RunningQueen) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fleet.base_url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.mark.slow
def test_the_workers_report_their_capability(fleet: RunningQueen) -> None:
    assert sorted(bool(w["embeddings"]) for w in fleet.workers()) == [False, True]
    hop = fleet.hop_headers
    health = http.get(f"{_worker_url(fleet, embeddings=True)}/health", headers=hop).json()
    assert health["embeddings"] is True
    assert health["context_length"] == 1024
    plain = http.get(f"{_worker_url(fleet, embeddings=False)}/health", headers=hop).json()
    assert plain["embeddings"] is False


@pytest.mark.slow
def test_vectors_have_the_models_size_and_unit_length(client: openai.OpenAI, n_embd: int) -> None:
    answer = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert answer.object == "list"
    assert answer.model == MODEL
    assert len(answer.data) == 1
    assert answer.data[0].object == "embedding"
    assert answer.data[0].index == 0
    vector = answer.data[0].embedding
    assert len(vector) == n_embd
    assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 5


@pytest.mark.slow
def test_same_text_same_vector_and_token_ids_match_text(client: openai.OpenAI, gguf: Any) -> None:
    first = client.embeddings.create(model=MODEL, input=TEXTS[2], encoding_format="float")
    second = client.embeddings.create(model=MODEL, input=TEXTS[2], encoding_format="float")
    assert first.data[0].embedding == second.data[0].embedding
    # The same text as the model's token ids (BOS first, as for text) gives the same vector.
    ids = gguf.tokenize(TEXTS[2].encode(), add_bos=True, special=False)
    by_ids = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert by_ids.data[0].embedding == first.data[0].embedding
    assert by_ids.usage.prompt_tokens == len(ids) == first.usage.prompt_tokens


@pytest.mark.slow
def test_related_texts_are_closer_than_unrelated(client: openai.OpenAI) -> None:
    answer = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    vectors = [d.embedding for d in answer.data]
    for i in range(0, len(TEXTS), 2):
        partner = _cosine(vectors[i], vectors[i + 1])
        others = [_cosine(vectors[i], vectors[j]) for j in range(len(TEXTS)) if j not in (i, i + 1)]
        assert partner > max(others) + 0.02, (TEXTS[i], partner, others)
    # Different texts do get different vectors.
    assert max(_cosine(vectors[0], v) for v in vectors[1:]) < 0.99


@pytest.mark.slow
def test_a_batch_keeps_its_order(client: openai.OpenAI) -> None:
    texts = TEXTS[:3]
    forward = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    backward = client.embeddings.create(model=MODEL, input=texts[::-1], encoding_format="float")
    assert [d.index for d in forward.data] == [0, 1, 2]
    assert [d.index for d in backward.data] == [0, 1, 2]
    alone = [
        client.embeddings.create(model=MODEL, input=t, encoding_format="float").data[0].embedding
        for t in texts
    ]
    for i in range(3):
        assert _cosine(forward.data[i].embedding, alone[i]) > 0.9999
        assert _cosine(backward.data[2 - i].embedding, alone[i]) > 0.9999
    assert _cosine(forward.data[0].embedding, alone[1]) < 0.99
    single = sum(
        client.embeddings.create(model=MODEL, input=t, encoding_format="float").usage.prompt_tokens
        for t in texts
    )
    assert forward.usage.prompt_tokens == single


@pytest.mark.slow
def test_base64_decodes_to_the_same_floats(client: openai.OpenAI, fleet: RunningQueen) -> None:
    floats = client.embeddings.create(model=MODEL, input=TEXTS[4], encoding_format="float")
    expected = floats.data[0].embedding
    raw = http.post(
        f"{fleet.base_url}/embeddings",
        json={"model": MODEL, "input": TEXTS[4], "encoding_format": "base64"},
    )
    assert raw.status_code == 200, raw.text
    payload = raw.json()["data"][0]["embedding"]
    assert isinstance(payload, str)
    decoded = base64.b64decode(payload)
    assert list(struct.unpack(f"<{len(decoded) // 4}f", decoded)) == expected
    # The openai client asks for base64 when no format is given, and decodes it itself.
    default = client.embeddings.create(model=MODEL, input=TEXTS[4])
    assert default.data[0].embedding == expected


@pytest.mark.slow
def test_dimensions_other_than_the_models_are_refused(client: openai.OpenAI, n_embd: int) -> None:
    same = client.embeddings.create(model=MODEL, input="x", dimensions=n_embd)
    assert len(same.data[0].embedding) == n_embd
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input="x", dimensions=64)
    assert caught.value.body["param"] == "dimensions"  # type: ignore[index]
    assert str(n_embd) in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.slow
def test_input_limits(client: openai.OpenAI, gguf: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input=["x"] * (MAX_EMBEDDING_INPUTS + 1))
    assert caught.value.body["param"] == "input"  # type: ignore[index]
    assert "at most 2048" in caught.value.body["message"]  # type: ignore[index]
    # Beyond the worker's context (1024 tokens): refused before any work.
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input=["short", "word " * 1500])
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.body["param"] == "input[1]"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input=[[1, 2, gguf.n_vocab()]])
    assert "vocabulary" in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.slow
def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="no-such-model", input="x")
    assert caught.value.code == "model_not_found"
    assert "--embeddings" in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.slow
def test_the_queen_routes_each_request_to_a_capable_worker(client: openai.OpenAI) -> None:
    # Both workers serve the same model: a request sent to the wrong one would be a 400.
    for _ in range(3):
        chat = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert chat.choices[0].message.content is not None
        assert len(client.embeddings.create(model=MODEL, input="Hi").data) == 1


@pytest.mark.slow
def test_each_worker_refuses_the_other_kind(fleet: RunningQueen) -> None:
    with openai.OpenAI(
        # The hive's secret is what a worker asks for, as a bearer token (rbee.api.hop).
        base_url=f"{_worker_url(fleet, embeddings=True)}/v1",
        api_key=fleet.hop_token,
        max_retries=0,
    ) as embedder:
        with pytest.raises(openai.BadRequestError) as caught:
            embedder.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
        assert "embeddings" in caught.value.body["message"]  # type: ignore[index]
        with pytest.raises(openai.BadRequestError):
            embedder.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        assert len(embedder.embeddings.create(model=MODEL, input="Hi").data) == 1
    with openai.OpenAI(
        base_url=f"{_worker_url(fleet, embeddings=False)}/v1",
        api_key=fleet.hop_token,
        max_retries=0,
    ) as chat:
        with pytest.raises(openai.BadRequestError) as caught:
            chat.embeddings.create(model=MODEL, input="Hi")
        assert "--embeddings" in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.slow
def test_without_a_capable_worker_a_request_loads_one(
    fleet: RunningQueen, client: openai.OpenAI
) -> None:
    # Last in this module: it stops the shared queen's chat worker.
    workers = {bool(w["embeddings"]): w["id"] for w in fleet.workers()}
    assert http.delete(f"{fleet.url}/v1/workers/{workers[False]}").status_code == 200
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert int(raw.headers["x-rbee-load-ms"]) > 0  # it waited for a chat worker to load
    assert raw.parse().choices[0].message.content is not None
    chat = [w for w in fleet.workers() if not w["embeddings"]]
    assert len(chat) == 1
    assert chat[0]["id"] == raw.headers["x-rbee-worker"]
    assert len(client.embeddings.create(model=MODEL, input="still served").data) == 1


@pytest.mark.slow
def test_with_autoload_off_the_queen_says_how_to_start_one(paths: Paths) -> None:
    with running_queen(paths, "--no-autoload", models=()) as q:
        spawned = rbee(paths, "--queen", q.url, "worker", "spawn", "--model", MODEL,
                       "--embeddings", "--ctx-size", "1024")  # fmt: skip
        assert spawned.returncode == 0, spawned.stderr
        (worker,) = q.workers()
        with openai.OpenAI(base_url=q.base_url, api_key="x", max_retries=0) as client:
            with pytest.raises(openai.NotFoundError) as caught:
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
                )
            message = caught.value.body["message"]  # type: ignore[index]
            assert "only workers loaded for embeddings" in message
            assert f"`rbee worker spawn --model {MODEL}`" in message
            assert len(client.embeddings.create(model=MODEL, input="served").data) == 1

            assert http.delete(f"{q.url}/v1/workers/{worker['id']}").status_code == 200
            with pytest.raises(openai.NotFoundError) as caught:
                client.embeddings.create(model=MODEL, input="x")
            message = caught.value.body["message"]  # type: ignore[index]
            assert "autoload is off" in message
            assert f"rbee worker spawn --model {MODEL} --embeddings" in message
        assert q.workers() == []


# --- the engine thread ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_cancelled_embedding_stops_between_batches(model_cache: Path) -> None:
    from rbee.engines.llamacpp import LlamaCppEngine  # noqa: PLC0415 - needs llama-cpp-python
    from rbee.worker.runner import EngineRunner  # noqa: PLC0415

    path = next((model_cache / MODEL).rglob("*.gguf"))
    # A small context makes small batches: 600 short inputs take dozens of llama.cpp batches.
    engine = LlamaCppEngine(path, n_ctx=128, n_threads=1, embedding=True)
    async with EngineRunner(engine, niceness=0) as runner:
        tokens = await runner.tokenize_inputs(tuple(f"sentence number {i}" for i in range(600)))
        task = asyncio.create_task(runner.embed(tokens))
        # The runner's counters have no event to wait on: poll them.
        deadline = time.monotonic() + 60
        while runner.stats.active == 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 120
        while runner.stats.active and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        # The engine gave up (cancelled, nothing embedded) rather than finishing unheard.
        assert (runner.stats.active, runner.stats.cancelled) == (0, 1)
        assert runner.stats.embedded_inputs == 0
        again = await runner.embed(tokens[:2])
        assert len(again.vectors) == 2
        assert again.prompt_tokens == len(tokens[0]) + len(tokens[1])
