"""httpx calls with a deadline that holds on a loaded 2-core machine (httpx's default is 5 s)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
from starlette.applications import Starlette

from rbee.net import bind_tcp
from rbee.serve import uvicorn_server

TIMEOUT = httpx.Timeout(60, connect=5)


def get(url: str, **kwargs: Any) -> httpx.Response:
    """GET with the tests' deadline unless one is given."""
    kwargs.setdefault("timeout", TIMEOUT)
    return httpx.get(url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    """POST with the tests' deadline unless one is given."""
    kwargs.setdefault("timeout", TIMEOUT)
    return httpx.post(url, **kwargs)


def stream(method: str, url: str, **kwargs: Any) -> AbstractContextManager[httpx.Response]:
    """A streamed request with the tests' deadline unless one is given."""
    kwargs.setdefault("timeout", TIMEOUT)
    return httpx.stream(method, url, **kwargs)


def delete(url: str, **kwargs: Any) -> httpx.Response:
    """DELETE with the tests' deadline unless one is given."""
    kwargs.setdefault("timeout", TIMEOUT)
    return httpx.delete(url, **kwargs)


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """`app` on a real uvicorn on a free loopback port, in a thread, for a test; its URL."""
    sock = bind_tcp("127.0.0.1", 0)
    server = uvicorn_server(app, graceful=1)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[sock]),))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
