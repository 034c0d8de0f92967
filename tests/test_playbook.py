"""Playbooks read from YAML: what they mean, and every mistake reported as FILE:LINE."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rbee.apply.playbook import Policy, Want, load_playbook
from rbee.config.hives import HivesConfig, load_hives
from rbee.config.inventory import Inventory, load_inventory
from rbee.errors import ConfigError
from tests.conftest import make_paths, rbee

ROOT = Path(__file__).resolve().parent.parent

HIVES = """
IgnoreUnknown Rbee*
Host gpu-desktop
    HostName 192.0.2.10
Host old-server
    HostName 192.0.2.20
Host mac-mini
    HostName 192.0.2.30
"""

INVENTORY = """
groups:
  gpus:
    hives: [gpu-desktop]
    engine: exllamav2
    device: cuda:0
  macs:
    hives: [mac-mini]
    engine: mlx
  cpus: [old-server]
  accelerated: [gpus, macs]
  clash:
    hives: [mac-mini]
    engine: llamacpp
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[HivesConfig, Inventory]:
    hives = load_hives(write(tmp_path / "hives.conf", HIVES))
    return hives, load_inventory(write(tmp_path / "inventory.yaml", INVENTORY), hives)


def parse(tmp_path: Path, fleet: tuple[HivesConfig, Inventory], text: str) -> object:
    return load_playbook(write(tmp_path / "play.yaml", text), *fleet)


def test_groups_expand_in_hives_conf_order_and_bring_their_defaults(
    tmp_path: Path, fleet: tuple[HivesConfig, Inventory]
) -> None:
    book = load_playbook(
        write(
            tmp_path / "play.yaml",
            """
            models:
              - model: smollm2-135m
                hives: [cpus, gpus, localhost]
                replicas: 2
                idle_ttl: 0
              - model: qwen2.5-7b
                hives: gpus
                engine: llamacpp
                autoload: false
                embeddings: true
            prune: true
            """,
        ),
        *fleet,
    )
    assert book.wants == (
        Want("localhost", "smollm2-135m", 2, "auto", "auto", False, 2),
        Want("gpu-desktop", "smollm2-135m", 2, "exllamav2", "cuda:0", False, 2),
        Want("gpu-desktop", "qwen2.5-7b", 1, "llamacpp", "cuda:0", True, 6),
        Want("old-server", "smollm2-135m", 2, "auto", "auto", False, 2),
    )
    assert book.hives == ("localhost", "gpu-desktop", "old-server")
    assert book.policies == (
        Policy("smollm2-135m", 0.0, None, 2),
        Policy("qwen2.5-7b", None, False, 6),
    )
    assert book.prune is True


def test_worker_settings_are_stated_per_entry(
    tmp_path: Path, fleet: tuple[HivesConfig, Inventory]
) -> None:
    book = load_playbook(
        write(
            tmp_path / "play.yaml",
            """
            models:
              - model: smollm2-135m
                hives: [localhost]
                ctx_size: 8192
                threads: 4
                max_queued: 2
                cpu_repack: off
              - model: qwen2.5-7b
                hives: [localhost]
            """,
        ),
        *fleet,
    )
    settings = {w.model: w.settings for w in book.wants}
    assert settings == {
        "smollm2-135m": (("ctx_size", 8192), ("threads", 4), ("max_queued", 2),
                         ("cpu_repack", "off")),
        "qwen2.5-7b": (),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("models:\n  - model: smollm2-135m\n    hives: [gpus\n", 4, "not valid YAML"),
        ("modles: []\n", 1, "unknown key 'modles' in the playbook (did you mean 'models'?)"),
        ("prune: true\n", 1, "the playbook needs `models:`"),
        ("models: []\n", 1, "models: is empty"),
        ("models:\n  - model: smollm2-135m\n    hive: gpus\n", 3,
         "unknown key 'hive' in a models entry (did you mean 'hives'?)"),
        ("models:\n  - model: smollm2-135m\n", 2, "this models entry needs `hives:`"),
        ("models:\n  - hives: gpus\n", 2, "this models entry needs `model:`"),
        ("models:\n  - model: smollm2-135m\n    hives: [gpus, nowhere]\n", 3,
         "'nowhere' is neither a hive of"),
        ("models:\n  - model: ../../etc\n    hives: gpus\n", 2, "invalid model id"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    replicas: two\n", 4,
         "replicas must be a whole number"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    replicas: 100\n", 4,
         "replicas must be 0 to 64"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    engine: vllm\n", 4,
         "engine must be one of"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    device: gpu0\n", 4,
         "device must be auto, cpu, cuda:N or metal:0"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    idle_ttl: -5\n", 4,
         "idle_ttl must be 0 or more"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    autoload: maybe\n", 4,
         "autoload must be true or false"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\nprune: yes please\n", 4,
         "prune must be true or false"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n  - model: smollm2-135m\n"
         "    hives: accelerated\n", 4, "smollm2-135m on gpu-desktop is placed twice (first by "
         "the entry on line 2)"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    idle_ttl: 5\n"
         "  - model: smollm2-135m\n    hives: cpus\n    idle_ttl: 6\n", 5,
         "smollm2-135m: idle_ttl differs from the entry on line 2"),
        ("models:\n  - model: smollm2-135m\n    hives: [macs]\n", 3,
         "cannot place on mac-mini: "),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    model: other\n", 4,
         "'model' is given twice"),
        ("models:\n  - smollm2-135m\n", 2, "a models entry must be a mapping"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    ctx_size: 32\n", 4,
         "ctx_size must be 64 to 1048576, got 32"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    threads: many\n", 4,
         "threads must be a whole number"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    max_queued: 5000\n", 4,
         "max_queued must be 0 to 4096"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    cpu_repack: 1\n", 4,
         "cpu_repack must be a text"),
        ("models:\n  - model: smollm2-135m\n    hives: gpus\n    cpu_repack: always\n", 4,
         "cpu_repack must be one of auto, on, off, got 'always'"),
    ],
)  # fmt: skip
def test_mistakes_are_reported_with_their_line(
    tmp_path: Path, fleet: tuple[HivesConfig, Inventory], text: str, line: int, message: str
) -> None:
    path = write(tmp_path / "play.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_playbook(path, *fleet)
    assert str(caught.value).startswith(f"{path}:{line}: "), caught.value
    assert message in str(caught.value)


def test_an_empty_playbook_is_refused(tmp_path: Path, fleet: tuple[HivesConfig, Inventory]) -> None:
    path = write(tmp_path / "play.yaml", "# nothing yet\n")
    with pytest.raises(ConfigError, match=r"play\.yaml:1: the playbook is empty"):
        load_playbook(path, *fleet)


def test_the_example_playbooks_fit_the_example_hives_conf_and_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("the key the example names\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    hives = load_hives(ROOT / "hives.conf.example")
    inventory = load_inventory(ROOT / "inventory" / "example.yaml", hives)
    books = sorted((ROOT / "playbooks").glob("*.yaml"))
    assert len(books) >= 2
    for path in books:
        book = load_playbook(path, hives, inventory)
        assert book.wants, path
    default = load_playbook(ROOT / "playbooks" / "default-model.yaml", hives, inventory)
    placed = {w.hive: (w.replicas, w.engine, w.device) for w in default.wants}
    assert placed == {
        "localhost": (1, "auto", "auto"),
        "gpu-desktop": (2, "llamacpp", "cuda:0"),
        "old-server": (1, "auto", "auto"),
        "mac-mini": (1, "mlx", "auto"),
    }


def test_the_cli_prints_one_line_and_exits_1_before_asking_any_queen(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    paths.config_dir.mkdir()
    write(paths.config_dir / "hives.conf", HIVES)
    write(paths.config_dir / "inventory.yaml", INVENTORY)
    play = write(tmp_path / "play.yaml", "models:\n  - model: smollm2-135m\n    hives: [gpsu]\n")
    # No queen listens at this address: the playbook's mistake comes first.
    done = rbee(paths, "--queen", "http://127.0.0.1:9", "apply", str(play), "--check")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"rbee: error: {play}:3: 'gpsu' is neither a hive of")
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
