"""`rbee tui`: the dashboard, or with `--once` one snapshot of it as text."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rbee.cli.output import emit
from rbee.config.hives import hives_path, load_hives
from rbee.config.settings import DEFAULT_QUEEN_PORT, Paths
from rbee.errors import ConfigError
from rbee.queen.record import read_record
from rbee.tui.app import RbeeApp
from rbee.tui.client import AsyncQueenClient
from rbee.tui.text import render
from rbee.tui.trust import HostKeys

__all__ = ["tui"]


def _queen_url(args: argparse.Namespace, paths: Paths) -> str:
    record = read_record(paths)
    return str(args.queen or (record.url if record else f"http://127.0.0.1:{DEFAULT_QUEEN_PORT}"))


def _configured(path: Path) -> list[str]:
    """The aliases in hives.conf ([] when there is none: the dashboard shows what runs)."""
    if not path.exists():
        return []
    try:
        return list(load_hives(path).aliases)
    except ConfigError:
        return []


def tui(args: argparse.Namespace, paths: Paths) -> int:
    """Run the dashboard until `q`; `--once`: print one snapshot and exit."""
    url = _queen_url(args, paths)
    conf = hives_path(paths, args.hives)
    configured = _configured(conf)
    if args.once:

        async def one() -> str:
            async with AsyncQueenClient(url, api_key=args.api_key) as client:
                snapshot = await client.snapshot()
            return render(snapshot, url=url, configured=configured, width=args.width)

        emit(asyncio.run(one()).rstrip("\n"))
        return 0

    async def run() -> None:
        async with AsyncQueenClient(url, api_key=args.api_key) as client:
            app = RbeeApp(client, configured_hives=configured,
                          trust=HostKeys(conf) if conf.exists() else None)  # fmt: skip
            await app.run_async()

    asyncio.run(run())
    return 0
