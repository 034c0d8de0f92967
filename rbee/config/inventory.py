"""The inventory: named groups of hives on top of hives.conf, with defaults for their workers.

hives.conf says how to reach each machine (ssh's own format, so that `ssh -F hives.conf ALIAS`
works); the inventory only names sets of them, so that a sweep, a status or a playbook can say
`gpus` instead of five aliases. It is YAML, `CONFIG_DIR/inventory.yaml` unless `--inventory` or
`$RBEE_INVENTORY` says otherwise, and optional: without one the only group is `all`.

    groups:
      gpus:
        hives: [gpu-desktop, old-server]
        engine: exllamav2      # default engine for workers placed on these hives
        device: cuda:0         # default device
      macs: [macbook]          # short form: just the members
      fleet: [gpus, macs]      # a member may be a group

A member is a hive alias of hives.conf or another group's name (never both: an alias that is also
a group's name is refused). `all` is every hive of hives.conf and cannot be redefined. Where a
hive is in two groups that set a default differently, whoever asks for it gets an error naming
both. The install directory, the user and the port stay in hives.conf (`RbeeInstallDir`, ...):
one place for each setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rbee.config.hives import Hive, HivesConfig
from rbee.config.settings import Paths
from rbee.config.yamlfile import YNode, load_yaml
from rbee.errors import ConfigError

__all__ = [
    "ALL",
    "GROUP_VARS",
    "Group",
    "Inventory",
    "inventory_path",
    "load_inventory",
    "select_hives",
]

ALL = "all"
"""The group every inventory has: every hive in hives.conf."""

GROUP_VARS = ("engine", "device")
"""The defaults a group may set for the workers placed on its hives."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENGINES = ("auto", "llamacpp", "mlx", "exllamav2")
_DEVICE = re.compile(r"auto|cpu|cuda:\d{1,2}|metal:0")


@dataclass(frozen=True)
class Group:
    """A named set of hives, with where it was defined."""

    name: str
    hives: tuple[str, ...]
    """Its hives (groups in it expanded), in hives.conf's order."""
    vars: Mapping[str, str] = field(default_factory=dict)
    """Defaults for workers on its hives (GROUP_VARS)."""
    line: int = 0


@dataclass(frozen=True)
class Inventory:
    """The groups of one inventory file (only `all` when there is none)."""

    path: Path | None
    groups: Mapping[str, Group]

    def group(self, name: str) -> Group:
        """The group called `name`; ConfigError naming the known ones otherwise."""
        found = self.groups.get(name)
        if found is None:
            where = f" in {self.path}" if self.path else " (no inventory file)"
            known = ", ".join(sorted(self.groups))
            raise ConfigError(f"unknown group {name!r}{where}; groups: {known}")
        return found

    def groups_of(self, alias: str) -> list[str]:
        """The groups (besides `all`) that hold the hive `alias`."""
        return [g.name for g in self.groups.values() if g.name != ALL and alias in g.hives]

    def vars_for(self, alias: str) -> dict[str, str]:
        """The defaults the groups holding `alias` set; ConfigError when two of them disagree."""
        found: dict[str, tuple[str, Group]] = {}
        for group in self.groups.values():
            if alias not in group.hives:
                continue
            for key, value in group.vars.items():
                if key in found and found[key][0] != value:
                    other = found[key][1]
                    raise ConfigError(
                        f"{self.path}:{group.line}: hive {alias!r} is in groups {other.name!r} "
                        f"({key}: {found[key][0]}, line {other.line}) and {group.name!r} "
                        f"({key}: {value}); say which in one of them"
                    )
                found[key] = (value, group)
        return {key: value for key, (value, _) in found.items()}


def inventory_path(paths: Paths, flag: str | None) -> tuple[Path, bool]:
    """Where the inventory is, and whether it was named (then it must exist): `--inventory`,
    else `$RBEE_INVENTORY`, else `CONFIG_DIR/inventory.yaml` (optional)."""
    named = flag or os.environ.get("RBEE_INVENTORY")
    if named:
        return Path(named).expanduser().absolute(), True
    return paths.config_dir / "inventory.yaml", False


def load_inventory(path: Path | None, hives: HivesConfig, *, required: bool = True) -> Inventory:
    """Read and check an inventory against hives.conf; ConfigError `FILE:LINE: ...` on a mistake.

    With `required` false a missing file is no inventory (only `all`).
    """
    everyone = Group(ALL, hives.aliases)
    if path is None or (not required and not path.exists()):
        return Inventory(None, {ALL: everyone})
    doc = load_yaml(path)
    if doc is None:
        return Inventory(path, {ALL: everyone})
    top = doc.items("the inventory", keys=("groups",))
    if "groups" not in top:
        return Inventory(path, {ALL: everyone})
    raw = _read_groups(top["groups"], hives)
    groups: dict[str, Group] = {ALL: everyone}
    order = {alias: i for i, alias in enumerate(hives.aliases)}
    for name, (_, vars_, line) in raw.items():
        expanded = _expand(name, raw, [], path, everyone.hives)
        groups[name] = Group(name, tuple(sorted(expanded, key=order.__getitem__)), vars_, line)
    return Inventory(path, groups)


_Raw = dict[str, tuple[list[YNode], dict[str, str], int]]


def _read_groups(node: YNode, hives: HivesConfig) -> _Raw:
    raw: _Raw = {}
    for name, body in node.items("groups").items():
        if not _NAME.fullmatch(name):
            raise body.error(f"group name {name!r}: use letters, digits, '.', '_' and '-'")
        if name == ALL:
            raise body.error("'all' is every hive of hives.conf already; name the group otherwise")
        if name in hives.aliases:
            raise body.error(f"group {name!r} has the name of a hive in {hives.path}; rename it")
        vars_: dict[str, str] = {}
        if body.is_mapping():
            entries = body.items(f"group {name!r}", keys=("hives", *GROUP_VARS))
            if "hives" not in entries:
                raise body.error(f"group {name!r} needs `hives:` (its members)")
            members = entries["hives"].names(f"group {name!r}'s hives")
            for key in GROUP_VARS:
                if key in entries:
                    vars_[key] = _var(key, entries[key], name)
        else:
            members = body.names(f"group {name!r}")
        raw[name] = (members, vars_, body.line)
    for name, (members, _, _) in raw.items():
        for member in members:
            text = member.text("a member")
            if text not in raw and text not in hives.aliases and text != ALL:
                raise member.error(
                    f"group {name!r}: {text!r} is neither a hive of {hives.path} nor a group "
                    f"(hives: {', '.join(hives.aliases) or 'none'})"
                )
    return raw


def _var(key: str, node: YNode, group: str) -> str:
    value = node.text(f"group {group!r}'s {key}")
    if key == "engine" and value not in _ENGINES:
        raise node.error(f"group {group!r}: engine must be one of {', '.join(_ENGINES)}")
    if key == "device" and not _DEVICE.fullmatch(value):
        raise node.error(f"group {group!r}: device must be auto, cpu, cuda:N or metal:0")
    return value


def _expand(
    name: str, raw: _Raw, trail: list[str], path: Path, everyone: Sequence[str]
) -> set[str]:
    if name in trail:
        cycle = " -> ".join([*trail[trail.index(name) :], name])
        raise ConfigError(f"{path}:{raw[name][2]}: groups include each other: {cycle}")
    members, _, _ = raw[name]
    found: set[str] = set()
    for member in members:
        text = str(member.scalar())
        if text == ALL:
            found |= set(everyone)
        elif text in raw:
            found |= _expand(text, raw, [*trail, name], path, everyone)
        else:
            found.add(text)
    return found


def select_hives(
    config: HivesConfig, inventory: Inventory, aliases: Sequence[str], groups: Iterable[str]
) -> list[Hive]:
    """The hives named by alias or by group, each once, in hives.conf's order; every hive when
    nothing is named. An unknown alias or group is a ConfigError naming it."""
    groups = list(groups)
    if not aliases and not groups:
        return list(config.hives)
    wanted = {config.get(alias).alias for alias in aliases}
    for name in groups:
        wanted |= set(inventory.group(name).hives)
    return [hive for hive in config.hives if hive.alias in wanted]
