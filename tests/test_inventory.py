"""The inventory: groups of hives.conf's hives, checked as `FILE:LINE: message`, and the CLI."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from rbee.config.hives import HivesConfig, load_hives
from rbee.config.inventory import ALL, load_inventory, select_hives
from rbee.config.yamlfile import MAX_BYTES
from rbee.errors import ConfigError
from tests.conftest import make_paths, rbee

ROOT = Path(__file__).resolve().parent.parent
HIVES = """
Host gpu-desktop
    HostName 192.0.2.10
Host old-server
    HostName 192.0.2.20
Host mac-mini
    HostName 192.0.2.30
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def hives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HivesConfig:
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return load_hives(write(tmp_path / "hives.conf", HIVES))


def inventory_of(tmp_path: Path, hives: HivesConfig, text: str) -> object:
    return load_inventory(write(tmp_path / "inventory.yaml", text), hives)


def test_groups_expand_in_hives_conf_order_with_their_defaults(
    tmp_path: Path, hives: HivesConfig
) -> None:
    inventory = load_inventory(
        write(
            tmp_path / "inventory.yaml",
            """
            groups:
              gpus:
                hives: [old-server, gpu-desktop]
                engine: exllamav2
                device: cuda:0
              macs: mac-mini
              fleet: [gpus, macs]
              everything: [all]
            """,
        ),
        hives,
    )
    assert inventory.group("gpus").hives == ("gpu-desktop", "old-server")
    assert inventory.group("macs").hives == ("mac-mini",)
    assert inventory.group("fleet").hives == ("gpu-desktop", "old-server", "mac-mini")
    assert inventory.group("everything").hives == inventory.group(ALL).hives == hives.aliases
    assert inventory.vars_for("old-server") == {"engine": "exllamav2", "device": "cuda:0"}
    assert inventory.vars_for("mac-mini") == {}
    assert inventory.groups_of("gpu-desktop") == ["gpus", "fleet", "everything"]
    chosen = select_hives(hives, inventory, ["mac-mini"], ["gpus"])
    assert [h.alias for h in chosen] == ["gpu-desktop", "old-server", "mac-mini"]
    assert select_hives(hives, inventory, [], []) == list(hives.hives)


def test_the_example_inventory_fits_the_example_hives_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("the key the example names\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    example = load_hives(ROOT / "hives.conf.example")
    inventory = load_inventory(ROOT / "inventory" / "example.yaml", example)
    assert inventory.group("accelerated").hives == ("gpu-desktop", "mac-mini")
    assert inventory.vars_for("mac-mini") == {"engine": "mlx"}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("groups:\n  gpus: [gpu-desktop, nope]\n", 2, "'nope' is neither a hive"),
        ("groups:\n  gpus:\n    hivs: [gpu-desktop]\n", 3, "unknown key 'hivs' in group 'gpus' "
         "(did you mean 'hives'?)"),
        ("groups:\n  gpus:\n    engine: mlx\n", 3, "group 'gpus' needs `hives:`"),
        ("groups:\n  gpus:\n    hives: gpu-desktop\n    engine: vllm\n", 4, "engine must be one"),
        ("groups:\n  gpus:\n    hives: gpu-desktop\n    device: gpu0\n", 4, "device must be"),
        ("groups:\n  all: [gpu-desktop]\n", 2, "'all' is every hive"),
        ("groups:\n  mac-mini: [gpu-desktop]\n", 2, "has the name of a hive"),
        ("groups:\n  a: [b]\n  b: [a]\n", 2, "groups include each other: a -> b -> a"),
        ("groups:\n  a: [gpu-desktop]\n  a: [mac-mini]\n", 3, "'a' is given twice"),
        ("groups:\n  a: [gpu-desktop\n", 3, "not valid YAML"),
        ("groups: [a, b]\n", 1, "groups must be a mapping"),
        ("group:\n  a: [gpu-desktop]\n", 1, "unknown key 'group' in the inventory"),
        ("groups:\n  a: [[gpu-desktop]]\n", 2, "each of group 'a' must be a text"),
    ],
)  # fmt: skip
def test_mistakes_name_the_file_and_line(
    tmp_path: Path, hives: HivesConfig, text: str, line: int, message: str
) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_inventory(path, hives)
    assert str(refused.value).startswith(f"{path}:{line}: ")
    assert message in str(refused.value)


def test_two_groups_that_disagree_on_a_default_are_named(
    tmp_path: Path, hives: HivesConfig
) -> None:
    inventory = load_inventory(
        write(
            tmp_path / "inventory.yaml",
            """
            groups:
              gpus: {hives: [gpu-desktop], engine: exllamav2}
              cheap: {hives: [gpu-desktop, old-server], engine: llamacpp}
            """,
        ),
        hives,
    )
    assert inventory.vars_for("old-server") == {"engine": "llamacpp"}
    with pytest.raises(ConfigError, match=r"'gpus' \(engine: exllamav2, line 2\) and 'cheap'"):
        inventory.vars_for("gpu-desktop")


def test_files_that_are_not_inventories_are_refused_without_reading_them_whole(
    tmp_path: Path, hives: HivesConfig
) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        load_inventory(big, hives)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # nobody writes to it: a read would wait for ever
    with pytest.raises(ConfigError, match="not a regular file"):
        load_inventory(fifo, hives)
    with pytest.raises(ConfigError, match="no such file"):
        load_inventory(tmp_path / "missing.yaml", hives)
    assert load_inventory(tmp_path / "missing.yaml", hives, required=False).groups.keys() == {ALL}
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert load_inventory(tmp_path / "empty.yaml", hives).groups.keys() == {ALL}


def test_the_cli_reads_groups(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    write(paths.config_dir / "hives.conf", HIVES)  # the example's aliases
    inventory = paths.config_dir / "inventory.yaml"
    shutil.copy(ROOT / "inventory" / "example.yaml", inventory)
    listed = rbee(paths, "hive", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[-1] for line in listed.stdout.splitlines()[1:]}
    assert rows == {"gpu-desktop": "gpus,accelerated", "old-server": "cpus",
                    "mac-mini": "macs,accelerated"}  # fmt: skip
    checked = rbee(paths, "config", "check")
    assert checked.returncode == 0, checked.stderr
    assert f"{inventory}: 4 group(s) OK: gpus (1), macs (1), cpus (1), accelerated (2)" in (
        checked.stdout
    )
    inventory.write_text("groups:\n  gpus: [gpu-desktp]\n")
    broken = rbee(paths, "config", "check")
    assert broken.returncode != 0
    assert f"{inventory}:2: group 'gpus': 'gpu-desktp' is neither a hive" in broken.stderr
    assert "Traceback" not in broken.stderr
    shutil.copy(ROOT / "inventory" / "example.yaml", inventory)
    unknown = rbee(paths, "hive", "status", "--group", "nope")
    assert unknown.returncode != 0
    assert "unknown group 'nope'" in unknown.stderr
    elsewhere = rbee(paths, "--inventory", str(tmp_path / "none.yaml"), "hive", "list")
    assert elsewhere.returncode != 0
    assert f"{tmp_path / 'none.yaml'}: no such file" in elsewhere.stderr
