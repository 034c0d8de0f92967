"""A worker's queue: what it admits, what it refuses at once, what leaves it.

The engine here is a stand-in that generates only when the test lets it, so the queue's states
are exact; the same rules are exercised through the real model in tests/test_admission.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rbee.api.openai import ChatRequest, CompletionRequest, SamplingParams, choice_seed
from rbee.engines.base import Finish, Prepared
from rbee.errors import DeadlineError, OverloadedError
from rbee.worker.runner import Admission, EngineRunner


class GatedEngine:
    """Generates one piece per `go` the test sets; counts the generations it was given."""

    name = "gated"

    def __init__(self) -> None:
        self.go = threading.Event()
        self.seen: list[tuple[int, ...]] = []
        self.seeds: list[int | None] = []

    @property
    def context_length(self) -> int:
        return 128

    def load(self) -> None:
        pass

    def prepare(self, request: ChatRequest | CompletionRequest) -> Prepared:
        raise NotImplementedError

    def generate(self, prepared: Prepared, cancel: threading.Event) -> Iterator[str | Finish]:
        self.seen.append(prepared.tokens)
        self.seeds.append(prepared.sampling.seed)
        while not cancel.is_set():
            if self.go.wait(0.01):
                self.go.clear()
                yield "x"
                yield Finish("stop", len(prepared.tokens), 1)
                return
        yield Finish("cancelled", len(prepared.tokens), 0)

    def close(self) -> None:
        pass


def prompt(size: int, tag: int = 0, **sampling: Any) -> Prepared:
    return Prepared(tokens=(tag,) * size, max_tokens=4, sampling=SamplingParams(**sampling))


async def until(predicate: object, what: str) -> None:
    assert callable(predicate)
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - polling a counter another thread moves
            await asyncio.sleep(0.005)


@pytest.fixture
def engine() -> GatedEngine:
    return GatedEngine()


async def test_admits_one_running_and_max_queued_then_refuses(engine: GatedEngine) -> None:
    async with EngineRunner(engine, admission=Admission(max_queued=2)) as runner:
        running = runner.submit(prompt(3, 1))
        await running.started()
        queued = [runner.submit(prompt(3, 2)), runner.submit(prompt(3, 3))]
        assert (runner.stats.active, runner.stats.queued) == (1, 2)
        with pytest.raises(OverloadedError) as refused:
            runner.submit(prompt(3, 4))
        assert refused.value.status == 503
        assert refused.value.code == "server_overloaded"
        assert refused.value.headers()["Retry-After"].isdigit()
        assert runner.stats.rejected == 1
        # The admitted ones all complete, in order.
        for generation in (running, *queued):
            engine.go.set()
            items = [item async for item in generation]
            assert items[-1] == Finish("stop", 3, 1)
            generation.close()
        assert [t[0] for t in engine.seen] == [1, 2, 3]
        # The engine thread counts a request served just after its Finish reaches the client.
        await until(lambda: runner.stats.served == len(engine.seen), "the third one counted")
        assert runner.stats.mean_service_s > 0
        assert runner.stats.service_s >= runner.stats.mean_service_s
        # Room again.
        again = runner.submit(prompt(3, 5))
        engine.go.set()
        assert [item async for item in again][-1].reason == "stop"  # type: ignore[union-attr]


async def test_prompt_tokens_waiting_are_bounded(engine: GatedEngine) -> None:
    async with EngineRunner(engine, admission=Admission(max_queued=8, max_queued_tokens=10)) as r:
        running = r.submit(prompt(50, 1))  # the one running is not counted: it is not waiting
        await running.started()
        r.submit(prompt(6, 2))
        assert r.stats.queued_tokens == 6
        with pytest.raises(OverloadedError, match="prompt tokens waiting"):
            r.submit(prompt(6, 3))
        r.submit(prompt(4, 4))  # 6 + 4 fits
        assert (r.stats.queued, r.stats.queued_tokens) == (2, 10)
        running.close()


async def test_a_long_prompt_alone_is_never_refused_for_tokens(engine: GatedEngine) -> None:
    async with EngineRunner(engine, admission=Admission(max_queued=8, max_queued_tokens=10)) as r:
        running = r.submit(prompt(3, 1))
        await running.started()
        waiting = r.submit(prompt(40, 2))  # alone in the queue: it waits, whatever its size
        assert r.stats.queued_tokens == 40
        waiting.close()
        running.close()


async def test_a_closed_request_leaves_the_queue_at_once(engine: GatedEngine) -> None:
    async with EngineRunner(engine, admission=Admission(max_queued=2)) as runner:
        running = runner.submit(prompt(3, 1))
        await running.started()
        gone = runner.submit(prompt(7, 2))
        assert (runner.stats.queued, runner.stats.queued_tokens) == (1, 7)
        gone.close()  # what the worker app does when the client disconnects
        assert (runner.stats.queued, runner.stats.queued_tokens, runner.stats.dropped) == (0, 0, 1)
        with pytest.raises(asyncio.CancelledError):
            await gone.started()
        engine.go.set()
        _ = [item async for item in running]
        running.close()
        nxt = runner.submit(prompt(3, 3))
        await nxt.started()
        engine.go.set()
        _ = [item async for item in nxt]
        assert [t[0] for t in engine.seen] == [1, 3]  # the engine never saw the one that left
        assert runner.stats.started == 2


async def test_a_deadline_takes_a_waiting_request_out_of_the_queue(engine: GatedEngine) -> None:
    async with EngineRunner(engine, admission=Admission(max_queued=2)) as runner:
        running = runner.submit(prompt(3, 1))
        await running.started()
        late = runner.submit(prompt(3, 2))
        late.expire_at(time.monotonic() + 0.05)
        with pytest.raises(DeadlineError):
            await late.started()
        assert (runner.stats.queued, runner.stats.dropped) == (0, 1)
        running.close()


async def test_a_deadline_stops_a_running_generation(engine: GatedEngine) -> None:
    async with EngineRunner(engine) as runner:
        generation = runner.submit(prompt(3, 1))
        generation.expire_at(time.monotonic() + 0.05)
        await generation.started()
        items = [item async for item in generation]
        assert items == [Finish("cancelled", 3, 0)]
        assert generation.expired
        await until(lambda: runner.stats.active == 0, "the engine to stop")


async def test_choices_run_one_after_another_each_with_its_own_seed(engine: GatedEngine) -> None:
    async with EngineRunner(engine) as runner:
        generation = runner.submit(prompt(3, 1, n=3, seed=42))
        engine.go.set()
        items = []
        async for item in generation:
            items.append(item)
            if isinstance(item, Finish):
                engine.go.set()  # let the next choice's piece come
    assert items == [
        "x", Finish("stop", 3, 1, index=0),
        "x", Finish("stop", 3, 1, index=1),
        "x", Finish("stop", 3, 1, index=2),
    ]  # fmt: skip
    assert engine.seeds == [42, choice_seed(42, 1), choice_seed(42, 2)]
    # As in the answer's usage: the prompt once, every choice's tokens.
    assert (runner.stats.prompt_tokens, runner.stats.generated_tokens) == (3, 3)
    assert runner.stats.started == 1


async def test_a_request_with_n_choices_waits_as_n_prompts_worth_of_tokens(
    engine: GatedEngine,
) -> None:
    async with EngineRunner(engine, admission=Admission(max_queued=8, max_queued_tokens=10)) as r:
        running = r.submit(prompt(3, 1))
        await running.started()
        r.submit(prompt(3, 2, n=2))
        assert (r.stats.queued, r.stats.queued_tokens) == (1, 6)  # one request, twice the work
        with pytest.raises(OverloadedError, match="prompt tokens waiting"):
            r.submit(prompt(3, 3, n=2))
        r.submit(prompt(4, 4))
        assert (r.stats.queued, r.stats.queued_tokens) == (2, 10)
        running.close()


async def test_closing_a_request_stops_its_remaining_choices(engine: GatedEngine) -> None:
    async with EngineRunner(engine) as runner:
        generation = runner.submit(prompt(3, 1, n=8))
        engine.go.set()
        items = []
        async for item in generation:
            items.append(item)
            if isinstance(item, Finish):
                generation.close()  # the client went away after the first choice
        await until(lambda: runner.stats.active == 0, "the engine to stop")
    assert items[:2] == ["x", Finish("stop", 3, 1, index=0)]
    # The choice that may have begun meanwhile was stopped, and no other began.
    assert len(engine.seen) <= 2
    assert items[2:] in ([], [Finish("cancelled", 3, 0, index=1)])
    assert runner.stats.cancelled == len(engine.seen) - 1
