"""At most MAX_CHANNELS channels on a hive's connection, counted on the hive (real sshd).

Forwarded TCP connections are counted by a server in the hive's namespace, commands by the
intervals they report from the hive's own clock: what is measured is what the hive saw open. Each
test runs on asyncio's own event loop and on uvloop, which the queen runs on.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvloop

from rbee.config.hives import load_hives
from rbee.ssh.connection import MAX_CHANNELS, MAX_FORWARDED, HiveConnection
from tests.hives import HiveSet, TestHive, two_hives

__all__ = ["two_hives"]

pytestmark = pytest.mark.ssh

# A TCP server counting the connections it has open at once. A client sends "HOLD\n", the server
# waits HOLD seconds and answers with the most connections it ever had open; or "big N\n", and the
# server sends N bytes and closes.
COUNTING_SERVER = r"""
import socket, sys, threading, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(64)
print("ready", flush=True)
lock, now, peak = threading.Lock(), [0], [0]
def serve(c):
    with lock:
        now[0] += 1
        peak[0] = max(peak[0], now[0])
    try:
        line = c.makefile().readline().split()
        if line[0] == "big":  # "big N": N bytes of a known pattern, then close
            c.sendall(bytes(range(256)) * (int(line[1]) // 256))
            return
        time.sleep(float(line[0]))
        with lock:
            c.sendall(b"%d\n" % peak[0])
    finally:
        with lock:
            now[0] -= 1
        c.close()
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""
PORT = 9123

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run[Any]:
    """Runs a coroutine on the event loop named by the parameter."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run(main: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)

    return run


@pytest.fixture
def counting_server(two_hives: HiveSet) -> Iterator[TestHive]:
    hive = two_hives["hive1"]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", hive.netns, sys.executable, "-c", COUNTING_SERVER, str(PORT)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield hive
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def _ask(port: int, hold: float) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{hold}\n".encode())
        await writer.drain()
        return int(await reader.readline())
    finally:
        writer.close()


def test_a_forward_passes_half_closes_and_big_answers_whole(
    two_hives: HiveSet, counting_server: TestHive, run: Run[Any]
) -> None:
    config = load_hives(two_hives.config)
    size = 24 << 20  # far more than an SSH channel's window: flow control must hold

    async def talk() -> tuple[bytes, int, int]:
        async with HiveConnection.of(config, counting_server.alias) as conn:
            forward = await conn.forward(PORT)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", forward.port)
                writer.write(b"0.2\n")
                writer.write_eof()  # half-closed: the answer must still come back
                answer = await reader.read()
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", forward.port)
                writer.write(f"big {size}\n".encode())
                got = bytearray()
                while chunk := await reader.read(1 << 16):
                    got += chunk
                    await asyncio.sleep(0)  # a slow reader
                writer.close()
                async with asyncio.timeout(10):  # the slot is back once the channel closed
                    while forward.open_connections or conn.channels_in_use:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                return answer, len(got), hash(bytes(got))
            finally:
                forward.close()

    answer, length, digest = run(talk())
    assert answer == b"1\n"
    assert length == size
    assert digest == hash(bytes(range(256)) * (size // 256))


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        now += step
        peak = max(peak, now)
    return peak


def test_forwarded_connections_wait_for_a_slot(
    two_hives: HiveSet, counting_server: TestHive, run: Run[Any]
) -> None:
    config = load_hives(two_hives.config)

    async def burst() -> tuple[list[int], int]:
        async with HiveConnection.of(config, counting_server.alias) as conn:
            forward = await conn.forward(PORT)
            try:
                peaks = await asyncio.gather(*(_ask(forward.port, 0.4) for _ in range(12)))
            finally:
                forward.close()
            return peaks, conn.channels_peak

    peaks, client_peak = run(burst())
    assert len(peaks) == 12  # every connection was served, the ones over the cap later
    assert max(peaks) == MAX_FORWARDED  # the hive never had more open, and had that many
    assert client_peak == MAX_FORWARDED


def test_commands_share_the_budget_with_forwards_and_sessions(
    two_hives: HiveSet, counting_server: TestHive, run: Run[Any]
) -> None:
    config = load_hives(two_hives.config)
    stamp = ["sh", "-c", "date +%s.%N; sleep 0.4; date +%s.%N"]

    async def crowd() -> tuple[list[int], list[tuple[float, float]], int]:
        async with HiveConnection.of(config, counting_server.alias) as conn:
            forward = await conn.forward(PORT)
            async with conn.channel():  # a long-lived session, as the hive's own is
                process = await conn.conn.create_process("sleep 30")
                held = [asyncio.create_task(_ask(forward.port, 4.0)) for _ in range(MAX_FORWARDED)]
                async with asyncio.timeout(20):  # a counter, no event to wait on
                    while conn.channels_in_use < 1 + MAX_FORWARDED:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                results = await asyncio.gather(*(conn.check(stamp) for _ in range(6)))
                peaks = await asyncio.gather(*held)
                process.close()
            forward.close()
            times = [tuple(float(t) for t in r.stdout.split()) for r in results]
            return peaks, [(t[0], t[1]) for t in times], conn.channels_peak

    peaks, intervals, client_peak = run(crowd())
    assert max(peaks) == MAX_FORWARDED
    # 8 slots: the session and the forwards leave two for commands, and both were used.
    assert _most_at_once(intervals) == MAX_CHANNELS - 1 - MAX_FORWARDED
    assert client_peak == MAX_CHANNELS


def test_overlap_counter() -> None:
    # The counter the test above relies on: touching intervals do not overlap.
    assert _most_at_once([(0, 1), (0.5, 2), (1, 3)]) == 2
    assert _most_at_once([(0, 1), (1, 2)]) == 1
