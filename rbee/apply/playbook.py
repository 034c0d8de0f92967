"""A playbook: the workers a fleet should run, read from YAML with every mistake at FILE:LINE.

    models:
      - model: smollm2-135m
        hives: [gpus, old-server]   # hive aliases of hives.conf and/or inventory groups
        replicas: 1                 # per hive (default 1)
        engine: auto                # else the group's default, else auto
        device: auto                # else the group's default, else auto
        ctx_size: 8192              # the workers' settings, as `rbee worker spawn` takes them:
        threads: 4                  #   ctx_size, threads (0: every core), max_queued and
        max_queued: 8               #   cpu_repack (auto, on, off); unsaid: rbee's defaults
        cpu_repack: auto
        idle_ttl: 900               # the model's policy on the queen (seconds; 0: never)
        autoload: true
    prune: false                    # true: stop workers on these hives of models not named here

Everything is checked against hives.conf and the inventory as the file is read: an unknown key,
hive or group is refused with its line, before any queen or hive is asked anything. The result
is one `Want` per hive and model (groups expanded, group defaults applied), which is all the
planner needs. `localhost` names the queen's own machine, as it does everywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rbee.api.workers import REPACK_SETTINGS
from rbee.config.hives import HivesConfig
from rbee.config.inventory import Inventory
from rbee.config.yamlfile import YNode, load_yaml
from rbee.errors import ConfigError, ModelError
from rbee.models.catalog import validate_model_id

__all__ = ["ENGINES", "LOCAL", "Playbook", "Policy", "Want", "load_playbook", "parse_playbook"]

LOCAL = "localhost"
"""The queen's own machine (rbee.queen.registry.LOCAL_HIVE): never installed or started."""

ENGINES = ("auto", "llamacpp", "mlx", "exllamav2")
_DEVICE = re.compile(r"auto|cpu|cuda:\d{1,2}|metal:0")
_SETTINGS = {"ctx_size": (64, 1 << 20), "threads": (0, 1024), "max_queued": (0, 4096)}
"""The workers' whole-number settings a playbook may state, with their bounds (as the queen's
`POST /v1/workers` takes them)."""
_ENTRY_KEYS = ("model", "hives", "replicas", "engine", "device", "embeddings", "idle_ttl",
               "autoload", *_SETTINGS, "cpu_repack")  # fmt: skip
MAX_REPLICAS = 64
"""More workers of one model on one machine than this is a typo, not a plan."""


@dataclass(frozen=True)
class Want:
    """`replicas` workers of `model` on `hive`, with these engine and device constraints."""

    hive: str
    model: str
    replicas: int = 1
    engine: str = "auto"
    device: str = "auto"
    embeddings: bool = False
    line: int = 0
    """The line of the entry that asks for it."""
    settings: tuple[tuple[str, int | str], ...] = ()
    """The worker settings the playbook states, by name (`ctx_size`, `threads`, `max_queued`,
    `cpu_repack`); those it leaves out are rbee's defaults and constrain nothing."""

    @property
    def key(self) -> tuple[str, str, bool]:
        """What identifies it: no two wants share a hive, a model and an embeddings flag."""
        return (self.hive, self.model, self.embeddings)


@dataclass(frozen=True)
class Policy:
    """A model's idle TTL and autoload as a playbook states them (None: not said)."""

    model: str
    idle_ttl: float | None = None
    autoload: bool | None = None
    line: int = 0


@dataclass(frozen=True)
class Playbook:
    """A parsed playbook."""

    path: Path
    wants: tuple[Want, ...]
    """In hives.conf's order of hives (localhost first), then the playbook's order of models."""
    policies: tuple[Policy, ...] = ()
    prune: bool = False
    model_lines: Mapping[str, int] | None = None
    """Each model named, with the line that first names it (for refusing an unknown one)."""

    @property
    def hives(self) -> tuple[str, ...]:
        """The hives the playbook places workers on, in order, each once."""
        return tuple(dict.fromkeys(w.hive for w in self.wants))

    def refuse(self, model: str, message: str) -> ConfigError:
        """A ConfigError about `model`, at the line that names it."""
        line = (self.model_lines or {}).get(model, 0)
        return ConfigError(f"{self.path}:{line}: {message}")


def load_playbook(path: Path, hives: HivesConfig, inventory: Inventory) -> Playbook:
    """Read and check the playbook in `path`; ConfigError `FILE:LINE: message` on a mistake."""
    doc = load_yaml(path)
    if doc is None:
        raise ConfigError(f"{path}:1: the playbook is empty; it needs `models:` (a list)")
    return parse_playbook(doc, hives, inventory)


def parse_playbook(doc: YNode, hives: HivesConfig, inventory: Inventory) -> Playbook:
    """A playbook from its YAML document (see the module's docstring for the shape)."""
    top = doc.items("the playbook", keys=("models", "prune"))
    if "models" not in top:
        raise doc.error("the playbook needs `models:` (a list of model placements)")
    prune = top["prune"].boolean("prune") if "prune" in top else False
    order = {alias: i for i, alias in enumerate((LOCAL, *hives.aliases))}
    wants: dict[tuple[str, str, bool], Want] = {}
    policies: dict[str, Policy] = {}
    lines: dict[str, int] = {}
    entries = list(top["models"].each("models"))
    if not entries:
        raise top["models"].error("models: is empty; name at least one model and its hives")
    for entry in entries:
        fields = entry.items("a models entry", keys=_ENTRY_KEYS)
        for required in ("model", "hives"):
            if required not in fields:
                raise entry.error(f"this models entry needs `{required}:`")
        model = _model(fields["model"])
        lines.setdefault(model, fields["model"].line)
        replicas = (
            fields["replicas"].integer("replicas", 0, MAX_REPLICAS) if "replicas" in fields else 1
        )
        engine = _engine(fields["engine"]) if "engine" in fields else None
        device = _device(fields["device"]) if "device" in fields else None
        embeddings = fields["embeddings"].boolean("embeddings") if "embeddings" in fields else False
        settings = _settings(fields)
        for alias in _hives(fields["hives"], hives, inventory):
            defaults = _group_defaults(inventory, alias, fields["hives"])
            want = Want(
                alias,
                model,
                replicas,
                engine or defaults.get("engine", "auto"),
                device or defaults.get("device", "auto"),
                embeddings,
                entry.line,
                settings,
            )
            if want.key in wants:
                raise entry.error(
                    f"{model} on {alias} is placed twice (first by the entry on line "
                    f"{wants[want.key].line}); give it one entry"
                )
            wants[want.key] = want
        _add_policy(policies, model, fields, entry)
    ordered = sorted(wants.values(), key=lambda w: order[w.hive])  # stable: models keep order
    return Playbook(doc.path, tuple(ordered), tuple(policies.values()), prune, lines)


def _model(node: YNode) -> str:
    text = node.text("model")
    try:
        return validate_model_id(text)
    except ModelError as err:
        raise node.error(str(err)) from None


def _engine(node: YNode) -> str:
    value = node.text("engine")
    if value not in ENGINES:
        raise node.error(f"engine must be one of {', '.join(ENGINES)}, got {value!r}")
    return value


def _settings(fields: Mapping[str, YNode]) -> tuple[tuple[str, int | str], ...]:
    """The worker settings an entry states, checked as the queen checks a spawn."""
    found: list[tuple[str, int | str]] = [
        (name, fields[name].integer(name, lo, hi))
        for name, (lo, hi) in _SETTINGS.items()
        if name in fields
    ]
    if "cpu_repack" in fields:
        node = fields["cpu_repack"]
        raw = None if node.is_mapping() or node.is_sequence() else node.scalar()
        # YAML 1.1 reads a bare on/off as true/false: take them as the words they were.
        value = ("on" if raw else "off") if isinstance(raw, bool) else node.text("cpu_repack")
        if value not in REPACK_SETTINGS:
            raise node.error(f"cpu_repack must be one of {', '.join(REPACK_SETTINGS)}, "
                             f"got {value!r}")  # fmt: skip
        found.append(("cpu_repack", value))
    return tuple(found)


def _device(node: YNode) -> str:
    value = node.text("device")
    if not _DEVICE.fullmatch(value):
        raise node.error(f"device must be auto, cpu, cuda:N or metal:0, got {value!r}")
    return value


def _hives(node: YNode, hives: HivesConfig, inventory: Inventory) -> list[str]:
    """The aliases a `hives:` value names (groups expanded), each once, in hives.conf's order."""
    found: list[str] = []
    for name_node in node.names("hives"):
        name = name_node.text("a hive or group")
        if name == LOCAL or name in hives.aliases:
            members: tuple[str, ...] = (name,)
        elif name in inventory.groups:
            members = inventory.groups[name].hives
            if not members:
                raise name_node.error(f"group {name!r} has no hives")
        else:
            groups = ", ".join(sorted(inventory.groups))
            raise name_node.error(
                f"{name!r} is neither a hive of {hives.path} nor a group of "
                f"{inventory.path or 'the inventory (none is read)'} (hives: "
                f"{', '.join(hives.aliases) or 'none'}; groups: {groups}; or localhost)"
            )
        found.extend(m for m in members if m not in found)
    return found


def _group_defaults(inventory: Inventory, alias: str, where: YNode) -> dict[str, str]:
    """The engine and device the inventory's groups set for `alias`; their conflict, here."""
    if alias == LOCAL:
        return {}
    try:
        return inventory.vars_for(alias)
    except ConfigError as err:
        raise where.error(f"cannot place on {alias}: {err}") from None


def _add_policy(
    policies: dict[str, Policy], model: str, fields: dict[str, YNode], entry: YNode
) -> None:
    """A model's idle TTL and autoload; two entries of one model must not disagree."""
    idle = float(fields["idle_ttl"].integer("idle_ttl", 0)) if "idle_ttl" in fields else None
    autoload = fields["autoload"].boolean("autoload") if "autoload" in fields else None
    if idle is None and autoload is None:
        return
    old = policies.get(model)
    if old is not None:
        for name, new, was in (("idle_ttl", idle, old.idle_ttl), ("autoload", autoload,
                                                                   old.autoload)):  # fmt: skip
            if new is not None and was is not None and new != was:
                raise entry.error(f"{model}: {name} differs from the entry on line {old.line}; "
                                  "a model has one policy on the queen")  # fmt: skip
        idle = idle if idle is not None else old.idle_ttl
        autoload = autoload if autoload is not None else old.autoload
    policies[model] = Policy(model, idle, autoload, old.line if old else entry.line)
