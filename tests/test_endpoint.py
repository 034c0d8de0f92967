"""The official openai client against a real queen relaying to a real worker on the real model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import llama_cpp
import openai
import pytest

from tests import http
from tests.conftest import MODEL, RunningQueen

pytestmark = pytest.mark.slow

MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture
def client(queen: RunningQueen) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=queen.base_url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
async def aclient(queen: RunningQueen) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=queen.base_url, api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def vocab(model_cache: Path) -> Iterator[llama_cpp.Llama]:
    """The default model's tokenizer alone (vocab_only: no weights), to name tokens by id."""
    path = next((model_cache / MODEL).rglob("*.gguf"))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "rbee"


def test_a_model_is_retrieved_as_listed_created_when_stored(
    client: openai.OpenAI, queen: RunningQueen
) -> None:
    listed = client.models.list().data
    got = client.models.retrieve(MODEL)
    assert got.model_dump() == listed[0].model_dump()
    assert (got.id, got.object, got.owned_by) == (MODEL, "model", "rbee")
    # `created` is when the model was stored here, the same on every call.
    manifest = queen.paths.models_dir / MODEL / "manifest.json"
    assert got.created == int(manifest.stat().st_mtime)
    assert [m.created for m in client.models.list().data] == [got.created]


@pytest.mark.parametrize("name", ["gpt-4", "org/some-model", "ft:gpt-4o:org::abc"])
def test_an_unknown_model_is_not_found(client: openai.OpenAI, name: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve(name)
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert MODEL in error["message"]


def test_chat_completion(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0
    )
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 5
    assert 0 < answer.usage.completion_tokens <= 24
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_max_tokens_is_honoured_exactly(client: openai.OpenAI) -> None:
    answer = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0
    )
    assert answer.usage is not None
    assert answer.usage.completion_tokens <= 5
    if answer.choices[0].finish_reason == "length":
        assert answer.usage.completion_tokens == 5


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=20,
        temperature=0,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in {"stop", "length"}
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert 0 < usage.completion_tokens <= 20
    assert text
    # The stream and the whole answer agree at temperature 0.
    whole = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=20,
        temperature=0,
        seed=7,
    )
    assert whole.choices[0].message.content == text
    assert whole.usage is not None
    assert whole.usage.completion_tokens == usage.completion_tokens


def test_stream_arrives_token_by_token(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL,
        prompt="The capital of France is",
        max_tokens=16,
        temperature=0,
        seed=7,
        stream=True,
    )
    pieces = [c.choices[0].text for c in stream if c.choices and c.choices[0].text]
    assert len(pieces) >= 4, pieces


def test_same_seed_same_text(client: openai.OpenAI) -> None:
    def once(seed: int) -> str:
        answer = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write a short poem about rain."}],
            max_tokens=32,
            temperature=0.9,
            seed=seed,
        )
        return answer.choices[0].message.content or ""

    first, second = once(1234), once(1234)
    assert first == second
    greedy = [
        client.completions.create(
            model=MODEL, prompt="1, 2, 3,", max_tokens=12, temperature=0, seed=7
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert greedy[0] == greedy[1]
    # A different seed at a high temperature gives a different text (checked over several seeds,
    # so one accidental equality cannot fail the test).
    others = {once(s) for s in (1, 2, 3, 4)}
    assert len(others | {first}) > 1


def test_stop_sequence_cuts_the_answer(client: openai.OpenAI) -> None:
    free = (
        client.completions.create(
            model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, seed=7
        )
        .choices[0]
        .text
    )
    assert "6" in free, free
    cut = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, seed=7, stop=["6"]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == free[: free.index("6")]
    # Which stop ended it, as vLLM says it (`stop_reason`), whole and streamed.
    assert (cut.choices[0].model_extra or {}).get("stop_reason") == "6"
    stream = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, seed=7,
        stop=["zz", "6"], stream=True,
    )  # fmt: skip
    last = [c.choices[0] for c in stream if c.choices][-1]
    assert (last.finish_reason, (last.model_extra or {}).get("stop_reason")) == ("stop", "6")
    assert "stop_reason" not in (
        client.completions.create(model=MODEL, prompt="1, 2,", max_tokens=3).choices[0].model_extra
        or {}
    )


async def test_async_client_stream_and_whole(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        seed=7,
        stream=True,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    whole = await aclient.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        seed=7,
    )
    assert text
    assert whole.choices[0].message.content == text


def test_unknown_model_is_404_listing_models(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found"
    assert MODEL in error["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"n": 9}, "n"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"seed": 1.5}, "seed"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 500}}, "logit_bias"),
        ({"tool_choice": "auto"}, "tool_choice"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    client: openai.OpenAI, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            extra_body=extra,
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_logit_bias_bans_and_forces_tokens(client: openai.OpenAI, vocab: llama_cpp.Llama) -> None:
    def first(**extra: object) -> str:
        answer = client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=1, temperature=0, **extra
        )
        return answer.choices[0].text

    greedy = first()
    (token,) = vocab.tokenize(greedy.encode(), add_bos=False, special=False)
    assert first(logit_bias={str(token): -100}) != greedy
    (banana,) = vocab.tokenize(b" banana", add_bos=False, special=False)
    forced = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=3,
        temperature=0,
        logit_bias={str(banana): 100},
    )
    assert forced.choices[0].message.content == " banana" * 3


def test_logit_bias_outside_the_vocabulary_is_400(
    client: openai.OpenAI, vocab: llama_cpp.Llama
) -> None:
    size = vocab.n_vocab()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=2, logit_bias={str(size): 1}
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "logit_bias"
    assert f"token id {size}" in error["message"]


def test_prompt_over_context_is_400(queen: RunningQueen) -> None:
    long_prompt = "word " * 6000
    r = http.post(
        f"{queen.base_url}/completions",
        json={"model": MODEL, "prompt": long_prompt, "max_tokens": 4},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_malformed_json_and_oversized_bodies(queen: RunningQueen) -> None:
    url = f"{queen.base_url}/chat/completions"
    r = http.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]
    big = b'{"model": "x", "pad": "' + b"a" * (1 << 20) + b'"}'
    r = http.post(url, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_bad_requests_never_reach_the_engine(queen: RunningQueen) -> None:
    worker = queen.workers()[0]
    before = queen.worker_health(worker)["stats"]["requests"]
    for body in (
        {"model": MODEL, "messages": MESSAGES, "n": 9},
        {"model": MODEL, "messages": MESSAGES, "temperature": -1},
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 10**6},
        {"model": "nope", "messages": MESSAGES},
        {"model": MODEL, "messages": MESSAGES, "logit_bias": {"49152": 1}},  # past the vocabulary
    ):
        assert http.post(f"{queen.base_url}/chat/completions", json=body).status_code in {400, 404}
    after = queen.worker_health(worker)["stats"]["requests"]
    assert after == before


def test_health_and_unknown_paths(queen: RunningQueen) -> None:
    health = http.get(f"{queen.url}/health").json()
    assert health["role"] == "queen"
    assert health["models"] == [MODEL]
    r = http.get(f"{queen.base_url}/nothing-here")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    worker = queen.workers()[0]
    wh = queen.worker_health(worker)
    assert (wh["role"], wh["model"], wh["engine"]) == ("worker", MODEL, "llamacpp")


def test_unknown_routes_and_methods_say_what_exists(queen: RunningQueen) -> None:
    r = http.get(f"{queen.base_url}/chat/completion")
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "not_found"
    for route in ("POST /v1/chat/completions", "GET /v1/models/{model}", "GET, POST /v1/workers"):
        assert route in error["message"]
    # A base URL without /v1 is the commonest mistake: the answer says so.
    r = http.post(f"{queen.url}/chat/completions", json={"model": MODEL})
    assert r.status_code == 404
    assert "did you mean /v1/chat/completions?" in r.json()["error"]["message"]
    for method, path, allowed in (
        ("DELETE", "/models", "GET"),
        ("GET", "/chat/completions", "POST"),
        ("PUT", "/workers", "GET, POST"),
    ):
        r = httpx.request(method, f"{queen.base_url}{path}", timeout=http.TIMEOUT)
        assert r.status_code == 405, (method, path)
        assert r.headers["allow"] == allowed
        error = r.json()["error"]
        assert error["code"] == "method_not_allowed"
        assert error["message"].endswith(f"this route takes {allowed}")


def test_cors_is_off_by_default(queen: RunningQueen) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(f"{queen.base_url}/chat/completions", headers=preflight, timeout=5)
    assert "access-control-allow-origin" not in r.headers
    r = http.get(f"{queen.base_url}/models", headers={"Origin": "https://app.example"})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
