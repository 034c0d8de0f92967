"""Limits from rbee.toml, RBEE_* variables and flags: precedence, per-model policies, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rbee.cli.main import build_parser
from rbee.config.limits import DEFAULT_LIMITS, Limits, ModelPolicy
from rbee.config.limits_file import load_limits, parse_limits
from rbee.errors import ConfigError
from rbee.queen.daemon import limit_flags

PATH = Path("/etc/rbee/rbee.toml")

FILE = """\
[limits]
max_queued = 4
load_timeout = 30
idle_ttl = 60

[models."smollm2-135m"]
idle_ttl = 0

[models."big"]
autoload = true
"""


def limits(text: str | None, env: dict[str, str] | None = None, **flags: Any) -> Limits:
    return parse_limits(text, PATH, env or {}, flags)


def test_nothing_set_is_the_defaults() -> None:
    assert limits(None) == DEFAULT_LIMITS
    assert limits("") == DEFAULT_LIMITS


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({}, {}, {"max_queued": 4, "load_timeout": 30.0, "idle_ttl": 60.0}),
        ({"RBEE_MAX_QUEUED": "2"}, {}, {"max_queued": 2, "load_timeout": 30.0}),
        ({"RBEE_MAX_QUEUED": "2"}, {"max_queued": 1}, {"max_queued": 1}),
        ({"RBEE_MAX_QUEUED": "2"}, {"max_queued": None}, {"max_queued": 2}),
        ({"RBEE_AUTOLOAD": "false"}, {}, {"autoload": False}),
        ({"RBEE_AUTOLOAD": "0"}, {"autoload": True}, {"autoload": True}),
        ({"RBEE_IDLE_TTL": "5", "RBEE_REQUEST_TIMEOUT": "9.5"}, {},
         {"idle_ttl": 5.0, "request_timeout": 9.5}),
        ({"RBEE_LOAD_TIMEOUT": " "}, {}, {"load_timeout": 30.0}),  # empty: not set
        ({}, {"max_queued_tokens": 1000, "load_timeout": 2}, {"max_queued_tokens": 1000,
                                                             "load_timeout": 2.0}),
    ],
)  # fmt: skip
def test_flags_win_over_variables_which_win_over_the_file(
    env: dict[str, str], flags: dict[str, Any], expected: dict[str, Any]
) -> None:
    got = limits(FILE, env, **flags)
    for key, value in expected.items():
        assert getattr(got, key) == value, key


def test_model_tables_override_the_defaults_key_by_key() -> None:
    got = limits(FILE, {"RBEE_IDLE_TTL": "7"}, autoload=False)
    assert got.policy("smollm2-135m") == ModelPolicy(autoload=False, idle_ttl=0.0)
    # An explicit autoload = true wins over --no-autoload and allows remote hives.
    assert got.policy("big") == ModelPolicy(autoload=True, idle_ttl=7.0, remote=True)
    assert got.policy("other") == ModelPolicy(autoload=False, idle_ttl=7.0)
    assert got.remote_autoload()  # "big" may load on a remote hive: they keep a standby


def test_remote_hives_keep_a_standby_only_for_a_model_that_may_load_there() -> None:
    assert not limits("", {}).remote_autoload()
    assert not limits('[models."a"]\nidle_ttl = 5\n', {}).remote_autoload()
    assert limits('[models."a"]\nautoload = true\n', {}).remote_autoload()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[limits]\nmax_queued = 1\nmax_queud = 2\n", ["rbee.toml:3", "limits.max_queud", "known"]),
        ("[limits]\nload_timeout = 0\n", ["rbee.toml:2", "limits.load_timeout", "more than 0"]),
        ("[limits]\nidle_ttl = -1\n", ["rbee.toml:2", "limits.idle_ttl", "0 seconds"]),
        ('[limits]\nautoload = "yes"\n', ["rbee.toml:2", "limits.autoload", "true or false"]),
        ("[limits]\nmax_queued = 1.5\n", ["rbee.toml:2", "limits.max_queued", "whole number"]),
        ("[limits]\n\nmax_queued = true\n", ["rbee.toml:3", "max_queued", "whole number"]),
        ('[models."a"]\nidle_ttl = 1\nfoo = 2\n', ["rbee.toml:3", 'models."a".foo']),
        ('[models."a"]\nautoload = 1\n', ["rbee.toml:2", 'models."a".autoload']),
        ("[limit]\nmax_queued = 1\n", ["rbee.toml:1", "unknown table [limit]"]),
        ("[limits\n", ["rbee.toml", "line 1"]),
        ("[models]\na = 1\n", ["rbee.toml:2", 'models."a" must be a table']),
    ],
)
def test_file_errors_name_the_file_the_line_and_the_key(text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        limits(text)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RBEE_MAX_QUEUED": "many"}, ["RBEE_MAX_QUEUED", "whole number", "'many'"]),
        ({"RBEE_MAX_QUEUED": "-1"}, ["RBEE_MAX_QUEUED", "0 or more"]),
        ({"RBEE_AUTOLOAD": "maybe"}, ["RBEE_AUTOLOAD", "0, 1, true or false"]),
        ({"RBEE_REQUEST_TIMEOUT": "0"}, ["RBEE_REQUEST_TIMEOUT", "more than 0"]),
        ({"RBEE_IDLE_TTL": "inf"}, ["RBEE_IDLE_TTL", "finite"]),
    ],
)
def test_variable_errors_name_the_variable(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        limits(None, env)
    for word in words:
        assert word in str(caught.value)


def test_load_limits_reads_config_dir(tmp_path: Path) -> None:
    assert load_limits(tmp_path, {}) == DEFAULT_LIMITS
    (tmp_path / "rbee.toml").write_text("[limits]\nidle_ttl = 3\n")
    assert load_limits(tmp_path, {}, {"load_timeout": 9.0}).idle_ttl == 3.0
    (tmp_path / "rbee.toml").write_text("[limits]\nidle_ttl = 'x'\n")
    with pytest.raises(ConfigError, match=r"rbee\.toml:2: limits\.idle_ttl"):
        load_limits(tmp_path, {})


@pytest.mark.parametrize("command", [["up"], ["queen", "run"], ["queen", "start"]])
def test_each_queen_command_takes_the_limit_flags(command: list[str]) -> None:
    args = build_parser().parse_args(
        [*command, "--max-queued", "3", "--max-queued-tokens", "100", "--request-timeout", "5",
         "--load-timeout", "7", "--no-autoload", "--idle-ttl", "0",
         "--cors-origin", "https://a.example", "--cors-origin", "http://localhost:3000"]
    )  # fmt: skip
    assert (args.max_queued, args.max_queued_tokens, args.request_timeout) == (3, 100, 5.0)
    assert (args.load_timeout, args.autoload, args.idle_ttl) == (7.0, False, 0.0)
    assert args.cors_origins == ["https://a.example", "http://localhost:3000"]
    unset = build_parser().parse_args(command)
    assert (unset.max_queued, unset.autoload, unset.idle_ttl, unset.load_timeout) == (
        None, None, None, None)  # fmt: skip
    assert unset.cors_origins is None


@pytest.mark.parametrize(
    "argv", [["--load-timeout", "0"], ["--idle-ttl", "-1"], ["--max-queued", "-2"]]
)
def test_out_of_range_flags_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["queen", "run", *argv])
    assert argv[0] in capsys.readouterr().err


def test_queen_start_passes_the_limits_to_queen_run() -> None:
    given = Limits(
        max_queued=3,
        load_timeout=7.5,
        keepalive=0.5,
        autoload=False,
        idle_ttl=0.0,
        cors_origins=("https://a.example", "http://localhost:3000"),
    )
    args = build_parser().parse_args(["queen", "run", *limit_flags(given)])
    flags = {k: getattr(args, k) for k in ("max_queued", "load_timeout", "autoload", "idle_ttl")}
    assert flags == {"max_queued": 3, "load_timeout": 7.5, "autoload": False, "idle_ttl": 0.0}
    keys = (
        "max_queued",
        "max_queued_tokens",
        "request_timeout",
        "load_timeout",
        "keepalive",
        "autoload",
        "idle_ttl",
        "cors_origins",
    )
    assert parse_limits(None, PATH, {}, {k: getattr(args, k) for k in keys}) == given


def test_cors_origins_come_from_the_file_the_variable_and_the_flags() -> None:
    assert DEFAULT_LIMITS.cors_origins == ()
    text = '[limits]\ncors_origins = ["https://App.example:443", "http://localhost:3000"]\n'
    assert limits(text).cors_origins == ("https://app.example", "http://localhost:3000")
    env = {"RBEE_CORS_ORIGINS": " https://b.example , http://[::1]:8080,"}
    assert limits(text, env).cors_origins == ("https://b.example", "http://[::1]:8080")
    flags = {"cors_origins": ["https://c.example", "https://c.example"]}
    assert limits(text, env, **flags).cors_origins == ("https://c.example",)
    # `*` is any page, whatever else is listed beside it.
    assert limits(None, {"RBEE_CORS_ORIGINS": "https://a.example,*"}).cors_origins == ("*",)
    assert limits("[limits]\ncors_origins = []\n").cors_origins == ()


@pytest.mark.parametrize(
    ("text", "env", "flags", "words"),
    [
        ('[limits]\n\ncors_origins = "https://a.example"\n', {}, {},
         ["rbee.toml:3", "limits.cors_origins", "must be a list of origins"]),
        ('[limits]\ncors_origins = ["https://a.example/"]\n', {}, {},
         ["rbee.toml:2", "limits.cors_origins", "'https://a.example/'", "no path"]),
        ("[limits]\ncors_origins = [3]\n", {}, {}, ["rbee.toml:2", "list of origins"]),
        (None, {"RBEE_CORS_ORIGINS": "a.example"}, {},
         ["RBEE_CORS_ORIGINS", "'a.example' is not an origin", "scheme://host[:port]"]),
        (None, {"RBEE_CORS_ORIGINS": "https://a.example:70000"}, {},
         ["RBEE_CORS_ORIGINS", "port must be 1-65535"]),
        (None, {}, {"cors_origins": ["https://user@a.example"]},
         ["--cors-origin", "'https://user@a.example' is not an origin"]),
        (None, {}, {"cors_origins": ["https://a.example?x=1"]}, ["--cors-origin", "no path"]),
    ],
)  # fmt: skip
def test_bad_cors_origins_name_where_they_come_from(
    text: str | None, env: dict[str, str], flags: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        limits(text, env, **flags)
    for word in words:
        assert word in str(caught.value)
