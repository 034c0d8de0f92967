"""Config and data dirs follow XDG and yield to RBEE_* variables and flags."""

from __future__ import annotations

from pathlib import Path

from rbee.config.settings import Paths


def test_defaults_follow_xdg() -> None:
    p = Paths.resolve(env={"HOME": "/home/u"})
    assert p.config_dir == Path("/home/u/.config/rbee")
    assert p.data_dir == Path("/home/u/.local/share/rbee")
    assert p.models_dir == Path("/home/u/.local/share/rbee/models")


def test_xdg_variables_then_rbee_variables_then_flags() -> None:
    env = {"HOME": "/h", "XDG_CONFIG_HOME": "/x/c", "XDG_DATA_HOME": "/x/d"}
    assert Paths.resolve(env=env) == Paths(Path("/x/c/rbee"), Path("/x/d/rbee"))
    env |= {"RBEE_CONFIG_DIR": "/r/c", "RBEE_DATA_DIR": "/r/d"}
    assert Paths.resolve(env=env) == Paths(Path("/r/c"), Path("/r/d"))
    assert Paths.resolve(config_dir="/f/c", data_dir="/f/d", env=env) == Paths(
        Path("/f/c"), Path("/f/d")
    )
