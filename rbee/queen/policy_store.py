"""Where the policies set through the queen's API (`PUT /v1/policies/{model}`) are kept.

`DATA_DIR/policies.json`, beside the desired state: one object per model with its autoload, idle
TTL and remote flag. The queen reads it when it starts and lays it over rbee.toml's model tables
(rbee.queen.service), so a policy `rbee apply` set survives a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from pathlib import Path

from rbee.config.limits import ModelPolicy
from rbee.errors import ModelError
from rbee.fsutil import atomic_write_text
from rbee.models.catalog import validate_model_id

__all__ = ["load_policies", "policies_path", "save_policy"]

log = logging.getLogger(__name__)


def policies_path(data_dir: Path) -> Path:
    """Where the policies set through the API are kept."""
    return data_dir / "policies.json"


def load_policies(path: Path) -> dict[str, ModelPolicy]:
    """The policies kept at `path` (none if there is no file; an unreadable one is set aside and
    said in the log, as the desired state's is: the queen starts either way)."""
    try:
        raw = json.loads(path.read_text())
        return {validate_model_id(model): _policy(entry) for model, entry in raw.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ModelError) as err:
        aside = path.with_suffix(".unreadable")
        log.warning("policies %s are unreadable (%s); kept as %s, using rbee.toml's", path, err,
                    aside)  # fmt: skip
        with contextlib.suppress(OSError):
            path.replace(aside)
        return {}


def _policy(entry: dict[str, object]) -> ModelPolicy:
    ttl, autoload, remote = entry["idle_ttl"], entry["autoload"], entry["remote"]
    if not isinstance(ttl, int | float) or not 0 <= ttl < math.inf:
        raise ValueError(f"idle_ttl {ttl!r}")
    if not isinstance(autoload, bool) or not isinstance(remote, bool):
        raise TypeError("autoload and remote must be true or false")
    return ModelPolicy(autoload=autoload, idle_ttl=float(ttl), remote=remote)


def save_policy(path: Path, model: str, policy: ModelPolicy) -> None:
    """Keep `policy` for `model` with the others kept at `path` (atomically: all or nothing)."""
    kept = {**load_policies(path), model: policy}
    body = {m: dataclasses.asdict(p) for m, p in sorted(kept.items())}
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")
