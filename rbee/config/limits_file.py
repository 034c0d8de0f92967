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
    cors_origins = []         # web origins allowed to call the queen from a browser ("*": any)

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
    "cors_origins": "RBEE_CORS_ORIGINS",
}
"""The variable of each setting of the `[limits]` table."""

_FLAG_NAMES = {"cors_origins": "--cors-origin"}
"""Flags not named after their setting (the others are `--max-queued` for `max_queued`)."""

_COUNTS = ("max_queued", "max_queued_tokens")
_TIMEOUTS = ("request_timeout", "load_timeout", "keepalive")
_MODEL_KEYS = ("autoload", "idle_ttl")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_ORIGIN = re.compile(
    rf"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|{_LABEL}(?:\.{_LABEL})*)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
"""`scheme://host[:port]` as browsers send it in `Origin` (lower case; no user, path or query)."""
_DEFAULT_PORTS = {"http": "80", "https": "443"}
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
        values[key] = _check(key, value, _FLAG_NAMES.get(key, "--" + key.replace("_", "-")))
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
    if key == "cors_origins":
        return [item.strip() for item in text.split(",") if item.strip()]
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
    if key == "cors_origins":
        return _check_origins(value, where)
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


def _check_origins(value: Any, where: str) -> tuple[str, ...]:
    """The origins of `value` (a list of strings), lower case, without a default port, each
    once; `("*",)` if one of them is `*`."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f'{where} must be a list of origins, like ["https://app.example.com"], got {value!r}'
        )
    origins: list[str] = []
    for text in value:
        origin = _origin(text, where)
        if origin == "*":
            return ("*",)
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _origin(text: str, where: str) -> str:
    """One origin as a browser sends it in its `Origin` header; ConfigError naming `where`."""
    lowered = text.strip().lower()
    if lowered == "*":
        return "*"
    match = _ORIGIN.fullmatch(lowered)
    if match is None:
        rest = _ORIGIN.match(lowered)
        why = (
            f"an origin has no path, drop {lowered[rest.end() :]!r}"
            if rest is not None and lowered[rest.end()] in "/?#"
            else "an origin is scheme://host[:port], like https://app.example.com or "
            "http://localhost:3000, or * for any"
        )
        raise ConfigError(f"{where}: {text!r} is not an origin ({why})")
    scheme, host, port = match.group("scheme", "host", "port")
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {text!r} is not an origin (port must be 1-65535)")
    return f"{scheme}://{host}:{int(port)}"
