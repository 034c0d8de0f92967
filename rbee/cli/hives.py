"""Commands that read hives.conf without connecting: `rbee hive list`, `rbee config check`,
`rbee config show`."""

from __future__ import annotations

import argparse

from rbee.cli.output import emit, table
from rbee.config.hives import hives_path, load_hives
from rbee.config.settings import Paths

__all__ = ["config_check", "config_show", "hive_list"]


def hive_list(args: argparse.Namespace, paths: Paths) -> int:
    """Print every hive in hives.conf with its resolved settings."""
    config = load_hives(hives_path(paths, args.hives))
    if not config.hives:
        emit(f"no hives in {config.path} (add a `Host ALIAS` block)")
        return 0
    table(
        ["ALIAS", "HOST", "USER", "PORT", "HIVE PORT", "BACKEND", "INSTALL DIR"],
        [
            [h.alias, h.hostname, h.user, h.port, h.hive_port, h.backend, h.install_dir]
            for h in config.hives
        ],
    )
    return 0


def config_check(args: argparse.Namespace, paths: Paths) -> int:
    """Check hives.conf without connecting anywhere."""
    config = load_hives(hives_path(paths, args.hives))
    emit(f"{config.path}: {len(config.hives)} hive(s) OK")
    return 0


def config_show(args: argparse.Namespace, paths: Paths) -> int:
    """Print one hive's settings as hives.conf resolves them, in `ssh -G`'s form."""
    hive = load_hives(hives_path(paths, args.hives)).get(args.alias)
    for key, value in hive.settings():
        emit(f"{key} {value}")
    return 0
