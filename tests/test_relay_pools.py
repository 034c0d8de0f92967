"""The relay's pool per remote hive: at most RELAYED_PER_HIVE connections to a hive's forwards, and
an idle kept-alive connection to one worker gives way to a request for another.

Real uvicorn servers play the queen's route and two workers of one hive (a fake engine: these are
scheduling tests); the workers' URLs stand where the SSH forwards' local ends would be (the
forwards themselves are tested in tests/test_ssh_channels.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from rbee.api.workers import WorkerInfo
from rbee.config.settings import Timeouts
from rbee.net import bind_tcp
from rbee.queen.registry import Registry
from rbee.queen.relay import RELAYED_PER_HIVE, Relay
from rbee.serve import uvicorn_server


class FakeWorker:
    """Streams a short answer after `hold` seconds; counts requests in flight at once."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.now = self.peak = self.served = 0
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.now -= 1
        self.served += 1

        async def body() -> AsyncIterator[bytes]:
            yield b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    sock = bind_tcp("127.0.0.1", 0)
    server = uvicorn_server(app, graceful=1)
    server.config.timeout_keep_alive = 120  # idle connections stay open unless a client closes
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(20):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


def queen_app(relay: Relay) -> Starlette:
    async def chat(request: Request) -> Response:
        raw = await request.body()
        model = request.path_params["model"]
        return await relay.forward(request, model, "/v1/chat/completions", raw, True)

    return Starlette(routes=[Route("/chat/{model}", chat, methods=["POST"])])


async def ask(client: httpx.AsyncClient, queen: str, model: str) -> str:
    async with client.stream("POST", f"{queen}/chat/{model}", content=b"{}") as response:
        assert response.status_code == 200
        return (await response.aread()).decode()


def test_a_hive_gets_its_own_bounded_pool() -> None:
    async def run() -> tuple[int, int]:
        busy, idle = FakeWorker(hold=0.3), FakeWorker(hold=0.0)
        registry = Registry()
        async with serving(busy.app) as busy_url, serving(idle.app) as idle_url:
            for worker_id, model, url in (("w1", "busy", busy_url), ("w2", "idle", idle_url)):
                info = WorkerInfo(id=worker_id, model=model, engine="fake", device="cpu",
                                  state="ready", port=1)  # fmt: skip
                registry.update("hive1", info, forward_url=url)
            async with (
                Relay(registry, Timeouts()) as relay,
                serving(queen_app(relay)) as queen,
                httpx.AsyncClient(timeout=60) as client,
            ):
                answers = await asyncio.gather(*(ask(client, queen, "busy") for _ in range(9)))
                assert all("[DONE]" in a for a in answers)
                # The hive's pool now holds RELAYED_PER_HIVE idle connections to `busy`; the
                # workers keep them open for 120 s. A request for `idle` must not wait for that.
                async with asyncio.timeout(20):
                    assert "[DONE]" in await ask(client, queen, "idle")
        return busy.peak, busy.served

    peak, served = asyncio.run(run())
    assert served == 9  # every request was served, the ones over the pool's size later
    assert peak == RELAYED_PER_HIVE
