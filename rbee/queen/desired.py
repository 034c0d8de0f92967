"""The queen's desired state: which remote hives run, and which workers each was asked for.

Written (atomically) whenever it changes, and read when the queen starts, so a queen that is
restarted, or that crashed, brings its fleet back by itself: the hives are started again and
their workers restored. Nothing is installed again; a hive that is already installed just starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from rbee.api.workers import WorkerSpec, parse_worker_spec
from rbee.errors import ApiError
from rbee.fsutil import atomic_write_text

__all__ = ["load_desired", "save_desired"]

log = logging.getLogger(__name__)


def load_desired(path: Path) -> dict[str, list[WorkerSpec]]:
    """Hive alias → the worker specs asked for; empty if there is no (readable) state."""
    try:
        raw = json.loads(path.read_text())
        hives = raw["hives"]
        return {
            str(alias): [parse_worker_spec(spec) for spec in specs]
            for alias, specs in hives.items()
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ApiError) as err:
        log.warning("ignoring unreadable desired state %s: %s", path, err)
        return {}


def save_desired(path: Path, hives: dict[str, list[WorkerSpec]]) -> None:
    """Write the desired state atomically."""
    body = {"hives": {a: [dataclasses.asdict(s) for s in specs] for a, specs in hives.items()}}
    atomic_write_text(path, json.dumps(body, indent=2, sort_keys=True) + "\n")
