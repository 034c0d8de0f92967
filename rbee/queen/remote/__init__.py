"""Hives on other machines, as the queen runs them over SSH.

- `session`: the hive's life over one SSH connection: its process and PTY, the heartbeat lease,
  the lines it reports, reconnecting with backoff, faults kept to the hive (`RemoteHive`);
- `workers`: its workers as the queen sees them, their port forwards, and the admin calls
  (place, upload, start, stop, restart) over the hive's HTTP API (`RemoteWorkers`).

What should run on a hive is the queen's desired state (rbee.queen.desired), which the
reconciler (rbee.queen.reconcile) applies.
"""

from rbee.queen.remote.session import HiveState, RemoteHive
from rbee.queen.remote.workers import OnChange, RemoteWorkers

__all__ = ["HiveState", "OnChange", "RemoteHive", "RemoteWorkers"]
