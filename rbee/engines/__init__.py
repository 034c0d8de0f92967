"""Engines: one model in one inference library, behind one protocol (imports are lazy)."""

from rbee.engines.base import Engine, Finish, Prepared, StopMatcher

__all__ = ["Engine", "Finish", "Prepared", "StopMatcher"]
