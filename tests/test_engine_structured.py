"""Structured outputs on the real default model, through llama.cpp and through MLX (`mlx[cpu]`).

Each engine answers with a schema (nested object, enums, an array, an integer range, required
fields everywhere): the answer must parse and validate against the pydantic model the schema came
from, end with "stop" where the grammar ends, and be cut with "length" when max_tokens comes
first. The MLX tests skip, saying so, only where mlx or mlx-lm cannot be imported.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rbee.api.openai import ChatRequest, parse_chat_request
from rbee.api.tools import split_calls
from rbee.engines.base import Finish
from rbee.engines.llamacpp import LlamaCppEngine
from rbee.engines.mlx import MlxEngine
from rbee.worker.runner import EngineRunner
from tests.conftest import MODEL
from tests.schemas import PROMPT, Person, person_format

try:
    import mlx.core  # noqa: F401
    import mlx_lm  # noqa: F401

    MLX_MISSING = ""
except ImportError as err:
    MLX_MISSING = f"mlx / mlx-lm cannot be imported ({err}); install rbee[mlx]"

pytestmark = pytest.mark.slow

N_CTX = 1024


def ask(response_format: dict[str, Any] | None = None, **fields: Any) -> ChatRequest:
    return parse_chat_request({
        "model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 400,
        **({"response_format": response_format} if response_format else {}), **fields,
    })  # fmt: skip


def answer(engine: Any, request: ChatRequest) -> tuple[str, Finish]:
    """The whole text of one choice, and its Finish."""
    items = list(engine.generate(engine.prepare(request), threading.Event()))
    assert isinstance(items[-1], Finish)
    assert all(isinstance(i, str) for i in items[:-1])
    return "".join(map(str, items[:-1])), items[-1]


@pytest.fixture(scope="module")
def gguf(model_cache: Path) -> Path:
    return next((model_cache / MODEL).rglob("*.gguf"))


@pytest.fixture(scope="module")
def llama_engine(gguf: Path) -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(gguf, n_ctx=N_CTX, n_threads=2)
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def mlx_engine(gguf: Path) -> Iterator[MlxEngine]:
    if MLX_MISSING:
        pytest.skip(MLX_MISSING)
    engine = MlxEngine(gguf, n_ctx=N_CTX)
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(params=["llama", "mlx"])
def engine(request: pytest.FixtureRequest) -> Any:
    """Each engine in turn, on the default model."""
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, None), (0.8, 1), (1.0, 2)])
def test_a_schema_answer_parses_and_validates(
    engine: Any, temperature: float, seed: int | None
) -> None:
    text, finish = answer(engine, ask(person_format(), temperature=temperature, seed=seed))
    person = Person.model_validate_json(text, strict=True)
    assert finish.reason == "stop", text  # the grammar ended it, well before max_tokens
    assert 0 < finish.completion_tokens < 400
    assert person.role in ("admin", "editor", "viewer")
    assert 1 <= len(person.skills) <= 3


def test_json_object_is_one_object(engine: Any) -> None:
    text, finish = answer(engine, ask({"type": "json_object"}, temperature=0.8, seed=3))
    if finish.reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # an object may nest deeper than max_tokens allows; then it is cut, as OpenAI's are
        assert (finish.reason, finish.completion_tokens) == ("length", 400)
    assert text.startswith("{")


def test_max_tokens_first_is_length_and_a_cut_answer(engine: Any) -> None:
    text, finish = answer(engine, ask(person_format(), temperature=0, max_tokens=6))
    assert (finish.reason, finish.completion_tokens) == ("length", 6)
    assert text.startswith('{"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_the_grammar_overrules_logit_bias(engine: Any) -> None:
    # The model is all but forced to write "Sure" first: the grammar still allows only "{".
    bias = {str(t): 100 for t in _token_ids(engine, "Sure")}
    text, finish = answer(engine, ask(person_format(), temperature=0, logit_bias=bias))
    Person.model_validate_json(text, strict=True)
    assert finish.reason == "stop"


def _token_ids(engine: Any, text: str) -> list[int]:
    if isinstance(engine, LlamaCppEngine):
        return list(engine._llm.tokenize(text.encode(), add_bos=False, special=False))
    return list(engine._vocab.plain.encode(text, add_special_tokens=False).ids)


async def test_every_choice_follows_the_schema(gguf: Path) -> None:
    request = ask(person_format(), temperature=1.0, seed=11, n=2)
    async with EngineRunner(LlamaCppEngine(gguf, n_ctx=N_CTX, n_threads=2), niceness=0) as runner:
        texts: dict[int, list[str]] = {0: [], 1: []}
        index = 0
        async for item in runner.stream(await runner.prepare(request)):
            if isinstance(item, Finish):
                assert item.reason == "stop"
                index += 1
            else:
                texts[index].append(str(item))
    people = [Person.model_validate_json("".join(texts[i]), strict=True) for i in (0, 1)]
    assert people[0] != people[1]  # each choice samples with its own seed


# ---- tool calls ------------------------------------------------------------------------------

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


PARIS = {"city": "Paris", "unit": "celsius"}


def ask_tools(messages: list[dict[str, Any]] | None = None, **fields: Any) -> ChatRequest:
    return parse_chat_request({
        "model": MODEL, "max_tokens": 120, "tools": [WEATHER_TOOL],
        "messages": messages or [{"role": "user", "content": "What is the weather in Paris?"}],
        **fields,
    })  # fmt: skip


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, None), (1.0, 4)])
def test_a_required_call_is_a_valid_call(engine: Any, temperature: float, seed: int | None) -> None:
    request = ask_tools(
        tool_choice="required", parallel_tool_calls=False, temperature=temperature, seed=seed
    )
    text, finish = answer(engine, request)
    content, calls = split_calls(text)
    assert finish.reason == "stop", text  # the grammar ended it after the one call
    assert content == ""
    assert len(calls) == 1
    assert calls[0]["function"]["name"] == "get_weather"
    arguments = json.loads(calls[0]["function"]["arguments"])
    assert set(arguments) == {"city", "unit"}
    assert arguments["unit"] in ("celsius", "fahrenheit")
    assert isinstance(arguments["city"], str)
    assert len(arguments["city"]) <= 20


def test_the_history_of_calls_renders_and_the_answer_uses_it(engine: Any) -> None:
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps(PARIS)},
        }]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 18 degrees."},
    ]  # fmt: skip
    request = ask_tools(history, tool_choice="none", temperature=0, max_tokens=40)
    prepared = engine.prepare(request)
    without = engine.prepare(ask_tools(history[:1], tool_choice="none"))
    assert len(prepared.tokens) > len(without.tokens) + 20  # the call and its result are in it
    text, finish = answer(engine, request)
    assert text.strip()
    assert "<tool_call>" not in text or finish.reason == "length"
