"""`response_format`: parsing and schema checks (pure), and grammars bound to a real tokenizer.

The parse tests are tables: what is accepted and what it becomes, what is refused and the path
the 400 names. The grammar tests bind schemas to a tiny real tokenizer.json (one token per byte,
tests/bytetok.py) with llguidance itself, and walk answers through them token by token: no model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rbee.api.openai import parse_chat_request, parse_completion_request
from rbee.api.structured import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    ResponseFormat,
    json_schema_format,
)
from rbee.engines.grammar import Constraint, Grammar, compile_grammar, tokenizer_from_json
from rbee.errors import ApiError, EngineError
from tests.bytetok import FIRST_BYTE, byte_tokens, tokenizer_json

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SCHEMA = "response_format.json_schema.schema"
PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}
N_VOCAB = FIRST_BYTE + 256
EOS = (2, 7)


def with_schema(schema: Any, **spec: Any) -> dict[str, Any]:
    return {
        **BASE,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, **spec},
        },
    }


def refused(body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_chat_request(body)
    assert caught.value.status == 400
    assert caught.value.body()["error"]["param"] == caught.value.param
    return caught.value


# ---- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, {"type": "text"}])
def test_text_is_free_generation(value: Any) -> None:
    assert parse_chat_request({**BASE, "response_format": value}).response_format is None


def test_json_object_asks_for_any_object() -> None:
    fmt = parse_chat_request({**BASE, "response_format": {"type": "json_object"}}).response_format
    assert fmt is not None
    assert (fmt.type, json.loads(fmt.schema), fmt.name, fmt.strict) == (
        "json_object",
        {"type": "object"},
        None,
        False,
    )
    assert fmt.grammar


@pytest.mark.parametrize("strict", [True, False, None])
def test_json_schema_carries_name_schema_and_strict(strict: bool | None) -> None:
    fmt = parse_chat_request(with_schema(PERSON, strict=strict)).response_format
    assert fmt is not None
    assert (fmt.type, fmt.name, fmt.strict) == ("json_schema", "answer", bool(strict))
    assert json.loads(fmt.schema) == PERSON
    # The grammar is compiled from the schema, with rbee's options, whatever the schema says.
    grammar = json.loads(fmt.grammar)["grammars"][0]["json_schema"]
    assert grammar["x-guidance"]["whitespace_flexible"] is False
    assert grammar["x-guidance"]["lenient"] is False


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "array", "items": {"type": "number"}, "minItems": 1},
        {"type": ["string", "null"], "format": "date-time"},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        {"oneOf": [{"type": "string"}, {"type": "integer"}]},  # disjoint: enforceable
        {"type": "string", "pattern": "^[a-z]{3}-\\d+$"},
        {"type": "object", "patternProperties": {"^x-": {"type": "integer"}}},
        # Recursion through an object's properties is fine; so are $defs and "#" itself.
        {"type": "object", "properties": {"next": {"$ref": "#"}, "v": {"type": "integer"}}},
        {"$defs": {"P": PERSON}, "type": "array", "items": {"$ref": "#/$defs/P"}},
        # Annotations and unknown keywords describe, they do not constrain.
        {"type": "object", "title": "T", "description": "d", "examples": [{}], "x-note": 1},
    ],
)
def test_enforceable_schemas_are_accepted(schema: dict[str, Any]) -> None:
    fmt = parse_chat_request(with_schema(schema)).response_format
    assert fmt is not None
    assert json.loads(fmt.schema) == schema


@pytest.mark.parametrize(
    ("response_format", "param", "words"),
    [
        ("json", "response_format", "must be an object"),
        ({"type": "yaml"}, "response_format.type", 'must be "text", "json_object" or'),
        ({"type": "json_schema"}, "response_format.json_schema", "is required"),
        ({"type": "json_schema", "json_schema": []}, "response_format.json_schema", "object"),
        (
            {"type": "json_schema", "json_schema": {"schema": {}}},
            "response_format.json_schema.name",
            "is required",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
            "response_format.json_schema.name",
            "letters, digits, underscores or dashes",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x" * 65, "schema": {}}},
            "response_format.json_schema.name",
            "1 to 64",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "strict": "yes"}},
            "response_format.json_schema.strict",
            "must be a boolean",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a"}},
            "response_format.json_schema.schema",
            "is required",
        ),
    ],
)
def test_bad_response_formats_name_the_field(response_format: Any, param: str, words: str) -> None:
    err = refused({**BASE, "response_format": response_format})
    assert err.param == param
    assert words in err.message


def nested(depth: int) -> dict[str, Any]:
    """An object schema whose document nests `depth` levels (objects and arrays)."""
    schema: dict[str, Any] = {"type": "string"}
    levels = 1
    while levels + 2 <= depth:
        schema = {"type": "object", "properties": {"a": schema}}
        levels += 2
    return schema


@pytest.mark.parametrize(
    ("schema", "param", "words"),
    [
        # Not a schema at all.
        ([{"type": "object"}], SCHEMA, "must be a JSON Schema object, got list"),
        (True, SCHEMA, "must be a JSON Schema object, got bool"),
        ({"properties": {"a": 3}}, f"{SCHEMA}.properties.a", "must be a JSON Schema"),
        ({"properties": []}, f"{SCHEMA}.properties", "must be an object of schemas"),
        ({"anyOf": {"type": "string"}}, f"{SCHEMA}.anyOf", "must be a list of schemas"),
        ({"required": "a"}, f"{SCHEMA}.required", "list of property names"),
        ({"type": "objekt"}, f"{SCHEMA}.type", "got 'objekt'"),
        ({"type": []}, f"{SCHEMA}.type", "must be one of"),
        # Keywords the grammar cannot enforce, wherever they are.
        (
            {"type": "object", "properties": {"age": {"type": "integer", "not": {"const": 3}}}},
            f"{SCHEMA}.properties.age.not",
            "cannot enforce the JSON Schema keyword 'not'",
        ),
        (
            {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            f"{SCHEMA}.uniqueItems",
            "'uniqueItems'",
        ),
        (
            {"properties": {"a": {"anyOf": [{"type": "string"}, {"if": {}}]}}},
            f"{SCHEMA}.properties.a.anyOf[1].if",
            "'if'",
        ),
        ({"$defs": {"D": {"contains": {}}}}, f"{SCHEMA}.$defs.D.contains", "'contains'"),
        ({"type": "object", "x-guidance": {"lenient": True}}, f"{SCHEMA}.x-guidance", "enforce"),
        # Formats and patterns the grammar cannot check.
        (
            {"properties": {"site": {"type": "string", "format": "iri"}}},
            f"{SCHEMA}.properties.site.format",
            "cannot enforce the format 'iri'",
        ),
        (
            {"properties": {"code": {"type": "string", "pattern": "^(?!x)[a-z]+$"}}},
            f"{SCHEMA}.properties.code.pattern",
            "look-around",
        ),
        (
            {"properties": {"code": {"type": "string", "pattern": "(a)\\1"}}},
            f"{SCHEMA}.properties.code.pattern",
            "backreferences",
        ),
        (
            {"patternProperties": {"(?<=a)b": {}}},
            f"{SCHEMA}.patternProperties.(?<=a)b",
            "look-around",
        ),
        # References: outside the schema, to nothing, or a loop of references alone.
        ({"$ref": "https://example.com/s.json"}, f"{SCHEMA}.$ref", "only references within"),
        ({"properties": {"a": {"$ref": "#/$defs/Nope"}}}, f"{SCHEMA}.properties.a.$ref", "nothing"),
        ({"$ref": "#"}, f"{SCHEMA}.$ref", "leads back to itself"),
        (
            {"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "type": "object"},
            f"{SCHEMA}.$defs.A.$ref",
            "leads back to itself",
        ),
        # What the compiler refuses in the whole is found where it lies.
        (
            {
                "type": "object",
                "properties": {
                    "a": {"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 2}]}
                },
                "required": ["a"],
            },
            f"{SCHEMA}.properties.a",
            "use anyOf instead",
        ),
        (
            {
                "type": "object",
                "required": ["p"],
                "properties": {
                    "p": {
                        "type": "object",
                        "required": ["q"],
                        "properties": {"q": {"allOf": [{"type": "string"}, {"type": "integer"}]}},
                    }
                },
            },
            f"{SCHEMA}.properties.p.properties.q",
            "Unsatisfiable",
        ),
        (
            {
                "type": "object",
                "required": ["a"],
                "properties": {"a": {"$ref": "#/$defs/A"}},
                "$defs": {"A": {"type": "array", "minItems": 5, "maxItems": 2}},
            },
            f"{SCHEMA}.$defs.A",
            "minItems (5) is greater than maxItems (2)",
        ),
        # Bounds.
        (nested(MAX_SCHEMA_DEPTH + 2), SCHEMA, f"nests deeper than {MAX_SCHEMA_DEPTH} levels"),
        (
            {"type": "object", "description": "x" * MAX_SCHEMA_BYTES},
            SCHEMA,
            f"at most {MAX_SCHEMA_BYTES} are accepted",
        ),
        ({"enum": [float("nan")]}, SCHEMA, "not valid JSON"),
    ],
)
def test_schemas_rbee_cannot_enforce_are_refused_naming_the_path(
    schema: Any, param: str, words: str
) -> None:
    err = refused(with_schema(schema))
    assert err.param == param, err.message
    assert words in err.message


def test_the_depth_limit_is_inclusive() -> None:
    assert parse_chat_request(with_schema(nested(MAX_SCHEMA_DEPTH - 1))).response_format


def test_refusals_carry_openais_error_body() -> None:
    err = refused(with_schema({"type": "array", "uniqueItems": True}))
    body = err.body()["error"]
    assert body["code"] == "unsupported_parameter"
    assert body["type"] == "invalid_request_error"
    assert body["param"] == f"{SCHEMA}.uniqueItems"


@pytest.mark.parametrize(
    "value", [{"type": "json_object"}, {"type": "json_schema", "json_schema": {}}, "json"]
)
def test_completions_keep_refusing_response_format(value: Any) -> None:
    with pytest.raises(ApiError) as caught:
        parse_completion_request({"model": "m", "prompt": "a", "response_format": value})
    assert (caught.value.param, caught.value.code) == ("response_format", "unsupported_parameter")
    assert "/v1/chat/completions" in caught.value.message
    text = {"model": "m", "prompt": "a", "response_format": {"type": "text"}}
    assert parse_completion_request(text).prompt == "a"


def test_the_param_prefix_is_the_callers() -> None:
    # Other request shapes reuse the checks under their own field names.
    with pytest.raises(ApiError) as caught:
        json_schema_format({"not": {}}, param="text.format.schema")
    assert caught.value.param == "text.format.schema.not"


# ---- grammars on a real tokenizer, without a model -------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tokenizer_from_json(tokenizer_json(), n_vocab=N_VOCAB, eos=EOS)


def bind(tokenizer: Any, fmt: ResponseFormat) -> Grammar:
    return compile_grammar(tokenizer, fmt.grammar, what=fmt.type, param="response_format")


def start(tokenizer: Any, fmt: ResponseFormat) -> Constraint:
    return bind(tokenizer, fmt).start()


def allowed_ids(constraint: Constraint, size: int = N_VOCAB) -> list[int]:
    return [int(i) for i in np.flatnonzero(constraint.allowed(size))]


def person_format() -> ResponseFormat:
    fmt = parse_chat_request(with_schema(PERSON, strict=True)).response_format
    assert fmt is not None
    return fmt


def test_an_answer_walks_the_grammar_to_its_end(tokenizer: Any) -> None:
    constraint = start(tokenizer, person_format())
    # Nothing but the opening brace may start the answer: no prose, no whitespace.
    assert allowed_ids(constraint) == byte_tokens("{")
    answer = '{"name": "Ada", "age": 36, "role": "admin", "tags": ["math"]}'
    for token in byte_tokens(answer):
        assert not constraint.done
        assert constraint.allowed(N_VOCAB)[token]
        constraint.feed(token)
    assert constraint.fed == len(answer)
    assert constraint.done
    # Complete: only the model's end tokens remain.
    assert allowed_ids(constraint) == list(EOS)


def test_enums_required_fields_and_bounds_shape_the_mask(tokenizer: Any) -> None:
    constraint = start(tokenizer, person_format())
    for token in byte_tokens('{"name": "Ada", "age": 3'):
        constraint.feed(token)
    # After "3": more digits (up to 150), or the separator before the next required field.
    assert {chr(t - FIRST_BYTE) for t in allowed_ids(constraint)} == set("0123456789,")
    for token in byte_tokens('6, "role": "'):
        constraint.feed(token)
    assert {chr(t - FIRST_BYTE) for t in allowed_ids(constraint)} == {"a", "u"}


def test_the_mask_covers_wider_logits_and_never_allows_unknown_ids(tokenizer: Any) -> None:
    constraint = start(tokenizer, person_format())
    mask = constraint.allowed(N_VOCAB + 40)
    assert mask.shape == (N_VOCAB + 40,)
    assert not mask[N_VOCAB:].any()
    banned = constraint.banned(N_VOCAB + 40)
    assert (banned == ~mask).all()
    assert banned.sum() == N_VOCAB + 40 - 1  # all but "{"


def test_a_token_the_grammar_forbids_is_an_engine_error(tokenizer: Any) -> None:
    constraint = start(tokenizer, person_format())
    with pytest.raises(EngineError, match="constrained decoding failed"):
        constraint.feed(byte_tokens("S")[0])


def test_each_start_is_independent(tokenizer: Any) -> None:
    grammar = bind(tokenizer, person_format())
    first = grammar.start()
    first.feed(byte_tokens("{")[0])
    assert allowed_ids(grammar.start()) == byte_tokens("{")


def test_json_object_accepts_any_object(tokenizer: Any) -> None:
    fmt = parse_chat_request({**BASE, "response_format": {"type": "json_object"}}).response_format
    assert fmt is not None
    constraint = start(tokenizer, fmt)
    for token in byte_tokens('{"a": [1, {"b": null}], "c": "d"}'):
        constraint.feed(token)
    assert constraint.done


def test_the_benchmarks_pairs_are_enforceable_and_its_validator_judges_them() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import structured as bench  # noqa: PLC0415 - bench/ is not a package

    pairs = bench.pairs(quick=False)
    assert len(pairs) == 50
    assert len({(p.prompt, p.name) for p in pairs}) == 50
    for pair in pairs:
        assert json_schema_format(pair.schema, param="s").grammar
    person = bench.SCHEMAS["person"]
    good = {"name": "Al", "age": 3, "role": "admin", "skills": ["x"],
            "address": {"city": "Paris", "country": "FR"}}  # fmt: skip
    assert bench.validity(json.dumps(good), person) == (True, True)
    assert bench.validity(json.dumps({**good, "age": 300}), person) == (True, False)
    assert bench.validity(json.dumps({**good, "extra": 1}), person) == (True, False)
    assert bench.validity(json.dumps(good)[:-1], person) == (False, False)
