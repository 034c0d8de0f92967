"""The wheelhouse's planning: platforms and their wheel tags, pins, pip argv, manifests, hashes."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest

from rbee.errors import WheelhouseError
from rbee.facts import Facts, Gpu
from rbee.ssh.install import engine_extras, wheels_to_send
from rbee.ssh.wheelhouse import (
    EXTRA_ENV,
    Manifest,
    Target,
    WheelFile,
    dependency_key,
    dependency_pins,
    extra_dirs_from_env,
    missing_packages,
    pip_argv,
    platform_tags,
    rbee_source,
    runtime_requirements,
    same_platform,
    wheel_from_installed,
)

QUEEN = Target("linux", "x86_64", "3.11", "cp", "glibc", "2.36")


@pytest.mark.parametrize(
    ("raw", "target"),
    [
        (("Linux", "x86_64", "3.11.7", "cpython", "glibc", "2.36"), QUEEN),
        (("linux", "AMD64", "3.11.2", "CPython", "glibc", "2.36"), QUEEN),
        (("Linux", "arm64", "3.12.1", "cpython", "glibc", "2.31"),
         Target("linux", "aarch64", "3.12", "cp", "glibc", "2.31")),
        (("Darwin", "arm64", "3.12.1", "cpython", "", "14.4.1"),
         Target("darwin", "arm64", "3.12", "cp", "", "14.4.1")),
        (("Darwin", "aarch64", "3.13.0", "pypy", "", "15.0"),
         Target("darwin", "arm64", "3.13", "pp", "", "15.0")),
    ],
)  # fmt: skip
def test_targets_from_raw_readings(raw: tuple[str, ...], target: Target) -> None:
    os_, arch, python, impl, libc, version = raw
    made = Target.of(os_, arch, python, implementation=impl, libc=libc, os_version=version)
    assert made == target


def test_target_names() -> None:
    assert QUEEN.python_tag == "cp311"
    assert QUEEN.key == "cp311-linux_x86_64-glibc2.36"
    assert Target("darwin", "arm64", "3.12", os_version="14.4").key == "cp312-darwin_arm64-14.4"
    assert QUEEN.describe() == "Python 3.11 (cp) on linux x86_64, glibc 2.36"


@pytest.mark.parametrize(
    ("hive", "same"),
    [
        (QUEEN, True),
        (Target("linux", "x86_64", "3.11", "cp", "glibc", "2.39"), True),  # newer glibc runs it
        (Target("linux", "x86_64", "3.11", "cp", "glibc", "2.31"), False),  # older may not
        (Target("linux", "x86_64", "3.12", "cp", "glibc", "2.36"), False),
        (Target("linux", "aarch64", "3.11", "cp", "glibc", "2.36"), False),
        (Target("linux", "x86_64", "3.11", "pp", "glibc", "2.36"), False),
        (Target("linux", "x86_64", "3.11", "cp", "musl", "1.2"), False),
        (Target("darwin", "x86_64", "3.11", "cp", "", "14.0"), False),
    ],
)
def test_same_platform(hive: Target, same: bool) -> None:
    assert same_platform(QUEEN, hive) is same


def test_manylinux_tags_go_down_to_the_oldest_glibc_for_the_arch() -> None:
    tags = platform_tags(Target("linux", "x86_64", "3.11", "cp", "glibc", "2.17"))
    assert tags[0] == "manylinux_2_17_x86_64"
    assert tags[12] == "manylinux_2_5_x86_64"
    assert tags[13:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    arm = platform_tags(Target("linux", "aarch64", "3.12", "cp", "glibc", "2.28"))
    assert arm == [f"manylinux_2_{m}_aarch64" for m in range(28, 16, -1)] + [
        "manylinux2014_aarch64"
    ]


def test_musllinux_and_macos_tags() -> None:
    musl = Target("linux", "x86_64", "3.12", "cp", "musl", "1.2.4")
    assert platform_tags(musl) == ["musllinux_1_2_x86_64", "musllinux_1_1_x86_64",
                                   "musllinux_1_0_x86_64"]  # fmt: skip
    mac = platform_tags(Target("darwin", "arm64", "3.12", os_version="13.6"))
    assert mac == [f"macosx_{v}_0_{a}" for v in (13, 12, 11) for a in ("arm64", "universal2")]
    intel = platform_tags(Target("darwin", "x86_64", "3.12", os_version="10.15"))
    assert intel[:3] == ["macosx_10_15_x86_64", "macosx_10_15_universal2", "macosx_10_15_intel"]
    assert intel[-1] == "macosx_10_9_intel"


@pytest.mark.parametrize(
    "target",
    [Target("linux", "x86_64", "3.12", "cp", "", ""), Target("windows", "x86_64", "3.12")],
)
def test_platforms_without_known_tags_are_an_error(target: Target) -> None:
    with pytest.raises(WheelhouseError, match="cannot pick wheels"):
        platform_tags(target)


INSTALLED = {
    "app-dep": ("1.0", ["shared>=1", 'tool[fast]>=2; python_version >= "3.8"']),
    "tool": ("2.1", ["shared", 'speedup; extra == "fast"', 'docs-thing; extra == "docs"']),
    "shared": ("3.0", ["app-dep"]),  # a cycle back
    "speedup": ("0.5", []),
    "docs-thing": ("9.9", []),
    "unrelated": ("1.0", []),
}


def test_pins_follow_requirements_and_wanted_extras_only() -> None:
    pins, unpinned = dependency_pins(
        ["App_Dep>=1", 'not-here>=2; sys_platform == "win32"'], INSTALLED
    )
    assert pins == ("app-dep==1.0", "shared==3.0", "speedup==0.5", "tool==2.1")
    assert unpinned == ('not-here>=2; sys_platform == "win32"',)


def test_dependency_key_changes_with_what_pip_would_fetch() -> None:
    key = dependency_key(QUEEN, True, ["a==1"], [], [])
    assert key == dependency_key(QUEEN, True, ["a==1"], [], [])
    assert key != dependency_key(QUEEN, True, ["a==2"], [], [])
    assert key != dependency_key(QUEEN, False, ["a==1"], [], [])
    assert key != dependency_key(QUEEN, True, ["a==1"], [], ["x-1.0-py3-none-any.whl 10"])


def test_pip_argv_same_platform_uses_pip_wheel() -> None:
    argv = pip_argv("py", QUEEN, Path("/w"), ["a==1"], native=True, no_deps=True)
    assert argv == ["py", "-m", "pip", "wheel", "-w", "/w", "--no-deps", "a==1"]


def test_pip_argv_other_platform_downloads_binary_wheels_only() -> None:
    hive = Target("linux", "aarch64", "3.12", "cp", "glibc", "2.17")
    argv = pip_argv("py", hive, Path("/w"), ["b>=2"], native=False,
                    find_links=[Path("/extra")], constraints=Path("/c.txt"))  # fmt: skip
    assert argv[:11] == ["py", "-m", "pip", "download", "-d", "/w", "--only-binary", ":all:",
                         "--python-version", "3.12", "--implementation"]  # fmt: skip
    assert argv[11:14] == ["cp", "--platform", "manylinux_2_17_aarch64"]
    assert argv[-5:] == ["--find-links", "/extra", "-c", "/c.txt", "b>=2"]


def test_missing_packages_are_read_from_pip_errors() -> None:
    stderr = (
        "ERROR: Could not find a version that satisfies the requirement llama-cpp-python==0.3.36 "
        "(from versions: none)\nERROR: No matching distribution found for llama-cpp-python==0.3.36"
        "\nERROR: No matching distribution found for Some_Pkg\n"
    )
    assert missing_packages(stderr) == ["llama-cpp-python", "some-pkg"]
    assert missing_packages("ERROR: network down") == []


def _manifest(*files: WheelFile) -> Manifest:
    rbee = WheelFile("rbee-0.1.0-py3-none-any.whl", 10, "a" * 64)
    return Manifest("0.1.0", QUEEN.key, True, "k", "s", rbee, files)


def test_manifest_round_trips_and_hashes_content_only() -> None:
    one, two = WheelFile("x-1-py3-none-any.whl", 5, "b" * 64), WheelFile("y.whl", 6, "c" * 64)
    manifest = _manifest(one, two)
    text = manifest.to_json()
    assert Manifest.from_json(text) == manifest
    assert json.loads(text)["content_hash"] == manifest.content_hash
    assert _manifest(two, one).content_hash == manifest.content_hash  # order does not matter
    changed = WheelFile("y.whl", 6, "d" * 64)
    assert _manifest(one, changed).content_hash != manifest.content_hash
    with pytest.raises(KeyError):
        Manifest.from_json("{}")


def test_wheels_to_send_skips_identical_remote_copies() -> None:
    a, b = WheelFile("a.whl", 1, "1" * 64), WheelFile("b.whl", 2, "2" * 64)
    remote = {"a.whl": [1, "1" * 64], "b.whl": [2, "f" * 64], "old.whl": [3, "3" * 64]}
    assert wheels_to_send([a, b], remote) == ([b], ["old.whl"])
    assert wheels_to_send([a], {}) == ([a], [])


def _facts(gpus: tuple[Gpu, ...] = (), os_: str = "linux", arch: str = "x86_64") -> Facts:
    return Facts(os_, arch, "h", "3.11.2", "/usr/bin/python3", 2, None, None, 0, gpus, None, ())


@pytest.mark.parametrize(
    ("facts", "backend", "extras"),
    [
        (_facts(), "auto", ()),
        (_facts((Gpu(0, "RTX", 1, 1, "550"),)), "auto", ("cuda",)),
        (_facts((Gpu(0, "RTX", 1, 1, "550"),)), "llamacpp", ()),
        (_facts(os_="darwin", arch="arm64"), "auto", ("mlx",)),
        (_facts(), "exllamav2", ("cuda",)),
    ],
)
def test_engine_extras(facts: Facts, backend: str, extras: tuple[str, ...]) -> None:
    assert engine_extras(facts, backend) == extras


def test_extra_wheel_dirs_come_from_the_environment() -> None:
    assert extra_dirs_from_env({EXTRA_ENV: "/a:/b:"}) == (Path("/a"), Path("/b"))
    assert extra_dirs_from_env({}) == ()


def test_runtime_requirements_are_the_project_dependencies_only() -> None:
    source = rbee_source()
    assert source.root is not None, "the tests run from a source checkout"
    names = [r.split(">")[0].split("=")[0].strip() for r in runtime_requirements(source)]
    assert "llama-cpp-python" in names
    assert "asyncssh" in names
    assert not {"pytest", "openai", "mypy", "exllamav2"} & set(names)
    assert any(r.startswith("exllamav2") for r in runtime_requirements(source, ["cuda"]))


def test_source_hash_follows_package_files_not_bytecode(tmp_path: Path) -> None:
    package = tmp_path / "rbee"
    (package / "__pycache__").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'rbee'\n")
    (package / "__init__.py").write_text("x = 1\n")
    first = rbee_source(package)
    assert first.root == tmp_path
    assert first.top_files == ("pyproject.toml",)
    (package / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"junk")
    assert rbee_source(package).digest == first.digest
    (package / "__init__.py").write_text("x = 2\n")
    assert rbee_source(package).digest != first.digest
    assert rbee_source(tmp_path / "elsewhere" / "rbee").root is None


def test_an_installed_distribution_packs_into_a_valid_wheel(tmp_path: Path) -> None:
    wheel = wheel_from_installed("iniconfig", tmp_path)
    assert wheel.name.startswith("iniconfig-")
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        record = zf.read(f"{info}/RECORD").decode().splitlines()
        assert "iniconfig/__init__.py" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith("INSTALLER")]
        for line in record:
            path, digest, size = line.rsplit(",", 2)
            if path == f"{info}/RECORD":
                continue
            data = zf.read(path)
            b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (f"sha256={b64}", len(data))
        assert len(record) == len(names)


@pytest.mark.slow
def test_rbee_wheel_is_reproducible(tmp_path: Path) -> None:
    # A wheelhouse rebuilt in another data dir must still find an installed hive up to date.
    from rbee.ssh.wheelhouse import _build_rbee, rbee_source  # noqa: PLC0415

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    source = rbee_source()
    assert (
        _build_rbee(first, source, sys.executable).sha256
        == _build_rbee(second, source, sys.executable).sha256
    )
