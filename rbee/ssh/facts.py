"""Hardware facts of a remote hive, read over its SSH connection with the machine's own Python."""

from __future__ import annotations

from rbee.hive.facts import FACTS_SCRIPT, Facts, parse_facts
from rbee.ssh.connection import HiveConnection

__all__ = ["remote_facts"]


async def remote_facts(conn: HiveConnection, python: str) -> Facts:
    """Run the facts script on the hive (works before rbee is installed there)."""
    result = await conn.check([python, "-c", FACTS_SCRIPT], time_limit=60)
    return parse_facts(result.stdout)
