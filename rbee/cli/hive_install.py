"""`rbee hive install ALIAS` and `rbee hive uninstall ALIAS`: one step per line, one final line."""

from __future__ import annotations

import argparse
import asyncio

from rbee.api.client import QueenClient
from rbee.cli.jobs import run_job
from rbee.cli.output import confirm, emit
from rbee.config.hives import Hive, hives_path, load_hives
from rbee.config.settings import Paths
from rbee.queen.record import read_record
from rbee.ssh.connection import HiveConnection
from rbee.ssh.install import StepEvent, install_hive, uninstall_hive
from rbee.ssh.wheelhouse import Target, Wheelhouse, build_wheelhouse, extra_dirs_from_env

__all__ = ["hive_install", "hive_uninstall", "print_step"]


def _hive(args: argparse.Namespace, paths: Paths) -> tuple[Hive, HiveConnection]:
    config = load_hives(hives_path(paths, args.hives))
    hive = config.get(args.alias)
    return hive, HiveConnection.of(config, hive.alias)


def print_step(event: StepEvent) -> None:
    """Print a step as `hive1: [3/9] title… done in 2.1s` (the start, then the end)."""
    if event.state == "start":
        emit(f"{event.alias}: [{event.index}/{event.total}] {event.title}… ", end="")
    elif event.state == "done":
        emit(f"{event.result} in {event.seconds:.1f}s")
    else:
        emit(f"failed after {event.seconds:.1f}s")


def _wheels(n: int) -> str:
    return f"{n} wheel" + ("" if n == 1 else "s")


def hive_install(args: argparse.Namespace, paths: Paths) -> int:
    """Install rbee on a hive (or say it is up to date): as a queen job if a queen runs."""
    record = read_record(paths)
    url = args.queen or (record.url if record else None)
    if url is not None:
        with QueenClient(url, api_key=args.api_key) as client:
            done = run_job(client, {"kind": "hive.install", "alias": args.alias})
        state = "is up to date" if done["up_to_date"] else "installed"
        emit(f"{done['alias']}: rbee {done['rbee_version']} {state} in {done['install_dir']} "
             f"({done['seconds']:.1f}s)")  # fmt: skip
        return 0
    hive, connection = _hive(args, paths)
    cache_root, extra_dirs = paths.data_dir / "wheelhouse", extra_dirs_from_env()

    def wheelhouse_for(target: Target, extras: tuple[str, ...]) -> Wheelhouse:
        return build_wheelhouse(target, cache_root, extras=extras, extra_dirs=extra_dirs)

    async def install() -> str:
        async with connection as conn:
            result = await install_hive(conn, hive, wheelhouse_for, print_step)
        if result.up_to_date:
            return (f"{hive.alias}: rbee {result.rbee_version} is up to date in "
                    f"{result.install_dir} (checked in {result.seconds:.1f}s)")  # fmt: skip
        return (f"{hive.alias}: rbee {result.rbee_version} installed in {result.install_dir} "
                f"({_wheels(result.uploaded_files)} uploaded, {result.seconds:.1f}s)")  # fmt: skip

    emit(asyncio.run(install()))
    return 0


def hive_uninstall(args: argparse.Namespace, paths: Paths) -> int:
    """Remove everything `rbee hive install` put on a hive, after confirming."""
    hive, connection = _hive(args, paths)

    def ask(path: str) -> bool:
        return bool(args.yes) or confirm(f"Remove {hive.alias}:{path} and everything in it?")

    async def uninstall() -> str:
        async with connection as conn:
            result = await uninstall_hive(conn, hive, ask)
        if not result.removed:
            return f"{hive.alias}: nothing installed at {result.install_dir}"
        kept = f"; kept what rbee did not make: {', '.join(result.left)}" if result.left else ""
        return f"{hive.alias}: removed {result.install_dir}{kept}"

    emit(asyncio.run(uninstall()))
    return 0
