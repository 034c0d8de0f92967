"""Configuration parsed once at the edge into frozen dataclasses."""

from rbee.config.settings import Paths, Timeouts

__all__ = ["Paths", "Timeouts"]
