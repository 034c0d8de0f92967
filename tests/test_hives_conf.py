"""hives.conf: ssh_config syntax, checks reported as `FILE:LINE: message`, resolution, the CLI."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
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
from rbee.config.sshresolve import Local
from rbee.errors import ConfigError
from rbee.ssh.connection import HiveConnection

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "hives.conf.example"
ME = pwd.getpwuid(os.getuid()).pw_name
"""The local user: ssh's User when none is set."""


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
    ("Host a\n\n# note\nHost bad!alias\n", 4, ["invalid hive alias 'bad!alias'"]),
    ("Host ../etc\n", 1, ["invalid hive alias '../etc'"]),
    ("Host a$(reboot)\n", 1, ["invalid hive alias"]),
    (f"Host {'a' * 65}\n", 1, ["invalid hive alias"]),
    ("Host a,b\n", 1, ["separated by spaces, not commas"]),
    ("Host a !\n", 1, ["empty Host pattern"]),
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
    # Match criteria rbee cannot decide from the file alone, and ones ssh does not know.
    ('Host a\nMatch exec "true"\n  Port 2\n', 2, ["Match exec: rbee does not run commands"]),
    ("Match canonical\n", 1, ["Match canonical: rbee does not canonicalize host names"]),
    ("Match tagged x\n", 1, ["unsupported Match criterion 'tagged'"]),
    ("Match all host a\n", 1, ["Match all cannot be combined with other criteria"]),
    ("Match user\n", 1, ["Match user needs a pattern"]),
    ("CanonicalizeHostname yes\nHost a\n", 1, ["rbee does not canonicalize host names"]),
    # ssh logs in as "none", asyncssh as the local user: which one was meant is not clear.
    ("Host a\n  User none\n", 2, ["User none: ssh logs in as a user called 'none'"]),
    ("Host a\n  IdentityFile ~/.ssh/id_%x\n", 2, ["IdentityFile may use the tokens", "%x"]),
    ("Host a\n  UserKnownHostsFile ~/kh/%\n", 2, ["lone %"]),
    ("Host a\n  ProxyJump host/path\n", 2, ["invalid jump host 'host/path'"]),
    ("Host *\n  ProxyJump bastion\nHost a\n", 2, ["loops through its jump hosts"]),
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


def test_a_mistake_in_an_included_file_names_that_file(conf: Path, home: Path) -> None:
    extra = write(home / ".ssh" / "more" / "extra.conf", "Host z\n\n  Port nope\n")
    message = error_of(conf, "Include more/extra.conf\nHost a\n")
    assert message.startswith(f"{extra}:3: Port must be 1-65535"), message


def test_host_blocks_included_inside_a_block_that_excludes_them_are_refused(
    conf: Path, home: Path
) -> None:
    extra = write(home / ".ssh" / "extra.conf", "# more\nHost b\n  Port 2\n")
    message = error_of(conf, "Host a\n  User x\nInclude extra.conf\n")
    assert message.startswith(f"{extra}:2: Host b is included inside the Host block at {conf}:1")
    assert "before the first Host" in message
    assert load_text(conf, "Host a\nHost *\n  Include extra.conf\n").get("b").port == 2
    # Inside a Match block: refused where the Match does not apply to that host.
    message = error_of(conf, "Match user nobody-here\n  Include extra.conf\n")
    assert message.startswith(f"{extra}:2: Host b is included inside the Match block at {conf}:1")
    assert load_text(conf, f"Match user {ME}\n  Include extra.conf\n").get("b").port == 2


def test_an_alias_in_several_files_is_one_hive_named_where_first_seen(
    conf: Path, home: Path
) -> None:
    """As in ssh, a host may be named by several Host blocks (before: "duplicate Host")."""
    extra = write(home / ".ssh" / "extra.conf", "Host a\n  Port 2\n")
    config = load_text(conf, "Include extra.conf\nHost b\nHost a\n  Port 3\n  User u\n")
    assert config.aliases == ("a", "b")
    a = config.get("a")
    assert (a.path, a.line, a.port, a.user) == (extra, 1, 2, "u")


def test_include_loops_are_refused(conf: Path, home: Path) -> None:
    other = write(home / ".ssh" / "other.conf", f"Host b\nInclude {conf}\n")
    message = error_of(conf, "Include other.conf\nHost a\n")
    assert message.startswith(f"{other}:2: Include loop: {conf} -> {other} -> {conf}"), message
    assert error_of(conf, f"Include {conf}\n").startswith(f"{conf}:1: Include loop")


def test_includes_nest_at_most_16_deep(conf: Path, home: Path) -> None:
    def chain(levels: int) -> None:
        for i in range(levels):
            write(home / ".ssh" / f"l{i}.conf", f"Include l{i + 1}.conf\n")
        write(home / ".ssh" / f"l{levels}.conf", "Host deepest\n")

    chain(15)  # hives.conf -> l0 ... l15: 16 levels of Include
    assert load_text(conf, "Include l0.conf\n").aliases == ("deepest",)
    chain(16)
    message = error_of(conf, "Include l0.conf\n")
    assert message.startswith(f"{home / '.ssh' / 'l15.conf'}:1: Include nested more than 16")


# --- resolution: ssh's rules --------------------------------------------------------------------


def test_defaults(conf: Path, home: Path) -> None:
    config = load_text(conf, "# one machine\n\nHost gpu-box\n")
    hive = config.hives[0]
    keys = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa")
    assert config == HivesConfig(
        path=conf,
        hives=(
            Hive(
                alias="gpu-box",
                hostname="gpu-box",
                user=ME,
                port=22,
                identity_files=tuple(home / ".ssh" / key for key in keys),
                proxy_jump=None,
                hive_port=9000,
                install_dir="~/.local/share/rbee-hive",
                python="python3",
                backend="auto",
                path=conf,
                line=3,
                ssh=hive.ssh,
                known_hosts_files=(home / ".ssh" / "known_hosts", home / ".ssh" / "known_hosts2"),
            ),
        ),
    )
    assert hive.known_hosts() == home / ".ssh" / "known_hosts"
    assert hive.ssh.identity_files == tuple(f"~/.ssh/{key}" for key in keys)


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
    # Without User, ssh logs in as the local user (before: shown as "-").
    ("Host a\n", {"a": {"user": ME, "port": 22, "hostname": "a"}}),
    # A negated pattern takes a host out of a block.
    (
        "Host * !b\n  User shared\nHost a\nHost b\n  User bob\n",
        {"a": {"user": "shared"}, "b": {"user": "bob"}},
    ),
    ("Host !a\n  Port 1\nHost a\n", {"a": {"port": 22}}),
    ("Host ?\n  Port 1000\nHost a\nHost ab\n", {"a": {"port": 1000}, "ab": {"port": 22}}),
    # A host named in several blocks (before: refused as "duplicate Host"): each block applies.
    (
        "Host gpu-box\n  HostName 10.0.0.1\n\nHost other gpu-box\n  HostName x\n  User u\n",
        {"gpu-box": {"hostname": "10.0.0.1", "user": "u"}, "other": {"hostname": "x"}},
    ),
    ("Host a a\n  Port 2\n", {"a": {"port": 2}}),
    # Match blocks apply as in ssh (before: left to asyncssh, so `hive list` ignored them).
    (
        "Host a\nMatch all\n  Port 2222\nHost b\n  Port 3\n",
        {"a": {"port": 2222}, "b": {"port": 2222}},
    ),
    ("Match host x\n  StrictHostKeyChecking accept-new\nHost a\n", {"a": {"port": 22}}),
    (
        "Host a b\n  User alice\nHost b\n  HostName b.lan\nMatch user alice host *.lan\n"
        "  Port 2200\n  RbeeBackend mlx\n",
        {"a": {"port": 22, "backend": "auto"}, "b": {"port": 2200, "backend": "mlx"}},
    ),
    ("Host a\nMatch originalhost A\n  RbeeHivePort 9001\n", {"a": {"hive_port": 9001}}),
    # `none` is a value too, so it wins over later ones.
    (
        "Host a bastion\n  ProxyJump none\nHost *\n  ProxyJump jump@bastion:2222\n  User u\n"
        "Host b\n",
        {"a": {"proxy_jump": None, "user": "u"}, "b": {"proxy_jump": "jump@bastion:2222"}},
    ),
    # ProxyJump as ssh -G prints it: the last hop parsed, a numeric host in brackets.
    ("Host a\n  ProxyJump j1,10.0.0.9:22\n", {"a": {"proxy_jump": "j1,[10.0.0.9]:22"}}),
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
    # HostName may use %h (the alias) and %%; ssh lowercases names (not addresses).
    ("Host *.lan\nHost a b\nHost *\n  HostName %h.lan\n", {"a": {"hostname": "a.lan"}}),
    ("Host Gpu\n  HostName GPU.Example.com\nHost b\n", {"Gpu": {"hostname": "gpu.example.com"}}),
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


def ssh_g(path: Path, alias: str, home: Path) -> list[tuple[str, str]]:
    """What `ssh -G -F path alias` prints for the keys `Hive.settings()` shows."""
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    result = subprocess.run(
        [ssh, "-G", "-F", str(path), alias],
        env={**os.environ, "HOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [tuple(line.split(" ", 1)) for line in result.stdout.splitlines() if " " in line]
    return [(k, v) for k, v in lines if k in SHOWN]


SHOWN = ("user", "hostname", "port", "hostkeyalias", "identityfile", "userknownhostsfile",
         "proxyjump", "proxycommand")  # fmt: skip


def as_ssh_runs(conf: Path) -> HivesConfig:
    """hives.conf resolved with ssh's home for `~` (the password database's, not $HOME)."""
    passwd = pwd.getpwuid(os.getuid())
    local = Local(passwd.pw_name, passwd.pw_dir, os.getuid(), socket.gethostname(), os.environ)
    return build_hives(conf, read_directives(conf), local=local)


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_resolution_agrees_with_ssh(
    conf: Path, home: Path, text: str, expected: dict[str, dict[str, Any]]
) -> None:
    """`ssh -F hives.conf ALIAS` reaches what rbee resolves (rbee's keys aside)."""
    write(conf, "IgnoreUnknown Rbee*\n" + text)
    for hive in as_ssh_runs(conf).hives:
        shown = [(k, v) for k, v in hive.settings() if k in SHOWN]
        assert sorted(shown) == sorted(ssh_g(conf, hive.alias, home)), hive.alias


# --- what asyncssh connects with: the resolution, written out ----------------------------------

ASYNCSSH_KEYS = (
    "Hostname", "User", "Port", "IdentityFile", "IdentitiesOnly", "ProxyJump", "ProxyCommand",
    "UserKnownHostsFile", "ServerAliveInterval", "Compression", "ConnectTimeout", "ForwardAgent",
    "SendEnv", "BatchMode", "HostKeyAlias",
)  # fmt: skip
RESOLVED_KEYS = ("Hostname", "User", "Port", "IdentityFile", "ProxyJump", "UserKnownHostsFile")


def asyncssh_sees(path: Path, host: str) -> dict[str, object]:
    """The options asyncssh takes from config file `path` to connect to `host`."""
    config = SSHClientConfig.load(None, [path], False, False, False, "me", (), host, ())
    return {key: config.get(key) for key in ASYNCSSH_KEYS}


def cut_file(config: HivesConfig, alias: str, folder: Path) -> Path:
    """`config.asyncssh_text(alias)` written to a file (it must not be None here)."""
    text = config.asyncssh_text(alias)
    assert text is not None, alias
    return write(folder / f"{alias}.conf", text)


def assert_asyncssh_connects_as_resolved(config: HivesConfig, folder: Path) -> None:
    """asyncssh reads from each hive's text the host, user, port and files rbee resolved."""
    for hive in config.hives:
        seen = asyncssh_sees(cut_file(config, hive.alias, folder), hive.alias)
        assert (seen["Hostname"], seen["User"], seen["Port"]) == (
            hive.hostname, hive.user, hive.port,
        ), hive.alias  # fmt: skip
        view = hive.ssh
        files = [str(p) for p in hive.identity_files] if view.identity_configured else None
        assert seen["IdentityFile"] == files
        known = [str(p) for p in hive.known_hosts_files] if view.known_hosts_configured else None
        assert seen["UserKnownHostsFile"] == known
        assert bool(seen["ProxyJump"]) == bool(hive.proxy_jump)


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_asyncssh_connects_with_rbees_resolution(
    conf: Path, text: str, expected: dict[str, dict[str, Any]]
) -> None:
    assert_asyncssh_connects_as_resolved(load_text(conf, text), conf.parent / "cut")


@pytest.mark.parametrize(("text", "expected"), [case for case in GOOD if "Match" not in case[0]])
def test_other_keys_reach_asyncssh_as_from_the_whole_file(
    conf: Path, text: str, expected: dict[str, dict[str, Any]]
) -> None:
    """The keys rbee does not resolve are copied as written: from a file of Host blocks,
    asyncssh reads them from a hive's text as from the whole file."""
    config = load_text(conf, text)
    for alias in config.aliases:
        cut = asyncssh_sees(cut_file(config, alias, conf.parent / "cut"), alias)
        whole = asyncssh_sees(conf, alias)
        for key in set(ASYNCSSH_KEYS) - set(RESOLVED_KEYS):
            assert cut[key] == whole[key], (alias, key)


MATCHES = f"""
Host a b
  User alice
Host c
  User carol
Match user alice
  Port 2200
Match localuser {ME} !originalhost b
  Compression yes
Match host a user alice,!bob
  ConnectTimeout 7
Match !all
  ConnectTimeout 9
Match originalhost C
  ForwardAgent yes
Host b*
  HostName %h.lan
  ServerAliveInterval 5
Host *
  SendEnv LANG LC_*
  IdentityFile ~/.ssh/id_%h
"""


def test_match_blocks_are_resolved_by_rbee(conf: Path, home: Path) -> None:
    config = load_text(conf, MATCHES)
    assert_asyncssh_connects_as_resolved(config, conf.parent)
    assert [config.get(h).port for h in "abc"] == [2200, 2200, 22]
    assert config.get("b").hostname == "b.lan"
    assert config.get("a").identity_files == (home / ".ssh" / "id_a",)
    # The keys rbee does not resolve reach asyncssh from the blocks that apply.
    seen = {alias: asyncssh_sees(cut_file(config, alias, conf.parent), alias) for alias in "abc"}
    assert [seen[h]["Compression"] for h in "abc"] == [True, None, True]
    assert [seen[h]["ConnectTimeout"] for h in "abc"] == [7, None, None]
    assert [seen[h]["ForwardAgent"] for h in "abc"] == [None, None, True]
    assert seen["b"]["ServerAliveInterval"] == 5
    assert seen["a"]["SendEnv"] == ["LANG", "LC_*"]
    text = config.asyncssh_text("a") or ""
    assert "Match user" not in text  # decided by rbee, not left to asyncssh


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
          ProxyJump none
        Host *.example.com
          User admin
          ServerAliveInterval 9
        Host *
          IdentityFile ~/.ssh/id_ed25519
        """,
    )
    cut_a = cut_file(config, "a", conf.parent)
    text = cut_a.read_text()
    assert "Match originalhost jump1" in text
    assert "bastion" not in text
    jump = asyncssh_sees(cut_a, "jump1")
    assert (jump["Hostname"], jump["User"], jump["ProxyJump"]) == ("10.0.0.2", "j", "a+jump1")
    # `k@jump2:2200` is a hop of its own: its user and port win, as with `ssh -l k -p 2200`.
    hop = asyncssh_sees(cut_a, "a+jump1")
    assert (hop["Hostname"], hop["User"], hop["Port"], hop["ProxyJump"]) == (
        "jump2", "k", 2200, None,
    )  # fmt: skip
    cut_b = cut_file(config, "b", conf.parent)
    seen = asyncssh_sees(cut_b, "b")
    assert seen["ProxyJump"] == "b+jump1,jump2"
    bastion = asyncssh_sees(cut_b, "b+jump1")
    assert (bastion["Hostname"], bastion["User"], bastion["Port"]) == (
        "bastion.example.com", "admin", 2222,
    )  # fmt: skip
    assert bastion["ServerAliveInterval"] == 9
    assert (asyncssh_sees(cut_b, "jump2")["User"], asyncssh_sees(cut_b, "jump2")["Port"]) == (
        "k", 2201,
    )  # fmt: skip


def test_an_ipv6_jump_host_is_named_for_asyncssh(conf: Path) -> None:
    config = load_text(conf, "Host a\n  ProxyJump [2001:db8::1]:2222\n")
    assert config.get("a").proxy_jump == "[2001:db8::1]:2222"
    cut = cut_file(config, "a", conf.parent)
    assert asyncssh_sees(cut, "a")["ProxyJump"] == "a+jump1"
    hop = asyncssh_sees(cut, "a+jump1")
    assert (hop["Hostname"], hop["Port"]) == ("2001:db8::1", 2222)


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
    assert_asyncssh_connects_as_resolved(config, conf.parent)
    seen = asyncssh_sees(cut_file(config, "b", conf.parent), "b")
    assert (seen["User"], seen["Port"], seen["Compression"], seen["ConnectTimeout"]) == (
        "from-b", 2, True, 4,
    )  # fmt: skip
    seen = asyncssh_sees(cut_file(config, "a", conf.parent), "a")
    assert (seen["User"], seen["Port"], seen["ServerAliveInterval"]) == ("from-inner", 2, 3)


def test_relative_includes_are_read_from_dot_ssh(conf: Path, home: Path) -> None:
    """As ssh and asyncssh do (before: from the including file's folder)."""
    write(conf.parent / "users.conf", "User from-beside\n")
    message = error_of(conf, "Host a\n  Include users.conf\n")
    assert message == f"{conf}:2: Include file not found: {home / '.ssh' / 'users.conf'}"
    write(home / ".ssh" / "users.conf", "User from-dot-ssh\n")
    config = load_text(conf, "Host a\n  Include users.conf\n")
    assert config.get("a").user == "from-dot-ssh"
    assert asyncssh_sees(cut_file(config, "a", conf.parent), "a")["User"] == "from-dot-ssh"


def test_a_hives_lines_leave_the_other_hives_out(conf: Path) -> None:
    hosts = "".join(
        f"Host hive{i}\n  HostName 10.0.0.{i}\n  User root\n  Port 22\n  RbeeHivePort 9000\n"
        for i in range(1, 51)
    )
    config = load_text(conf, "IgnoreUnknown Rbee*\n" + hosts + "Host *\n  ConnectTimeout 5\n")
    text = config.asyncssh_text("hive7") or ""
    assert text.splitlines() == [
        "Match originalhost hive7", "Hostname 10.0.0.7", "User root", "Port 22",
        "IgnoreUnknown Rbee*", "ConnectTimeout 5",
    ]  # fmt: skip


def test_a_match_inside_a_match_applies_when_both_do(conf: Path) -> None:
    inner = write(conf.parent / "inner.conf", f"Match localuser {ME}\n  Port 2\n")
    assert load_text(conf, f"Match user x\n  Include {inner}\nHost a\n").get("a").port == 22
    assert load_text(conf, f"Match user {ME}\n  Include {inner}\nHost a\n").get("a").port == 2


def test_a_connection_gets_its_hives_lines(conf: Path) -> None:
    config = load_text(conf, "Host a\n  Port 2\nHost b\n  Port 3\n")
    assert (config.asyncssh_text("a") or "").splitlines() == [
        "Match originalhost a", "Hostname a", f"User {ME}", "Port 2",
    ]  # fmt: skip
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
    a = config.get("a")
    assert a.ssh.identity_files == ("~/.ssh/id_ed25519", "none", str(key2), "~/.ssh/id_%r")
    assert a.identity_files == (home / ".ssh" / "id_ed25519", key2, home / ".ssh" / f"id_{ME}")


def test_include_relative_paths_globs_and_nesting(conf: Path, home: Path) -> None:
    dot_ssh = home / ".ssh"
    write(dot_ssh / "hives.d" / "b.conf", "Host b\n  Include shared/user.conf\n")
    write(dot_ssh / "hives.d" / "a.conf", "# a\nHost a\n  Port 2001\n")
    write(dot_ssh / "hives.d" / "notes.txt", "this is not config\n")
    write(dot_ssh / "shared" / "user.conf", "User from-include\n")
    write(home / "rbee" / "tilde.conf", "Host t\n")
    absolute = write(conf.parent / "abs.conf", "Host abs\n")
    config = load_text(
        conf,
        f"""
        Include hives.d/*.conf ~/rbee/tilde.conf nothing/*.conf {absolute}
        Host first
          Include shared/user.conf
          Port 2000
        Host last
        """,
    )
    assert config.aliases == ("a", "b", "t", "abs", "first", "last")
    first, a, b = config.get("first"), config.get("a"), config.get("b")
    assert (first.user, first.port) == ("from-include", 2000)
    assert (a.path, a.line, a.port, a.user) == (dot_ssh / "hives.d" / "a.conf", 2, 2001, ME)
    assert b.user == "from-include"
    assert config.get("last").path == conf


def test_include_inside_a_host_block_stays_in_that_block(conf: Path, home: Path) -> None:
    write(home / ".ssh" / "extra.conf", "User bob\n")
    config = load_text(conf, "Host a\n  Include extra.conf\n  Port 2\nHost b\n")
    assert (config.get("a").user, config.get("a").port) == ("bob", 2)
    assert (config.get("b").user, config.get("b").port) == (ME, 22)


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
        ["a", "10.0.0.1", "alice", "22", "9000", "mlx", "~/.local/share/rbee-hive", "-"],
        ["b", "b", ME, "22", "9000", "auto", "~/.local/share/rbee-hive", "-"],
    ]  # no inventory: no groups


def test_cli_hive_list_shows_what_match_blocks_set(conf: Path, home: Path) -> None:
    """The user shown is the one rbee connects as (before: Match blocks were not applied)."""
    write(conf, "Host a\n  HostName gpu.lan\nMatch host *.lan\n  User lan-user\n  Port 2200\n")
    listing = run_rbee(home, "--hives", str(conf), "hive", "list")
    assert listing.stdout.splitlines()[1].split()[:4] == ["a", "gpu.lan", "lan-user", "2200"]


def test_cli_config_show(conf: Path, home: Path) -> None:
    key = home / ".ssh" / "id_ed25519"
    write(
        conf,
        f"""
        IgnoreUnknown Rbee*
        Host gpu
          HostName GPU.lan
          IdentityFile {key}
          UserKnownHostsFile {home}/kh/%h
        Match originalhost gpu user {ME}
          User alice
          Port 2200
          ProxyJump admin@bastion:2222
          RbeeBackend mlx
        """,
    )
    result = run_rbee(home, "--hives", str(conf), "config", "show", "gpu")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "user alice",
        "hostname gpu.lan",
        "port 2200",
        f"identityfile {key}",
        f"userknownhostsfile {home}/kh/gpu.lan",
        "proxyjump admin@bastion:2222",
        "rbeehiveport 9000",
        "rbeeinstalldir ~/.local/share/rbee-hive",
        "rbeepython python3",
        "rbeebackend mlx",
        "rbeecpurepack auto",
    ]
    if shutil.which("ssh"):  # as ssh resolves it, key for key
        shown = [tuple(line.split(" ", 1)) for line in result.stdout.splitlines()]
        assert sorted(k for k in shown if k[0] in SHOWN) == sorted(ssh_g(conf, "gpu", home))
    line = one_error_line(run_rbee(home, "--hives", str(conf), "config", "show", "nope"))
    assert line == f"rbee: error: unknown hive 'nope' (hives in {conf}: gpu)"


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
    """`ssh -F hives.conf ALIAS` resolves each hive of the example as rbee does."""
    for hive in as_ssh_runs(example).hives:
        shown = [(k, v) for k, v in hive.settings() if k in SHOWN]
        assert sorted(shown) == sorted(ssh_g(example, hive.alias, home)), hive.alias
