"""httpx calls with a deadline that holds on a loaded 2-core machine (httpx's default is 5 s)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import httpx

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
