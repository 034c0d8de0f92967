"""Stop work when the HTTP client goes away (for answers that are not streamed)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from rbee.errors import ClientGoneError

__all__ = ["ClientGoneError", "until_disconnect", "wait_disconnect"]

T = TypeVar("T")


async def wait_disconnect(request: Request) -> None:
    """Never return; raise ClientGoneError once the client has gone."""
    # The body has been read already, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    raise ClientGoneError


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and raising ClientGoneError) if the client disconnects."""
    try:
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(wait_disconnect(request))
            result = await work
            watcher.cancel()
    except BaseExceptionGroup as group:
        # The task group wraps whatever ended it; callers want the one exception that did.
        if group.subgroup(ClientGoneError) is not None:
            raise ClientGoneError from None
        raise group.exceptions[0] from None
    return result
