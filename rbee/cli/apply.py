"""`rbee apply PLAYBOOK [--check] [--diff]`: make the fleet what a playbook says.

Exit status: 0 when the fleet matches (nothing to do, or everything done); with `--check`, 2
when changes are pending (as `terraform plan -detailed-exitcode`); 1 for a bad playbook or a
step that failed (after saying what was done and what was not); 130 on Ctrl+C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rbee.apply.current import check_models, read_fleet
from rbee.apply.plan import Action, Fleet, HiveNow, make_plan, summary, unsettled
from rbee.apply.playbook import Playbook, load_playbook
from rbee.apply.run import Outcome, execute
from rbee.cli.hives import fleet_files
from rbee.cli.jobs import queen_client, run_job
from rbee.cli.output import emit, fail, note
from rbee.config.hives import HivesConfig, hives_path
from rbee.config.inventory import Inventory, inventory_path, load_inventory
from rbee.config.settings import Paths

__all__ = ["CHANGES_PENDING", "apply", "render_diff"]

CHANGES_PENDING = 2
"""`--check`'s exit status when the fleet does not match the playbook."""


def apply(args: argparse.Namespace, paths: Paths) -> int:
    """Plan, show the plan, and (without --check) carry it out."""
    config, inventory = _fleet_files(args, paths)
    playbook = load_playbook(Path(args.playbook), config, inventory)
    with queen_client(args, paths) as client:
        fleet = read_fleet(client, playbook, config)
        check_models(playbook, fleet, client)
        actions = make_plan(playbook, fleet)
        if args.diff:
            for line in render_diff(playbook, fleet):
                emit(line)
        away = unsettled(playbook, fleet)
        for hive in away:
            note(f"hive {hive.alias} is {hive.state}: left out of this plan (the queen restores "
                 f"what it wants there); apply again once it runs")  # fmt: skip
        if not actions and not away:
            workers = sum(w.replicas for w in playbook.wants)
            emit(f"no changes: {len(playbook.hives)} hive(s) and {workers} worker(s) match "
                 f"{playbook.path}")  # fmt: skip
            return 0
        if actions:
            emit(f"rbee apply {playbook.path} will:")
            for action in actions:
                emit(f"  {action.describe()}")
            emit(f"plan: {summary(actions)}")
        if args.check:
            return CHANGES_PENDING
        outcome = execute(actions, client, lambda op: run_job(client, op), emit)
    status = _report(outcome, actions)
    if status == 0 and away:
        names = ", ".join(h.alias for h in away)
        return fail(f"not applied on {names}: not running now (see `rbee hive status`)")
    return status


def _fleet_files(args: argparse.Namespace, paths: Paths) -> tuple[HivesConfig, Inventory]:
    """hives.conf and the inventory; on one machine without a hives.conf, none (a playbook may
    name localhost alone)."""
    default = hives_path(paths, None)
    if args.hives or default.exists():
        return fleet_files(args, paths)
    config = HivesConfig(default, ())
    path, named = inventory_path(paths, args.inventory)
    return config, load_inventory(path, config, required=named)


def _report(outcome: Outcome, actions: list[Action]) -> int:
    if not outcome.failed:
        if actions:
            emit(f"applied: {summary(actions)}")
        return 0
    emit("done:" if outcome.done else "done: nothing")
    for action in outcome.done:
        emit(f"  {action.describe()}")
    emit("failed:")
    for action in outcome.failed:
        emit(f"  {action.describe()}")
    emit("not done:" if outcome.left else "not done: nothing else")
    for action in outcome.left:
        emit(f"  {action.describe()}")
    if outcome.interrupted:
        fail("interrupted; a job being watched keeps running on the queen (`rbee job list`)")
        return 130
    return fail(f"{outcome.failed[-1].describe()[2:]}: {outcome.error}")


def _want_text(replicas: int, engine: str, device: str) -> str:
    return f"want {replicas} ({engine}, {device})"


def render_diff(playbook: Playbook, fleet: Fleet) -> list[str]:
    """Per hive, what the playbook wants against what runs (`--diff`)."""
    lines: list[str] = []
    for alias in playbook.hives:
        hive: HiveNow = fleet.hives[alias]
        install = "" if hive.installed else f", {hive.install_note}"
        lines.append(f"{alias} ({hive.state}{install}):")
        wants = [w for w in playbook.wants if w.hive == alias]
        named = set()
        for want in wants:
            named.add((want.model, want.embeddings))
            have = [
                w for w in hive.workers if (w.model, w.embeddings) == (want.model, want.embeddings)
            ]
            tag = " (embeddings)" if want.embeddings else ""
            wanted = _want_text(want.replicas, want.engine, want.device)
            lines.append(f"  {want.model}{tag}: {wanted}, have {len(have)}")
            lines.extend(f"    {w.id} {w.engine} {w.device} {w.state}" for w in have)
        for worker in hive.workers:
            if (worker.model, worker.embeddings) not in named:
                fate = "stopped (prune)" if playbook.prune else "left alone"
                lines.append(f"  {worker.model}: not in the playbook, {worker.id} "
                             f"{worker.state}: {fate}")  # fmt: skip
    for policy in playbook.policies:
        now = fleet.policies.get(policy.model)
        current = _policy(now.idle_ttl, now.autoload) if now else "unknown"
        want_text = _policy(policy.idle_ttl, policy.autoload)
        lines.append(f"policy {policy.model}: want {want_text}, have {current}")
    return lines


def _policy(idle: float | None, autoload: bool | None) -> str:
    parts = []
    if idle is not None:
        parts.append(f"idle_ttl {idle:g}s")
    if autoload is not None:
        parts.append(f"autoload {'on' if autoload else 'off'}")
    return ", ".join(parts) or "-"
