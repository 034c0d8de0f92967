"""The fleet as it is, for the hives a playbook names: asked of the queen, and over SSH.

The queen knows the hives it started, their workers and stores, and its model policies. Whether
rbee is installed on a hive it has not started only that hive can say: one `rbee --version` in
its install dir over SSH (the CLI's own connection, as `rbee hive status` makes), compared with
this rbee's version. A hive that cannot be reached makes no plan: the error names it.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Iterable

from rbee import __version__
from rbee.api.client import QueenClient
from rbee.apply.plan import Fleet, HiveNow, WorkerNow
from rbee.apply.playbook import LOCAL, Playbook, Policy
from rbee.config.hives import HivesConfig
from rbee.errors import ConfigError, RbeeError
from rbee.models.catalog import CATALOG
from rbee.ssh.connection import HiveConnection

__all__ = ["check_models", "installed_state", "read_fleet"]

_SSH_AT_ONCE = 8
"""Hives checked over SSH at once (as `rbee hive status` bounds its fan-out)."""


def read_fleet(client: QueenClient, playbook: Playbook, config: HivesConfig) -> Fleet:
    """The hives `playbook` names as they are now, and the queen's policies of its models."""
    hives = {h["name"]: h for h in client.hives()}
    workers: dict[str, list[WorkerNow]] = {}
    for w in client.workers():
        workers.setdefault(str(w["hive"]), []).append(
            WorkerNow(
                str(w["id"]),
                str(w["model"]),
                str(w["engine"]),
                str(w["device"]),
                str(w["state"]),
                bool(w.get("embeddings")),
                int(w.get("context_length") or 0),
                int(w.get("threads") or 0),
                int(w.get("max_queued", 8)),
                str(w.get("cpu_repack") or "auto"),
            )
        )
    not_started = [
        a for a in playbook.hives if a != LOCAL and hives.get(a, {}).get("state", "stopped")
        == "stopped"
    ]  # fmt: skip
    installs = installed_state(config, not_started)
    now: dict[str, HiveNow] = {}
    for alias in playbook.hives:
        state = str(hives.get(alias, {}).get("state", "not started"))
        started = alias == LOCAL or alias not in not_started
        models = _models(client, alias) if state == "running" else None
        installed, note = installs.get(alias, (True, ""))
        now[alias] = HiveNow(alias, started, state, installed, note, models,
                             tuple(workers.get(alias, ())))  # fmt: skip
    policies = {p.model: _policy(client, p.model) for p in playbook.policies}
    return Fleet(now, policies)


def _models(client: QueenClient, alias: str) -> frozenset[str]:
    listed = client.request("GET", f"/v1/hives/{alias}/models")["data"]
    return frozenset(str(m["id"]) for m in listed)


def _policy(client: QueenClient, model: str) -> Policy:
    got = client.request("GET", f"/v1/policies/{model}")
    return Policy(model, float(got["idle_ttl"]), bool(got["autoload"]))


def check_models(playbook: Playbook, fleet: Fleet, client: QueenClient) -> None:
    """Refuse (FILE:LINE) a model that is neither in the catalog, nor in the queen's store, nor
    in the store of a hive the playbook places it on."""
    local = fleet.hives.get(LOCAL)
    stored = local.models if local and local.models is not None else _models(client, LOCAL)
    for want in playbook.wants:
        there = fleet.hives[want.hive].models or frozenset()
        if want.model in CATALOG or want.model in stored or want.model in there:
            continue
        raise playbook.refuse(
            want.model,
            f"unknown model {want.model!r}: not in rbee's catalog nor in the store of the queen "
            f"or of {want.hive} (see `rbee model list`; `rbee model import` or `rbee model "
            "download` it first)",
        )


def installed_state(config: HivesConfig, aliases: Iterable[str]) -> dict[str, tuple[bool, str]]:
    """For each hive, whether this rbee is installed there, and if not, why not."""
    aliases = list(aliases)
    if not aliases:
        return {}
    return asyncio.run(_installed_all(config, aliases))


async def _installed_all(config: HivesConfig, aliases: list[str]) -> dict[str, tuple[bool, str]]:
    slots = asyncio.Semaphore(_SSH_AT_ONCE)

    async def one(alias: str) -> tuple[bool, str]:
        async with slots:
            return await _installed(config, alias)

    found = await asyncio.gather(*(one(a) for a in aliases), return_exceptions=True)
    result: dict[str, tuple[bool, str]] = {}
    for alias, got in zip(aliases, found, strict=True):
        if isinstance(got, RbeeError):
            raise ConfigError(f"cannot plan for hive {alias}: {got}") from got
        if isinstance(got, BaseException):
            raise got
        result[alias] = got
    return result


async def _installed(config: HivesConfig, alias: str) -> tuple[bool, str]:
    hive = config.get(alias)
    async with HiveConnection.of(config, alias) as conn:
        root = await conn.resolve(hive.install_dir)
        out = await conn.run([posixpath.join(root, "venv", "bin", "rbee"), "--version"])
    words = out.stdout.split()
    if out.exit_status == 0 and words == ["rbee", __version__]:
        return True, ""
    if out.exit_status == 0 and len(words) == 2 and words[0] == "rbee":
        return False, f"rbee {words[1]} there, {__version__} here"
    return False, f"rbee is not installed in {root}"
