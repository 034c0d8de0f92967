"""rbee's one ssh resolver against OpenSSH's own: `ssh -G -F FILE HOST` on the same files.

Hand-written tables cover each feature (Host lists, negation, globs, Match, Include, tokens,
`=` and quotes, keyword case, ProxyJump) and the mistakes; a seeded generator then builds a few
hundred files mixing them, and for every alias rbee must print what ssh prints for HostName,
User, Port, ProxyJump, IdentityFile and UserKnownHostsFile (and rbee's own keys resolve as the
standard keys written beside them).
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from asyncssh.config import SSHClientConfig

from rbee.config.hives import HivesConfig, build_hives
from rbee.config.sshconfig import read_directives
from rbee.config.sshresolve import Local, SshView, resolve
from rbee.errors import ConfigError

SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(SSH is None, reason="the OpenSSH client (ssh) is not installed")

COMPARED = ("user", "hostname", "port", "identityfile", "userknownhostsfile", "proxyjump")
PASSWD = pwd.getpwuid(os.getuid())
ME = PASSWD.pw_name


@dataclass(frozen=True)
class Place:
    """A temporary $HOME (for ssh's Include lookups) and the config folder beside it."""

    home: Path
    folder: Path
    local: Local
    """As ssh runs: `~` and %d are the password database's home, not $HOME."""

    @property
    def env(self) -> dict[str, str]:
        """The environment ssh and rbee's `${VAR}` expansion see."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)}

    def write(self, name: str, text: str) -> Path:
        """Write a config file (relative names under the folder); return its path."""
        path = Path(name) if os.path.isabs(name) else self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path


@pytest.fixture
def place(tmp_path: Path) -> Place:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    folder = tmp_path / "cfg"
    folder.mkdir()
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "")}
    local = Local(ME, PASSWD.pw_dir, os.getuid(), socket.gethostname(), env)
    return Place(home, folder, local)


def ssh_g(place: Place, conf: Path, host: str) -> dict[str, list[str]]:
    """What `ssh -G -F conf host` prints for the compared keys (and rbee's twins)."""
    assert SSH is not None
    result = subprocess.run(
        [SSH, "-G", "-F", str(conf), host],
        env=place.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, (host, result.stderr, conf.read_text())
    seen: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in (*COMPARED, "connectionattempts", "xauthlocation"):
            seen.setdefault(key, []).append(value)
    return seen


def view_g(view: SshView) -> dict[str, list[str]]:
    """A resolution in the form `ssh_g` returns."""
    seen = {
        "user": [view.user],
        "hostname": [view.hostname],
        "port": [str(view.port)],
        "identityfile": list(view.identity_files),
    }
    if view.user_known_hosts:
        seen["userknownhostsfile"] = [" ".join(view.user_known_hosts)]
    if view.proxy_jump is not None:
        seen["proxyjump"] = [view.proxy_jump]
    return seen


def rbee_g(place: Place, conf: Path, host: str) -> dict[str, list[str]]:
    return view_g(resolve(list(read_directives(conf, place.home)), host, place.local))


def only(seen: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: v for k, v in seen.items() if k in COMPARED}


# --- each feature, by hand -----------------------------------------------------------------------

DEFAULT_IDS = [
    f"~/.ssh/id_{kind}"
    for kind in ("rsa", "ecdsa", "ecdsa_sk", "ed25519", "ed25519_sk", "xmss", "dsa")
]
HOME = PASSWD.pw_dir.rstrip("/")
DEFAULT_KH = [f"{HOME}/.ssh/known_hosts {HOME}/.ssh/known_hosts2"]

FEATURES: list[tuple[str, str, str, dict[str, list[str]]]] = [
    # (what, file, host, expected values that differ from ssh's defaults)
    ("defaults", "Host a\n", "a", {}),
    (
        "first value wins",
        "Host a\n  User u1\nHost a\n  User u2\n  Port 2\n",
        "a",
        {"user": ["u1"], "port": ["2"]},
    ),
    (
        "a host in several blocks",
        "Host a b\n  Port 1\nHost b c\n  Port 2\n  User bc\n",
        "b",
        {"port": ["1"], "user": ["bc"]},
    ),
    ("lines before any Host", "User all\nHost a\n  User mine\n", "a", {"user": ["all"]}),
    ("glob *", "Host *.lan\n  User lan\nHost *\n  User other\n", "gpu.lan", {"user": ["lan"]}),
    ("glob ?", "Host ?b\n  Port 7\n", "ab", {"port": ["7"]}),
    ("glob ? is one character", "Host ?b\n  Port 7\n", "aab", {}),
    ("negation", "Host * !b*\n  User star\n", "bee", {}),
    ("negation beside", "Host * !b*\n  User star\n", "a", {"user": ["star"]}),
    ("only negations never match", "Host !x\n  User y\n", "a", {}),
    ("Host is case-sensitive", "Host A\n  User upper\n", "a", {}),
    ("commas are literal in Host", "Host a,b\n  User commas\n", "a", {}),
    (
        "HostName %h",
        "Host *\n  HostName %h.example.com\n",
        "gpu",
        {"hostname": ["gpu.example.com"]},
    ),
    ("HostName %%", "Host a\n  HostName a%%b\n", "a", {"hostname": ["a%b"]}),
    (
        "HostName lowercased",
        "Host a\n  HostName GPU.Example.COM\n",
        "a",
        {"hostname": ["gpu.example.com"]},
    ),
    ("the alias lowercased", "Host *\n  Port 3\n", "GPU", {"hostname": ["gpu"], "port": ["3"]}),
    (
        "an address as written by the resolver",
        "Host a\n  HostName 10.1\n",
        "a",
        {"hostname": ["10.0.0.1"]},
    ),
    (
        "an IPv6 address keeps its case",
        "Host a\n  HostName FE80::1\n",
        "a",
        {"hostname": ["FE80::1"]},
    ),
    ("Match all", "Match all\n  Port 9\n", "a", {"port": ["9"]}),
    ("Match !all", "Match !all\n  Port 9\n", "a", {}),
    (
        "Match host sees HostName",
        "Host a\n  HostName gpu.lan\nMatch host *.lan\n  User lan\n",
        "a",
        {"hostname": ["gpu.lan"], "user": ["lan"]},
    ),
    ("Match host lists", "Match host x,a\n  User listed\n", "a", {"user": ["listed"]}),
    ("Match host negated list", "Match host *,!a\n  User listed\n", "a", {}),
    ("Match host is case-insensitive", "Match host A*\n  User ci\n", "ab", {"user": ["ci"]}),
    (
        "Match originalhost",
        "Host a\n  HostName other\nMatch originalhost a\n  Port 5\n",
        "a",
        {"hostname": ["other"], "port": ["5"]},
    ),
    (
        "Match user sees User so far",
        "Host a\n  User bob\nMatch user bob\n  Port 6\n",
        "a",
        {"user": ["bob"], "port": ["6"]},
    ),
    ("Match user: local user by default", f"Match user {ME}\n  Port 6\n", "a", {"port": ["6"]}),
    (
        "Match user before User",
        "Match user bob\n  Port 6\nHost a\n  User bob\n",
        "a",
        {"user": ["bob"]},
    ),
    ("Match localuser", f"Match localuser {ME}\n  User via-local\n", "a", {"user": ["via-local"]}),
    (
        "Match criteria all hold",
        "Match host a !user root*\n  Port 8\n",
        "a",
        {} if ME.startswith("root") else {"port": ["8"]},
    ),
    ("Match key=value and quotes", 'Match host="x,a"\n  Port 4\n', "a", {"port": ["4"]}),
    ("keyword case", "HOST a\n  hostname H1\n  pOrT 2\n", "a", {"hostname": ["h1"], "port": ["2"]}),
    (
        "Key=value",
        "Host=a\n  User=eq\n  Port = 3\n  HostName =h\n",
        "a",
        {"user": ["eq"], "port": ["3"], "hostname": ["h"]},
    ),
    (
        "quotes",
        'Host "a"\n  User "q u"\n  IdentityFile "~/my keys/id"\n',
        "a",
        {"user": ["q u"], "identityfile": ["~/my keys/id"]},
    ),
    (
        "escapes",
        "Host a\n  IdentityFile ~/my\\ key\n  User 'it\\'s'\n",
        "a",
        {"identityfile": ["~/my key"], "user": ["it's"]},
    ),
    (
        "IdentityFile adds up, once each",
        "Host a\n  IdentityFile ~/k1\n  IdentityFile ~/k2\n"
        "Host *\n  IdentityFile ~/k1\n  IdentityFile ~/k3\n",
        "a",
        {"identityfile": ["~/k1", "~/k2", "~/k3"]},
    ),
    ("IdentityFile none", "Host a\n  IdentityFile none\n", "a", {"identityfile": ["none"]}),
    (
        "IdentityFile keeps tokens",
        "Host a\n  IdentityFile ~/.ssh/id_%h_%r\n",
        "a",
        {"identityfile": ["~/.ssh/id_%h_%r"]},
    ),
    (
        "UserKnownHostsFile tokens",
        "Host a\n  HostName H.lan\n  User u\n  Port 2\n"
        "  UserKnownHostsFile ~/kh/%h %d/%n-%p-%r-%u %%\n",
        "a",
        {
            "hostname": ["h.lan"],
            "user": ["u"],
            "port": ["2"],
            "userknownhostsfile": [f"{HOME}/kh/h.lan {HOME}/a-2-u-{ME} %"],
        },
    ),
    (
        "UserKnownHostsFile first line wins whole",
        "Host a\n  UserKnownHostsFile /k1 /k2\nHost *\n  UserKnownHostsFile /k3\n",
        "a",
        {"userknownhostsfile": ["/k1 /k2"]},
    ),
    ("ProxyJump", "Host a\n  ProxyJump u@jump:2222\n", "a", {"proxyjump": ["u@jump:2222"]}),
    (
        "ProxyJump hops",
        "Host a\n  ProxyJump j1,u@10.0.0.2:3\n",
        "a",
        {"proxyjump": ["j1,u@[10.0.0.2]:3"]},
    ),
    (
        "ProxyJump IPv6",
        "Host a\n  ProxyJump [2001:db8::1]:22\n",
        "a",
        {"proxyjump": ["[2001:db8::1]:22"]},
    ),
    (
        "ProxyJump URI",
        "Host a\n  ProxyJump ssh://u@j.example:7\n",
        "a",
        {"proxyjump": ["u@j.example:7"]},
    ),
    ("ProxyJump none wins", "Host a\n  ProxyJump none\nHost *\n  ProxyJump j\n", "a", {}),
    ("ProxyCommand before ProxyJump", "Host a\n  ProxyCommand nc %h %p\n  ProxyJump j\n", "a", {}),
    (
        "ProxyJump before ProxyCommand",
        "Host a\n  ProxyJump j\n  ProxyCommand nc\n",
        "a",
        {"proxyjump": ["j"]},
    ),
]


def defaults(expected: dict[str, list[str]]) -> dict[str, list[str]]:
    full = {
        "user": [ME], "hostname": [], "port": ["22"], "identityfile": DEFAULT_IDS,
        "userknownhostsfile": DEFAULT_KH,
    }  # fmt: skip
    full.update(expected)
    return {k: v for k, v in full.items() if v}


@pytest.mark.parametrize(
    ("what", "text", "host", "expected"), FEATURES, ids=[f[0] for f in FEATURES]
)
def test_features(
    place: Place, what: str, text: str, host: str, expected: dict[str, list[str]]
) -> None:
    conf = place.write("ssh.conf", text)
    seen = rbee_g(place, conf, host)
    want = defaults(expected)
    want.setdefault("hostname", [host.lower()])
    assert seen == want, what


@needs_ssh
@pytest.mark.parametrize(
    ("what", "text", "host", "expected"), FEATURES, ids=[f[0] for f in FEATURES]
)
def test_features_agree_with_ssh(
    place: Place, what: str, text: str, host: str, expected: dict[str, list[str]]
) -> None:
    conf = place.write("ssh.conf", text)
    assert rbee_g(place, conf, host) == only(ssh_g(place, conf, host)), what


@needs_ssh
def test_all_path_tokens_agree_with_ssh(place: Place) -> None:
    conf = place.write(
        "ssh.conf",
        "Host a\n  HostKeyAlias KA\n"
        "  UserKnownHostsFile /x/%k/%i/%l/%L/%C /y/%n%h%p%r%u%d ${HOME}/e\n",
    )
    seen = rbee_g(place, conf, "a")
    assert seen == only(ssh_g(place, conf, "a"))
    first, _, env = seen["userknownhostsfile"][0].split(" ")
    assert first.startswith(f"/x/ka/{os.getuid()}/{socket.gethostname()}/")
    assert env == f"{place.home}/e"


def test_include_is_read_from_dot_ssh(place: Place) -> None:
    """As `ssh -F FILE`: a relative Include is read from ~/.ssh, not from FILE's folder."""
    place.write(str(place.home / ".ssh" / "users.conf"), "User from-dot-ssh\n")
    place.write("users.conf", "User from-beside\n")
    place.write(str(place.home / ".ssh" / "d" / "1.conf"), "Host *\n  Port 1\n")
    place.write(str(place.home / ".ssh" / "d" / "2.conf"), "Host *\n  Port 2\n  User two\n")
    conf = place.write("ssh.conf", "Host a\n  Include users.conf\n")
    assert rbee_g(place, conf, "a")["user"] == ["from-dot-ssh"]
    glob_conf = place.write("glob.conf", "Include d/*.conf ~/.ssh/d/2.conf nothing/*.conf\n")
    assert (rbee_g(place, glob_conf, "a")["port"], rbee_g(place, glob_conf, "a")["user"]) == (
        ["1"], ["two"],
    )  # fmt: skip
    if SSH is not None:
        for path in (conf, glob_conf):
            assert rbee_g(place, path, "a") == only(ssh_g(place, path, "a"))


def test_include_in_a_block_applies_with_it(place: Place) -> None:
    """An included file's lines apply only where the Include line does; a Host or Match line
    in it decides for the rest of that file, and the including file goes on in its own block."""
    inner = place.write(
        "inner.conf", "User inner\nHost *\n  Port 2\nMatch user inner\n  IdentityFile ~/inner\n"
    )
    conf = place.write(
        "ssh.conf",
        f"Host a\n  Include {inner}\n  HostName after-include\nHost b\n  HostName b-host\n"
        f"Match user nobody\n  Include {inner}\nHost *\n  Port 9\n",
    )
    a, b = rbee_g(place, conf, "a"), rbee_g(place, conf, "b")
    assert (a["user"], a["port"], a["hostname"], a["identityfile"]) == (
        ["inner"], ["2"], ["after-include"], ["~/inner"],
    )  # fmt: skip
    assert (b["user"], b["port"], b["hostname"]) == ([ME], ["9"], ["b-host"])
    if SSH is not None:
        for host in ("a", "b"):
            assert rbee_g(place, conf, host) == only(ssh_g(place, conf, host))


def test_a_jump_host_resolves_with_the_hops_user_and_port(place: Place) -> None:
    """As `ssh -l USER -p PORT`: a hop's own user and port win over the file's."""
    conf = place.write("ssh.conf", "Match user hop\n  Port 3\nHost j\n  User file-user\n  Port 2\n")
    lines = list(read_directives(conf, place.home))
    assert resolve(lines, "j", place.local).user == "file-user"
    hop = resolve(lines, "j", place.local, user="hop", port=None)
    assert (hop.user, hop.port) == ("hop", 3)
    assert resolve(lines, "j", place.local, user=None, port=44).port == 44


MISTAKES = [
    ("Match exec true\n", "Match exec: rbee does not run commands"),
    ("Match canonical\n  User x\n", "Match canonical: rbee does not canonicalize"),
    ("Match final\n", "Match final: rbee does not canonicalize"),
    ("Match host a !final\n", "Match final"),
    ("Match tagged x\n", "unsupported Match criterion 'tagged'"),
    ("Match localnetwork 10.0.0.0/8\n", "unsupported Match criterion 'localnetwork'"),
    ("Match host\n", "Match host needs a pattern"),
    ("Match all host a\n", "Match all cannot be combined"),
    ("Match host a user b all\n", "Match all cannot be combined"),
    ("Host a\n  IdentityFile ~/.ssh/%x\n", "IdentityFile may use the tokens %%, %C, %d"),
    ("Host a\n  UserKnownHostsFile /k/%\n", "ends with a lone %"),
    ("Host a\n  ProxyJump host/path\n", "invalid jump host 'host/path'"),
    ("Host a\n  ProxyJump @host\n", "invalid jump host '@host'"),
    ("Host a\n  ProxyJump host:0\n", "invalid jump host 'host:0'"),
    ("Host z\n  ProxyJump [::1\n", "invalid jump host"),
    ("Host a\n  UserKnownHostsFile ${RBEE_UNSET}/kh\n", "${RBEE_UNSET}, which is not set"),
    ("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n", "loops through its jump hosts (a -> b -> a"),
    ("Host *\n  ProxyJump bastion\nHost a\n", "(a -> bastion -> bastion)"),
    ("Host a\n  ProxyJump " + ",".join(f"j{i}" for i in range(9)) + "\nHost j*\n  ProxyJump none\n",
     "goes through more than 8 jump hosts"),
    ("CanonicalizeHostname yes\nHost a\n", "rbee does not canonicalize host names"),
    ("Host a\n  User none\n", "User none: ssh logs in as a user called 'none'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), MISTAKES)
def test_mistakes_name_the_file_and_line(place: Place, text: str, message: str) -> None:
    conf = place.write("hives.conf", text)
    with pytest.raises(ConfigError) as info:
        build_hives(conf, read_directives(conf, place.home), local=place.local)
    first_line = 1 if text.startswith(("Match", "Canon")) else 2
    assert str(info.value).startswith(f"{conf}:{first_line}: "), str(info.value)
    assert message in str(info.value)


# --- asyncssh connects with the same resolution ----------------------------------------------


def asyncssh_sees(path: Path, host: str) -> dict[str, object]:
    config = SSHClientConfig.load(None, [path], False, False, False, "me", (), host, ())
    keys = ("Hostname", "User", "Port", "ProxyJump", "IdentityFile", "UserKnownHostsFile")
    return {key: config.get(key) for key in keys}


def assert_asyncssh_agrees(config: HivesConfig, folder: Path, local: Local) -> None:
    """For every hive, asyncssh reads from its text what rbee resolved: the host, user, port and
    files, and for each jump host the host, user and port of that hop."""
    for hive in config.hives:
        cut = folder / f"{hive.alias}.cut.conf"
        cut.write_text(config.asyncssh_text(hive.alias) or "")
        seen = asyncssh_sees(cut, hive.alias)
        view = hive.ssh
        assert (seen["Hostname"], seen["User"], seen["Port"]) == (
            hive.hostname, hive.user, hive.port,
        )  # fmt: skip
        if view.identity_configured:
            assert seen["IdentityFile"] == [str(p) for p in hive.identity_files]
        if view.known_hosts_configured:
            assert seen["UserKnownHostsFile"] == [str(p) for p in hive.known_hosts_files]
        hops = str(seen["ProxyJump"] or "").split(",") if seen["ProxyJump"] else []
        assert len(hops) == len(view.hops)
        for name, hop in zip(hops, view.hops, strict=True):
            jump = asyncssh_sees(cut, name)
            want = resolve(config.directives, hop.host, local, user=hop.user, port=hop.port)
            assert (jump["Hostname"], jump["User"], jump["Port"]) == (
                want.hostname, want.user, want.port,
            ), (hive.alias, name, hop)  # fmt: skip


# --- the generated corpus ----------------------------------------------------------------------

ALIASES = ["web", "db1", "gpu-2", "Gpu-2", "a.lan", "x", "123"]
JUMPS = ["jh1", "u@jh2.example.com:2222", "jh3,jh1", "10.9.9.9", "[::1]:3", "ssh://v@jh4:7"]
HOST_GLOBS = ["*", "g*", "?b1", "*.lan", "web*", "db?", "G*"]
MATCH_PATTERNS = ["web", "WEB", "*.lan", "g*,!gpu-2", "10.*", "x,db1", "a*", "!x"]
USERS = ["alice", "bob", "Carol", ME]


class Corpus:
    """One generated config: its main file, included files, and the names to resolve."""

    def __init__(self, rng: random.Random, place: Place, index: int) -> None:
        self.rng = rng
        self.place = place
        self.index = index
        self.aliases: list[str] = []
        self.includes = 0
        self.jumps = True

    def kw(self, keyword: str) -> str:
        """A keyword in some case."""
        return self.rng.choice([keyword, keyword.lower(), keyword.upper()])

    def line(self, keyword: str, value: str, quote: bool | None = None) -> str:
        """`Keyword value` in one of ssh's spellings; quoted if `quote`, maybe if None."""
        if quote or (quote is None and self.rng.random() < 0.25):
            value = f'"{value}"'
        sep = self.rng.choice([" ", " ", "=", " = ", " =", "\t"])
        indent = self.rng.choice(["", "  ", "\t"])
        return f"{indent}{self.kw(keyword)}{sep}{value}"

    def setting(self) -> list[str]:
        rng = self.rng
        kinds = ["hostname", "user", "port", "identity", "known", "alias", "rbee_port", "rbee_dir"]
        kinds += ["jump", "command"] if self.jumps else []
        kinds += ["include"] if self.includes < 4 else []
        kind = rng.choice(kinds)
        if kind == "hostname":
            value = rng.choice(
                ["%h.lan", "%h", "10.0.0.7", "Web.Example.COM", "10.1", "h-%%", "WEB"]
            )
            return [self.line("HostName", value)]
        if kind == "user":
            return [self.line("User", rng.choice(USERS))]
        if kind == "port":
            return [self.line("Port", rng.choice(["22", "2200", "2201"]))]
        if kind == "identity":
            value = rng.choice(
                ["~/.ssh/id_%h", "~/.ssh/id_ed25519", "~/my keys/id_%r", "none", "/keys/k_%n",
                 "~/.ssh/id_ed25519", "%d/k"]
            )  # fmt: skip
            return [self.line("IdentityFile", value, quote=True if " " in value else None)]
        if kind == "known":
            value = rng.choice(
                ["~/.ssh/kh_%h", "~/kh/%n_%p %d/x", "/abs/kh_%C", "${HOME}/kh %u", "/k/%k_%i",
                 "/k/%l-%L-%r %%"]
            )  # fmt: skip
            return [self.line("UserKnownHostsFile", value, quote=False if " " in value else None)]
        if kind == "jump":
            return [self.line("ProxyJump", rng.choice([*JUMPS, "none"]), quote=False)]
        if kind == "command":
            return [self.line("ProxyCommand", rng.choice(["nc %h %p", "none"]), quote=False)]
        if kind == "alias":
            return [self.line("HostKeyAlias", rng.choice(["KeyAlias", "ka.%h"]))]
        if kind == "rbee_port":
            n = str(rng.randint(9001, 9009))
            return [self.line("RbeeHivePort", n), self.line("ConnectionAttempts", n)]
        if kind == "rbee_dir":
            d = f"/opt/r{rng.randint(1, 9)}"
            return [self.line("RbeeInstallDir", d), self.line("XAuthLocation", d)]
        return [self.include_line()]

    def include_line(self) -> str:
        """An Include of a new small file: relative (~/.ssh), absolute, `~/` or a glob."""
        self.includes += 1
        name = f"inc{self.index}_{self.includes}.conf"
        lines = [*self.setting_lines(2), *self.block(nested=True)]
        self.place.write(str(self.place.home / ".ssh" / name), "\n".join(lines) + "\n")
        how = self.rng.choice(["rel", "abs", "tilde", "glob"])
        arg = {
            "rel": name,
            "abs": str(self.place.home / ".ssh" / name),
            "tilde": f"~/.ssh/{name}",
            "glob": f"inc{self.index}_{self.includes}.c*f",
        }[how]
        return self.line("Include", arg, quote=False)

    def setting_lines(self, most: int) -> list[str]:
        count = self.rng.randint(0, most)
        return [line for _ in range(count) for line in self.setting()]

    def host_line(self, nested: bool) -> str:
        rng = self.rng
        patterns: list[str] = []
        if not nested:  # included files name no aliases: rbee refuses aliases ssh never reaches
            patterns += rng.sample(ALIASES, rng.randint(0, 2))
        patterns += rng.sample(HOST_GLOBS, rng.randint(0 if patterns else 1, 1))
        if rng.random() < 0.3:
            patterns.append("!" + rng.choice(ALIASES + HOST_GLOBS[1:]))
        rng.shuffle(patterns)
        self.aliases += [p for p in patterns if p in ALIASES and p not in self.aliases]
        return f"{self.kw('Host')}{rng.choice([' ', '='])}{' '.join(patterns)}"

    def match_line(self) -> str:
        rng = self.rng
        if rng.random() < 0.15:
            return f"{self.kw('Match')} {rng.choice(['all', '!all'])}"
        criteria = []
        for _ in range(rng.randint(1, 2)):
            attribute = rng.choice(["host", "originalhost", "user", "localuser"])
            pattern = rng.choice(USERS if "user" in attribute else MATCH_PATTERNS)
            negated = "!" if rng.random() < 0.2 else ""
            sep = rng.choice([" ", "="])
            quote = '"' if rng.random() < 0.2 else ""
            criteria.append(f"{negated}{attribute}{sep}{quote}{pattern}{quote}")
        return f"{self.kw('Match')} {' '.join(criteria)}"

    def block(self, nested: bool = False) -> list[str]:
        opener = self.match_line() if self.rng.random() < 0.35 else self.host_line(nested)
        return [opener, *self.setting_lines(4)]

    def build(self) -> Path:
        # Jump hosts jump no further (a Host * ProxyJump would make loops rbee refuses).
        self.jumps = False
        lines = ["IgnoreUnknown Rbee*", *self.setting_lines(2)]
        lines += ["Host jh* 10.9.9.? ::?", "  ProxyJump none"]
        self.jumps = True
        for _ in range(self.rng.randint(2, 6)):
            lines += self.block()
        if not self.aliases:
            lines += [f"Host {self.rng.choice(ALIASES)}"]
            self.aliases.append(lines[-1].split()[1])
        return self.place.write(f"corpus{self.index}.conf", "\n".join(lines) + "\n")


def corpus(place: Place, seed: int, count: int) -> Iterator[tuple[Path, list[str]]]:
    rng = random.Random(seed)
    for index in range(count):
        c = Corpus(rng, place, index)
        conf = c.build()
        yield conf, [*c.aliases, rng.choice(["jh1", "other.lan", "WEB"])]


@needs_ssh
def test_generated_configs_resolve_as_ssh_does(place: Place) -> None:
    """A few hundred generated files: for every alias (and one other name), rbee's view is what
    `ssh -G` prints; rbee's own keys win where the standard keys beside them win; asyncssh
    reads from each hive's text what rbee resolved."""
    cases = list(corpus(place, seed=20240607, count=300))
    jobs = [(conf, name) for conf, names in cases for name in names]
    with ThreadPoolExecutor(max_workers=4) as pool:
        seen_by_ssh = dict(zip(jobs, pool.map(lambda job: ssh_g(place, *job), jobs), strict=True))
    compared = 0
    for conf, names in cases:
        lines = list(read_directives(conf, place.home))
        config = build_hives(conf, lines, problem=lambda _: None, local=place.local)
        for name in names:
            ssh = seen_by_ssh[conf, name]
            if name in config.aliases:
                hive = config.get(name)
                mine = dict[str, list[str]]()
                for key, value in hive.settings():
                    mine.setdefault(key, []).append(value)
                assert only(mine) == only(ssh), (name, conf.read_text())
                twins = {"rbeehiveport": "connectionattempts", "rbeeinstalldir": "xauthlocation"}
                defaults = {"connectionattempts": "1", "xauthlocation": "/usr/bin/xauth"}
                rbee_defaults = {
                    "rbeehiveport": "9000",
                    "rbeeinstalldir": "~/.local/share/rbee-hive",
                }
                for rbee_key, ssh_key in twins.items():
                    expected = ssh[ssh_key][0]
                    if expected == defaults[ssh_key]:
                        expected = rbee_defaults[rbee_key]
                    assert mine[rbee_key] == [expected], (name, rbee_key, conf.read_text())
            else:
                assert view_g(resolve(lines, name, place.local)) == only(ssh), (name, conf)
            compared += 1
        assert_asyncssh_agrees(config, place.folder, place.local)
    assert compared == len(jobs) > 900
