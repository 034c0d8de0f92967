"""GET /openapi.json: the document names exactly the queen's routes (so it cannot drift from the
app), loads in schemathesis, and a real queen's real answers match its schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from starlette.routing import Route

from rbee.config.settings import Paths
from rbee.queen.app import create_app
from rbee.queen.openapi import OPERATIONS, document
from rbee.queen.service import Queen, QueenOptions
from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, running_queen

KEY = "sk-openapi-test-key"


def _app_operations(tmp_path: Path) -> set[tuple[str, str]]:
    """Every (method, path) the queen's app routes, paths written as OpenAPI writes them."""
    app = create_app(Queen(Paths(tmp_path / "config", tmp_path / "data"), QueenOptions()))
    found = set()
    for route in app.routes:
        assert isinstance(route, Route), f"a route that is not a Route: {route!r}"
        # `{model:path}` is Starlette's convertor; OpenAPI names the parameter alone.
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        # HEAD comes with every GET (Starlette adds it); the document names the GET.
        found |= {(m.lower(), path) for m in route.methods or {"GET"} if m != "HEAD"}
    return found


def _document_operations() -> set[tuple[str, str]]:
    return {(m, p) for p, item in document()["paths"].items() for m in item}


def test_every_route_of_the_app_is_in_the_document(tmp_path: Path) -> None:
    missing = sorted(_app_operations(tmp_path) - _document_operations())
    assert missing == [], f"routes the document lacks (add them to OPERATIONS): {missing}"


def test_the_document_names_only_routes_the_app_has(tmp_path: Path) -> None:
    stale = sorted(_document_operations() - _app_operations(tmp_path))
    assert stale == [], f"operations the app does not route: {stale}"


def test_the_table_names_each_operation_once() -> None:
    keys = [(op.method, op.path) for op in OPERATIONS]
    assert len(keys) == len(set(keys))


def test_the_document_loads_in_schemathesis_with_every_operation() -> None:
    schema = schemathesis.openapi.from_dict(document())
    results = list(schema.get_all_operations())
    errors = [str(r.err()) for r in results if not r.ok]
    assert errors == []
    assert len(results) == len(OPERATIONS)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves_and_every_schema_compiles() -> None:
    doc = document()
    names = doc["components"]["schemas"].keys()
    unresolved = [r for r in _refs(doc) if r.removeprefix("#/components/schemas/") not in names]
    assert unresolved == []
    for name in names:
        assert jsonschema_rs.meta.is_valid(doc["components"]["schemas"][name]), name


def test_every_error_answer_has_its_api_s_error_body() -> None:
    for path, item in document()["paths"].items():
        wanted = "AnthropicError" if path.startswith("/v1/messages") else "Error"
        for method, op in item.items():
            errors = {s: r for s, r in op["responses"].items() if int(s) >= 400}
            assert {"400", "401", "404", "500"} <= errors.keys(), (method, path)
            for status, answer in errors.items():
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{wanted}"}, (method, path, status)


def _validator(name: str) -> jsonschema_rs.Validator:
    doc = document()
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    )


def _conforms(name: str, body: Any) -> None:
    errors = [f"{e.instance_path}: {e.message}" for e in _validator(name).iter_errors(body)]
    assert errors == [], f"{name}: {errors}"


def test_a_wrong_answer_does_not_conform() -> None:
    # The schemas are not vacuous: a completion without choices, an error without its body.
    assert not _validator("ChatCompletion").is_valid({"id": "x", "object": "chat.completion"})
    assert not _validator("Error").is_valid({"message": "flat"})
    assert not _validator("AnthropicError").is_valid({"error": {"message": "no type"}})


@pytest.mark.slow
def test_a_real_queen_serves_the_document_and_answers_as_it_says(queen: RunningQueen) -> None:
    served = http.get(f"{queen.url}/openapi.json")
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert served.json() == json.loads(json.dumps(document()))

    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    answers = {
        "ChatCompletion": http.post(f"{queen.base_url}/chat/completions", json=chat),
        "Completion": http.post(
            f"{queen.base_url}/completions", json={"model": MODEL, "prompt": "A", "max_tokens": 4}
        ),
        "Response": http.post(
            f"{queen.base_url}/responses",
            json={"model": MODEL, "input": "Hi", "max_output_tokens": 4},
        ),
        "Message": http.post(f"{queen.url}/v1/messages", json=chat),
        "TokenCount": http.post(f"{queen.url}/v1/messages/count_tokens", json=chat),
        "ModelList": http.get(f"{queen.base_url}/models"),
        "Model": http.get(f"{queen.base_url}/models/{MODEL}"),
        "Health": http.get(f"{queen.url}/health"),
        "WorkerList": http.get(f"{queen.base_url}/workers"),
        "HiveList": http.get(f"{queen.base_url}/hives"),
        "JobList": http.get(f"{queen.base_url}/jobs"),
        "Policy": http.get(f"{queen.base_url}/policies/{MODEL}"),
        "Dashboard": http.get(f"{queen.base_url}/dashboard"),
        "LogTail": http.get(f"{queen.base_url}/dashboard/log"),
    }
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
        _conforms(name, answer.json())
    workers = answers["WorkerList"].json()["data"]
    assert workers, "the queen serves its model with one worker"
    _conforms("Worker", workers[0])

    errors = {
        "Error": http.post(f"{queen.base_url}/chat/completions", json={**chat, "model": "nope"}),
        "AnthropicError": http.post(f"{queen.url}/v1/messages", json={**chat, "model": "nope"}),
    }
    for name, answer in errors.items():
        assert answer.status_code == 404, answer.text
        _conforms(name, answer.json())


@pytest.mark.slow
def test_the_document_needs_a_key_when_the_queen_has_one(tmp_path: Path) -> None:
    # It describes the API and holds no state, but it tells which routes and version this is:
    # for a key's holder, as every route but /health (docs/security.md).
    paths = make_paths(tmp_path, None)
    with running_queen(paths, models=(), global_args=("--api-key", KEY)) as queen:
        refused = http.get(f"{queen.url}/openapi.json")
        assert refused.status_code == 401
        _conforms("Error", refused.json())
        allowed = http.get(f"{queen.url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
        assert allowed.status_code == 200
        assert allowed.json()["openapi"] == "3.1.0"
