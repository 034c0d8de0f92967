"""Hive commands that connect over SSH: `rbee hive trust`, `rbee hive status`."""

from __future__ import annotations

import argparse
import asyncio

from rbee.api.client import QueenClient
from rbee.cli.output import confirm, emit, table
from rbee.config.hives import Hive, hives_path, load_hives
from rbee.config.settings import Paths
from rbee.errors import HostKeyError, QueenError
from rbee.hive.facts import Facts
from rbee.queen.daemon import read_record
from rbee.ssh.connection import HiveConnection
from rbee.ssh.facts import remote_facts
from rbee.ssh.trust import fetch_host_key, record_host_key

__all__ = ["hive_status", "hive_trust"]


def _hive(args: argparse.Namespace, paths: Paths) -> tuple[Hive, HiveConnection]:
    config = load_hives(hives_path(paths, args.hives))
    hive = config.get(args.alias)
    return hive, HiveConnection(hive.alias, config.path)


def hive_trust(args: argparse.Namespace, paths: Paths) -> int:
    """Show the host key a hive offers; record it in known_hosts once confirmed."""
    config = load_hives(hives_path(paths, args.hives))
    hive = config.get(args.alias)
    key = asyncio.run(fetch_host_key(hive.alias, config.path, host=hive.hostname, port=hive.port))
    known_hosts = hive.known_hosts()
    emit(f"{hive.alias} ({hive.hostname} port {hive.port}) offers this host key:")
    emit(f"  {key.algorithm} {key.fingerprint}")
    emit("Compare it with the output of `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` (or the "
         "key type above) run on that machine.")  # fmt: skip
    if not args.yes and not confirm(f"Trust it and record it in {known_hosts}?"):
        raise HostKeyError(f"{hive.alias}: not trusted (answer y, or pass --yes to trust it)")
    if record_host_key(known_hosts, hive.hostname, hive.port, key.key):
        emit(f"recorded in {known_hosts}")
    else:
        emit(f"already in {known_hosts}")
    return 0


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / (1 << 30):.1f} GiB"


def _print_facts(hive: Hive, facts: Facts) -> None:
    emit(f"{hive.alias}: {facts.hostname} ({facts.os} {facts.arch}), Python {facts.python}")
    emit(f"  CPU: {facts.cpu_count} cores; RAM: {_gib(facts.mem_available)} free of "
         f"{_gib(facts.mem_total)}; disk: {_gib(facts.disk_free)} free")  # fmt: skip
    if facts.apple_chip:
        emit(f"  Apple Silicon: {facts.apple_chip}")
    if facts.gpus:
        table(["GPU", "NAME", "VRAM FREE", "VRAM TOTAL", "DRIVER"],
              [[g.index, g.name, _gib(g.vram_free), _gib(g.vram_total), g.driver]
               for g in facts.gpus])  # fmt: skip
    else:
        emit("  GPUs: none found (no nvidia-smi)")
    emit(f"  engines importable: {', '.join(facts.engines) or 'none (rbee not installed yet)'}")


def hive_status(args: argparse.Namespace, paths: Paths) -> int:
    """Connect to a hive and print its hardware facts."""
    hive, connection = _hive(args, paths)

    async def gather() -> Facts:
        async with connection as conn:
            return await remote_facts(conn, hive.python)

    _print_facts(hive, asyncio.run(gather()))
    _print_queen_view(args, paths, hive.alias)
    return 0


def _print_queen_view(args: argparse.Namespace, paths: Paths, alias: str) -> None:
    """What the queen knows of the hive: its state, workers and model store."""
    record = read_record(paths)
    url = args.queen or (record.url if record else None)
    if url is None:
        emit("  hive: not started (no queen is running)")
        return
    try:
        with QueenClient(url, api_key=args.api_key) as client:
            hives = {h["name"]: h for h in client.request("GET", "/v1/hives")["data"]}
            state = hives.get(alias)
            if state is None or state["state"] == "stopped":
                emit(f"  hive: not started (start it with `rbee hive start {alias}`)")
                return
            error = f"; last error: {state['last_error']}" if state["last_error"] else ""
            emit(f"  hive: {state['state']} (pid {state['pid']}){error}")
            workers = [w for w in client.workers() if w["hive"] == alias]
            for w in workers:
                emit(f"  worker {w['id']}: {w['model']} {w['state']} ({w['engine']}, "
                     f"{w['device']})")  # fmt: skip
            if state["state"] == "running":
                models = client.request("GET", f"/v1/hives/{alias}/models")["data"]
                names = ", ".join(f"{m['id']} ({m['size'] / 1e6:.0f} MB)" for m in models)
                emit(f"  model store: {names or 'empty'}")
    except QueenError as err:
        emit(f"  hive: unknown ({err})")
