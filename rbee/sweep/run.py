"""The sweep itself: ask the queen, then every hive at once, each over its own SSH connection
with its own deadline, and turn what was seen into checks.

One hive's trouble stays with it: a hive that does not answer within `Thresholds.timeout`
(connecting included), refuses its host key or prints what the script does not, is that hive's
CRITICAL finding, and the others are swept all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh

from rbee import __version__
from rbee.api.hop import hop_headers, token_path
from rbee.config.hives import Hive, HivesConfig
from rbee.config.settings import Paths
from rbee.errors import RbeeError, SshError
from rbee.fsutil import private_dir
from rbee.ssh.connection import HiveConnection
from rbee.sweep.expect import Expected, read_expected
from rbee.sweep.hive_checks import HiveFindings, check_hive
from rbee.sweep.memory import Memory, carried_over, changes, load_memory
from rbee.sweep.probe import HiveProbe, probe_hive
from rbee.sweep.queen_checks import QUEEN, check_queen
from rbee.sweep.queen_view import QueenView, read_queen
from rbee.sweep.report import Report
from rbee.sweep.status import Check, Status, Thresholds

__all__ = ["MAX_CONNECTING", "Sweep", "sweep_lock", "sweep_once"]

MAX_CONNECTING = 64
"""Hives swept at once (each has its own sshd; this bounds file descriptors)."""
_PROMPT = {"prompt": "Hi", "max_tokens": 1, "temperature": 0}


@dataclass(frozen=True)
class Sweep:
    """What to sweep and how."""

    paths: Paths
    config: HivesConfig
    hives: tuple[Hive, ...]
    state_dir: Path
    queen_url: str | None = None
    api_key: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    probe: bool = False
    """Also time one generated token through each ready worker."""


@contextlib.contextmanager
def sweep_lock(state_dir: Path) -> Iterator[None]:
    """Hold the sweep lock (`STATE_DIR/sweep.lock`) or raise RbeeError at once: two sweeps never
    overlap, whoever started them (a slow cron sweep and the next one)."""
    private_dir(state_dir)
    path = state_dir / "sweep.lock"
    with path.open("a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RbeeError(f"another sweep is running (it holds {path})") from None
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


async def _hop_token(conn: HiveConnection, alias: str, data_dir: str) -> str | None:
    """The hive's hop secret (rbee.api.hop), read from its file over SSH as its own user; None
    when it cannot be read (a hive of an older rbee asks for none)."""
    if not data_dir:
        return None
    path = posixpath.join(data_dir, "run", token_path(Path("."), alias).name)
    result = await conn.run(["cat", path], time_limit=10.0)
    return result.stdout.strip() or None if result.exit_status == 0 else None


async def _probe_workers(
    conn: HiveConnection, alias: str, data_dir: str, queen: QueenView, t: Thresholds
) -> list[Check]:
    """One token through each worker the queen reports ready there, through an SSH forward,
    with the hive's secret, which only the hive's own user can read."""
    import httpx  # noqa: PLC0415 - only --probe needs it here

    checks = []
    ready = [
        w for w in queen.workers_on(alias)
        if w.get("state") == "ready" and isinstance(w.get("port"), int)
    ]  # fmt: skip
    token = await _hop_token(conn, alias, data_dir) if ready else None
    for worker in ready:
        port, wid = worker["port"], str(worker.get("id", "")).partition("@")[0]
        forward = await conn.forward(port)
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(
                timeout=t.probe_crit, trust_env=False, headers=hop_headers(token)
            ) as client:
                body = {**_PROMPT, "model": worker.get("model")}
                answer = await client.post(f"{forward.url}/v1/completions", json=body)
            took = time.monotonic() - started
            if answer.is_success:
                status = (Status.CRITICAL if took > t.probe_crit
                          else Status.WARNING if took > t.probe_warn else Status.OK)  # fmt: skip
                detail = f"one token in {took:.3f}s"
            else:
                status, detail = Status.CRITICAL, f"answered {answer.status_code}"
        except httpx.HTTPError as err:
            took, status, detail = time.monotonic() - started, Status.CRITICAL, f"failed: {err!r}"
        finally:
            forward.close()
        checks.append(Check(alias, f"probe:{wid}", status, detail, took))
    return checks


def _trusted_keys(hives: tuple[Hive, ...]) -> dict[str, Any]:
    """Each hive's known_hosts, read once per file set rather than once per connection.

    asyncssh reads and parses a known_hosts path on every connection: on a fleet whose
    known_hosts lists every hive, that grows with the square of its size (a fifth of a 50-hive
    sweep's CPU). The same files are verified against, once loaded; a hive whose files cannot be
    read here gets none, so its connection reads them itself and says what is wrong. Hives with
    no UserKnownHostsFile are left to asyncssh's default.
    """
    loaded: dict[tuple[Path, ...], Any] = {}
    trusted: dict[str, Any] = {}
    for hive in hives:
        files = hive.known_hosts_files
        if not files:
            continue
        if files not in loaded:
            try:
                loaded[files] = asyncssh.read_known_hosts([str(f.expanduser()) for f in files])
            except (OSError, ValueError, asyncssh.Error):
                loaded[files] = None
        if loaded[files] is not None:
            trusted[hive.alias] = loaded[files]
    return trusted


async def _sweep_hives(
    sweep: Sweep, queen: QueenView
) -> list[tuple[HiveProbe | RbeeError, list[Check]]]:
    slots = asyncio.Semaphore(MAX_CONNECTING)
    t = sweep.thresholds
    trusted = _trusted_keys(sweep.hives)

    async def one(hive: Hive) -> tuple[HiveProbe | RbeeError, list[Check]]:
        async with slots:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    # The deadline bounds connecting and the checks; a --probe has its own.
                    async with asyncio.timeout(t.timeout):
                        connection = HiveConnection(
                            hive.alias,
                            sweep.config.path,
                            connect_timeout=t.timeout,
                            known_hosts=trusted.get(hive.alias, ()),
                            config_text=sweep.config.asyncssh_text(hive.alias),
                        )  # as HiveConnection.of makes it, with the known_hosts read once
                        conn = await stack.enter_async_context(connection)
                        probe = await probe_hive(conn, hive.alias, hive.install_dir)
                    extra = (
                        await _probe_workers(conn, hive.alias, probe.data_dir, queen, t)
                        if sweep.probe
                        else []
                    )
                    return probe, extra
            except TimeoutError:
                return SshError(f"{hive.alias}: no answer within {t.timeout:g}s (--timeout)"), []
            except RbeeError as err:
                return err, []

    return list(await asyncio.gather(*(one(h) for h in sweep.hives)))


def sweep_once(sweep: Sweep, memory: Memory | None = None) -> tuple[Report, Expected]:
    """Sweep once (read only); the report, and what should run (for `--heal`)."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    memory = memory if memory is not None else load_memory(sweep.state_dir)
    expected = read_expected(sweep.paths)
    queen = read_queen(sweep.paths, sweep.queen_url, sweep.api_key)
    results = asyncio.run(_sweep_hives(sweep, queen)) if sweep.hives else []
    version = queen.version or __version__
    hives: list[HiveFindings] = []
    for hive, (result, extra) in zip(sweep.hives, results, strict=True):
        baseline = memory.vram_baseline.get(hive.alias) if memory else None
        found = check_hive(hive.alias, result, queen=queen, expected=expected, version=version,
                           thresholds=sweep.thresholds, baseline=baseline)  # fmt: skip
        if extra:
            found = HiveFindings(found.alias, (*found.checks, *extra), found.probe, found.orphans,
                                 found.hive_pid, found.vram_baseline, found.error)  # fmt: skip
        hives.append(found)
    queen_checks = check_queen(
        queen,
        expected,
        sweep.thresholds,
        last_restarts=memory.restarts if memory else None,
        last_pid=memory.queen_pid if memory else None,
    )
    report = Report(
        started_at=started_at,
        seconds=time.monotonic() - started,
        queen=queen,
        hives=tuple(hives),
        queen_checks=tuple(queen_checks),
        previous_at=memory.at if memory else None,
        thresholds=sweep.thresholds,
    )
    swept = {QUEEN, *(h.alias for h in sweep.hives)}
    kept = carried_over(memory, swept, sweep.probe)
    compared = None
    if memory is not None:
        compared = dataclasses.replace(
            memory, checks={k: v for k, v in memory.checks.items() if k not in kept}
        )
    return dataclasses.replace(report, changes=tuple(changes(report.checks, compared))), expected
