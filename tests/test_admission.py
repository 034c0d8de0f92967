"""Admission, deadlines and trace headers through a real queen and the real default model.

The worker here holds one generation and two more waiting (`--max-queued 2`); a long streamed
completion keeps the engine busy while the test fills the queue behind it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from rbee.config.settings import Paths
from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, rbee, running_queen, wait_until

pytestmark = pytest.mark.slow

COUNTING = {"model": MODEL, "prompt": "Count from 1 to 1000: 1, 2, 3, 4,", "temperature": 0}
SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


@pytest.fixture(scope="module")
def q(tmp_path_factory: pytest.TempPathFactory, model_cache: Any) -> Iterator[RunningQueen]:
    paths = make_paths(tmp_path_factory.mktemp("admission"), model_cache)
    with running_queen(paths, models=()) as queen:
        spawned = rbee(paths, "--queen", queen.url, "worker", "spawn", "--model", MODEL,
                       "--max-queued", "2", "--threads", "1")  # fmt: skip
        assert spawned.returncode == 0, spawned.stderr
        yield queen


def worker(q: RunningQueen) -> dict[str, Any]:
    (only,) = q.workers()
    return only


def stats(q: RunningQueen) -> dict[str, Any]:
    found: dict[str, Any] = q.worker_health(worker(q))["stats"]
    return found


def client(q: RunningQueen) -> openai.OpenAI:
    # No retries: the client library would otherwise honour Retry-After by itself.
    return openai.OpenAI(base_url=q.base_url, api_key="unused", max_retries=0)


@contextlib.contextmanager
def busy_engine(q: RunningQueen) -> Iterator[None]:
    """The engine generating a long stream until the block ends (then it is cancelled)."""
    body = {**COUNTING, "max_tokens": 2000, "stream": True}
    with http.stream("POST", f"{q.base_url}/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        while not next(lines).startswith("data:"):
            pass
        yield
    wait_until(lambda: stats(q)["active"] == 0, 20, "the long stream to be cancelled")


def queue_two(q: RunningQueen, pool: concurrent.futures.Executor) -> list[Any]:
    before = stats(q)["queued"]
    futures = [
        pool.submit(http.post, f"{q.base_url}/chat/completions", json=SHORT, timeout=120)
        for _ in range(2)
    ]
    wait_until(lambda: stats(q)["queued"] == before + 2, 20, "two requests to be queued")
    return futures


def test_a_full_worker_refuses_at_once_with_retry_after_and_admitted_ones_complete(
    q: RunningQueen,
) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        with busy_engine(q):
            queued = queue_two(q, pool)
            with client(q) as c:
                for _ in range(3):
                    began = time.monotonic()
                    with pytest.raises(openai.APIStatusError) as refused:
                        c.chat.completions.create(**SHORT)  # type: ignore[call-overload]
                    took = time.monotonic() - began
                    assert refused.value.status_code == 503
                    error = refused.value.response.json()["error"]
                    assert (error["type"], error["code"]) == ("server_error", "server_overloaded")
                    assert MODEL in error["message"]
                    assert int(refused.value.response.headers["retry-after"]) >= 1
                    assert took < 5, f"refused after {took:.1f}s: not at once"
            # The worker's own admission answers the same way (a client that bypasses the queen).
            direct = http.post(
                f"{worker(q)['url']}/v1/chat/completions", json=SHORT, headers=q.hop_headers
            )
            assert direct.status_code == 503, direct.text
            assert direct.json()["error"]["code"] == "server_overloaded"
            assert int(direct.headers["retry-after"]) >= 1
            assert stats(q)["rejected"] >= 1
        answers = [f.result() for f in queued]
    assert [a.status_code for a in answers] == [200, 200]
    # The request that waited says how long, and who answered.
    waited = [int(a.headers["x-rbee-queued-ms"]) for a in answers]
    assert max(waited) > 0, waited
    assert {a.headers["x-rbee-worker"] for a in answers} == {worker(q)["id"]}
    assert {a.headers["x-rbee-hive"] for a in answers} == {"localhost"}


def test_a_client_gone_while_queued_leaves_the_queue_unseen_by_the_engine(
    q: RunningQueen,
) -> None:
    with busy_engine(q):
        before = stats(q)
        body = {**SHORT, "stream": True}
        # The stream's headers come when the engine takes it: a 1 s read timeout gives up while
        # it waits in the queue, and the client goes away.
        with pytest.raises(httpx.ReadTimeout):
            http.post(f"{q.base_url}/chat/completions", json=body,
                      timeout=httpx.Timeout(1.0, connect=5))  # fmt: skip
        wait_until(lambda: stats(q)["dropped"] == before["dropped"] + 1, 10, "it to leave")
        assert stats(q)["queued"] == 0
    after = stats(q)
    assert after["started"] == before["started"], "the engine took the request that had left"
    log = (q.paths.data_dir / "test-queen.log").read_text()
    assert "POST /v1/chat/completions 499" in log, log[-2000:]


def test_deadline_header_ends_a_long_generation_with_504_and_the_engine_stops(
    q: RunningQueen,
) -> None:
    before = stats(q)
    began = time.monotonic()
    answer = http.post(f"{q.base_url}/completions", json={**COUNTING, "max_tokens": 2000},
                       headers={"X-Rbee-Deadline": "1.5"})  # fmt: skip
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - began < 10
    wait_until(lambda: stats(q)["cancelled"] == before["cancelled"] + 1, 10, "the engine to stop")


def test_deadline_in_a_stream_ends_it_with_an_error_event(q: RunningQueen) -> None:
    body = {**COUNTING, "max_tokens": 2000, "stream": True}
    events = []
    with http.stream("POST", f"{q.base_url}/completions", json=body,
                     headers={"X-Rbee-Deadline": "1.5"}) as response:  # fmt: skip
        assert response.status_code == 200
        events = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "request_timeout", error
    assert len(events) > 3  # it did stream before the deadline
    wait_until(lambda: stats(q)["active"] == 0, 10, "the engine to stop")


def test_deadline_while_queued_is_504_and_the_request_leaves(q: RunningQueen) -> None:
    with busy_engine(q):
        before = stats(q)
        answer = http.post(f"{q.base_url}/chat/completions", json=SHORT,
                           headers={"X-Rbee-Deadline": "1"})  # fmt: skip
        assert answer.status_code == 504, answer.text
        wait_until(lambda: stats(q)["dropped"] == before["dropped"] + 1, 10, "it to leave")


@pytest.mark.parametrize("value", ["soon", "-1", "0", "nan", "inf"])
def test_a_bad_deadline_header_is_400_naming_it(q: RunningQueen, value: str) -> None:
    answer = http.post(f"{q.base_url}/chat/completions", json=SHORT,
                       headers={"X-Rbee-Deadline": value})  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "x-rbee-deadline"


def test_request_timeout_flag_bounds_every_request(tmp_path: Any, model_cache: Any) -> None:
    paths: Paths = make_paths(tmp_path, model_cache)
    with running_queen(paths, "--request-timeout", "1") as queen:
        answer = http.post(f"{queen.base_url}/completions",
                           json={**COUNTING, "max_tokens": 2000})  # fmt: skip
        assert answer.status_code == 504, answer.text
        assert "--request-timeout 1s" in answer.json()["error"]["message"]
        # A header may lower the deadline, never raise it.
        answer = http.post(f"{queen.base_url}/completions", json={**COUNTING, "max_tokens": 2000},
                           headers={"X-Rbee-Deadline": "60"})  # fmt: skip
        assert answer.status_code == 504
