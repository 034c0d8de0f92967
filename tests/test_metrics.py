"""The queen's `GET /metrics`: QueenMetrics' counters and text, the snapshot a scrape takes, and a
real queen's figures moving with real traffic (the official openai client, the real model)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from rbee.api.workers import WorkerInfo
from rbee.config.settings import Paths
from rbee.queen.metrics import (
    HiveFigures,
    QueenMetrics,
    Snapshot,
    WorkerFigures,
    take_snapshot,
)
from rbee.queen.registry import LOCAL_HIVE, Endpoint, Registry
from tests import http
from tests.conftest import MODEL, RunningQueen, make_paths, rbee, running_queen, wait_until
from tests.hives import HiveSet, two_hives

__all__ = ["two_hives"]

# -- reading the text ------------------------------------------------------------------------------


def parse(text: str) -> list[Sample]:
    """Every sample of a /metrics text, through prometheus_client's own parser."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named `name` that carry `labels` (0 when there is none)."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def has(samples: list[Sample], name: str, **labels: str) -> bool:
    return any(
        s.name == name and all(s.labels.get(k) == v for k, v in labels.items()) for s in samples
    )


# -- QueenMetrics on its own -----------------------------------------------------------------------


def test_hooks_move_their_counters_and_the_text_parses() -> None:
    m = QueenMetrics()
    m.request(MODEL, 200, worker="w1", hive=LOCAL_HIVE)
    m.request(MODEL, 200, worker="w1", hive=LOCAL_HIVE)
    m.request(MODEL, 503, worker="", hive="")
    m.first_token(MODEL, worker="w1", hive=LOCAL_HIVE, seconds=0.3)
    m.per_token(MODEL, worker="w1", hive=LOCAL_HIVE, seconds=0.016)
    m.rejected(MODEL, "overloaded")
    m.loaded(MODEL, hive="gpu1", seconds=4.0, ok=True)
    m.loaded(MODEL, hive="gpu1", seconds=1.0, ok=False)
    m.unloaded(MODEL, hive="gpu1", reason="idle")
    samples = parse(m.render().decode())

    ok = {"model": MODEL, "code": "200", "worker": "w1", "hive": LOCAL_HIVE}
    assert value(samples, "rbee_requests_total", **ok) == 2
    assert value(samples, "rbee_requests_total", code="503", worker="", hive="") == 1
    ttft = "rbee_time_to_first_token_seconds"
    assert value(samples, f"{ttft}_count", model=MODEL, worker="w1") == 1
    assert value(samples, f"{ttft}_sum", model=MODEL) == pytest.approx(0.3)
    assert value(samples, f"{ttft}_bucket", le="0.25") == 0
    assert value(samples, f"{ttft}_bucket", le="0.5") == 1
    assert value(samples, f"{ttft}_bucket", le="60.0") == 1
    tpot = "rbee_time_per_output_token_seconds"
    assert value(samples, f"{tpot}_bucket", le="0.005") == 0
    assert value(samples, f"{tpot}_bucket", le="0.02") == 1
    assert value(samples, "rbee_rejected_requests_total", reason="overloaded") == 1
    load = "rbee_model_load_seconds_count"
    assert value(samples, load, model=MODEL, hive="gpu1", outcome="ok") == 1
    assert value(samples, load, model=MODEL, hive="gpu1", outcome="failed") == 1
    assert value(samples, "rbee_model_unloads_total", hive="gpu1", reason="idle") == 1


def test_each_queen_has_its_own_registry() -> None:
    a, b = QueenMetrics(), QueenMetrics()
    a.request(MODEL, 200, worker="w1", hive=LOCAL_HIVE)
    assert value(parse(a.render().decode()), "rbee_requests_total") == 1
    assert value(parse(b.render().decode()), "rbee_requests_total") == 0


def test_a_snapshot_becomes_worker_and_hive_figures() -> None:
    stats = {"queued": 2, "active": 1, "generated_tokens": 40, "prompt_tokens": 90, "rejected": 3}
    snapshot = Snapshot(
        workers=(
            WorkerFigures(MODEL, "w1", LOCAL_HIVE, "ready", restarts=1, outstanding=3, stats=stats),
            # An older worker's /health: no prompt_tokens, no rejected; one not asked at all.
            WorkerFigures(MODEL, "w2@gpu1", "gpu1", "ready", 0, 0, {"generated_tokens": 7}),
            WorkerFigures(MODEL, "w3", LOCAL_HIVE, "crash-loop", restarts=5, outstanding=0),
        ),
        hives=(
            HiveFigures("gpu1", lease_age=1.5, ssh_channels=3),
            HiveFigures("gpu2", lease_age=None, ssh_channels=None),
        ),
    )
    samples = parse(QueenMetrics().render(snapshot).decode())
    w1 = {"model": MODEL, "worker": "w1", "hive": LOCAL_HIVE}
    assert value(samples, "rbee_worker_state", **w1, state="ready") == 1
    assert value(samples, "rbee_worker_state", **w1, state="starting") == 0
    assert value(samples, "rbee_worker_state", **w1) == 1  # one state at a time
    assert value(samples, "rbee_worker_state", worker="w3", state="crash-loop") == 1
    assert value(samples, "rbee_worker_restarts_total", **w1) == 1
    assert value(samples, "rbee_worker_restarts_total", worker="w3") == 5
    assert value(samples, "rbee_worker_outstanding_requests", **w1) == 3
    assert value(samples, "rbee_worker_queued_requests", **w1) == 2
    assert value(samples, "rbee_worker_active_requests", **w1) == 1
    assert value(samples, "rbee_prompt_tokens_total", **w1) == 90
    assert value(samples, "rbee_completion_tokens_total", **w1) == 40
    assert value(samples, "rbee_worker_rejected_requests_total", **w1) == 3
    assert value(samples, "rbee_completion_tokens_total", worker="w2@gpu1", hive="gpu1") == 7
    assert not has(samples, "rbee_prompt_tokens_total", worker="w2@gpu1")
    assert not has(samples, "rbee_worker_rejected_requests_total", worker="w2@gpu1")
    assert not has(samples, "rbee_worker_queued_requests", worker="w3")
    assert value(samples, "rbee_hive_lease_age_seconds", hive="gpu1") == 1.5
    assert value(samples, "rbee_hive_ssh_channels", hive="gpu1") == 3
    assert not has(samples, "rbee_hive_lease_age_seconds", hive="gpu2")
    assert not has(samples, "rbee_hive_ssh_channels", hive="gpu2")


@dataclass
class _Hive:
    name: str
    lease_age: float | None
    ssh_channels: int | None


def _info(worker_id: str, state: Any, **kwargs: Any) -> WorkerInfo:
    return WorkerInfo(id=worker_id, model=MODEL, engine="llamacpp", device="cpu", state=state,
                      **kwargs)  # fmt: skip


async def test_a_snapshot_asks_every_ready_worker_once_and_at_once() -> None:
    registry = Registry()
    registry.update(LOCAL_HIVE, _info("w1", "ready", port=9301, restarts=2))
    registry.update("gpu1", _info("w2", "ready", port=9301), "http://127.0.0.1:40001")
    registry.update("gpu1", _info("w3", "ready", port=9302))  # no forward (yet): not reachable
    registry.update(LOCAL_HIVE, _info("w4", "starting"))
    registry.update(LOCAL_HIVE, _info("w5", "ready", port=9305))  # does not answer
    endpoint = registry.endpoint(LOCAL_HIVE, "w1")
    assert endpoint is not None
    endpoint.outstanding = 4
    asked: list[str] = []
    waiting = 0
    most_waiting = 0

    async def health(e: Endpoint) -> dict[str, Any] | None:
        nonlocal waiting, most_waiting
        asked.append(e.id)
        waiting += 1
        most_waiting = max(most_waiting, waiting)
        await asyncio.sleep(0.01)
        waiting -= 1
        return None if e.info.id == "w5" else {"status": "ok", "stats": {"queued": len(e.id)}}

    hives = [_Hive("gpu1", 0.5, 2)]
    snapshot = await take_snapshot(registry, hives, health)
    assert sorted(asked) == ["w1", "w2@gpu1", "w5"]
    assert most_waiting == 3  # all at once
    by_id = {w.worker: w for w in snapshot.workers}
    assert set(by_id) == {"w1", "w2@gpu1", "w3@gpu1", "w4", "w5"}
    assert by_id["w1"] == WorkerFigures(MODEL, "w1", LOCAL_HIVE, "ready", 2, 4, {"queued": 2})
    assert by_id["w2@gpu1"].stats == {"queued": 7}
    assert by_id["w2@gpu1"].hive == "gpu1"
    assert by_id["w3@gpu1"].stats is None
    assert by_id["w4"].stats is None
    assert by_id["w4"].state == "starting"
    assert by_id["w5"].stats is None
    assert snapshot.hives == (HiveFigures("gpu1", 0.5, 2),)


# -- a real queen ----------------------------------------------------------------------------------


def scrape(queen: RunningQueen, **kwargs: Any) -> list[Sample]:
    r = http.get(f"{queen.url}/metrics", **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPE_LATEST
    return parse(r.text)


def _worker_labels(queen: RunningQueen) -> dict[str, str]:
    [worker] = queen.workers()
    return {"model": MODEL, "worker": str(worker["id"]), "hive": LOCAL_HIVE}


def _chat(client: openai.OpenAI) -> tuple[int, int]:
    """One whole chat answer and one streamed one; the (prompt, completion) tokens of both."""
    messages: Any = [{"role": "user", "content": "Name three colors."}]
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0
    )
    assert answer.usage is not None
    prompt, completion = answer.usage.prompt_tokens, answer.usage.completion_tokens
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usage) == 1
    return prompt + usage[0].prompt_tokens, completion + usage[0].completion_tokens


@pytest.fixture
def client(queen: RunningQueen) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=queen.base_url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.mark.slow
def test_worker_figures_follow_real_traffic(queen: RunningQueen, client: openai.OpenAI) -> None:
    labels = _worker_labels(queen)
    before = scrape(queen)
    assert value(before, "rbee_worker_state", **labels, state="ready") == 1
    assert value(before, "rbee_worker_state", **labels) == 1
    # The warm-up decode counts too, so the counters are compared before and after.
    generated = value(before, "rbee_completion_tokens_total", **labels)
    assert generated > 0
    read = value(before, "rbee_prompt_tokens_total", **labels)

    prompt, completion = _chat(client)

    def counted() -> bool:  # a stream's last bytes may reach the client before the count moves
        now = scrape(queen)
        return value(now, "rbee_completion_tokens_total", **labels) >= generated + completion

    wait_until(counted, 10, "the worker's token counters")
    after = scrape(queen)
    assert value(after, "rbee_completion_tokens_total", **labels) == generated + completion
    assert value(after, "rbee_prompt_tokens_total", **labels) == read + prompt
    assert value(after, "rbee_worker_rejected_requests_total", **labels) == 0
    assert value(after, "rbee_worker_outstanding_requests", **labels) == 0
    assert value(after, "rbee_worker_queued_requests", **labels) == 0
    assert value(after, "rbee_worker_active_requests", **labels) == 0
    assert value(after, "rbee_worker_restarts_total", **labels) == 0
    assert not has(after, "rbee_hive_lease_age_seconds")  # no remote hive


@pytest.mark.slow
def test_requests_are_counted_by_model_code_and_worker(
    queen: RunningQueen, client: openai.OpenAI
) -> None:
    # Needs the relay to call QueenMetrics.request / first_token.
    labels = _worker_labels(queen)
    ok = {**labels, "code": "200"}
    ttft = "rbee_time_to_first_token_seconds_count"
    before = scrape(queen)
    _chat(client)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    def both_counted() -> bool:  # a stream is counted once it ends, after its last bytes went
        nonlocal after
        after = scrape(queen)
        return moved("rbee_requests_total", **ok) >= 2

    after = scrape(queen)
    wait_until(both_counted, 10, "both requests to be counted")
    assert moved("rbee_requests_total", **ok) == 2
    assert moved(ttft, **labels) >= 1
    # An unknown model never reached a worker: not counted under one (nor as the served model).
    requests = [s for s in after if s.name == "rbee_requests_total"]
    assert not [s for s in requests if s.labels["model"] == "no-such-model" and s.labels["worker"]]
    assert moved("rbee_requests_total", model=MODEL, code="404") == 0


@pytest.mark.slow
def test_metrics_need_the_api_key(paths: Paths) -> None:
    with running_queen(paths, models=(), global_args=("--api-key", "s3cret")) as q:
        refused = http.get(f"{q.url}/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        wrong = http.get(f"{q.url}/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        samples = scrape(q, headers={"authorization": "Bearer s3cret"})
        assert not has(samples, "rbee_worker_state")  # no worker asked for
        assert value(samples, "rbee_requests_total") == 0


@pytest.mark.slow
@pytest.mark.ssh
def test_a_remote_hive_and_its_worker_are_measured_over_ssh(
    two_hives: HiveSet, tmp_path: Path, model_cache: Path
) -> None:
    env = {"RBEE_HIVE_COMMAND": f"{sys.executable} -m rbee"}
    paths = make_paths(tmp_path, model_cache)
    with running_queen(
        paths, models=(), global_args=("--hives", str(two_hives.config)), env=env
    ) as q:
        spawn = ("worker", "spawn", "--model", MODEL, "--hive", "hive1")
        for argv in (("hive", "start", "hive1"), spawn):
            done = rbee(paths, "--queen", q.url, *argv, timeout=300)
            assert done.returncode == 0, done.stderr
        [worker] = q.workers()
        labels = {"model": MODEL, "worker": str(worker["id"]), "hive": "hive1"}
        assert labels["worker"].endswith("@hive1")

        def heard() -> bool:  # the first heartbeat's echo
            return has(scrape(q), "rbee_hive_lease_age_seconds", hive="hive1")

        wait_until(heard, 10, "a heartbeat to come back from hive1")
        before = scrape(q)
        assert 0 <= value(before, "rbee_hive_lease_age_seconds", hive="hive1") < 15
        assert value(before, "rbee_hive_ssh_channels", hive="hive1") >= 1  # the hive's session
        assert not has(before, "rbee_hive_lease_age_seconds", hive="hive2")  # not started
        assert value(before, "rbee_worker_state", **labels, state="ready") == 1
        # Asked through the worker's SSH forward: its warm-up decode is counted there.
        generated = value(before, "rbee_completion_tokens_total", **labels)
        assert generated > 0
        with openai.OpenAI(base_url=q.base_url, api_key="x", max_retries=0) as client:
            _, completion = _chat(client)

        def counted() -> bool:
            now = value(scrape(q), "rbee_completion_tokens_total", **labels)
            return now >= generated + completion

        wait_until(counted, 10, "hive1's worker to count its tokens")
        after = scrape(q)
        assert value(after, "rbee_completion_tokens_total", **labels) == generated + completion
        assert value(after, "rbee_worker_outstanding_requests", **labels) == 0
