"""No input reaches a 500: what json.loads and the engines would choke on is refused with a 400
that names its field, anything else still gets OpenAI's error body, and one bad request leaves the
others on the same worker alone. A real queen with the real model; the catch-all on a real uvicorn.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.api.http import EXCEPTION_HANDLERS
from rbee.api.jsonbody import MAX_DEPTH, MAX_NUMBER_DIGITS
from rbee.api.openai import MAX_MAX_TOKENS, MAX_MESSAGES
from rbee.errors import WorkerError
from rbee.queen.shapes import QUEEN_EXCEPTION_HANDLERS
from tests import http
from tests.conftest import MODEL, RunningQueen
from tests.http import serving


def refused(response: httpx.Response, param: str | None, code: str | None = None) -> str:
    """The message of a 400 in OpenAI's error body, checked to name `param` (and `code`)."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    message: str = error["message"]
    return message


def post_raw(queen: RunningQueen, path: str, raw: bytes) -> httpx.Response:
    return http.post(
        f"{queen.base_url}{path}", content=raw, headers={"content-type": "application/json"}
    )


def chat_body(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def test_a_lone_surrogate_is_refused_naming_its_field(queen: RunningQueen) -> None:
    raw = b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}' % (
        MODEL.encode()
    )
    message = refused(post_raw(queen, "/chat/completions", raw), "messages[0].content",
                      "invalid_unicode")  # fmt: skip
    assert "surrogate" in message
    # A proper pair (an emoji, as ensure_ascii JSON writes it) is text and goes through.
    pair = raw.replace(b"\\ud800", b"\\ud83d\\ude00").replace(b"}]}", b'}], "max_tokens": 2}')
    assert post_raw(queen, "/chat/completions", pair).status_code == 200


def test_a_lone_surrogate_in_a_key_or_another_route_is_refused(queen: RunningQueen) -> None:
    raw = b'{"model": "%s", "prompt": "x", "\\udc00": 1}' % MODEL.encode()
    refused(post_raw(queen, "/completions", raw), "\\udc00", "invalid_unicode")
    embed = b'{"model": "%s", "input": ["ok", "\\udfff"]}' % MODEL.encode()
    refused(post_raw(queen, "/embeddings", embed), "input[1]", "invalid_unicode")


def test_nesting_past_the_limit_is_refused(queen: RunningQueen) -> None:
    ok = chat_body(max_tokens=2, metadata=_nested(MAX_DEPTH - 2))
    assert http.post(f"{queen.base_url}/chat/completions", json=ok).status_code == 200
    deep = chat_body(metadata=_nested(MAX_DEPTH + 1))
    message = refused(http.post(f"{queen.base_url}/chat/completions", json=deep),
                      "metadata" + "[0]" * 7, "invalid_json")  # fmt: skip
    assert str(MAX_DEPTH) in message
    # Deeper than Python's recursion limit: json.loads itself gives up.
    abyss = b'{"model": "m", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    refused(post_raw(queen, "/chat/completions", abyss), None, "invalid_json")


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("literal", "why"),
    [
        (b"9" * 5000, "digits"),  # past Python's 4300-digit int limit: ValueError in json.loads
        (b"1" * (MAX_NUMBER_DIGITS + 1), "digits"),
        (b"1e999", "range"),
        (b"-1e400", "range"),
        (b"NaN", "not a JSON number"),
        (b"-Infinity", "not a JSON number"),
    ],
)
def test_huge_or_non_finite_numbers_are_refused_naming_the_field(
    queen: RunningQueen, literal: bytes, why: str
) -> None:
    raw = b'{"model": "%s", "prompt": "x", "temperature": %s}' % (MODEL.encode(), literal)
    message = refused(post_raw(queen, "/completions", raw), "temperature", "invalid_value")
    assert why in message
    assert len(message) < 200  # a short prefix of the number, not all of it


def test_a_prompt_that_tokenizes_to_nothing_is_refused(queen: RunningQueen) -> None:
    response = http.post(f"{queen.base_url}/completions", json={"model": MODEL, "prompt": ""})
    refused(response, "prompt", "empty_prompt")
    again = http.post(f"{queen.base_url}/completions", json={"model": MODEL, "prompt": [""]})
    refused(again, "prompt", "empty_prompt")


def test_sizes_legal_alone_but_absurd_together_are_refused(queen: RunningQueen) -> None:
    alone = chat_body(max_tokens=MAX_MAX_TOKENS)
    # Legal alone: refused later, and only for overflowing this model's context.
    assert refused(http.post(f"{queen.base_url}/chat/completions", json=alone), "max_tokens",
                   "context_length_exceeded")  # fmt: skip
    together = chat_body(n=2, max_tokens=MAX_MAX_TOKENS // 2 + 1)
    message = refused(http.post(f"{queen.base_url}/chat/completions", json=together),
                      "max_tokens", "invalid_value")  # fmt: skip
    assert "n * max_tokens" in message
    completion = {"model": MODEL, "prompt": "x", "n": 8, "max_completion_tokens": 1 << 28}
    refused(http.post(f"{queen.base_url}/completions", json=completion), "max_completion_tokens")
    many = {"model": MODEL, "messages": [{"role": "user", "content": ""}] * (MAX_MESSAGES + 1)}
    message = refused(http.post(f"{queen.base_url}/chat/completions", json=many), "messages")
    assert str(MAX_MESSAGES) in message


def test_a_bad_request_leaves_a_stream_on_the_same_worker_alone(queen: RunningQueen) -> None:
    body = chat_body("Count from one to fifty.", stream=True, max_tokens=60, temperature=0)
    bad = [
        b'{"model": "%s", "messages": [{"role": "user", "content": "\\udfff"}]}' % MODEL.encode(),
        b'{"model": "%s", "prompt": ""}' % MODEL.encode(),
        b"[" * 100_000,
        b"\xff\xfe not json",
    ]
    events = 0
    with http.stream("POST", f"{queen.base_url}/chat/completions", json=body) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                events += 1
                break
        worker = str(queen.workers()[0]["url"])
        for raw in bad:
            path = "/completions" if b"prompt" in raw else "/chat/completions"
            assert post_raw(queen, path, raw).status_code == 400
            # The same bodies straight to the worker that is streaming: refused just as well.
            direct = http.post(f"{worker}/v1{path}", content=raw,
                               headers={"content-type": "application/json",
                                        **queen.hop_headers})  # fmt: skip
            assert direct.status_code == 400, direct.text
            assert set(direct.json()["error"]) == {"message", "type", "param", "code"}
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert events + len(rest) > 3
    assert not any('"error"' in line for line in rest)


def test_a_bug_is_answered_in_openais_error_body_without_its_text() -> None:
    """The handler every role's app is built with (queen, hive and worker all pass
    EXCEPTION_HANDLERS): a route that raises something no handler knows."""

    async def broken(request: Request) -> Response:
        raise KeyError("http://10.0.0.7:9301/secret")

    app = Starlette(routes=[Route("/v1/x", broken)], exception_handlers=EXCEPTION_HANDLERS)
    with serving(app) as url:
        response = http.get(f"{url}/v1/x")
        again = http.get(f"{url}/v1/x")  # the server is still there
    assert response.status_code == 500
    assert again.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "internal_error"
    assert "KeyError" in error["message"]
    assert "10.0.0.7" not in response.text
    assert "Traceback" not in response.text


def test_a_bug_under_v1_messages_is_answered_in_anthropics_body() -> None:
    """The queen's handlers (QUEEN_EXCEPTION_HANDLERS): an Anthropic client under /v1/messages
    parses only Anthropic's error body, a bug's answer included; elsewhere OpenAI's, as before."""

    async def broken(request: Request) -> Response:
        raise KeyError("http://10.0.0.7:9301/secret")

    async def failed(request: Request) -> Response:
        raise WorkerError("worker w1 at http://127.0.0.1:9301 failed")

    app = Starlette(
        routes=[Route("/v1/messages", broken), Route("/v1/messages/count_tokens", failed),
                Route("/v1/x", broken)],
        exception_handlers=QUEEN_EXCEPTION_HANDLERS,
    )  # fmt: skip
    with serving(app) as url:
        bug = http.get(f"{url}/v1/messages")
        failure = http.get(f"{url}/v1/messages/count_tokens")
        elsewhere = http.get(f"{url}/v1/x")
    assert bug.status_code == failure.status_code == elsewhere.status_code == 500
    assert bug.json()["type"] == "error"
    assert bug.json()["error"]["type"] == "api_error"
    assert "KeyError" in bug.json()["error"]["message"]
    assert failure.json()["error"]["message"] == "worker w1 at <internal address> failed"
    assert elsewhere.json()["error"]["code"] == "internal_error"
    for answer in (bug, failure, elsewhere):
        assert "10.0.0.7" not in answer.text
        assert "127.0.0.1" not in answer.text
