"""Jobs: operation parsing, events, the JobManager, the jobs API on a real uvicorn, the CLI view.

The machinery runs a fake kind, `test.sleep`, known only here; worker.spawn is tested end to end
with the real model elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import pytest
from starlette.applications import Starlette

from rbee.api.client import QueenClient
from rbee.api.http import EXCEPTION_HANDLERS
from rbee.api.jobs import (
    OPERATION_PARSERS,
    JobEvent,
    WorkerSpawn,
    check_fields,
    parse_operation,
)
from rbee.api.workers import WorkerSpec
from rbee.cli import jobs as cli_jobs
from rbee.errors import ApiError, JobFailedError, RbeeError
from rbee.net import bind_tcp
from rbee.queen import jobs_routes
from rbee.queen.jobs import JobManager, Progress, Runner
from rbee.serve import uvicorn_server
from tests.http import TIMEOUT


@dataclass(frozen=True)
class Sleep:
    """The fake operation: `steps` steps of `delay` seconds, then fail or crash if asked."""

    steps: int = 3
    delay: float = 0.0
    fail: str | None = None
    crash: bool = False
    kind: ClassVar[str] = "test.sleep"

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Sleep:
        check_fields(raw, cls.kind, ("steps", "delay", "fail", "crash"))
        steps = raw.get("steps", 3)
        if not isinstance(steps, int) or steps < 1:
            raise ApiError(
                400, "operation.steps must be a positive integer", param="operation.steps"
            )
        return cls(steps, float(raw.get("delay", 0)), raw.get("fail"), bool(raw.get("crash")))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


async def sleep(op: Sleep, progress: Progress) -> dict[str, Any]:
    for n in range(1, op.steps + 1):
        progress.step(n, op.steps, f"step {n}")
        progress.progress(n, op.steps, "sleeping")
        await asyncio.sleep(op.delay)
    progress.log("slept")
    if op.fail:
        raise RbeeError(op.fail)
    if op.crash:
        raise RuntimeError("boom")
    return {"slept": op.steps}


def sleep_runner(op: Any, state: Any) -> Runner:
    assert isinstance(op, Sleep)
    return lambda progress: sleep(op, progress)


# --- wire types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ([], None, "JSON object"),
        ({}, "operation", "operation is required"),
        ({"operation": "worker.spawn"}, "operation", "operation is required"),
        ({"operation": {}}, "operation.kind",
         "known kinds: hive.install, hive.start, hive.stop, worker.spawn"),
        ({"operation": {"kind": "hive.start"}}, "operation.alias", "hive alias"),
        ({"operation": {"kind": "hive.stop", "alias": "a;b"}}, "operation.alias", "hive alias"),
        ({"operation": {"kind": "hive.install", "alias": "a", "x": 1}}, "operation.x",
         "not a field"),
        ({"operation": {"kind": "nope"}}, "operation.kind", "unknown operation kind 'nope'"),
        ({"operation": {"kind": "worker.spawn"}}, "operation.model", "operation.model is required"),
        ({"operation": {"kind": "worker.spawn", "model": "m", "ctx_size": 1}},
         "operation.ctx_size", "operation.ctx_size must be an integer"),
        ({"operation": {"kind": "worker.spawn", "model": "m", "engine": 5}},
         "operation.engine", "operation.engine must be"),
        ({"operation": {"kind": "worker.spawn", "modle": "m"}}, "operation.modle", "not a field"),
        ({"operation": {"kind": "worker.spawn", "model": "m", "hive": 3}}, "operation.hive",
         "alias"),
    ],
)  # fmt: skip
def test_bad_operations_name_the_field(body: Any, param: str | None, words: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_operation(body, OPERATION_PARSERS)
    assert (caught.value.status, caught.value.param) == (400, param)
    assert words in caught.value.message


def test_worker_spawn_parses_into_a_frozen_operation() -> None:
    raw = {"kind": "worker.spawn", "model": "smollm2-135m", "threads": 2}
    op = parse_operation({"operation": raw}, OPERATION_PARSERS)
    assert op == WorkerSpawn(WorkerSpec(model="smollm2-135m", threads=2))
    assert op.to_json()["kind"] == "worker.spawn"
    assert parse_operation({"operation": op.to_json()}, OPERATION_PARSERS) == op


@pytest.mark.parametrize(
    "event",
    [
        JobEvent(1, "job-1", "step", "fetching model", step=1, steps=2, at=1.5),
        JobEvent(2, "job-1", "progress", "unpacking", done=10, total=None, at=2.0),
        JobEvent(3, "job-1", "error", "unknown model 'x'\nsecond line", at=3.0),
    ],
)
def test_event_json_round_trip(event: JobEvent) -> None:
    assert JobEvent.from_json(json.loads(json.dumps(event.to_json()))) == event


@pytest.mark.parametrize(
    ("change", "field"),
    [({"seq": "1"}, "seq"), ({"type": "warn"}, "warn"), ({"total": 1.5}, "total"),
     ({"message": None}, "message")],
)  # fmt: skip
def test_bad_events_name_the_field(change: dict[str, Any], field: str) -> None:
    raw = {**JobEvent(1, "job-1", "log", "hi").to_json(), **change}
    with pytest.raises((TypeError, ValueError), match=field):
        JobEvent.from_json(raw)


# --- the JobManager -----------------------------------------------------------------------------


async def test_leaving_the_manager_cancels_running_jobs_and_leaves_no_task() -> None:
    before = asyncio.all_tasks()
    async with JobManager() as jobs:
        job = jobs.submit(Sleep(steps=100, delay=10), sleep_runner(Sleep(100, 10), None))
        queued = jobs.submit(Sleep(), sleep_runner(Sleep(), None))
        jobs.cancel(queued.id)  # before its task ever ran
        await asyncio.sleep(0.05)
        assert job.state == "running"
    assert (job.state, job.error) == ("cancelled", "cancelled: the queen is stopping")
    assert (queued.state, queued.error) == ("cancelled", "cancelled")
    assert [e.type for e in job.events_after(0)][-1] == "error"
    assert asyncio.all_tasks() == before
    with pytest.raises(RbeeError, match="reopened"):
        await jobs.__aenter__()


async def test_history_is_bounded_and_finished_jobs_are_forgotten_oldest_first() -> None:
    async with JobManager(max_events=5, keep_finished=2, progress_interval=0) as jobs:
        done = [jobs.submit(Sleep(steps=20), sleep_runner(Sleep(steps=20), None)) for _ in range(3)]
        for job in done:
            await job.wait()
    assert jobs.get(done[0].id) is None
    assert [j.id for j in jobs.jobs()] == [done[1].id, done[2].id]
    late = [e async for e in done[2].follow()]
    assert len(late) == 5
    assert [e.seq for e in late] == list(range(late[0].seq, done[2].event_count + 1))
    assert (late[-1].type, done[2].result) == ("done", {"slept": 20})


async def test_unexpected_errors_are_internal_errors_logged_with_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with JobManager() as jobs:
        job = jobs.submit(Sleep(crash=True), sleep_runner(Sleep(crash=True), None))
        await job.wait()
    assert (job.state, job.error) == ("failed", "internal error: RuntimeError: boom")
    assert any(r.exc_info and job.id in r.getMessage() for r in caplog.records)


async def test_progress_is_rate_limited_and_can_come_from_a_thread() -> None:
    async with JobManager(progress_interval=60) as jobs:

        async def run(progress: Progress) -> None:
            for done in (0, 1, 2, 10):
                progress.progress(done, 10, "copying")
            report = progress.from_thread()
            await asyncio.to_thread(report, "from a thread", 5, None)
            await asyncio.sleep(0.05)

        job = jobs.submit(Sleep(), run)
        await job.wait()
    shown = [(e.message, e.done) for e in job.events_after(0) if e.type == "progress"]
    assert shown == [("copying", 0), ("copying", 10), ("from a thread", 5)]


# --- the jobs API on a real server --------------------------------------------------------------


@pytest.fixture
def queen() -> Iterator[QueenClient]:
    """A real uvicorn serving the jobs routes (test.sleep only) in a thread; a client of it."""
    sock = bind_tcp("127.0.0.1", 0)
    app = Starlette(
        routes=jobs_routes.job_routes({**OPERATION_PARSERS, Sleep.kind: Sleep.parse}),
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.job_runners = {Sleep.kind: sleep_runner}
    server = uvicorn_server(app, graceful=1)
    leftovers: list[asyncio.Task[Any]] = []

    async def main() -> None:
        async with JobManager(progress_interval=0) as app.state.jobs:
            await server.serve(sockets=[sock])
        leftovers.extend(asyncio.all_tasks() - {asyncio.current_task()})  # type: ignore[arg-type]

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with QueenClient(url) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()
    assert not leftovers


def submit(queen: QueenClient, **fields: Any) -> str:
    return str(queen.submit_job({"kind": Sleep.kind, **fields})["job_id"])


def sse_lines(queen: QueenClient, job_id: str) -> list[str]:
    with queen.http.stream("GET", f"/v1/jobs/{job_id}/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line for line in r.iter_lines() if line]


def test_a_late_subscriber_gets_the_whole_history(queen: QueenClient) -> None:
    answer = queen.http.post("/v1/jobs", json={"operation": {"kind": Sleep.kind, "steps": 2}})
    assert answer.status_code == 202
    job_id = answer.json()["job_id"]
    assert answer.json()["kind"] == Sleep.kind
    while queen.get_job(job_id)["state"] != "succeeded":
        time.sleep(0.01)
    lines = sse_lines(queen, job_id)
    assert lines[-1] == "data: [DONE]"
    events = [JobEvent.from_json(json.loads(line[6:])) for line in lines[:-1]]
    assert [(e.seq, e.type, e.message) for e in events] == [
        (1, "step", "step 1"), (2, "progress", "sleeping"), (3, "step", "step 2"),
        (4, "progress", "sleeping"), (5, "log", "slept"), (6, "done", "done"),
    ]  # fmt: skip
    job = queen.get_job(job_id)
    assert (job["result"], job["events"], job["error"]) == ({"slept": 2}, 6, None)
    assert [j["job_id"] for j in queen.http.get("/v1/jobs").json()["data"]] == [job_id]


async def test_two_subscribers_see_the_same_events(queen: QueenClient) -> None:
    job_id = submit(queen, steps=6, delay=0.05)

    async def follow(client: httpx.AsyncClient) -> list[str]:
        async with client.stream("GET", f"/v1/jobs/{job_id}/stream") as r:
            return [line async for line in r.aiter_lines() if line]

    async with httpx.AsyncClient(base_url=str(queen.http.base_url), timeout=TIMEOUT) as client:
        first, second = await asyncio.gather(follow(client), follow(client))
    assert first == second
    assert len(first) == 6 * 2 + 3
    assert '"type":"done"' in first[-2]


def test_a_stream_client_that_leaves_does_not_cancel_the_job(queen: QueenClient) -> None:
    job_id = submit(queen, steps=5, delay=0.1)
    with queen.http.stream("GET", f"/v1/jobs/{job_id}/stream") as r:
        assert next(r.iter_lines()).startswith("data: ")
    assert [e.type for e in queen.stream_job(job_id)][-1] == "done"
    assert queen.get_job(job_id)["state"] == "succeeded"


def test_an_idle_stream_sends_keepalives(
    queen: QueenClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_routes, "KEEPALIVE", 0.02)
    lines = sse_lines(queen, submit(queen, steps=2, delay=0.2))
    assert ": keepalive" in lines
    assert lines[-1] == "data: [DONE]"


def test_delete_cancels_a_job(queen: QueenClient) -> None:
    job_id = submit(queen, steps=1000, delay=0.05)
    answer = queen.http.delete(f"/v1/jobs/{job_id}")
    assert answer.status_code == 200
    assert (answer.json()["state"], answer.json()["error"]) == ("cancelled", "cancelled")
    lines = sse_lines(queen, job_id)
    assert lines[-1] == "data: [DONE]"
    last = JobEvent.from_json(json.loads(lines[-2][6:]))
    assert (last.type, last.message) == ("error", "cancelled")
    with pytest.raises(JobFailedError, match=r"^test\.sleep was cancelled$"):
        cli_jobs.watch_job(queen, job_id)


def test_the_api_refuses_with_openai_error_bodies(queen: QueenClient) -> None:
    for method, path in (("GET", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/stream"),
                         ("DELETE", "/v1/jobs/nope")):  # fmt: skip
        r = queen.http.request(method, path)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "job_not_found"
    bad = queen.http.post("/v1/jobs", json={"operation": {"kind": Sleep.kind, "steps": "x"}})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "operation.steps")
    # worker.spawn parses, but this app has no runner for it: only test.sleep is known here.
    unknown = queen.http.post(
        "/v1/jobs", json={"operation": {"kind": "worker.spawn", "model": "m"}}
    )
    assert unknown.status_code == 400
    assert "(known kinds: test.sleep)" in unknown.json()["error"]["message"]
    job_id = submit(queen, steps=1)
    assert queen.http.get(f"/v1/jobs/{job_id}/stream?after=x").status_code == 400


def test_run_job_renders_progress_and_returns_the_result(
    queen: QueenClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_jobs.run_job(queen, {"kind": Sleep.kind, "steps": 2}) == {"slept": 2}
    err = capsys.readouterr().err.splitlines()
    assert err == ["[1/2] step 1", "  sleeping…", "[2/2] step 2", "  sleeping: done", "  slept"]


def test_run_job_raises_the_jobs_error(queen: QueenClient) -> None:
    with pytest.raises(RbeeError, match=r"^test\.sleep failed: the disk is full$"):
        cli_jobs.run_job(queen, {"kind": Sleep.kind, "steps": 1, "fail": "the disk is full"})


def test_ctrl_c_stops_watching_but_not_the_job(
    queen: QueenClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(view: object, event: JobEvent) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_jobs, "render_event", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cli_jobs.run_job(queen, {"kind": Sleep.kind, "steps": 1000, "delay": 0.05})
    (job,) = queen.http.get("/v1/jobs").json()["data"]
    assert job["state"] == "running"
    assert f"`rbee job watch {job['job_id']}`" in capsys.readouterr().err
