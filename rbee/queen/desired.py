"""The queen's desired state: the hives it runs, and the workers it wants on each, this machine's
included. The one source of truth for what should run.

Every operator action edits it (a spawn adds a worker, a stop removes one, `rbee hive start`
adds a hive), and the reconciler (rbee.queen.reconcile) makes the hives match it: it starts what
is missing, after a crash of a whole hive or a restart of the queen, and stops what is not
wanted, such as a worker whose spawn was cancelled. Each worker has an id on its hive, chosen
when it is first asked for and kept for good, so a stop names exactly the worker it means, and
the spec is kept as placed (engine, device and repacking decided), so it comes back as it was.
A worker unloaded for being idle (or to make room) stays wanted but *parked*: the reconciler
neither starts it nor keeps it running, and the next request for its model brings it back where it
was (rbee.queen.autoload).

Written atomically whenever it changes, read when the queen starts:

    {"version": 2, "hives": {"localhost": {"workers": [{"id": "smollm2-135m-1", "spec": {...}}]},
                             "gpu-box": {"workers": []}}}

A parked worker's entry has `"parked": true` (files written before parking existed are read as
not parked). A version-1 file (`{"hives": {"alias": [spec, ...]}}`) is read too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rbee.api.workers import WorkerSpec, parse_worker_spec, validate_worker_id
from rbee.errors import ApiError
from rbee.fsutil import atomic_write_text

__all__ = ["DesiredState", "DesiredWorker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DesiredWorker:
    """One worker the queen wants: where, under which id, running what."""

    hive: str
    id: str
    spec: WorkerSpec
    parked: bool = False
    """Unloaded (idle, or to make room) until a request for its model brings it back."""

    @property
    def key(self) -> tuple[str, str]:
        """(hive, id): unique across the fleet."""
        return (self.hive, self.id)


class DesiredState:
    """Hives and workers wanted; every change is saved at once (when there is a path)."""

    def __init__(self, path: Path | None, local: str) -> None:
        self._path = path
        self._local = local
        self._hives: dict[str, dict[str, DesiredWorker]] = {local: {}}

    @classmethod
    def load(cls, path: Path | None, local: str) -> DesiredState:
        """The state saved at `path`; empty if there is none (an unreadable one is set aside)."""
        state = cls(path, local)
        if path is None:
            return state
        try:
            raw = json.loads(path.read_text())
            state._hives.update(_parse(raw))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ApiError) as err:
            aside = path.with_suffix(".unreadable")
            log.warning("desired state %s is unreadable (%s); kept as %s, starting empty",
                        path, err, aside)  # fmt: skip
            with contextlib.suppress(OSError):
                path.replace(aside)
        state._hives.setdefault(local, {})
        return state

    @classmethod
    def read(cls, path: Path, local: str) -> DesiredState:
        """The state saved at `path`, for a reader that must change nothing (`rbee sweep`): no
        file is set aside and nothing is saved; OSError or ValueError if it cannot be read."""
        state = cls(None, local)
        try:
            state._hives.update(_parse(json.loads(path.read_text())))
        except (KeyError, TypeError, AttributeError, ApiError) as err:
            raise ValueError(f"{path}: not a desired state ({err})") from err
        state._hives.setdefault(local, {})
        return state

    def hives(self) -> list[str]:
        """Every hive wanted, this machine's first."""
        return list(self._hives)

    def remote_hives(self) -> list[str]:
        """The hives wanted on other machines."""
        return [h for h in self._hives if h != self._local]

    def add_hive(self, hive: str) -> None:
        """Want `hive` running (with the workers it has, none for a new one)."""
        if hive not in self._hives:
            self._hives[hive] = {}
            self._save()

    def remove_hive(self, hive: str) -> None:
        """Want `hive` stopped, and so every worker on it."""
        if hive != self._local and self._hives.pop(hive, None) is not None:
            self._save()

    def workers(self, hive: str | None = None) -> list[DesiredWorker]:
        """The workers wanted on `hive` (on every hive when None), in the order asked for."""
        if hive is not None:
            return list(self._hives.get(hive, {}).values())
        return [w for workers in self._hives.values() for w in workers.values()]

    def get(self, hive: str, worker_id: str) -> DesiredWorker | None:
        """One wanted worker."""
        return self._hives.get(hive, {}).get(worker_id)

    def add(self, worker: DesiredWorker) -> None:
        """Want `worker` (on a hive that is wanted)."""
        self._hives.setdefault(worker.hive, {})[worker.id] = worker
        self._save()

    def remove(self, hive: str, worker_id: str) -> DesiredWorker | None:
        """Stop wanting a worker; the one removed, or None if it was not wanted."""
        removed = self._hives.get(hive, {}).pop(worker_id, None)
        if removed is not None:
            self._save()
        return removed

    def set_parked(self, hive: str, worker_id: str, parked: bool) -> DesiredWorker | None:
        """Park a wanted worker or bring it back; the worker as it is now, None if not wanted."""
        current = self.get(hive, worker_id)
        if current is None or current.parked == parked:
            return current
        changed = dataclasses.replace(current, parked=parked)
        self._hives[hive][worker_id] = changed
        self._save()
        return changed

    def new_id(self, hive: str, model: str, taken: Collection[str] = ()) -> str:
        """A fresh worker id on `hive`: MODEL-N, N the smallest not wanted nor in `taken`."""
        used = {*self._hives.get(hive, {}), *taken}
        n = 1
        while f"{model}-{n}" in used:
            n += 1
        return f"{model}-{n}"

    def models(self, *, embeddings: bool | None = None) -> dict[str, int]:
        """Each model wanted somewhere, with the smallest context it is wanted with."""
        found: dict[str, int] = {}
        for w in self.workers():
            if embeddings in (None, w.spec.embeddings):
                ctx = w.spec.ctx_size
                found[w.spec.model] = min(found.get(w.spec.model, ctx), ctx)
        return found

    def _save(self) -> None:
        if self._path is None:
            return
        hives = {
            hive: {"workers": [_entry(w) for w in ws]}
            for hive, ws in ((h, list(w.values())) for h, w in self._hives.items())
        }
        body = {"version": 2, "hives": hives}
        atomic_write_text(self._path, json.dumps(body, indent=2, sort_keys=True) + "\n")


def _entry(worker: DesiredWorker) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": worker.id, "spec": dataclasses.asdict(worker.spec)}
    if worker.parked:
        entry["parked"] = True
    return entry


def _parse(raw: Any) -> dict[str, dict[str, DesiredWorker]]:
    hives = raw["hives"]
    if not isinstance(hives, dict):
        raise TypeError("hives must be an object")
    found: dict[str, dict[str, DesiredWorker]] = {}
    for hive, entry in hives.items():
        workers: dict[str, DesiredWorker] = {}
        if isinstance(entry, list):  # version 1: specs without ids
            for spec_raw in entry:
                spec = parse_worker_spec(spec_raw)
                n = 1
                while f"{spec.model}-{n}" in workers:
                    n += 1
                workers[f"{spec.model}-{n}"] = DesiredWorker(hive, f"{spec.model}-{n}", spec)
        else:
            for item in entry["workers"]:
                worker_id = validate_worker_id(item["id"])
                parked = item.get("parked", False)
                if not isinstance(parked, bool):
                    raise TypeError(f"worker {worker_id}: parked must be true or false")
                spec = parse_worker_spec(item["spec"])
                workers[worker_id] = DesiredWorker(hive, worker_id, spec, parked)
        found[str(hive)] = workers
    return found
