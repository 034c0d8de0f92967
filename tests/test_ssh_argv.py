"""Commands crossing SSH are quoted word by word: metacharacters stay inert."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from rbee.ssh.argv import remote_command


@pytest.mark.parametrize(
    ("argv", "kwargs", "expected"),
    [
        (["rbee", "hive", "run"], {}, "exec rbee hive run"),
        (["echo", "a b"], {}, "exec echo 'a b'"),
        (["echo", "$(id)"], {"exec_": False}, "echo '$(id)'"),
        (["x"], {"cwd": "/tmp/my dir"}, "cd '/tmp/my dir' && exec x"),
        (["x"], {"env": {"A": "1 2"}}, "exec env 'A=1 2' x"),
    ],
)
def test_remote_command(argv: list[str], kwargs: dict[str, object], expected: str) -> None:
    assert remote_command(argv, **kwargs) == expected


@pytest.mark.parametrize("word", ["; rm -rf /", "$(touch pwned)", "`id`", "a'b", "x\ny", "*", "~"])
def test_metacharacters_reach_the_command_unchanged(word: str) -> None:
    line = remote_command(["printf", "%s", word], exec_=False)
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True).stdout
    assert out == word
    assert shlex.split(line) == ["printf", "%s", word]


def test_bad_env_names_and_empty_commands_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid environment"):
        remote_command(["x"], env={"A;B": "1"})
    with pytest.raises(ValueError, match="empty"):
        remote_command([])
