"""A worker proves its engine works before it says it is ready: one real decode (or embedding).

Loading a model can succeed and the first decode still crash the process (llama.cpp's AMX path on
Sapphire Rapids does exactly that: rbee.engines.repack). A crash here happens before the ready
line, so the hive fails the spawn with the signal and the log's last lines, instead of calling
the worker ready and breaking the first request.

`RBEE_WORKER_WARMUP_SIGNAL` (a signal name, e.g. SIGSEGV) makes the worker raise that signal
against itself during warm-up: how the tests check that an engine crash is reported, without an
engine that crashes on this machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from rbee.api.openai import parse_completion_request
from rbee.engines.base import Finish, embedder_of
from rbee.errors import EngineError
from rbee.worker.runner import EngineRunner

__all__ = ["CRASH_ENV", "warm_up"]

log = logging.getLogger(__name__)

CRASH_ENV = "RBEE_WORKER_WARMUP_SIGNAL"


async def warm_up(runner: EngineRunner, model: str) -> None:
    """Run one decode of one token (or embed one short input); EngineError if it fails."""
    started = time.monotonic()
    log.info("warm-up: one decode on %s before reporting ready", runner.engine.name)
    _crash_if_asked()
    if embedder_of(runner.engine) is not None:
        tokens = await runner.tokenize_inputs(("Hello",))
        await runner.embed(tokens)
    else:
        request = parse_completion_request(
            {"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
        )
        prepared = await runner.prepare(request)
        finish = None
        async with contextlib.aclosing(runner.stream(prepared)) as pieces:
            async for item in pieces:
                if isinstance(item, Finish):
                    finish = item
        if finish is None:
            raise EngineError("warm-up: the engine ended without finishing")
    log.info("warm-up done in %.2fs", time.monotonic() - started)


def _crash_if_asked() -> None:
    name = os.environ.get(CRASH_ENV)
    if not name:
        return
    try:
        sig = signal.Signals[name.upper()]
    except KeyError:
        log.warning("%s=%s is not a signal name; ignored", CRASH_ENV, name)
        return
    log.warning("%s=%s: raising %s against this worker now", CRASH_ENV, name, sig.name)
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
