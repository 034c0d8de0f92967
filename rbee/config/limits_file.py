"""Limits from their three sources: `CONFIG_DIR/rbee.toml`, `RBEE_*` variables and flags.

Each source wins over the one before; what none of them sets keeps the default of
rbee.config.limits. The file:

    [limits]
    max_queued = 8            # requests a worker holds waiting (503 beyond)
    max_queued_tokens = 0     # prompt tokens a worker holds waiting (0: four contexts)
    request_timeout = 600     # seconds a request may take in all
    load_timeout = 300        # seconds a request waits for its model to load on demand
    keepalive = 2             # seconds between SSE comments to a stream waiting for its model
    autoload = true           # a request for a stored model without a worker starts one
    idle_ttl = 900            # seconds idle before a worker is unloaded (0: never)

    [models."smollm2-135m"]
    autoload = true           # explicit: may also load on a remote hive that stores it
    idle_ttl = 0              # never unload this one

An unknown key, a value of the wrong type or out of range is a ConfigError naming the file, the
line and the key; a variable's error names the variable, a flag's the flag.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rbee.config.limits import Limits, ModelPolicy
from rbee.errors import ConfigError

__all__ = ["ENV_VARS", "FILE_NAME", "check_limits", "limits_path", "load_limits", "parse_limits"]

FILE_NAME = "rbee.toml"

ENV_VARS = {
    "max_queued": "RBEE_MAX_QUEUED",
    "max_queued_tokens": "RBEE_MAX_QUEUED_TOKENS",
    "request_timeout": "RBEE_REQUEST_TIMEOUT",
    "load_timeout": "RBEE_LOAD_TIMEOUT",
    "keepalive": "RBEE_KEEPALIVE",
    "autoload": "RBEE_AUTOLOAD",
    "idle_ttl": "RBEE_IDLE_TTL",
}
"""The variable of each setting of the `[limits]` table."""

_COUNTS = ("max_queued", "max_queued_tokens")
_TIMEOUTS = ("request_timeout", "load_timeout", "keepalive")
_MODEL_KEYS = ("autoload", "idle_ttl")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def limits_path(config_dir: Path) -> Path:
    """Where the limits file lives."""
    return config_dir / FILE_NAME


def load_limits(
    config_dir: Path, environ: Mapping[str, str], flags: Mapping[str, Any] | None = None
) -> Limits:
    """The limits from `config_dir`/rbee.toml (if there is one), then `environ`, then `flags`
    (setting name → value; None means not given)."""
    path = limits_path(config_dir)
    try:
        text: str | None = path.read_text()
    except FileNotFoundError:
        text = None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror})") from err
    return parse_limits(text, path, environ, flags or {})


def parse_limits(
    text: str | None, path: Path, environ: Mapping[str, str], flags: Mapping[str, Any]
) -> Limits:
    """`load_limits` on a file's text (None: no file); pure."""
    values: dict[str, Any] = {}
    own: dict[str, dict[str, Any]] = {}
    if text is not None:
        values, own = _read_file(text, path)
    for key, var in ENV_VARS.items():
        raw = environ.get(var)
        if raw is not None and raw.strip() != "":
            values[key] = _check(key, _from_env(key, raw, var), var)
    for key, value in flags.items():
        if value is None:
            continue
        if key not in ENV_VARS:
            raise ConfigError(f"unknown limit {key!r}")
        values[key] = _check(key, value, "--" + key.replace("_", "-"))
    base = Limits(**values)
    models = {
        model: ModelPolicy(
            autoload=entry.get("autoload", base.autoload),
            idle_ttl=entry.get("idle_ttl", base.idle_ttl),
            remote=entry.get("autoload") is True,
        )
        for model, entry in own.items()
    }
    return dataclasses.replace(base, models=models)


def check_limits(limits: Limits) -> Limits:
    """`limits` if each value is in its range; ConfigError naming the first that is not."""
    for key in ENV_VARS:
        _check(key, getattr(limits, key), key)
    return limits


def _read_file(text: str, path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from err
    lines = text.splitlines()
    for table in raw:
        if table not in ("limits", "models"):
            where = _line_of(lines, None, table)
            raise ConfigError(f"{path}:{where}: unknown table [{table}] (known: limits, models)")
    values: dict[str, Any] = {}
    limits = raw.get("limits", {})
    if not isinstance(limits, dict):
        raise ConfigError(f"{path}:{_line_of(lines, None, 'limits')}: limits must be a table")
    for key, value in limits.items():
        where = f"{path}:{_line_of(lines, 'limits', key)}"
        if key not in ENV_VARS:
            raise ConfigError(f"{where}: unknown key limits.{key} (known: {', '.join(ENV_VARS)})")
        values[key] = _check(key, value, f"{where}: limits.{key}")
    own: dict[str, dict[str, Any]] = {}
    models = raw.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{path}:{_line_of(lines, None, 'models')}: models must be a table")
    for model, entry in models.items():
        table = f'models."{model}"'
        if not isinstance(entry, dict):
            where = _line_of(lines, None, model)
            raise ConfigError(f'{path}:{where}: {table} must be a table, like [models."ID"]')
        checked: dict[str, Any] = {}
        for key, value in entry.items():
            where = f"{path}:{_line_of(lines, model, key)}"
            if key not in _MODEL_KEYS:
                raise ConfigError(
                    f"{where}: unknown key {table}.{key} (known: {', '.join(_MODEL_KEYS)})"
                )
            checked[key] = _check(key, value, f"{where}: {table}.{key}")
        own[str(model)] = checked
    return values, own


def _line_of(lines: list[str], table: str | None, key: str) -> str:
    """The line number where `key` is set (in the table whose header names `table`); "?" when
    it cannot be found (tomllib keeps no positions of keys)."""
    inside = table is None
    pattern = re.compile(rf'^\s*(?:"{re.escape(key)}"|{re.escape(key)})\s*[=.]')
    header = re.compile(r"^\s*\[+\s*(.*?)\s*\]+")
    for number, line in enumerate(lines, 1):
        match = header.match(line)
        if match:
            name = match.group(1)
            if table is None and key in name.replace('"', "").split("."):
                return str(number)
            inside = table is None or table in name.replace('"', "").split(".")
            continue
        if inside and pattern.match(line):
            return str(number)
    return "?"


def _from_env(key: str, raw: str, var: str) -> Any:
    text = raw.strip()
    if key == "autoload":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{var} must be 0, 1, true or false, got {raw!r}")
    try:
        return int(text) if key in _COUNTS else float(text)
    except ValueError:
        kind = "a whole number" if key in _COUNTS else "a number of seconds"
        raise ConfigError(f"{var} must be {kind}, got {raw!r}") from None


def _check(key: str, value: Any, where: str) -> Any:
    """`value` for the setting `key` if it has the right type and range; ConfigError naming
    `where` (the file and line, the variable or the flag) if not."""
    if key == "autoload":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "a whole number" if key in _COUNTS else "a number of seconds"
        raise ConfigError(f"{where} must be {kind}, got {value!r}")
    if key in _COUNTS:
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where} must be a whole number, 0 or more, got {value!r}")
        return value
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number of seconds, got {value!r}")
    if key in _TIMEOUTS and value <= 0:
        raise ConfigError(f"{where} must be more than 0 seconds, got {value!r}")
    if value < 0:
        raise ConfigError(f"{where} must be 0 seconds (never) or more, got {value!r}")
    return float(value)
