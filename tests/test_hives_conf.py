"""hives.conf: ssh_config syntax, checks reported as `FILE:LINE: message`, resolution, the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from asyncssh.config import SSHClientConfig

from rbee.config.hives import Hive, HivesConfig, build_hives, hives_path, load_hives
from rbee.config.settings import Paths
from rbee.config.sshconfig import read_directives, split_words
from rbee.errors import ConfigError
from rbee.ssh.connection import HiveConnection

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "hives.conf.example"


def write(path: Path, text: str) -> Path:
    """Write dedented `text` to `path` (making its folder) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake $HOME holding ~/.ssh/id_ed25519, so `~` paths never touch the real home."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("not really a key\n")
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def conf(tmp_path: Path, home: Path) -> Path:
    """Where each test writes its hives.conf."""
    return tmp_path / "cfg" / "hives.conf"


def load_text(conf: Path, text: str) -> HivesConfig:
    """Load `text` written as hives.conf."""
    return load_hives(write(conf, text))


def error_of(conf: Path, text: str) -> str:
    """The one-line ConfigError that loading `text` raises."""
    with pytest.raises(ConfigError) as info:
        load_text(conf, text)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- syntax -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a b  c", ["a", "b", "c"]),
        ('"a b" c', ["a b", "c"]),
        ("'a b' \"c\"", ["a b", "c"]),
        (r'"say \"hi\"" x', ['say "hi"', "x"]),
        (r"a\ b", ["a b"]),
        (r"C:\dir", [r"C:\dir"]),
        ('pre"quoted part"post', ["prequoted partpost"]),
        ('""', [""]),
        ("", []),
    ],
)
def test_split_words(text: str, words: list[str]) -> None:
    assert [w for w, _ in split_words(text)] == words


def test_split_words_flags_trailing_comments_and_unterminated_quotes() -> None:
    assert split_words('x #c "#q"') == [("x", False), ("#c", True), ("#q", False)]
    with pytest.raises(ValueError, match="unterminated"):
        split_words('"open')


# --- mistakes: each is one line, `FILE:LINE: message` -------------------------------------------

BAD = [
    ("Host a\n  Port abc\n", 2, ["Port must be 1-65535, got 'abc'"]),
    ("Host a\n  Port 0\n", 2, ["Port must be 1-65535", "'0'"]),
    ("Host a\n  Port 65536\n", 2, ["Port must be 1-65535", "'65536'"]),
    ("Host a\n  port=-1\n", 2, ["port must be 1-65535"]),
    ("Host a\n  Port 22 # ssh port\n", 2, ["comment", "own line"]),
    ("Host a\n  Port 22 23\n", 2, ["Port takes one value, got 2"]),
    ("Host a\n  Port\n", 2, ["Port needs a value"]),
    ("Host a\n  ServerAliveInterval -5\n", 2, ["ServerAliveInterval", "'-5'"]),
    ("Host a\n  ServerAliveInterval 1.5\n", 2, ["ServerAliveInterval", "seconds"]),
    ("Host a\n  IdentityFile ~/.ssh/missing\n", 2, ["IdentityFile", "missing", "does not exist"]),
    ("Host a\n  IdentityFile ~/.ssh\n", 2, ["IdentityFile", ".ssh", "not a file"]),
    ("Host a\n  IdentityFile keys/id\n", 2, ["IdentityFile", "absolute", "keys/id"]),
    (
        "Host a\n  HostName h\n  UserKnownHostsFile none\n",
        3,
        [
            "host key verification cannot be disabled (UserKnownHostsFile none): rbee always "
            "verifies host keys; trust a new hive with `rbee hive trust ALIAS`"
        ],
    ),
    ("UserKnownHostsFile ~/.ssh/kh /dev/null\n", 1, ["(UserKnownHostsFile /dev/null)"]),
    ("Host *\n  StrictHostKeyChecking no\n", 2, ["cannot be disabled (StrictHostKeyChecking no)"]),
    ("Match all\n  StrictHostKeyChecking OFF\n", 2, ["cannot be disabled", "OFF", "hive trust"]),
    ("Host a\n  StrictHostKeyChecking maybe\n", 2, ["StrictHostKeyChecking must be", "'maybe'"]),
    ("Host a\n  RbeeHivePort 70000\n", 2, ["RbeeHivePort must be 1-65535, got '70000'"]),
    ('Host a\n  RbeeInstallDir ""\n', 2, ["RbeeInstallDir needs a value"]),
    ('Host a\n  RbeeInstallDir "/opt/x\x00y"\n', 2, ["NUL"]),
    ("Host a\n  RbeeInstallDir ~bob/rbee\n", 2, ["RbeeInstallDir may start with ~/", "not ~user"]),
    ("Host a\n  RbeePython bin/python\n", 2, ["RbeePython must be", "absolute"]),
    ('Host a\n  RbeePython "python3;rm"\n', 2, ["RbeePython must be", "shell"]),
    ("Host a\n  RbeePython -c\n", 2, ["RbeePython must be"]),
    ("Host a\n  RbeeBackend cuda\n", 2, ["RbeeBackend must be one of auto, llamacpp, exllamav2"]),
    (
        "Host a\n  RbeeHivPort 9000\n",
        2,
        [
            "unknown rbee key RbeeHivPort",
            "RbeeBackend, RbeeCpuRepack, RbeeHivePort, RbeeInstallDir, RbeePython",
        ],
    ),
    ("Host a\nMatch all\n  RbeeHivePort 9001\n", 3, ["Match", "Rbee keys belong in Host blocks"]),
    ("Host a\n\n# note\nHost bad!alias\n", 4, ["invalid hive alias 'bad!alias'"]),
    ("Host ../etc\n", 1, ["invalid hive alias '../etc'"]),
    ("Host a$(reboot)\n", 1, ["invalid hive alias"]),
    (f"Host {'a' * 65}\n", 1, ["invalid hive alias"]),
    ("Host a,b\n", 1, ["separated by spaces, not commas"]),
    ("Host a !\n", 1, ["empty Host pattern"]),
    (
        "Host gpu-box\n  HostName 10.0.0.1\n\nHost other gpu-box\n",
        4,
        ["duplicate Host gpu-box (first at line 1)"],
    ),
    ("Host a a\n", 1, ["duplicate Host a (first at line 1)"]),
    ('Host a\n  HostName "open\n', 2, ["unterminated"]),
    ("Host\n", 1, ["Host needs a host pattern"]),
    ("Match\n", 1, ["Match needs criteria"]),
    ("Host a\n- Port 22\n", 2, ["expected `Keyword value`"]),
    ("Host a\n  HostName -oProxyCommand=evil\n", 2, ["HostName must be a host name"]),
    ("Host a\n  HostName %r.example.com\n", 2, ["HostName may only use", "%r"]),
    ("Host a\n  User -x\n", 2, ["User must be a user name"]),
    ("Host a\n  ProxyJump a,,b\n", 2, ["ProxyJump must be", "'a,,b'"]),
    ("Host a\n  Include nothing-here.conf\n", 2, ["Include file not found", "nothing-here.conf"]),
    ("Include\n", 1, ["Include needs a file"]),
    ("IgnoreUnknown\n", 1, ["IgnoreUnknown needs a value"]),
    # Keywords are case-insensitive, and `Keyword=value` is the same as `Keyword value`.
    ("HOST a\n  rbeebackend CUDA\n", 2, ["rbeebackend must be one of"]),
    ("Host=a\n  Port = x\n", 2, ["Port must be 1-65535, got 'x'"]),
    # The first mistake in file order is the one reported.
    ("Host a\n  Port abc\n  StrictHostKeyChecking no\nHost !!\n", 2, ["Port must be"]),
    ('Host a\n  Port 1\n  User "x\nHost a\n', 3, ["unterminated"]),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD)
def test_mistakes_are_one_line_with_file_and_line(
    conf: Path, text: str, line: int, words: list[str]
) -> None:
    message = error_of(conf, text)
    assert message.startswith(f"{conf}:{line}: "), message
    for word in words:
        assert word in message, message


def test_unreadable_identity_file_names_the_path(conf: Path, home: Path) -> None:
    write(conf, "Host a\n  IdentityFile ~/.ssh/id_ed25519\n")
    with pytest.raises(ConfigError) as info:
        build_hives(conf, read_directives(conf), problem=lambda _: "is not readable")
    assert str(info.value) == (
        f"{conf}:2: IdentityFile {home / '.ssh' / 'id_ed25519'} is not readable"
    )


def test_missing_file_says_where_rbee_looked_and_how_to_start(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "hives.conf"
    with pytest.raises(ConfigError) as info:
        load_hives(missing)
    assert str(missing) in str(info.value)
    assert "hives.conf.example" in str(info.value)


def test_files_over_1_mib_and_non_utf8_are_refused(conf: Path) -> None:
    conf.parent.mkdir(parents=True)
    conf.write_bytes(b"# padding\n" * 110_000)
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_hives(conf)
    conf.write_bytes(b"Host a\n  User \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_hives(conf)


def test_a_mistake_in_an_included_file_names_that_file(conf: Path) -> None:
    extra = write(conf.parent / "more" / "extra.conf", "Host z\n\n  Port nope\n")
    message = error_of(conf, "Include more/extra.conf\nHost a\n")
    assert message.startswith(f"{extra}:3: Port must be 1-65535"), message


def test_host_blocks_included_inside_a_block_that_excludes_them_are_refused(conf: Path) -> None:
    extra = write(conf.parent / "extra.conf", "# more\nHost b\n  Port 2\n")
    message = error_of(conf, "Host a\n  User x\nInclude extra.conf\n")
    assert message.startswith(f"{extra}:2: Host b is included inside the Host block at {conf}:1")
    assert "before the first Host" in message
    assert load_text(conf, "Host a\nHost *\n  Include extra.conf\n").get("b").port == 2


def test_duplicate_alias_across_files_names_both(conf: Path) -> None:
    extra = write(conf.parent / "extra.conf", "Host a\n")
    message = error_of(conf, "Include extra.conf\nHost b\nHost a\n")
    assert message == f"{conf}:3: duplicate Host a (first at {extra}:1)"


def test_include_loops_are_refused(conf: Path) -> None:
    other = write(conf.parent / "other.conf", "Host b\nInclude hives.conf\n")
    message = error_of(conf, "Include other.conf\nHost a\n")
    assert message.startswith(f"{other}:2: Include loop: {conf} -> {other} -> {conf}"), message
    assert error_of(conf, "Include hives.conf\n").startswith(f"{conf}:1: Include loop")


def test_includes_nest_at_most_16_deep(conf: Path) -> None:
    def chain(levels: int) -> None:
        for i in range(levels):
            write(conf.parent / f"l{i}.conf", f"Include l{i + 1}.conf\n")
        write(conf.parent / f"l{levels}.conf", "Host deepest\n")

    chain(15)  # hives.conf -> l0 ... l15: 16 levels of Include
    assert load_text(conf, "Include l0.conf\n").aliases == ("deepest",)
    chain(16)
    message = error_of(conf, "Include l0.conf\n")
    assert message.startswith(f"{conf.parent / 'l15.conf'}:1: Include nested more than 16 levels")


# --- resolution: ssh's rules --------------------------------------------------------------------


def test_defaults(conf: Path) -> None:
    config = load_text(conf, "# one machine\n\nHost gpu-box\n")
    assert config == HivesConfig(
        path=conf,
        hives=(
            Hive(
                alias="gpu-box",
                hostname="gpu-box",
                user=None,
                port=22,
                identity_files=(),
                proxy_jump=None,
                hive_port=9000,
                install_dir="~/.local/share/rbee-hive",
                python="python3",
                backend="auto",
                path=conf,
                line=3,
            ),
        ),
    )


GOOD: list[tuple[str, dict[str, dict[str, Any]]]] = [
    # The first value obtained for a key wins, wildcard blocks included.
    (
        "Host a\n  Port 2200\nHost a*\n  Port 2300\n  User shared\nHost ab\n",
        {"a": {"port": 2200, "user": "shared"}, "ab": {"port": 2300, "user": "shared"}},
    ),
    # `Host *` at the end gives defaults; at the start it overrides everything after it.
    (
        "Host a\n  RbeeBackend mlx\nHost b\nHost *\n  RbeeBackend llamacpp\n  RbeeHivePort 9100\n",
        {"a": {"backend": "mlx", "hive_port": 9100}, "b": {"backend": "llamacpp"}},
    ),
    (
        "Host *\n  RbeePython /usr/bin/python3.11\nHost a\n  RbeePython python3.12\n",
        {"a": {"python": "/usr/bin/python3.11"}},
    ),
    # Lines before the first Host apply to every host.
    ("User everyone\nHost a\n  User alice\n", {"a": {"user": "everyone"}}),
    # A negated pattern takes a host out of a block.
    (
        "Host * !b\n  User shared\nHost a\nHost b\n  User bob\n",
        {"a": {"user": "shared"}, "b": {"user": "bob"}},
    ),
    ("Host !a\n  Port 1\nHost a\n", {"a": {"port": 22}}),
    ("Host ?\n  Port 1000\nHost a\nHost ab\n", {"a": {"port": 1000}, "ab": {"port": 22}}),
    # Match blocks are asyncssh's: rbee skips their standard keys, then Host blocks resume.
    ("Host a\nMatch all\n  Port 2222\nHost b\n  Port 3\n", {"a": {"port": 22}, "b": {"port": 3}}),
    ("Match host x\n  StrictHostKeyChecking accept-new\nHost a\n", {"a": {"port": 22}}),
    # `none` is a value too, so it wins over later ones.
    (
        "Host a\n  ProxyJump none\n  User none\nHost *\n  ProxyJump jump@bastion:2222\n"
        "  User u\nHost b\n",
        {
            "a": {"proxy_jump": None, "user": None},
            "b": {"proxy_jump": "jump@bastion:2222", "user": "u"},
        },
    ),
    # Quoted arguments, `Key=value`, `Key = value`, and any case for keywords.
    (
        'Host a\n  RbeeInstallDir "/opt/my rbee"\n  HostName "a.example.com"\n',
        {"a": {"install_dir": "/opt/my rbee", "hostname": "a.example.com"}},
    ),
    (
        "HOST=a\n  hostname=10.0.0.5\n  PORT = 2022\n  rbeehiveport =9001\n  RBEEBACKEND= MLX\n",
        {"a": {"hostname": "10.0.0.5", "port": 2022, "hive_port": 9001, "backend": "mlx"}},
    ),
    ("Host a b\n\tUser\ttabs\n", {"a": {"user": "tabs"}, "b": {"user": "tabs"}}),
    # HostName may use %h (the alias) and %%.
    ("Host *.lan\nHost a b\nHost *\n  HostName %h.lan\n", {"a": {"hostname": "a.lan"}}),
    # Standard keys rbee does not use are accepted as they are.
    (
        "IgnoreUnknown Rbee*\nHost a\n  ForwardAgent no\n  Compression yes\n"
        "  UserKnownHostsFile ~/.ssh/known_hosts ~/.ssh/known_hosts2\n"
        "  StrictHostKeyChecking yes\n  ServerAliveInterval 0\n",
        {"a": {"port": 22}},
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_resolution(conf: Path, text: str, expected: dict[str, dict[str, Any]]) -> None:
    config = load_text(conf, text)
    for alias, fields in expected.items():
        hive = config.get(alias)
        assert {k: getattr(hive, k) for k in fields} == fields, alias


# rbee leaves Match blocks to asyncssh, so only Host-only files resolve the same in both.
@pytest.mark.parametrize(("text", "expected"), [case for case in GOOD if "Match" not in case[0]])
def test_resolution_agrees_with_asyncssh(
    conf: Path, text: str, expected: dict[str, dict[str, Any]]
) -> None:
    """asyncssh reads the same file when connecting: it must see the same host, user and port."""
    config = load_text(conf, text)
    for hive in config.hives:
        ssh = SSHClientConfig.load(None, [conf], False, False, False, "me", (), hive.alias, ())
        assert ssh.get("Hostname", hive.alias) == hive.hostname.replace("%h", hive.alias)
        assert ssh.get("User") == hive.user
        assert ssh.get("Port", 22) == hive.port
        assert ssh.get("ProxyJump") == hive.proxy_jump


# --- what asyncssh reads: each hive's own lines ------------------------------------------------

ASYNCSSH_KEYS = (
    "Hostname", "User", "Port", "IdentityFile", "IdentitiesOnly", "ProxyJump", "ProxyCommand",
    "UserKnownHostsFile", "ServerAliveInterval", "Compression", "ConnectTimeout", "ForwardAgent",
    "SendEnv", "Tag", "BatchMode",
)  # fmt: skip


def asyncssh_sees(path: Path, host: str) -> dict[str, object]:
    """The options asyncssh takes from config file `path` to connect to `host`."""
    config = SSHClientConfig.load(None, [path], False, False, False, "me", (), host, ())
    return {key: config.get(key) for key in ASYNCSSH_KEYS}


def cut_file(config: HivesConfig, alias: str, folder: Path) -> Path:
    """`config.asyncssh_text(alias)` written to a file (it must not be None here)."""
    text = config.asyncssh_text(alias)
    assert text is not None, alias
    return write(folder / f"{alias}.conf", text)


def assert_same_as_whole_file(conf: Path, config: HivesConfig, jumps: dict[str, list[str]]) -> None:
    """For every alias (and the jump hosts `jumps` names for it), asyncssh reads the same
    options from the alias's own lines as from the whole file."""
    folder = conf.parent / "cut"
    for alias in config.aliases:
        path = cut_file(config, alias, folder)
        for host in (alias, *jumps.get(alias, [])):
            assert asyncssh_sees(path, host) == asyncssh_sees(conf, host), (alias, host)


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_each_hives_lines_read_by_asyncssh_as_the_whole_file(
    conf: Path, text: str, expected: dict[str, dict[str, Any]]
) -> None:
    assert_same_as_whole_file(conf, load_text(conf, text), {})


MATCHES = """
Host a b
  User alice
Host c
  User carol
Match user alice
  Port 2200
Match localuser me !originalhost b
  Compression yes
Match exec "true" host a
  ConnectTimeout 7
Match exec "false"
  ConnectTimeout 9
Match all
  Tag tagged
Match tagged tagged
  ForwardAgent yes
Host b*
  HostName %h.lan
  ServerAliveInterval 5
Host *
  SendEnv LANG LC_*
  IdentityFile ~/.ssh/id_%h
"""


def test_match_blocks_stay_for_asyncssh_to_evaluate(conf: Path) -> None:
    config = load_text(conf, MATCHES)
    assert_same_as_whole_file(conf, config, {})
    # Not vacuous: the Match blocks decide something for these hosts.
    seen = {alias: asyncssh_sees(cut_file(config, alias, conf.parent), alias) for alias in "abc"}
    assert [seen[h]["Port"] for h in "abc"] == [2200, 2200, None]
    assert [seen[h]["Compression"] for h in "abc"] == [True, None, True]
    assert [seen[h]["ConnectTimeout"] for h in "abc"] == [7, None, None]
    assert seen["b"]["Hostname"] == "b.lan"
    assert seen["c"]["ForwardAgent"] is True


def test_jump_hosts_get_their_own_lines(conf: Path, home: Path) -> None:
    config = load_text(
        conf,
        """
        Host a
          HostName 10.0.0.1
          ProxyJump jump1
        Host b
          ProxyJump admin@bastion.example.com:2222,jump2
        Host jump1
          HostName 10.0.0.2
          User j
          ProxyJump k@jump2:2200
        Host jump2
          User k
          Port 2201
        Host *.example.com
          User admin
          ServerAliveInterval 9
        Host *
          IdentityFile ~/.ssh/id_ed25519
        """,
    )
    jumps = {"a": ["jump1", "jump2"], "b": ["bastion.example.com", "jump2"]}
    assert_same_as_whole_file(conf, config, jumps)
    text = config.asyncssh_text("a") or ""
    assert "Match originalhost jump2" in text
    assert "bastion" not in text
    jump = asyncssh_sees(cut_file(config, "a", conf.parent), "jump1")
    assert (jump["Hostname"], jump["User"], jump["ProxyJump"]) == ("10.0.0.2", "j", "k@jump2:2200")


def test_included_blocks_keep_their_scope(conf: Path) -> None:
    inner = write(conf.parent / "inner.conf", "User from-inner\nHost *\n  Port 2\n")
    matched = write(conf.parent / "matched.conf", "Match user from-b\n  Compression yes\n")
    config = load_text(
        conf,
        f"""
        Host a
          Include {inner}
          ServerAliveInterval 3
        Host b
          User from-b
          Include {matched}
          ConnectTimeout 4
        Host *
          Include {inner}
        """,
    )
    assert_same_as_whole_file(conf, config, {})
    seen = asyncssh_sees(cut_file(config, "b", conf.parent), "b")
    assert (seen["User"], seen["Port"], seen["Compression"], seen["ConnectTimeout"]) == (
        "from-b", 2, True, 4,
    )  # fmt: skip
    seen = asyncssh_sees(cut_file(config, "a", conf.parent), "a")
    assert (seen["User"], seen["Port"], seen["ServerAliveInterval"]) == ("from-inner", 2, 3)


def test_relative_includes_are_read_from_the_including_files_folder(conf: Path) -> None:
    # ssh and asyncssh would look in ~/.ssh; rbee checked this file, so asyncssh gets this one.
    write(conf.parent / "users.conf", "User from-beside\n")
    config = load_text(conf, "Host a\n  Include users.conf\n")
    assert config.get("a").user == "from-beside"
    assert asyncssh_sees(cut_file(config, "a", conf.parent), "a")["User"] == "from-beside"


def test_a_hives_lines_leave_the_other_hives_out(conf: Path) -> None:
    hosts = "".join(
        f"Host hive{i}\n  HostName 10.0.0.{i}\n  User root\n  Port 22\n  RbeeHivePort 9000\n"
        for i in range(1, 51)
    )
    config = load_text(conf, "IgnoreUnknown Rbee*\n" + hosts + "Host *\n  ConnectTimeout 5\n")
    text = config.asyncssh_text("hive7") or ""
    assert text.splitlines() == [
        "Match originalhost hive7", "IgnoreUnknown Rbee*", "HostName 10.0.0.7", "User root",
        "Port 22", "ConnectTimeout 5",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        # asyncssh would read the file again for the canonical name.
        "CanonicalizeHostname yes\nCanonicalDomains example.com\nHost a\n",
        "Host a\n  CanonicalizeHostname always\n",
        # A jump host that is not a plain name, and more jump hosts than rbee follows.
        "Host a\n  ProxyJump [2001:db8::1]:22\n",
        "Host a\n  ProxyJump " + ",".join(f"j{i}" for i in range(10)) + "\n",
    ],
)
def test_where_only_the_whole_file_is_faithful(conf: Path, text: str) -> None:
    assert load_text(conf, text).asyncssh_text("a") is None


def test_a_match_inside_a_match_is_left_whole(conf: Path) -> None:
    inner = write(conf.parent / "inner.conf", "Match localuser me\n  Port 2\n")
    assert load_text(conf, f"Match user x\n  Include {inner}\nHost a\n").asyncssh_text("a") is None
    assert load_text(conf, "CanonicalizeHostname no\nHost a\n").asyncssh_text("a") is not None


def test_a_connection_gets_its_hives_lines_or_the_whole_file(conf: Path) -> None:
    config = load_text(conf, "Host a\n  Port 2\nHost b\n  CanonicalizeHostname yes\n")
    assert (config.asyncssh_text("a") or "").splitlines() == ["Match originalhost a", "Port 2"]
    assert config.asyncssh_text("b") is None  # only the whole file is faithful for b
    assert HiveConnection.of(config, "a").alias == "a"
    with pytest.raises(ConfigError, match="unknown hive 'c'"):
        HiveConnection.of(config, "c")


def test_identity_files_add_up_in_order(conf: Path, home: Path) -> None:
    key2 = home / "keys" / "second"
    key2.parent.mkdir()
    key2.write_text("x")
    config = load_text(
        conf,
        f"""
        Host a
          IdentityFile ~/.ssh/id_ed25519
          IdentityFile none
        Host *
          IdentityFile "{key2}"
          IdentityFile ~/.ssh/id_ed25519
          IdentityFile ~/.ssh/id_%r
        """,
    )
    assert config.get("a").identity_files == (
        home / ".ssh" / "id_ed25519",
        key2,
        home / ".ssh" / "id_%r",
    )


def test_include_relative_paths_globs_and_nesting(conf: Path, home: Path) -> None:
    write(conf.parent / "hives.d" / "b.conf", "Host b\n  Include ../shared/user.conf\n")
    write(conf.parent / "hives.d" / "a.conf", "# a\nHost a\n  Port 2001\n")
    write(conf.parent / "hives.d" / "notes.txt", "this is not config\n")
    write(conf.parent / "shared" / "user.conf", "User from-include\n")
    write(home / "rbee" / "tilde.conf", "Host t\n")
    config = load_text(
        conf,
        """
        Include hives.d/*.conf ~/rbee/tilde.conf nothing/*.conf
        Host first
          Include shared/user.conf
          Port 2000
        Host last
        """,
    )
    assert config.aliases == ("a", "b", "t", "first", "last")
    first, a, b = config.get("first"), config.get("a"), config.get("b")
    assert (first.user, first.port) == ("from-include", 2000)
    assert (a.path, a.line, a.port, a.user) == (conf.parent / "hives.d" / "a.conf", 2, 2001, None)
    assert b.user == "from-include"
    assert config.get("last").path == conf


def test_include_inside_a_host_block_stays_in_that_block(conf: Path) -> None:
    write(conf.parent / "extra.conf", "User bob\n")
    config = load_text(conf, "Host a\n  Include extra.conf\n  Port 2\nHost b\n")
    assert (config.get("a").user, config.get("a").port) == ("bob", 2)
    assert (config.get("b").user, config.get("b").port) == (None, 22)


def test_get_an_unknown_hive_lists_the_known_ones(conf: Path) -> None:
    config = load_text(conf, "Host a\nHost b c*\n")
    with pytest.raises(ConfigError) as info:
        config.get("x")
    assert str(info.value) == f"unknown hive 'x' (hives in {conf}: a, b)"
    with pytest.raises(ConfigError, match=r"\(hives in .*: none\)"):
        replace(config, hives=()).get("a")


def test_hives_path_prefers_the_flag(tmp_path: Path) -> None:
    paths = Paths(config_dir=tmp_path / "c", data_dir=tmp_path / "d")
    assert hives_path(paths, None) == tmp_path / "c" / "hives.conf"
    assert hives_path(paths, str(tmp_path / "x.conf")) == tmp_path / "x.conf"
    assert hives_path(paths, "rel.conf") == Path.cwd() / "rel.conf"


# --- the CLI, as a person runs it ---------------------------------------------------------------


def run_rbee(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI with $HOME and rbee's dirs under the test's temporary folder."""
    full = dict(os.environ)
    full.pop("RBEE_HIVES", None)
    full.update(
        HOME=str(home),
        RBEE_CONFIG_DIR=str(home / "config"),
        RBEE_DATA_DIR=str(home / "data"),
        **(env or {}),
    )
    return subprocess.run(
        [sys.executable, "-m", "rbee", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single `rbee: error:` line of a failed command."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("rbee: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_config_check_and_hive_list(conf: Path, home: Path) -> None:
    write(conf, "Host a\n  HostName 10.0.0.1\n  User alice\n  RbeeBackend mlx\nHost b\n")
    check = run_rbee(home, "--hives", str(conf), "config", "check")
    assert (check.returncode, check.stdout, check.stderr) == (0, f"{conf}: 2 hive(s) OK\n", "")

    listing = run_rbee(home, "--hives", str(conf), "hive", "list")
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert listing.stdout.startswith("ALIAS  HOST      USER   PORT  HIVE PORT  BACKEND")
    assert rows[1:] == [
        ["a", "10.0.0.1", "alice", "22", "9000", "mlx", "~/.local/share/rbee-hive"],
        ["b", "b", "-", "22", "9000", "auto", "~/.local/share/rbee-hive"],
    ]


def test_cli_errors_are_one_line(conf: Path, home: Path) -> None:
    write(conf, "Host a\n  UserKnownHostsFile /dev/null\n")
    for command in (["config", "check"], ["hive", "list"]):
        line = one_error_line(run_rbee(home, "--hives", str(conf), *command))
        assert line.startswith(f"rbee: error: {conf}:2: host key verification cannot be disabled")


def test_cli_finds_hives_conf_in_the_config_dir_or_rbee_hives(conf: Path, home: Path) -> None:
    line = one_error_line(run_rbee(home, "config", "check"))
    assert str(home / "config" / "hives.conf") in line
    assert "hives.conf.example" in line

    write(home / "config" / "hives.conf", "Host in-config-dir\n")
    assert "1 hive(s) OK" in run_rbee(home, "config", "check").stdout

    write(conf, "Host a\nHost b\n")
    from_env = run_rbee(home, "config", "check", env={"RBEE_HIVES": str(conf)})
    assert from_env.stdout == f"{conf}: 2 hive(s) OK\n"


def test_cli_hive_list_of_an_empty_file(conf: Path, home: Path) -> None:
    write(conf, "IgnoreUnknown Rbee*\n")
    result = run_rbee(home, "--hives", str(conf), "hive", "list")
    assert (result.returncode, result.stdout) == (
        0,
        f"no hives in {conf} (add a `Host ALIAS` block)\n",
    )


@pytest.fixture
def example(tmp_path: Path, home: Path) -> Path:
    """The repo's hives.conf.example, copied beside a fake ~/.ssh/id_ed25519."""
    copy = tmp_path / "example" / "hives.conf"
    copy.parent.mkdir()
    shutil.copy(EXAMPLE, copy)
    return copy


def test_the_example_passes_config_check(example: Path, home: Path) -> None:
    result = run_rbee(home, "--hives", str(example), "config", "check")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{example}: 3 hive(s) OK\n"
    listing = run_rbee(home, "--hives", str(example), "hive", "list")
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [
        "ALIAS",
        "gpu-desktop",
        "old-server",
        "mac-mini",
    ]


def test_ssh_reads_the_example(example: Path, home: Path) -> None:
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    for hive in load_hives(example).hives:
        result = subprocess.run(
            [ssh, "-G", "-F", str(example), hive.alias],
            env={**os.environ, "HOME": str(home)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        seen = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
        assert seen["hostname"] == hive.hostname
        assert seen["port"] == str(hive.port)
        if hive.user:
            assert seen["user"] == hive.user
