"""Where rbee keeps its files, and how long it waits for things.

Directories follow XDG: config in `~/.config/rbee`, data in `~/.local/share/rbee`, each overridable
by `RBEE_CONFIG_DIR` / `RBEE_DATA_DIR` (and the CLI's `--config-dir` / `--data-dir`), so tests never
touch the real home.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_QUEEN_PORT", "Paths", "Timeouts"]

DEFAULT_QUEEN_PORT = 8500


@dataclass(frozen=True)
class Paths:
    """The directories rbee reads and writes."""

    config_dir: Path
    data_dir: Path

    @classmethod
    def resolve(
        cls,
        *,
        config_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Paths:
        """Flags win over `RBEE_*` variables, which win over XDG variables and the defaults."""
        env = os.environ if env is None else env
        home = Path(env.get("HOME") or Path.home())

        def pick(flag: str | Path | None, rbee_var: str, xdg_var: str, xdg_default: Path) -> Path:
            if flag is not None:
                return Path(flag).expanduser().absolute()
            if env.get(rbee_var):
                return Path(env[rbee_var]).expanduser().absolute()
            base = Path(env[xdg_var]) if env.get(xdg_var) else xdg_default
            return (base / "rbee").absolute()

        return cls(
            config_dir=pick(config_dir, "RBEE_CONFIG_DIR", "XDG_CONFIG_HOME", home / ".config"),
            data_dir=pick(data_dir, "RBEE_DATA_DIR", "XDG_DATA_HOME", home / ".local" / "share"),
        )

    @property
    def models_dir(self) -> Path:
        """The model store."""
        return self.data_dir / "models"

    @property
    def run_dir(self) -> Path:
        """Pid and state files of running daemons."""
        return self.data_dir / "run"

    @property
    def logs_dir(self) -> Path:
        """Daemon and worker logs."""
        return self.data_dir / "logs"


@dataclass(frozen=True)
class Timeouts:
    """Every deadline rbee waits on, in seconds, kept apart by what they bound."""

    connect: float = 5.0
    """Opening a TCP connection to a queen, hive or worker."""
    first_byte: float = 120.0
    """How long a request waits for a worker of its model that is starting or restarting (a
    model loaded on demand waits for its load deadline instead). Queueing and generation are
    bounded by the request's deadline (rbee.config.limits.Limits.request_timeout)."""
    worker_ready: float = 120.0
    """From spawning a worker to its model being loaded and its port open."""
    stop_grace: float = 5.0
    """From SIGTERM to SIGKILL when stopping a process."""
    daemon_start: float = 60.0
    """From `rbee queen start` to the queen answering /health."""
