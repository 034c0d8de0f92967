"""Hive commands that connect over SSH: `rbee hive trust`, `rbee hive status`.

`rbee hive status` reads any number of hives in one go: hives.conf is read once, each connection
gets only its hive's lines of it (`HiveConnection.of`), every connection opens at once, and the
facts come from a POSIX sh script (`status_facts`), with no Python start-up on the hives.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rbee.api.client import QueenClient
from rbee.cli.hives import selected_hives
from rbee.cli.output import confirm, emit, fail, note, table
from rbee.config.hives import Hive, HivesConfig, hives_path, load_hives
from rbee.config.settings import Paths
from rbee.errors import HostKeyError, QueenError, RbeeError
from rbee.facts import Facts
from rbee.queen.record import read_record
from rbee.ssh.connection import HiveConnection
from rbee.ssh.facts import status_facts
from rbee.ssh.trust import (
    HostKey,
    TrustStatus,
    fetch_host_key,
    host_key_status,
    record_host_key,
    replace_host_key,
)

__all__ = ["MAX_CONNECTING", "hive_status", "hive_trust"]

MAX_CONNECTING = 64
"""Connections `rbee hive status` opens at once (each hive has its own sshd; this bounds fds)."""


def hive_trust(args: argparse.Namespace, paths: Paths) -> int:
    """Show the host key a hive offers; record it in known_hosts once confirmed. A key that
    differs from the one recorded is a louder, separate flow (`_replace_changed`)."""
    config = load_hives(hives_path(paths, args.hives))
    hive = config.get(args.alias)
    key = asyncio.run(
        fetch_host_key(
            hive.alias,
            config.path,
            host=hive.hostname,
            port=hive.port,
            config_text=config.asyncssh_text(hive.alias),
        )
    )
    known_hosts = hive.known_hosts()
    status = host_key_status(known_hosts, hive.hostname, hive.port, key.key)
    if status.state == "known":
        emit(f"{hive.alias}: its host key {key.algorithm} {key.fingerprint} is already in "
             f"{known_hosts}")  # fmt: skip
        return 0
    if status.state == "changed":
        return _replace_changed(args, hive, key, known_hosts, status)
    emit(f"{hive.alias} ({hive.hostname} port {hive.port}) offers this host key:")
    emit(f"  {key.algorithm} {key.fingerprint}")
    emit(_CHECK_ON_THE_MACHINE)
    if not args.yes and not confirm(f"Trust it and record it in {known_hosts}?"):
        raise HostKeyError(f"{hive.alias}: not trusted (answer y, or pass --yes to trust it)")
    if record_host_key(known_hosts, hive.hostname, hive.port, key.key):
        emit(f"recorded in {known_hosts}")
    else:
        emit(f"already in {known_hosts}")
    return 0


_CHECK_ON_THE_MACHINE = (
    "Compare it with the output of `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` (or the "
    "key type above) run on that machine."
)


def _replace_changed(
    args: argparse.Namespace, hive: Hive, key: HostKey, known_hosts: Path, status: TrustStatus
) -> int:
    """The hive offers a key other than the one recorded: say so loudly, with both
    fingerprints, and replace it only with --replace-changed-key (never --yes alone: that is
    how a man in the middle would get trusted on the first script that ran it)."""
    note("WARNING: THE HOST KEY OF THIS HIVE HAS CHANGED.")
    note(
        "Someone could be in the middle of the connection, or the machine was reinstalled or "
        "its host key regenerated. Do not replace it before checking on the machine itself."
    )
    emit(f"{hive.alias} ({hive.hostname} port {hive.port}) now offers:")
    emit(f"  {key.algorithm} {key.fingerprint}")
    emit(f"{known_hosts} holds for it:")
    for entry in status.others:
        emit(f"  {entry.key_type} {entry.fingerprint}  ({known_hosts}:{entry.line})")
    emit(_CHECK_ON_THE_MACHINE)
    if not args.replace_changed_key:
        raise HostKeyError(
            f"{hive.alias}: the host key changed; not trusted. After checking the new "
            f"fingerprint on the machine, run `rbee hive trust {hive.alias} "
            "--replace-changed-key` (--yes alone never replaces a key)"
        )
    question = f"Remove the old key and trust the new one in {known_hosts}?"
    if not args.yes and not confirm(question):
        raise HostKeyError(
            f"{hive.alias}: the changed key was not trusted (answer y, or pass --yes with "
            "--replace-changed-key)"
        )
    changed = replace_host_key(known_hosts, hive.hostname, hive.port, key.key)
    where = ", ".join(f"{known_hosts}:{line}" for line in changed)
    emit(f"removed the old key ({where}); recorded the new one in {known_hosts}")
    return 0


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / (1 << 30):.1f} GiB"


def _print_facts(hive: Hive, facts: Facts) -> None:
    python = f"Python {facts.python}" if facts.python else f"no {hive.python} on PATH"
    emit(f"{hive.alias}: {facts.hostname} ({facts.os} {facts.arch}), {python}")
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
    emit(f"  engines installed: {', '.join(facts.engines) or 'none (rbee not installed yet)'}")


def hive_status(args: argparse.Namespace, paths: Paths) -> int:
    """Connect to the hives named (every hive when none is) at once; print their facts."""
    config = load_hives(hives_path(paths, args.hives))
    named = args.alias if isinstance(args.alias, list) else [args.alias]
    hives = selected_hives(args, paths, config, named)
    if not hives:
        emit(f"no hives in {config.path}")
        return 0
    results = asyncio.run(_read_facts(config, hives))
    if len(hives) == 1 and isinstance(results[0], RbeeError):
        raise results[0]
    views = _queen_view(args, paths, [hive.alias for hive in hives])
    status = 0
    for hive, result in zip(hives, results, strict=True):
        if isinstance(result, RbeeError):
            status = fail(str(result))
            continue
        _print_facts(hive, result)
        for line in views[hive.alias]:
            emit(f"  {line}")
    return status


async def _read_facts(config: HivesConfig, hives: list[Hive]) -> list[Facts | RbeeError]:
    """Each hive's facts (or why they could not be read), all hives at once."""
    slots = asyncio.Semaphore(MAX_CONNECTING)

    async def one(hive: Hive) -> Facts | RbeeError:
        try:
            async with slots, HiveConnection.of(config, hive.alias) as conn:
                return await status_facts(conn, hive.python, hive.install_dir)
        except RbeeError as err:
            return err

    return list(await asyncio.gather(*(one(hive) for hive in hives)))


def _queen_view(args: argparse.Namespace, paths: Paths, aliases: list[str]) -> dict[str, list[str]]:
    """What the queen knows of each hive (its state, workers and model store), as lines."""
    views: dict[str, list[str]] = {alias: [] for alias in aliases}
    record = read_record(paths)
    url = args.queen or (record.url if record else None)
    if url is None:
        for lines in views.values():
            lines.append("hive: not started (no queen is running)")
        return views
    try:
        with QueenClient(url, api_key=args.api_key) as client:
            hives = {h["name"]: h for h in client.hives()}
            workers = client.workers()
            for alias, lines in views.items():
                state = hives.get(alias)
                if state is None or state["state"] == "stopped":
                    lines.append(f"hive: not started (start it with `rbee hive start {alias}`)")
                    continue
                error = f"; last error: {state['last_error']}" if state["last_error"] else ""
                lines.append(f"hive: {state['state']} (pid {state['pid']}){error}")
                lines += [
                    f"worker {w['id']}: {w['model']} {w['state']} ({w['engine']}, {w['device']})"
                    for w in workers
                    if w["hive"] == alias
                ]
                if state["state"] == "running":
                    models = client.request("GET", f"/v1/hives/{alias}/models")["data"]
                    names = ", ".join(f"{m['id']} ({m['size'] / 1e6:.0f} MB)" for m in models)
                    lines.append(f"model store: {names or 'empty'}")
    except QueenError as err:
        for lines in views.values():
            if not lines:
                lines.append(f"hive: unknown ({err})")
    return views
