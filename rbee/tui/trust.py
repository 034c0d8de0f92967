"""Trusting a hive's host key from the dashboard: what `rbee hive trust` does, in two steps (the
fingerprint first, then the operator's answer, then the record).

Only a new hive is trusted here. A key that differs from the one known_hosts holds (a reinstall,
or someone in the middle) is refused with the command that reviews and replaces it: that louder
flow belongs to the CLI (`rbee hive trust ALIAS --replace-changed-key`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rbee.config.hives import HivesConfig, load_hives
from rbee.errors import HostKeyError, RbeeError
from rbee.ssh.trust import HostKey, fetch_host_key, host_key_status, record_host_key

__all__ = ["HostKeys"]


class HostKeys:
    """Host keys of the hives in one hives.conf, fetched and recorded on this machine (as the
    CLI does: trusting is the operator's step, not the queen's)."""

    def __init__(self, hives_conf: Path) -> None:
        self.hives_conf = hives_conf
        self._offered: dict[str, HostKey] = {}

    async def _config(self) -> HivesConfig:
        return await asyncio.to_thread(load_hives, self.hives_conf)

    async def offered(self, alias: str) -> tuple[str, str]:
        """(key type, SHA256 fingerprint) of the key `alias` offers now, if it is new; an error
        saying so if it is trusted already or differs from the one recorded."""
        config = await self._config()
        hive = config.get(alias)
        key = await fetch_host_key(hive.alias, config.path, host=hive.hostname, port=hive.port,
                                   config_text=config.asyncssh_text(hive.alias))  # fmt: skip
        known_hosts = hive.known_hosts()
        status = await asyncio.to_thread(
            host_key_status, known_hosts, hive.hostname, hive.port, key.key
        )
        if status.state == "known":
            raise RbeeError(f"{alias}: its host key {key.fingerprint} is already trusted")
        if status.state == "changed":
            raise HostKeyError(
                f"{alias}: the host key CHANGED (now {key.algorithm} {key.fingerprint}); review "
                f"and replace it with `rbee hive trust {alias} --replace-changed-key`"
            )
        self._offered[alias] = key
        return key.algorithm, key.fingerprint

    async def record(self, alias: str) -> str:
        """Record the key `offered` showed in the hive's known_hosts; what was done."""
        key = self._offered.pop(alias, None)
        if key is None:
            raise RbeeError(f"{alias}: no host key was shown to trust")
        known_hosts = (await self._config()).get(alias).known_hosts()
        added = await asyncio.to_thread(record_host_key, known_hosts, key.host, key.port, key.key)
        return f"{alias}: {'recorded in' if added else 'already in'} {known_hosts}"
