"""How much load the queen and its workers take on, how long models stay loaded, and which web
pages may call the queen.

Defaults here; `rbee.config.limits_file` reads them from `CONFIG_DIR/rbee.toml`, the environment
(`RBEE_*`) and the command line, each winning over the one before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DEFAULT_LIMITS", "Limits", "ModelPolicy"]


@dataclass(frozen=True)
class ModelPolicy:
    """What the queen does about one model when nobody asked for a worker by hand."""

    autoload: bool = True
    """A request for this model, stored but without a worker, starts one."""
    idle_ttl: float = 900.0
    """Seconds without a request after which its workers are unloaded (0: never)."""
    remote: bool = False
    """With `autoload`: a request may also load it on a started remote hive whose store has it
    (set by `autoload = true` in the model's own table of rbee.toml)."""


@dataclass(frozen=True)
class Limits:
    """Admission, deadlines and model lifetimes."""

    max_queued: int = 8
    """Requests a worker holds waiting behind the one it is generating; more are refused (503)."""
    max_queued_tokens: int = 0
    """Prompt tokens a worker holds waiting (0: four times its context length)."""
    request_timeout: float = 600.0
    """Seconds a request may take in all, queueing and generation (`X-Rbee-Deadline` lowers it)."""
    load_timeout: float = 300.0
    """Seconds a request waits for its model to be loaded on demand."""
    keepalive: float = 2.0
    """Seconds a stream waits for its worker to come before it is answered and kept alive with
    SSE comments, and seconds between those comments."""
    autoload: bool = True
    """Default of `ModelPolicy.autoload` on the local hive (remote hives: off unless a model's
    policy turns it on)."""
    idle_ttl: float = 900.0
    """Default of `ModelPolicy.idle_ttl`."""
    models: Mapping[str, ModelPolicy] = field(default_factory=dict)
    """Per-model policies (`[models."smollm2-135m"]` in rbee.toml)."""
    cors_origins: tuple[str, ...] = ()
    """Origins (`scheme://host[:port]`, lower case) whose pages a browser lets call the queen
    (CORS); `("*",)`: any page; empty: none (no CORS headers at all)."""

    def remote_autoload(self) -> bool:
        """True if some model may be loaded on demand on a remote hive."""
        return any(p.autoload and p.remote for p in self.models.values())

    def policy(self, model: str) -> ModelPolicy:
        """The policy for `model`: its own, else the defaults."""
        own = self.models.get(model)
        if own is not None:
            return own
        return ModelPolicy(autoload=self.autoload, idle_ttl=self.idle_ttl)


DEFAULT_LIMITS = Limits()
