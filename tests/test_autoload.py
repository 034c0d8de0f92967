"""Models on demand, on real processes: a real queen, the real default model, the openai client.

A request for a stored model without a worker loads one (two at once load it once, and
per-request parameters never load another); an idle worker is parked after its TTL and the next
request brings it back; when memory is short (simulated) the least recently used idle worker is
unloaded first, a busy one never; autoload off and a load that fails answer at once, naming why.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from rbee.config.settings import Paths
from rbee.engines.factory import memory_need
from rbee.engines.fit import FAKE_MEM_ENV
from rbee.models.store import ModelStore
from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, rbee, running_queen, wait_until

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Say hello."}]


def client(queen: RunningQueen) -> openai.OpenAI:
    return openai.OpenAI(base_url=queen.base_url, api_key="x", max_retries=0, timeout=120)


def chat(queen: RunningQueen, model: str = MODEL, **params: Any) -> str:
    answer = client(queen).chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=params.pop("max_tokens", 8), **params
    )
    return answer.choices[0].message.content or ""


def states(queen: RunningQueen) -> dict[str, str]:
    return {str(w["id"]): str(w["state"]) for w in queen.workers()}


def import_copy(paths: Paths, model_cache: Path, model_id: str) -> Path:
    """Store the real default model a second time, as `model_id`."""
    stored = ModelStore(model_cache).get(MODEL)
    artifact = stored.artifact("gguf") if stored else None
    assert artifact is not None
    result = rbee(paths, "model", "import", str(artifact.path), "--id", model_id)
    assert result.returncode == 0, result.stderr
    return artifact.path


@pytest.fixture
def paths(tmp_path: Path, model_cache: Path) -> Paths:
    return make_paths(tmp_path, model_cache)


@pytest.fixture
def idle(paths: Paths) -> Iterator[RunningQueen]:
    """A queen with no worker, whose workers are parked after 2 s without a request."""
    # Keep-alive comments every 0.05 s: a load of the default model (a few tenths of a second,
    # from a standby) is sure to get some.
    with running_queen(paths, "--idle-ttl", "2", "--keepalive", "0.05", models=()) as queen:
        yield queen


def test_a_stored_model_is_loaded_once_for_requests_that_come_together(paths: Paths) -> None:
    with running_queen(paths, models=()) as queen:
        assert queen.workers() == []
        listed = http.get(f"{queen.base_url}/models").json()["data"]
        assert {"id": MODEL, "loaded": False}.items() <= listed[0].items()
        answers: list[str] = []
        errors: list[BaseException] = []

        def ask(**params: Any) -> None:
            try:
                answers.append(chat(queen, **params))
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=ask, kwargs={"temperature": t}) for t in (0, 0.7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert len(answers) == 2
        assert all(answers)
        (worker,) = queen.workers()
        assert worker["state"] == "ready"
        # Per-request parameters are the request's: the same worker answers them all.
        chat(queen, temperature=1.2, max_tokens=3, stop=["\n"], seed=7, top_p=0.5)
        chat(queen, max_tokens=20, presence_penalty=0.5)
        assert [w["id"] for w in queen.workers()] == [worker["id"]]
        assert http.get(f"{queen.base_url}/models").json()["data"][0]["loaded"] is True
        log = (paths.data_dir / "test-queen.log").read_text()
        assert log.count(f"loaded {MODEL} on hive localhost") == 1


def test_an_idle_worker_is_parked_and_the_next_request_brings_it_back(
    idle: RunningQueen,
) -> None:
    assert chat(idle)
    (worker,) = idle.workers()
    assert isinstance(worker["idle_s"], float)
    assert worker["parked"] is False
    wait_until(lambda: states(idle) == {worker["id"]: "parked"}, 30, "the idle worker parked")
    listing = rbee(idle.paths, "--queen", idle.url, "worker", "list")
    assert listing.returncode == 0, listing.stderr
    assert "parked" in listing.stdout
    assert "IDLE" in listing.stdout
    health = http.get(f"{idle.url}/health").json()
    assert health["status"] == "ok"  # parked is not a problem
    # A stream waiting for the load gets SSE comments, so its client does not time out, and then
    # one comment with the trace (its headers went out before a worker was known).
    lines: list[str] = []
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with http.stream("POST", f"{idle.base_url}/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("data:"):
                break
    assert states(idle) == {worker["id"]: "ready"}  # the same worker, back where it was
    comments = [line for line in lines if line.startswith(":")]
    assert comments[0] == f": loading {MODEL}", lines
    (trace,) = [c for c in comments if "x-rbee-worker=" in c]
    assert f"x-rbee-worker={worker['id']}" in trace
    assert "x-rbee-hive=localhost" in trace
    assert "x-rbee-load-ms=" in trace
    assert chat(idle)


def test_when_memory_is_short_the_least_recently_used_idle_worker_makes_room(
    paths: Paths, model_cache: Path
) -> None:
    artifact = import_copy(paths, model_cache, "smol-b")
    room = int(memory_need(artifact, 4096) * 1.5)  # one worker fits, two do not
    with running_queen(paths, models=(), env={FAKE_MEM_ENV: str(room)}) as queen:
        assert chat(queen, MODEL)
        assert chat(queen, "smol-b")  # MODEL's worker is idle: it is parked for smol-b
        assert states(queen) == {f"{MODEL}-1": "parked", "smol-b-1": "ready"}
        log = (paths.data_dir / "test-queen.log").read_text()
        assert "room for another model" in log
        # smol-b is busy (a long generation in flight): MODEL cannot have its room, says why.
        counting = {"model": "smol-b", "prompt": "Count from 1 to 1000: 1, 2, 3,",
                    "temperature": 0, "max_tokens": 3000, "stream": True}  # fmt: skip
        ask = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
        with http.stream("POST", f"{queen.base_url}/completions", json=counting) as busy:
            lines = busy.iter_lines()  # kept: a dropped iterator closes the stream
            assert next(lines).startswith("data:")
            started = time.monotonic()
            refused = http.post(f"{queen.base_url}/chat/completions", json=ask)
            assert time.monotonic() - started < 30
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "model_load_failed"
        assert "only" in error["message"]
        assert "free" in error["message"]
        assert states(queen) == {f"{MODEL}-1": "parked", "smol-b-1": "ready"}


def test_with_autoload_off_a_stored_model_is_not_loaded(paths: Paths) -> None:
    with running_queen(paths, "--no-autoload", models=()) as queen:
        answer = http.post(f"{queen.base_url}/chat/completions",
                           json={"model": MODEL, "messages": MESSAGES})  # fmt: skip
        assert answer.status_code == 404
        message = answer.json()["error"]["message"]
        assert "autoload is off" in message
        assert f"rbee worker spawn --model {MODEL}" in message
        assert queen.workers() == []


def test_a_load_that_fails_answers_503_naming_the_cause_and_the_queen_stays_up(
    paths: Paths, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    # A whole GGUF header (import checks it) of no tensors and no metadata: no engine loads it.
    broken.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + b"\0" * 64)
    result = rbee(paths, "model", "import", str(broken), "--id", "broken")
    assert result.returncode == 0, result.stderr
    with running_queen(paths, models=()) as queen:
        body = {"model": "broken", "messages": MESSAGES, "max_tokens": 4}
        started = time.monotonic()
        first = http.post(f"{queen.base_url}/chat/completions", json=body)
        assert time.monotonic() - started < 60
        assert first.status_code == 503, first.text
        error = first.json()["error"]
        assert error["code"] == "model_load_failed"
        assert "broken" in error["message"]
        again = http.post(f"{queen.base_url}/chat/completions", json=body)  # within the backoff
        assert again.json()["error"]["message"] == error["message"]
        assert queen.workers() == []
        assert chat(queen)  # the queen serves on
        unknown = http.post(f"{queen.base_url}/chat/completions",
                            json={"model": "nope", "messages": MESSAGES})  # fmt: skip
        assert unknown.status_code == 404
