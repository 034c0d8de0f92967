"""Commands that read hives.conf (and the inventory) without connecting: `rbee hive list`,
`rbee config check`, `rbee config show`; `fleet_files` reads both for the commands that do."""

from __future__ import annotations

import argparse

from rbee.cli.output import emit, note, table
from rbee.config.hives import Hive, HivesConfig, hives_path, load_hives
from rbee.config.inventory import ALL, Inventory, inventory_path, load_inventory, select_hives
from rbee.config.settings import Paths

__all__ = ["config_check", "config_show", "fleet_files", "hive_list", "selected_hives"]


def fleet_files(args: argparse.Namespace, paths: Paths) -> tuple[HivesConfig, Inventory]:
    """hives.conf and the inventory (`--hives`, `--inventory`), both checked."""
    config = load_hives(hives_path(paths, args.hives))
    path, named = inventory_path(paths, getattr(args, "inventory", None))
    return config, load_inventory(path, config, required=named)


def selected_hives(
    args: argparse.Namespace, paths: Paths, config: HivesConfig, aliases: list[str]
) -> list[Hive]:
    """The hives of `config` a command names by alias and `--group` (every hive when it names
    none); the inventory is read only for groups, so a broken one never stops `rbee hive status
    box`."""
    groups: list[str] = getattr(args, "group", None) or []
    if not groups:
        return [config.get(alias) for alias in aliases] if aliases else list(config.hives)
    path, named = inventory_path(paths, getattr(args, "inventory", None))
    return select_hives(config, load_inventory(path, config, required=named), aliases, groups)


def hive_list(args: argparse.Namespace, paths: Paths) -> int:
    """Print every hive in hives.conf with its resolved settings."""
    config, inventory = fleet_files(args, paths)
    if not config.hives:
        emit(f"no hives in {config.path} (add a `Host ALIAS` block)")
        return 0
    table(
        ["ALIAS", "HOST", "USER", "PORT", "HIVE PORT", "BACKEND", "INSTALL DIR", "GROUPS"],
        [
            [h.alias, h.hostname, h.user, h.port, h.hive_port, h.backend, h.install_dir,
             ",".join(inventory.groups_of(h.alias)) or "-"]
            for h in config.hives
        ],
    )  # fmt: skip
    return 0


_LOCAL_COMMANDS = frozenset({"proxycommand", "localcommand", "knownhostscommand"})
"""ssh_config keywords whose value is a command run on the operator's machine."""


def config_check(args: argparse.Namespace, paths: Paths) -> int:
    """Check hives.conf and the inventory without connecting anywhere."""
    config, inventory = fleet_files(args, paths)
    emit(f"{config.path}: {len(config.hives)} hive(s) OK")
    for d in config.directives:
        if d.key in _LOCAL_COMMANDS and " ".join(d.args).lower() != "none":
            who = "rbee and `ssh -F`" if d.key == "proxycommand" else "`ssh -F` (not rbee)"
            note(f"{d.path}:{d.line}: {d.keyword} runs a command on this machine when {who} "
                 "connects to the hive: only use a hives.conf you trust")  # fmt: skip
    if inventory.path is not None:
        for alias in config.aliases:  # two groups giving one hive different defaults
            inventory.vars_for(alias)
        groups = [g for g in inventory.groups.values() if g.name != ALL]
        sizes = ", ".join(f"{g.name} ({len(g.hives)})" for g in groups) or "none"
        emit(f"{inventory.path}: {len(groups)} group(s) OK: {sizes}")
    return 0


def config_show(args: argparse.Namespace, paths: Paths) -> int:
    """Print one hive's settings as hives.conf resolves them, in `ssh -G`'s form."""
    hive = load_hives(hives_path(paths, args.hives)).get(args.alias)
    for key, value in hive.settings():
        emit(f"{key} {value}")
    return 0
