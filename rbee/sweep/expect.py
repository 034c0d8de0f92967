"""What should run, as the queen's own files say: its desired state (hives and workers) and
whether it should serve at all (rbee.queen.serving). Read only: a sweep changes neither."""

from __future__ import annotations

from dataclasses import dataclass

from rbee.config.settings import Paths
from rbee.queen.desired import DesiredState, DesiredWorker
from rbee.queen.registry import LOCAL_HIVE
from rbee.queen.serving import Serving, read_serving

__all__ = ["Expected", "read_expected"]


@dataclass(frozen=True)
class Expected:
    """The fleet the queen wants."""

    hives: frozenset[str]
    """Remote hives wanted."""
    workers: tuple[DesiredWorker, ...]
    """Workers wanted and not parked (a parked worker is meant to be down)."""
    serving: Serving | None
    error: str | None = None
    """Why the desired state could not be read (then nothing is known to be wanted)."""

    def workers_on(self, alias: str) -> list[DesiredWorker]:
        """The workers wanted running on one hive."""
        return [w for w in self.workers if w.hive == alias]


def read_expected(paths: Paths) -> Expected:
    """The desired state in the data dir (none when the queen never ran here)."""
    serving = read_serving(paths)
    path = paths.data_dir / "desired.json"
    try:
        state = DesiredState.read(path, LOCAL_HIVE)
    except FileNotFoundError:
        return Expected(frozenset(), (), serving)
    except (OSError, ValueError) as err:
        return Expected(frozenset(), (), serving, error=f"{path}: {err}")
    return Expected(
        hives=frozenset(state.remote_hives()),
        workers=tuple(w for w in state.workers() if not w.parked),
        serving=serving,
    )
